"""The driver scenario (tests/drivers/SCENARIO.md) with asyncpg.

Driver features exercised:

* named prepared statements (``conn.prepare(sql)``), created once at the start in expand and
  executed across the expand -> switch -> contract flips on one connection. asyncpg sends
  Parse + Describe (statement) when preparing, and decides from the ParameterDescription and
  RowDescription it got then how to encode every later Bind and decode every later DataRow;
  the Describe results seen through pgshift are also compared with those of the same
  statements prepared directly;
* the binary format for all parameters and all result columns;
* ``stmt.fetch`` (Execute without a row limit), ``stmt.fetchrow`` / ``stmt.fetchval``
  (Execute with a row limit of 1), ``stmt.fetchmany`` (several Bind/Execute pairs pipelined
  before one Sync) for the reads; row counts of INSERT/UPDATE/DELETE from the command tag
  (``stmt.get_statusmsg()``, e.g. ``UPDATE 1``);
* Python types of results: ``age_int`` must come back as ``int``, ``age`` and ``user_name``
  as ``str``, ``count(*)`` as ``int``.

Protocol with the harness: ``flip PHASE`` on stdout, then one line (``ok``) on stdin.
Exits 1 with a message on stderr (phase, step, expected, got) at the first mismatch.
"""

import asyncio
import os
import sys
import traceback

import asyncpg

STATEMENTS = {
    "ins_old": "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)",
    "ins_new": "INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)",
    "sel_old": "SELECT user_name, age FROM users WHERE id = $1",
    "sel_new": "SELECT display_name, age_int FROM users WHERE id = $1",
    "upd_old": "UPDATE users SET user_name = $1 WHERE id = $2",
    "upd_new": "UPDATE users SET age_int = $1 WHERE id = $2",
    "del": "DELETE FROM users WHERE id = $1",
    "count": "SELECT count(*) FROM users",
}

# Where we are, for the messages.
where = {"phase": "start", "step": "connect"}


class Mismatch(Exception):
    pass


def fail(expected, got, what=""):
    detail = f" ({what})" if what else ""
    raise Mismatch(
        f"asyncpg: phase {where['phase']}, step {where['step']}{detail}: "
        f"expected {expected!r}, got {got!r}"
    )


def check(expected, got, what=""):
    if expected != got:
        fail(expected, got, what)


def typed(record, types):
    """The record as a tuple, checking the Python type of each non-NULL value."""
    if record is None:
        return None
    row = tuple(record)
    for value, want in zip(row, types):
        if value is not None and type(value) is not want:
            fail(
                f"values of types {[t.__name__ for t in types]}",
                f"{row!r} of types {[type(v).__name__ for v in row]}",
            )
    return row


def describe(stmt):
    """What Describe said about a prepared statement: parameter types and result columns."""
    params = [t.name for t in stmt.get_parameters()]
    columns = [(a.name, a.type.name) for a in stmt.get_attributes()]
    return params, columns


async def flip(phase):
    print(f"flip {phase}", flush=True)
    answer = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if answer.strip() != "ok":
        fail("ok from the harness", answer, f"flip to {phase}")


async def status(stmt, *args):
    """Executes a statement returning no rows; its command tag."""
    rows = await stmt.fetch(*args)
    check([], list(rows), f"rows returned by {stmt.get_query()!r}")
    return stmt.get_statusmsg()


async def one(stmt, id_, types, what):
    """The scenario's select of one id, run through fetch (no row limit) and fetchrow (row
    limit 1), which must agree; the row as a typed tuple, or None."""
    rows = await stmt.fetch(id_)
    if len(rows) > 1:
        fail("at most one row", [tuple(r) for r in rows], what)
    by_fetch = typed(rows[0], types) if rows else None
    check(f"SELECT {len(rows)}", stmt.get_statusmsg(), f"{what}: command tag of fetch")
    by_fetchrow = typed(await stmt.fetchrow(id_), types)
    check(by_fetch, by_fetchrow, f"{what}: fetchrow after fetch")
    return by_fetch


async def run():
    app = await asyncpg.connect(os.environ["PGSHIFT_URL"])
    direct = await asyncpg.connect(os.environ["DIRECT_URL"])
    try:
        where["step"] = "prepare"
        st = {name: await app.prepare(sql) for name, sql in STATEMENTS.items()}
        # The same statements prepared directly (in expand the table has every column): the
        # Describe answers must be the same through pgshift.
        for name, sql in STATEMENTS.items():
            reference = await direct.prepare(sql)
            check(describe(reference), describe(st[name]), f"Describe of {name}")

        phases = [("expand", 100), ("switch", 200), ("contract", 300)]
        for done, (phase, base) in enumerate(phases):
            where["phase"] = phase
            if phase != "expand":
                where["step"] = "flip"
                await flip(phase)
            a, b, c = base + 1, base + 2, base + 3

            where["step"] = "1"
            check("INSERT 0 1", await status(st["ins_old"], a, "old-a", "7"), "ins_old(a)")
            check("INSERT 0 1", await status(st["ins_new"], b, "new-b", 8), "ins_new(b)")

            where["step"] = "2"
            check(("old-a", 7), await one(st["sel_new"], a, (str, int), "sel_new(a)"))
            check(("new-b", "8"), await one(st["sel_old"], b, (str, str), "sel_old(b)"))

            where["step"] = "3"
            check("UPDATE 1", await status(st["upd_old"], "renamed", b), "upd_old(b)")
            check(("renamed", 8), await one(st["sel_new"], b, (str, int), "sel_new(b)"))

            where["step"] = "4"
            check("UPDATE 1", await status(st["upd_new"], 9, a), "upd_new(a)")
            check(("old-a", "9"), await one(st["sel_old"], a, (str, str), "sel_old(a)"))

            where["step"] = "5"
            check("INSERT 0 1", await status(st["ins_old"], c, "gone", "1"), "ins_old(c)")
            check("DELETE 1", await status(st["del"], c), "del(c)")
            check(None, await one(st["sel_old"], c, (str, str), "sel_old(c)"))

            where["step"] = "6"
            count = await st["count"].fetchval()
            if type(count) is not int:
                fail("an int", f"{count!r} of type {type(count).__name__}", "count(*)")
            check(3 + 2 * (done + 1), count, "count(*)")

            # The reads once more, batched: fetchmany sends one Bind/Execute per argument
            # tuple and a single Sync.
            where["step"] = "2-5 (fetchmany)"
            rows = await st["sel_new"].fetchmany([(a,), (b,), (c,)])
            check(
                [("old-a", 9), ("renamed", 8)],
                [typed(r, (str, int)) for r in rows],
                "sel_new(a), sel_new(b), sel_new(c)",
            )
            rows = await st["sel_old"].fetchmany([(a,), (b,), (c,)])
            check(
                [("old-a", "9"), ("renamed", "8")],
                [typed(r, (str, str)) for r in rows],
                "sel_old(a), sel_old(b), sel_old(c)",
            )

            where["step"] = "7 (direct)"
            rows = await direct.fetch(
                "SELECT user_name, display_name, age, age_int FROM users"
                " WHERE id IN ($1, $2) ORDER BY id",
                a,
                b,
            )
            if phase == "contract":
                expected = [(None, "old-a", None, 9), (None, "renamed", None, 8)]
            else:
                expected = [("old-a", "old-a", "9", 9), ("renamed", "renamed", "8", 8)]
            check(expected, [tuple(r) for r in rows], "the table, read directly")
    finally:
        await app.close()
        await direct.close()


def main():
    try:
        asyncio.run(run())
    except Mismatch as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as e:  # a driver error: say where it happened
        print(
            f"asyncpg: phase {where['phase']}, step {where['step']}: "
            f"{type(e).__name__}: {e}",
            file=sys.stderr,
        )
        sqlstate = getattr(e, "sqlstate", None)
        if sqlstate:
            print(f"  SQLSTATE {sqlstate}", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
