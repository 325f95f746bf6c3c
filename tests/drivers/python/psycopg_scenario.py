"""The driver scenario (tests/drivers/SCENARIO.md) with psycopg 3 (libpq underneath).

Driver features exercised:

* server-side prepared statements from the first execution (``prepare_threshold=0``):
  each statement is Parsed once as a named ``_pg3_N`` statement, then only Bound and
  Executed; the same SQL texts (hence the same prepared statements) are reused on one
  connection, kept open across the expand -> switch -> contract flips;
* psycopg's own parameter typing: a Python ``int`` is sent in binary as the smallest integer
  type it fits (``int2`` for every value here, against ``int4`` columns), a ``str`` in text as
  ``unknown`` so the server infers its type; results come back in text format;
* autocommit, so every statement is its own transaction (the harness flips between them);
* pipeline mode (``with conn.pipeline():``): every SELECT step of the scenario is run a second
  time, several queries in flight before the first result is read, and must give the same
  result.

Protocol with the harness: ``flip PHASE`` on stdout, then one line (``ok``) on stdin.
Exits 1 with a message on stderr (phase, step, expected, got) at the first mismatch.
"""

import os
import sys
import traceback

import psycopg

INS_OLD = "INSERT INTO users (id, user_name, age) VALUES (%s, %s, %s)"
INS_NEW = "INSERT INTO users (id, display_name, age_int) VALUES (%s, %s, %s)"
SEL_OLD = "SELECT user_name, age FROM users WHERE id = %s"
SEL_NEW = "SELECT display_name, age_int FROM users WHERE id = %s"
UPD_OLD = "UPDATE users SET user_name = %s WHERE id = %s"
UPD_NEW = "UPDATE users SET age_int = %s WHERE id = %s"
DEL = "DELETE FROM users WHERE id = %s"
COUNT = "SELECT count(*) FROM users"

# Where we are, for the messages.
where = {"phase": "start", "step": "connect"}


def fail(expected, got, what=""):
    detail = f" ({what})" if what else ""
    print(
        f"psycopg 3: phase {where['phase']}, step {where['step']}{detail}: "
        f"expected {expected!r}, got {got!r}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(1)


def check(expected, got, what=""):
    if expected != got:
        fail(expected, got, what)


def typed(row, types):
    """The row as a tuple, checking the Python type of each non-NULL value."""
    if row is None:
        return None
    for value, want in zip(row, types):
        if value is not None and type(value) is not want:
            fail(
                f"values of types {[t.__name__ for t in types]}",
                f"{row!r} of types {[type(v).__name__ for v in row]}",
            )
    return tuple(row)


def flip(phase):
    print(f"flip {phase}", flush=True)
    answer = sys.stdin.readline()
    if answer.strip() != "ok":
        fail("ok from the harness", answer, f"flip to {phase}")


def affected(conn, sql, params):
    return conn.execute(sql, params).rowcount


def select(conn, sql, id_, types):
    rows = conn.execute(sql, (id_,)).fetchall()
    if len(rows) > 1:
        fail("at most one row", rows)
    return typed(rows[0], types) if rows else None


def pipelined(conn, queries):
    """Runs every (sql, params, types) query in one pipeline, all sent before any result is
    read; returns each query's rows (typed tuples)."""
    with conn.pipeline():
        cursors = [conn.execute(sql, params) for sql, params, _ in queries]
        results = []
        for cur, (_, _, types) in zip(cursors, queries):
            results.append([typed(r, types) for r in cur.fetchall()])
    return results


def run():
    proxy_url = os.environ["PGSHIFT_URL"]
    direct_url = os.environ["DIRECT_URL"]
    app = psycopg.connect(proxy_url, autocommit=True, prepare_threshold=0)
    direct = psycopg.connect(direct_url, autocommit=True)

    for done, (phase, base) in enumerate([("expand", 100), ("switch", 200), ("contract", 300)]):
        where["phase"] = phase
        if phase != "expand":
            where["step"] = "flip"
            flip(phase)
        a, b, c = base + 1, base + 2, base + 3

        where["step"] = "1"
        check(1, affected(app, INS_OLD, (a, "old-a", "7")), "ins_old(a) rows")
        check(1, affected(app, INS_NEW, (b, "new-b", 8)), "ins_new(b) rows")

        where["step"] = "2"
        check(("old-a", 7), select(app, SEL_NEW, a, (str, int)), "sel_new(a)")
        check(("new-b", "8"), select(app, SEL_OLD, b, (str, str)), "sel_old(b)")
        where["step"] = "2 (pipeline)"
        check(
            [[("old-a", 7)], [("new-b", "8")]],
            pipelined(app, [(SEL_NEW, (a,), (str, int)), (SEL_OLD, (b,), (str, str))]),
            "sel_new(a), sel_old(b)",
        )

        where["step"] = "3"
        check(1, affected(app, UPD_OLD, ("renamed", b)), "upd_old(b) rows")
        check(("renamed", 8), select(app, SEL_NEW, b, (str, int)), "sel_new(b)")
        where["step"] = "3 (pipeline)"
        check(
            [[("renamed", 8)]],
            pipelined(app, [(SEL_NEW, (b,), (str, int))]),
            "sel_new(b)",
        )

        where["step"] = "4"
        check(1, affected(app, UPD_NEW, (9, a)), "upd_new(a) rows")
        check(("old-a", "9"), select(app, SEL_OLD, a, (str, str)), "sel_old(a)")
        where["step"] = "4 (pipeline)"
        check(
            [[("old-a", "9")]],
            pipelined(app, [(SEL_OLD, (a,), (str, str))]),
            "sel_old(a)",
        )

        where["step"] = "5"
        check(1, affected(app, INS_OLD, (c, "gone", "1")), "ins_old(c) rows")
        check(1, affected(app, DEL, (c,)), "del(c) rows")
        check(None, select(app, SEL_OLD, c, (str, str)), "sel_old(c)")
        where["step"] = "5 (pipeline)"
        check([[]], pipelined(app, [(SEL_OLD, (c,), (str, str))]), "sel_old(c)")

        where["step"] = "6"
        count = 3 + 2 * (done + 1)
        check([(count,)], [typed(r, (int,)) for r in app.execute(COUNT).fetchall()], "count")
        where["step"] = "6 (pipeline)"
        check([[(count,)]], pipelined(app, [(COUNT, None, (int,))]), "count")
        # Every SELECT once more in a single pipeline, with their final values.
        where["step"] = "2-6 (one pipeline)"
        check(
            [
                [("old-a", 9)],
                [("renamed", "8")],
                [("renamed", 8)],
                [("old-a", "9")],
                [],
                [(count,)],
            ],
            pipelined(
                app,
                [
                    (SEL_NEW, (a,), (str, int)),
                    (SEL_OLD, (b,), (str, str)),
                    (SEL_NEW, (b,), (str, int)),
                    (SEL_OLD, (a,), (str, str)),
                    (SEL_OLD, (c,), (str, str)),
                    (COUNT, None, (int,)),
                ],
            ),
            "all reads",
        )

        where["step"] = "7 (direct)"
        rows = direct.execute(
            "SELECT user_name, display_name, age, age_int FROM users"
            " WHERE id IN (%s, %s) ORDER BY id",
            (a, b),
        ).fetchall()
        if phase == "contract":
            expected = [(None, "old-a", None, 9), (None, "renamed", None, 8)]
        else:
            expected = [("old-a", "old-a", "9", 9), ("renamed", "renamed", "8", 8)]
        check(expected, rows, "the table, read directly")

    app.close()
    direct.close()


def main():
    try:
        run()
    except SystemExit:
        raise
    except Exception as e:  # a driver error: say where it happened
        print(
            f"psycopg 3: phase {where['phase']}, step {where['step']}: "
            f"{type(e).__name__}: {e}",
            file=sys.stderr,
        )
        diag = getattr(e, "diag", None)
        if diag is not None and diag.sqlstate:
            print(f"  SQLSTATE {diag.sqlstate}", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
