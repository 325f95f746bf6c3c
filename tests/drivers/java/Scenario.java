// The driver scenario (../SCENARIO.md) with the PostgreSQL JDBC driver (pgjdbc 42.5.5, Debian's
// libpostgresql-jdbc-java), run as a single-file source program:
//
//     java -cp /usr/share/java/postgresql.jar tests/drivers/java/Scenario.java
//
// Driver features exercised:
// - one Connection through pgshift kept open for the whole run (expand → switch → contract),
//   autocommit on, with `prepareThreshold=2` and `reWriteBatchedInserts=true`;
// - PreparedStatements created once at the start and reused across the flips; with
//   prepareThreshold=2 pgjdbc runs a statement's first execution as the unnamed statement and
//   from the second on as a named server-side statement (`S_n`: Parse once, then only
//   Bind/Execute, results in binary for int4 once the row shape is known), so every statement
//   runs at least twice before the first flip: the SELECTs are read again, the UPDATEs
//   repeated (idempotent), and a throw-away row d = base + 4 goes in through ins_old and
//   ins_new and out through del (batched executions do not count: pgjdbc sends the rewritten
//   two-row batch as the unnamed statement every time); the flips then happen under named statements;
// - typed parameters as pgjdbc declares them in Parse: setInt → int4, setString → varchar;
// - results read by column label: getInt (int4 in binary format once server-prepared) with
//   wasNull, getString; column types checked through ResultSetMetaData;
// - batches: ins_old for a and c (step 5's row) added with addBatch and run with executeBatch
//   at the start of each phase, which reWriteBatchedInserts turns into one multi-row
//   `INSERT … VALUES ($1, $2, $3),($4, $5, $6)`; update counts 1 or SUCCESS_NO_INFO (-2)
//   are accepted and the rows read back;
// - executeUpdate counts from the CommandComplete tag, a plain Statement for step 6
//   (count(*) via getLong) and a second, direct Connection for step 7.
//
// Flip protocol: prints `flip PHASE` on stdout and waits for a line on stdin.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.Properties;

public class Scenario {
  // JDBC placeholders are `?`; pgjdbc sends them to the server as $1, $2 … (the SCENARIO.md
  // text).
  static final String INS_OLD = "INSERT INTO users (id, user_name, age) VALUES (?, ?, ?)";
  static final String INS_NEW = "INSERT INTO users (id, display_name, age_int) VALUES (?, ?, ?)";
  static final String SEL_OLD = "SELECT user_name, age FROM users WHERE id = ?";
  static final String SEL_NEW = "SELECT display_name, age_int FROM users WHERE id = ?";
  static final String UPD_OLD = "UPDATE users SET user_name = ? WHERE id = ?";
  static final String UPD_NEW = "UPDATE users SET age_int = ? WHERE id = ?";
  static final String DEL = "DELETE FROM users WHERE id = ?";

  /** Where we are, for messages. */
  static String where = "start";

  static final BufferedReader stdin =
      new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

  static void fail(String message) {
    System.err.println("JDBC: " + where + ": " + message);
    System.err.flush();
    System.exit(1);
  }

  static String show(Object value) {
    if (value == null) {
      return "NULL";
    }
    if (value instanceof String) {
      return "'" + value + "'";
    }
    if (value instanceof List) {
      List<String> parts = new ArrayList<>();
      for (Object v : (List<?>) value) {
        parts.add(show(v));
      }
      return "(" + String.join(", ", parts) + ")";
    }
    return value.toString();
  }

  static void check(String what, Object expected, Object got) {
    if (!Objects.equals(expected, got)) {
      fail(what + ": expected " + show(expected) + ", got " + show(got));
    }
  }

  static void flip(String phase) throws Exception {
    System.out.println("flip " + phase);
    System.out.flush();
    String answer = stdin.readLine();
    if (answer == null || !answer.trim().equals("ok")) {
      fail("flip " + phase + ": the harness answered " + show(answer) + " instead of 'ok'");
    }
  }

  static Connection connect(String label, String url, String user, String password) {
    Properties props = new Properties();
    props.setProperty("user", user);
    if (!password.isEmpty()) {
      props.setProperty("password", password);
    }
    try {
      Connection conn = DriverManager.getConnection(url, props);
      check(label + ": autocommit", true, conn.getAutoCommit());
      return conn;
    } catch (SQLException e) {
      fail("cannot connect " + label + " (" + url + "): " + describe(e));
      return null;
    }
  }

  static String describe(SQLException e) {
    StringBuilder text = new StringBuilder();
    for (SQLException cur = e; cur != null; cur = cur.getNextException()) {
      if (text.length() > 0) {
        text.append("; next: ");
      }
      text.append(cur.getMessage()).append(" [SQLSTATE ").append(cur.getSQLState()).append("]");
    }
    return text.toString();
  }

  static String env(String name) {
    String value = System.getenv(name);
    if (value == null) {
      fail("environment variable " + name + " is not set");
    }
    return value;
  }

  /** A statement, its name and SQL, for messages. */
  record Stmt(String name, String sql, PreparedStatement ps) {}

  static Stmt prepare(Connection conn, String name, String sql) {
    try {
      return new Stmt(name, sql, conn.prepareStatement(sql));
    } catch (SQLException e) {
      fail("prepareStatement " + name + " (" + sql + "): " + describe(e));
      return null;
    }
  }

  static String call(Stmt stmt, Object... params) {
    List<String> parts = new ArrayList<>();
    for (Object p : params) {
      parts.add(show(p));
    }
    return stmt.name + "(" + String.join(", ", parts) + ")";
  }

  /** Binds `params`: Integer with setInt, String with setString. */
  static void bind(Stmt stmt, Object... params) throws SQLException {
    for (int i = 0; i < params.length; i++) {
      Object p = params[i];
      if (p instanceof Integer) {
        stmt.ps.setInt(i + 1, (Integer) p);
      } else {
        stmt.ps.setString(i + 1, (String) p);
      }
    }
  }

  /** `stmt(params)` with executeUpdate affects `expected` rows. */
  static void exec(Stmt stmt, int expected, Object... params) {
    String what = call(stmt, params);
    try {
      bind(stmt, params);
      check(what + ": affected rows", expected, stmt.ps.executeUpdate());
    } catch (SQLException e) {
      fail(what + " failed: " + describe(e));
    }
  }

  /**
   * `stmt(id)` returns `expected` (null: no row) read by column label: `columns[0]` with
   * getString, `columns[1]` with getInt when `intSecond`, else getString.
   */
  static void select(Stmt stmt, int id, String[] columns, boolean intSecond, List<Object> expected) {
    String what = call(stmt, id);
    try {
      bind(stmt, id);
      try (ResultSet rs = stmt.ps.executeQuery()) {
        ResultSetMetaData meta = rs.getMetaData();
        check(what + ": column count", 2, meta.getColumnCount());
        check(
            what + ": column labels",
            Arrays.asList(columns),
            Arrays.asList(meta.getColumnLabel(1), meta.getColumnLabel(2)));
        check(
            what + ": column types (java.sql.Types)",
            Arrays.asList(Types.VARCHAR, intSecond ? Types.INTEGER : Types.VARCHAR),
            Arrays.asList(meta.getColumnType(1), meta.getColumnType(2)));
        if (!rs.next()) {
          check(what + ": row", expected, null);
          return;
        }
        List<Object> got = new ArrayList<>();
        got.add(rs.getString(columns[0]));
        if (intSecond) {
          int value = rs.getInt(columns[1]);
          got.add(rs.wasNull() ? null : (Object) value);
        } else {
          got.add(rs.getString(columns[1]));
        }
        check(what + ": row", expected, got);
        check(what + ": more than one row", false, rs.next());
      }
    } catch (SQLException e) {
      fail(what + " failed: " + describe(e));
    }
  }

  static final String[] OLD_COLUMNS = {"user_name", "age"};
  static final String[] NEW_COLUMNS = {"display_name", "age_int"};

  static void selOld(Stmt stmt, int id, List<Object> expected) {
    select(stmt, id, OLD_COLUMNS, false, expected);
  }

  static void selNew(Stmt stmt, int id, List<Object> expected) {
    select(stmt, id, NEW_COLUMNS, true, expected);
  }

  static List<Object> row(Object... values) {
    return Arrays.asList(values);
  }

  public static void main(String[] args) throws Exception {
    String host = env("PGSHIFT_HOST");
    String db = env("PGDB");
    String user = env("PGUSER_NAME");
    String password = env("PGPASSWORD_VALUE");
    String appUrl =
        "jdbc:postgresql://" + host + ":" + env("PGSHIFT_PORT") + "/" + db
            + "?prepareThreshold=2&reWriteBatchedInserts=true";
    String directUrl = "jdbc:postgresql://" + host + ":" + env("DIRECT_PORT") + "/" + db;

    Connection app = connect("through pgshift", appUrl, user, password);
    Connection direct = connect("direct", directUrl, user, password);

    Stmt insOld = prepare(app, "ins_old", INS_OLD);
    Stmt insNew = prepare(app, "ins_new", INS_NEW);
    Stmt selOld = prepare(app, "sel_old", SEL_OLD);
    Stmt selNew = prepare(app, "sel_new", SEL_NEW);
    Stmt updOld = prepare(app, "upd_old", UPD_OLD);
    Stmt updNew = prepare(app, "upd_new", UPD_NEW);
    Stmt del = prepare(app, "del", DEL);

    String[] phases = {"expand", "switch", "contract"};
    for (int done = 0; done < phases.length; done++) {
      String phase = phases[done];
      if (!phase.equals("expand")) {
        where = "flip to " + phase;
        flip(phase);
      }
      int base = 100 * (done + 1);
      int a = base + 1;
      int b = base + 2;
      int c = base + 3;
      int d = base + 4;

      // Step 1, with step 5's ins_old(c) batched together with ins_old(a).
      where = phase + " step 1";
      String batch = call(insOld, a, "old-a", "7") + " + " + call(insOld, c, "gone", "1") + " batch";
      try {
        bind(insOld, a, "old-a", "7");
        insOld.ps.addBatch();
        bind(insOld, c, "gone", "1");
        insOld.ps.addBatch();
        int[] counts = insOld.ps.executeBatch();
        check(batch + ": number of update counts", 2, counts.length);
        for (int count : counts) {
          if (count != 1 && count != Statement.SUCCESS_NO_INFO) {
            fail(batch + ": expected update counts of 1 or SUCCESS_NO_INFO (-2), got "
                + Arrays.toString(counts));
          }
        }
      } catch (SQLException e) {
        fail(batch + " failed: " + describe(e));
      }
      selOld(selOld, a, row("old-a", "7"));
      selOld(selOld, c, row("gone", "1"));
      exec(insNew, 1, b, "new-b", 8);

      // Step 2; each read twice (prepareThreshold=2).
      where = phase + " step 2";
      for (int i = 0; i < 2; i++) {
        selNew(selNew, a, row("old-a", 7));
        selOld(selOld, b, row("new-b", "8"));
      }

      // Step 3; the update repeated (same values, still one row).
      where = phase + " step 3";
      exec(updOld, 1, "renamed", b);
      exec(updOld, 1, "renamed", b);
      selNew(selNew, b, row("renamed", 8));

      // Step 4; the update repeated likewise.
      where = phase + " step 4";
      exec(updNew, 1, 9, a);
      exec(updNew, 1, 9, a);
      selOld(selOld, a, row("old-a", "9"));

      // Step 5 (ins_old(c) ran in step 1's batch).
      where = phase + " step 5";
      exec(del, 1, c);
      selOld(selOld, c, null);

      // Extra: a throw-away row d through both insert shapes, so that ins_old (whose batched
      // executions never count towards prepareThreshold: pgjdbc sends a rewritten batch as the
      // unnamed statement), ins_new and del run at least twice in every phase, i.e. are named
      // server-side statements before the first flip.
      where = phase + " extra (throw-away row " + d + ")";
      exec(insOld, 1, d, "d-old", "4");
      selNew(selNew, d, row("d-old", 4));
      exec(del, 1, d);
      exec(insOld, 1, d, "d-old", "4");
      exec(del, 1, d);
      exec(insNew, 1, d, "d-new", 5);
      selOld(selOld, d, row("d-new", "5"));
      exec(del, 1, d);
      selOld(selOld, d, null);

      where = phase + " step 6";
      try (Statement st = app.createStatement();
          ResultSet rs = st.executeQuery("SELECT count(*) FROM users")) {
        check("SELECT count(*) FROM users: a row", true, rs.next());
        check("SELECT count(*) FROM users", 3L + 2L * (done + 1), rs.getLong(1));
      } catch (SQLException e) {
        fail("SELECT count(*) FROM users failed: " + describe(e));
      }

      where = phase + " step 7";
      List<List<Object>> expected =
          phase.equals("contract")
              ? List.of(row(null, "old-a", null, 9), row(null, "renamed", null, 8))
              : List.of(row("old-a", "old-a", "9", 9), row("renamed", "renamed", "8", 8));
      List<List<Object>> got = new ArrayList<>();
      try (PreparedStatement ps =
          direct.prepareStatement(
              "SELECT user_name, display_name, age, age_int FROM users WHERE id IN (?, ?) ORDER BY id")) {
        ps.setInt(1, a);
        ps.setInt(2, b);
        try (ResultSet rs = ps.executeQuery()) {
          while (rs.next()) {
            int ageInt = rs.getInt(4);
            Object age = rs.wasNull() ? null : (Object) ageInt;
            got.add(row(rs.getString(1), rs.getString(2), rs.getString(3), age));
          }
        }
      } catch (SQLException e) {
        fail("the direct read failed: " + describe(e));
      }
      check("the table, read directly", expected, got);
    }

    where = "end";
    app.close();
    direct.close();
    System.exit(0);
  }
}
