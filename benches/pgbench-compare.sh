#!/usr/bin/env bash
# End-to-end throughput comparison (DESIGN §7), with pgshift carrying three active migrations
# (all in expand) on tables of the bench database:
#   bench_users_display_name  columns  bench_users.user_name → display_name (rename; USERS_ROWS
#                                      rows, backfilled before the runs)
#   bench_items_qty_int       columns  bench_items.qty text → qty_int integer (type change)
#   bench_orders_v2           table    bench_orders → bench_orders_v2, total → total_cents
# Each enters expand with `pgshift ctl phase NAME expand` (expand_sql creates the new side);
# `ctl --json status` must show all three in expand, served by the instance, before the runs
# and again after them, or the script stops.
#
# Two workloads (WORKLOADS), each run in every protocol mode of MODES (simple, extended,
# prepared), ROUNDS rounds per mode, the targets interleaved within a round and the starting
# target rotated from round to round so that drift on a busy machine hits all of them alike:
#
#   select  pgbench -S against PostgreSQL directly, through pgshift, and through PgBouncer in
#           session mode (when installed): pgshift's cost for statements that name no
#           migrated table while migrations are active (none of the migrated tables' names
#           occurs in them, so the pre-filter forwards them unparsed; checked afterwards with
#           pgshift_statements_total: no pgbench -S statement may have been rewritten or
#           refused). Median TPS per target, ratios pgshift/direct and pgshift/pgbouncer.
#   write   a custom script on bench_users, per transaction: an UPDATE of a random row, an
#           INSERT with a fresh id (a sequence) and an INSERT … ON CONFLICT (id) DO UPDATE
#           of the same row. "pgshift-rewrite" runs it by the OLD column names through
#           pgshift, which rewrites each statement to also write display_name; "hand-direct"
#           runs the same statements dual-written by hand (display_name set to the same
#           value with the same ::text conversion) directly against PostgreSQL. Median TPS of
#           each and the ratio pgshift-rewrite/hand-direct (target >= 0.80), plus, per mode,
#           how many statements pgshift rewrote (pgshift_statements_total{action="rewritten"}:
#           Query and Parse messages, so prepared mode counts one per statement and
#           connection), how many old-name statements it counted
#           (pgshift_old_name_statements_total: every execution) and the mean time per rewrite
#           (pgshift_rewrite_seconds, cache hits included). Afterwards the script checks
#           directly in PostgreSQL that display_name IS NOT DISTINCT FROM user_name in every
#           row of bench_users and that rows were written through pgshift, and runs
#           `ctl verify bench_users_display_name --wait` (must be clean); it stops otherwise.
#
# Usage: benches/pgbench-compare.sh
# Environment (all optional):
#   DURATION=15        seconds per pgbench run
#   ROUNDS=3           rounds per mode (each round runs every target once)
#   CLIENTS=8          pgbench -c
#   JOBS=2             pgbench -j (threads)
#   SCALE=10           pgbench -i -s
#   MODES="simple extended prepared"
#   WORKLOADS="select write"   which workloads to run (the migrations are set up either way)
#   USERS_ROWS=50000   rows loaded into bench_users (the write workload's table)
#   PG_BINDIR=...      PostgreSQL server binaries (default: pg_config --bindir, then
#                      /usr/lib/postgresql/*/bin, newest first)
#   RESULTS=file.tsv   also write every run as a TSV row (mode, round, target, tps, workload)
#   PGSHIFT_BIN=path   use this pgshift binary instead of building target/release/pgshift
#   PGBOUNCER=path     the pgbouncer binary (default: found on PATH or /usr/sbin); "none" skips it
#   KEEP=1             keep the work directory (logs, configs, data) instead of deleting it
#   UPSTREAM=tcp       how pgshift and PgBouncer reach PostgreSQL: "tcp" (127.0.0.1) or "unix"
#                      (its socket directory, as a proxy on the database host would); clients
#                      always connect over TCP, so "direct" is the same either way
#   WORKER_THREADS=0   pgshift's proxy.worker_threads (0 = one per core, its default; 1 = one
#                      event loop, like PgBouncer's)
#
# Takes about 12 minutes with the defaults (plus the release build). Everything runs on loopback
# in a throw-away cluster (fsync=off) under a mktemp directory and is stopped on exit. As root,
# PostgreSQL and PgBouncer run as the `postgres` OS user (runuser), since both refuse to run as
# root. Needs pgbench, psql, jq and curl.
set -euo pipefail
export LC_ALL=C   # pgbench prints and printf/awk parse numbers with a '.' decimal point

DURATION="${DURATION:-15}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-8}"
JOBS="${JOBS:-2}"
SCALE="${SCALE:-10}"
MODES="${MODES:-simple extended prepared}"
WORKLOADS="${WORKLOADS:-select write}"
USERS_ROWS="${USERS_ROWS:-50000}"
RESULTS="${RESULTS:-}"
UPSTREAM="${UPSTREAM:-tcp}"
WORKER_THREADS="${WORKER_THREADS:-0}"
KEEP="${KEEP:-0}"
DB=bench
# The migrations pgshift carries; bench_users_display_name is the write workload's.
MIGRATIONS=(bench_users_display_name bench_items_qty_int bench_orders_v2)
WRITE_MIGRATION=bench_users_display_name

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"

for n in DURATION ROUNDS CLIENTS JOBS SCALE USERS_ROWS; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, got '${!n}'"
done
[ -n "${MODES// /}" ] || die "MODES is empty"
case "$UPSTREAM" in tcp|unix) ;; *) die "UPSTREAM must be tcp or unix, got '$UPSTREAM'" ;; esac
[[ "$WORKER_THREADS" =~ ^[0-9]+$ ]] || die "WORKER_THREADS must be a number, got '$WORKER_THREADS'"
for mode in $MODES; do
    case "$mode" in simple|extended|prepared) ;; *) die "unknown pgbench mode '$mode'" ;; esac
done
[ -n "${WORKLOADS// /}" ] || die "WORKLOADS is empty (choose from: select write)"
RUN_SELECT=0
RUN_WRITE=0
for w in $WORKLOADS; do
    case "$w" in
        select) RUN_SELECT=1 ;;
        write) RUN_WRITE=1 ;;
        *) die "unknown workload '$w' (choose from: select write)" ;;
    esac
done

median() {
    # Median of the numbers on stdin; empty when there are none.
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2]
        else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- tools ----------------------------------------------------------------------------------
require_tools jq curl
BOUNCER_SKIPPED="PgBouncer not installed"
if [ "$RUN_SELECT" -eq 0 ]; then
    PGBOUNCER=""
    BOUNCER_SKIPPED="PgBouncer not used (no select workload)"
elif [ "${PGBOUNCER:-}" = none ]; then
    PGBOUNCER=""
    BOUNCER_SKIPPED="PgBouncer skipped (PGBOUNCER=none)"
elif [ -n "${PGBOUNCER:-}" ]; then
    [ -x "$PGBOUNCER" ] || die "PGBOUNCER=$PGBOUNCER is not an executable"
else
    PGBOUNCER="$(command -v pgbouncer 2>/dev/null || true)"
    [ -z "$PGBOUNCER" ] && [ -x /usr/sbin/pgbouncer ] && PGBOUNCER=/usr/sbin/pgbouncer
fi

# --- build ----------------------------------------------------------------------------------
if [ -n "${PGSHIFT_BIN:-}" ]; then
    BUILT_FROM=" (binary given: $PGSHIFT_BIN)"
elif git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null; then
    BUILT_FROM=""
else
    BUILT_FROM=" + uncommitted changes"
fi
build_pgshift

# --- work directory and cleanup -------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-bench.XXXXXX")"
chmod 0755 "$WORK"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK"
DATA="$WORK/pgdata"
SOCK="$WORK/pgshift.sock"
PGSHIFT_PID=""
PG_STARTED=0

cleanup() {
    local status=$?
    set +e
    # pgshift first: PgBouncer's sessions end before PostgreSQL stops, like pgshift's.
    [ -n "$PGSHIFT_PID" ] && stop_pid "$PGSHIFT_PID"
    PGSHIFT_PID=""
    [ -s "$WORK/pgbouncer.pid" ] && stop_pid "$(cat "$WORK/pgbouncer.pid")" 25
    finish "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL -----------------------------------------------------------------------------
start_postgres ""
psql -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -p "$PG_PORT" "$DB" >"$WORK/pgbench-init.log" 2>&1 \
    || { tail -n 30 "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# The migrated tables. Their names must not occur in pgbench -S's statement (the pre-filter
# matches substrings: a table named "accounts" would make every pgbench_accounts query parse).
log "tables for the migrations: bench_users ($USERS_ROWS rows), bench_items, bench_orders (1000 rows each)"
psql -X -q -p "$PG_PORT" -d "$DB" -v ON_ERROR_STOP=1 >"$WORK/load.log" 2>&1 <<EOF \
    || { tail -n 30 "$WORK/load.log" >&2; die "creating the migrated tables failed"; }
CREATE TABLE bench_users (id bigint PRIMARY KEY, user_name text, score int);
INSERT INTO bench_users SELECT i, 'user ' || i, i % 1000 FROM generate_series(1, $USERS_ROWS) AS i;
-- Ids for the write workload's INSERTs, past the loaded ones.
CREATE SEQUENCE bench_users_new_ids START $((USERS_ROWS + 1));
CREATE TABLE bench_items (id bigint PRIMARY KEY, qty text);
INSERT INTO bench_items
    SELECT i, CASE WHEN i % 50 = 0 THEN 'n/a' ELSE (i % 100)::text END FROM generate_series(1, 1000) AS i;
CREATE TABLE bench_orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(10,2));
INSERT INTO bench_orders SELECT i, 'customer ' || (i % 50), i / 10.0 FROM generate_series(1, 1000) AS i;
VACUUM ANALYZE;
EOF

# --- pgshift --------------------------------------------------------------------------------
SHIFT_PORT="$(free_port)"
METRICS_PORT="$(free_port)"
UPSTREAM_HOST=127.0.0.1
[ "$UPSTREAM" = unix ] && UPSTREAM_HOST="$WORK"   # start_postgres puts its socket there
UPSTREAM_ADDR="$UPSTREAM_HOST:$PG_PORT"
log "pgshift and PgBouncer reach PostgreSQL at $UPSTREAM_ADDR ($UPSTREAM)"
cat >"$WORK/pgshift.toml" <<EOF
# Generated by benches/pgbench-compare.sh
[proxy]
listen = "127.0.0.1:$SHIFT_PORT"
upstream = "$UPSTREAM_ADDR"
max_client_connections = 1000
worker_threads = $WORKER_THREADS

[admin]
socket = "$SOCK"
metrics_listen = "127.0.0.1:$METRICS_PORT"

[control]
user = "postgres"
password_env = "PGSHIFT_CONTROL_PASSWORD"

# Column rename (config/examples/column-rename.toml); the write workload's table.
[[migration]]
name = "bench_users_display_name"
database = "$DB"
table = "public.bench_users"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE bench_users ADD COLUMN display_name text"
[[migration.columns]]
old = "user_name"
new = "display_name"

# Column type change (config/examples/column-type-change.toml).
[[migration]]
name = "bench_items_qty_int"
database = "$DB"
table = "public.bench_items"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE bench_items ADD COLUMN qty_int integer"
[[migration.columns]]
old = "qty"
new = "qty_int"
up = "CASE WHEN qty ~ '^[0-9]+\$' THEN qty::integer END"
down = "qty_int::text"

# Table move (config/examples/table-move.toml).
[[migration]]
name = "bench_orders_v2"
database = "$DB"
kind = "table"
table = "public.bench_orders"
new_table = "public.bench_orders_v2"
key = ["id"]
phase = "planned"
expand_sql = """
CREATE TABLE bench_orders_v2 (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    total_cents bigint
)"""
[[migration.columns]]
old = "total"
new = "total_cents"
up = "(total * 100)::bigint"
down = "total_cents / 100.0"
EOF
start_pgshift

# ctl ARGS...: pgshift ctl on our socket.
ctl() { "$PGSHIFT_BIN" ctl --socket "$SOCK" "$@"; }

# check_expand: every migration of MIGRATIONS is in expand in `ctl --json status`, and this
# instance serves the cluster's epoch without a sync or config error. Prints what is missing
# and returns 1 otherwise.
check_expand() {
    local status problems
    status="$(ctl --json status 2>&1)" || { echo "ctl status failed: $status"; return 1; }
    printf '%s\n' "$status" >"$WORK/ctl-status.json"
    problems="$(jq -r --arg want "${MIGRATIONS[*]}" '
        . as $s
        | ($want | split(" ")) as $names
        | [ $names[] as $n
            | ($s.migrations | map(select(.name == $n)) | first) as $m
            | if $m == null then "\($n) is not in ctl status"
              elif $m.phase != "expand" then "\($n) is in \($m.phase), not expand"
              else empty end ]
        + [ $s.instances[] | select(.id == $s.instance)
            | if .epoch < $s.epoch then "instance \(.id) serves epoch \(.epoch), the cluster is at \($s.epoch)"
              else empty end ]
        + (if ($s.instances | map(select(.id == $s.instance)) | length) == 0
           then ["this instance is not listed in ctl status"] else [] end)
        + (if $s.sync_error != null then ["sync_error: \($s.sync_error)"] else [] end)
        + (if $s.config_error != null then ["config_error: \($s.config_error)"] else [] end)
        | join("; ")' <<<"$status" 2>&1)" || { echo "unreadable ctl status: $status"; return 1; }
    [ -z "$problems" ] || { echo "$problems"; return 1; }
}

# wait_expand: check_expand, retried for up to 30 s (the instance picks a new epoch up at once
# by NOTIFY, or at its next poll); dies with what is missing.
wait_expand() {
    local why=""
    for _ in $(seq 1 150); do
        why="$(check_expand)" && return 0
        sleep 0.2
    done
    die "migrations not in expand: $why (ctl status in $WORK/ctl-status.json)"
}

for m in "${MIGRATIONS[@]}"; do
    out="$(ctl phase "$m" expand 2>&1)" || die "ctl phase $m expand failed: $out"
    log "$(tr -d '\n' <<<"$out")"
done
wait_expand
# Copy display_name = user_name into the rows loaded before expand, so that after the write
# runs every row must have display_name = user_name (checked below).
out="$(ctl backfill "$WRITE_MIGRATION" start --wait 2>&1)" || die "backfill of $WRITE_MIGRATION failed: $out"
log "$(tail -n 1 <<<"$out" | tr -d '\r')"
wait_expand
ACTIVE="$(jq -r '[.migrations[] | "\(.name) (\(.kind), \(.table), \(.phase))"] | join(", ")' "$WORK/ctl-status.json")"
log "active migrations: $ACTIVE"

# metrics: pgshift's /metrics text.
metrics() { curl -fsS --max-time 10 "http://127.0.0.1:$METRICS_PORT/metrics"; }
# metric TEXT SERIES: the value of SERIES (name with its labels, as printed) in TEXT, 0 if absent.
metric() { awk -v k="$2" '$1 == k { v = $2 } END { printf "%s", (v == "" ? 0 : v) }' <<<"$1"; }
# delta SERIES BEFORE AFTER: how much SERIES grew between two /metrics texts.
delta() { awk -v a="$(metric "$2" "$1")" -v b="$(metric "$3" "$1")" 'BEGIN { printf "%.9g", b - a }'; }
M_PASS='pgshift_statements_total{action="passthrough"}'
M_REWRITTEN='pgshift_statements_total{action="rewritten"}'
M_REFUSED='pgshift_statements_total{action="refused"}'
M_OLD_NAMES="pgshift_old_name_statements_total{migration=\"$WRITE_MIGRATION\"}"
M_RW_SUM='pgshift_rewrite_seconds_sum'
M_RW_COUNT='pgshift_rewrite_seconds_count'

# --- PgBouncer (optional) -------------------------------------------------------------------
BOUNCER_PORT=""
if [ -n "$PGBOUNCER" ]; then
    BOUNCER_PORT="$(free_port)"
    echo '"postgres" ""' >"$WORK/userlist.txt"
    cat >"$WORK/pgbouncer.ini" <<EOF
; Generated by benches/pgbench-compare.sh
[databases]
$DB = host=$UPSTREAM_HOST port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
    [ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
    log "PgBouncer $("$PGBOUNCER" --version | head -n 1 | awk '{print $NF}') (session mode) on 127.0.0.1:$BOUNCER_PORT"
    as_pg "$PGBOUNCER" -d "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.start.log" 2>&1 \
        || { cat "$WORK/pgbouncer.start.log" "$WORK/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }
    for _ in $(seq 1 100); do
        port_open "$BOUNCER_PORT" && break
        sleep 0.1
    done
    port_open "$BOUNCER_PORT" || die "PgBouncer is not listening on $BOUNCER_PORT (see $WORK/pgbouncer.log)"
elif [ "$RUN_SELECT" -eq 1 ]; then
    log "$BOUNCER_SKIPPED: comparing with direct only (install it with: apt-get install -y pgbouncer)"
fi

# --- targets --------------------------------------------------------------------------------
TARGETS=(direct pgshift)
declare -A PORT=([direct]="$PG_PORT" [pgshift]="$SHIFT_PORT")
if [ -n "$BOUNCER_PORT" ]; then
    TARGETS+=(pgbouncer)
    PORT[pgbouncer]="$BOUNCER_PORT"
fi
for t in "${TARGETS[@]}"; do
    got="$(psql -X -At -p "${PORT[$t]}" -d "$DB" -c 'SELECT count(*) FROM pgbench_branches' 2>&1)" \
        || die "smoke query through $t failed: $got"
    [ "$got" = "$SCALE" ] || die "smoke query through $t returned '$got', expected $SCALE"
done
# And by the old and the new name of the write workload's migration, through pgshift.
got="$(psql -X -At -p "$SHIFT_PORT" -d "$DB" -c 'SELECT user_name, display_name FROM bench_users WHERE id = 1' 2>&1)" \
    || die "smoke query on bench_users through pgshift failed: $got"
[ "$got" = "user 1|user 1" ] || die "smoke query on bench_users through pgshift returned '$got', expected 'user 1|user 1'"

# --- runs -----------------------------------------------------------------------------------
[ -n "$RESULTS" ] && printf 'mode\tround\ttarget\ttps\tworkload\n' >"$RESULTS"
declare -A TPS=()     # "workload mode target" -> space-separated TPS of its successful rounds
declare -A SHOWN=()   # "workload mode target" -> every round's TPS or FAIL, for the table
FAILED=0

# run_pgbench WORKLOAD MODE ROUND TARGET PORT PGBENCH_ARGS...: one pgbench run; records its TPS
# (or FAIL) in TPS/SHOWN/RESULTS and prints a progress line.
run_pgbench() {
    local workload="$1" mode="$2" round="$3" t="$4" port="$5"
    shift 5
    local runlog="$WORK/run-$workload-$mode-$round-$t.log" tps="" tps_shown
    if pgbench -n -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" "$@" \
        -p "$port" "$DB" >"$runlog" 2>&1; then
        tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$runlog")"
        [ -n "$tps" ] && tps="$(printf '%.1f' "$tps")"
    fi
    if [ -z "$tps" ]; then
        FAILED=1
        log "FAILED: $workload $mode round $round via $t (log: $runlog)"
        tail -n 5 "$runlog" >&2 || true
        tps_shown="FAIL"
    else
        TPS["$workload $mode $t"]="${TPS["$workload $mode $t"]:-} $tps"
        tps_shown="$tps"
    fi
    SHOWN["$workload $mode $t"]="${SHOWN["$workload $mode $t"]:-} $tps_shown"
    printf '  %-6s %-9s round %d/%d  %-15s %12s tps\n' "$workload" "$mode" "$round" "$ROUNDS" "$t" "$tps_shown" >&2
    [ -n "$RESULTS" ] && printf '%s\t%d\t%s\t%s\t%s\n' "$mode" "$round" "$t" "${tps:-}" "$workload" >>"$RESULTS"
    return 0
}

# med WORKLOAD MODE TARGET: the median TPS of its successful rounds (empty when none).
med() { tr ' ' '\n' <<<"${TPS["$1 $2 $3"]:-}" | grep . | median || true; }

# The select workload: pgbench -S, rotating over TARGETS.
if [ "$RUN_SELECT" -eq 1 ]; then
    log "select: pgbench -n -S -c $CLIENTS -j $JOBS -T $DURATION, $ROUNDS round(s) per mode, targets: ${TARGETS[*]}"
    SEL_BEFORE="$(metrics)" || die "cannot read pgshift's metrics on port $METRICS_PORT"
    for mode in $MODES; do
        for ((round = 1; round <= ROUNDS; round++)); do
            # Rotate the start target each round so no target always runs first/last.
            n=${#TARGETS[@]}
            for ((i = 0; i < n; i++)); do
                t="${TARGETS[$(((i + round - 1) % n))]}"
                run_pgbench select "$mode" "$round" "$t" "${PORT[$t]}" -S
            done
        done
    done
    SEL_AFTER="$(metrics)" || die "cannot read pgshift's metrics on port $METRICS_PORT"
    SEL_PASS="$(delta "$M_PASS" "$SEL_BEFORE" "$SEL_AFTER")"
    SEL_PARSED="$(delta "$M_REWRITTEN" "$SEL_BEFORE" "$SEL_AFTER")"
    SEL_REFUSED="$(delta "$M_REFUSED" "$SEL_BEFORE" "$SEL_AFTER")"
    if [ "$SEL_PARSED" != 0 ] || [ "$SEL_REFUSED" != 0 ]; then
        FAILED=1
        log "pgshift rewrote $SEL_PARSED and refused $SEL_REFUSED statement(s) during the select runs: pgbench -S is supposed to name no migrated table"
    fi
fi

# The write workload: the same transaction by old names through pgshift, and dual-written by
# hand directly. 's' / 'd' prefixes tell which of the two wrote a row.
W_SHIFT=pgshift-rewrite
W_HAND=hand-direct
W_TARGETS=("$W_SHIFT" "$W_HAND")
declare -A W_STAT=()   # "counter mode" -> growth of a pgshift metric over the pgshift-rewrite runs
if [ "$RUN_WRITE" -eq 1 ]; then
    cat >"$WORK/write-pgshift.sql" <<'EOF'
\set id random(1, :rows)
\set score random(0, 1000000)
UPDATE bench_users SET user_name = 's' || :score, score = :score WHERE id = :id;
INSERT INTO bench_users (id, user_name, score) VALUES (nextval('bench_users_new_ids'), 's' || :score, :score);
INSERT INTO bench_users (id, user_name, score) VALUES (:id, 's' || :score, :score) ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name, score = EXCLUDED.score;
EOF
    cat >"$WORK/write-hand.sql" <<'EOF'
\set id random(1, :rows)
\set score random(0, 1000000)
UPDATE bench_users SET user_name = 'd' || :score, display_name = ('d' || :score)::text, score = :score WHERE id = :id;
INSERT INTO bench_users (id, user_name, display_name, score) VALUES (nextval('bench_users_new_ids'), 'd' || :score, ('d' || :score)::text, :score);
INSERT INTO bench_users (id, user_name, display_name, score) VALUES (:id, 'd' || :score, ('d' || :score)::text, :score) ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name, display_name = EXCLUDED.display_name, score = EXCLUDED.score;
EOF
    declare -A W_PORT=(["$W_SHIFT"]="$SHIFT_PORT" ["$W_HAND"]="$PG_PORT")
    declare -A W_SCRIPT=(["$W_SHIFT"]="$WORK/write-pgshift.sql" ["$W_HAND"]="$WORK/write-hand.sql")
    log "write: pgbench -n -f (UPDATE, INSERT, INSERT … ON CONFLICT on bench_users) -c $CLIENTS -j $JOBS -T $DURATION, $ROUNDS round(s) per mode, targets: ${W_TARGETS[*]}"
    for mode in $MODES; do
        for ((round = 1; round <= ROUNDS; round++)); do
            n=${#W_TARGETS[@]}
            for ((i = 0; i < n; i++)); do
                t="${W_TARGETS[$(((i + round - 1) % n))]}"
                if [ "$t" = "$W_SHIFT" ]; then
                    before="$(metrics)" || die "cannot read pgshift's metrics on port $METRICS_PORT"
                fi
                run_pgbench write "$mode" "$round" "$t" "${W_PORT[$t]}" -f "${W_SCRIPT[$t]}" -D "rows=$USERS_ROWS"
                if [ "$t" = "$W_SHIFT" ]; then
                    after="$(metrics)" || die "cannot read pgshift's metrics on port $METRICS_PORT"
                    for v in REWRITTEN:"$M_REWRITTEN" OLD_NAMES:"$M_OLD_NAMES" RW_SUM:"$M_RW_SUM" \
                        RW_COUNT:"$M_RW_COUNT" REFUSED:"$M_REFUSED"; do
                        d="$(delta "${v#*:}" "$before" "$after")"
                        k="${v%%:*} $mode"
                        W_STAT[$k]="$(awk -v a="${W_STAT[$k]:-0}" -v d="$d" 'BEGIN { printf "%.9g", a + d }')"
                    done
                fi
            done
        done
    done

    # The rewrite must really have dual-written: checked directly in PostgreSQL.
    check="$(psql -X -At -F ' ' -p "$PG_PORT" -d "$DB" -v ON_ERROR_STOP=1 -c "
        SELECT count(*),
               count(*) FILTER (WHERE display_name IS DISTINCT FROM user_name),
               count(*) FILTER (WHERE user_name LIKE 's%'),
               count(*) FILTER (WHERE user_name LIKE 'd%')
        FROM bench_users" 2>&1)" || die "the dual-write check failed: $check"
    read -r CHK_ROWS CHK_BAD CHK_SHIFT CHK_HAND <<<"$check"
    if [ "$CHK_BAD" != 0 ]; then
        psql -X -p "$PG_PORT" -d "$DB" -c "SELECT id, user_name, display_name FROM bench_users
            WHERE display_name IS DISTINCT FROM user_name ORDER BY id LIMIT 5" >&2 || true
        die "$CHK_BAD of $CHK_ROWS rows of bench_users have display_name IS DISTINCT FROM user_name: pgshift's rewrite did not dual-write"
    fi
    shift_ok=0
    for mode in $MODES; do
        [ -n "${TPS["write $mode $W_SHIFT"]:-}" ] && shift_ok=1
    done
    if [ "$shift_ok" -eq 1 ] && [ "$CHK_SHIFT" = 0 ]; then
        die "no row of bench_users was written through pgshift (user_name LIKE 's%'): the write runs did not write"
    fi
    log "dual-write check: $CHK_ROWS rows, $CHK_SHIFT written through pgshift, $CHK_HAND by hand, 0 with display_name IS DISTINCT FROM user_name"
    out="$(ctl verify "$WRITE_MIGRATION" --wait 2>&1)" || die "ctl verify $WRITE_MIGRATION did not end clean: $out"
    VERIFY_LINE="$(tail -n 1 <<<"$out" | tr -d '\r')"
    log "$VERIFY_LINE"
fi

# Still in expand after the runs (nothing rolled back or failed over meanwhile).
why="$(check_expand)" || die "after the runs: $why"

# --- report ---------------------------------------------------------------------------------
echo
echo "machine: $(nproc) cores; PostgreSQL $(postgres --version | awk '{print $3}'); pgshift $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')$BUILT_FROM"
echo "upstream of pgshift and PgBouncer: $UPSTREAM ($UPSTREAM_ADDR); pgshift worker_threads = $WORKER_THREADS"
echo "pgshift migrations active during every run (ctl status): $ACTIVE"
if [ "$RUN_SELECT" -eq 1 ]; then
    echo
    echo "pgbench -S: clients=$CLIENTS jobs=$JOBS duration=${DURATION}s rounds=$ROUNDS scale=$SCALE, median TPS"
    echo "pgshift counted $SEL_PASS passthrough, $SEL_PARSED rewritten and $SEL_REFUSED refused statement(s) during these runs"
    for mode in $MODES; do
        declare -A MED=()
        echo
        echo "mode: $mode"
        printf '  %-10s %12s   %s\n' target "median TPS" "per round"
        for t in "${TARGETS[@]}"; do
            MED[$t]="$(med select "$mode" "$t")"
            printf '  %-10s %12s   %s\n' "$t" "${MED[$t]:--}" "${SHOWN["select $mode $t"]# }"
        done
        printf '  %-20s %s\n' "pgshift/direct" "$(ratio "${MED[pgshift]}" "${MED[direct]}")"
        if [ -n "$BOUNCER_PORT" ]; then
            printf '  %-20s %s\n' "pgshift/pgbouncer" "$(ratio "${MED[pgshift]}" "${MED[pgbouncer]}")"
        else
            printf '  %-20s %s\n' "pgshift/pgbouncer" "- ($BOUNCER_SKIPPED)"
        fi
        unset MED
    done
fi
if [ "$RUN_WRITE" -eq 1 ]; then
    echo
    echo "write on bench_users ($WRITE_MIGRATION in expand; per transaction UPDATE + INSERT + INSERT … ON CONFLICT DO UPDATE):"
    echo "clients=$CLIENTS jobs=$JOBS duration=${DURATION}s rounds=$ROUNDS, median TPS; $W_SHIFT = old names through pgshift,"
    echo "$W_HAND = the same statements dual-written by hand, directly"
    for mode in $MODES; do
        echo
        echo "mode: $mode"
        printf '  %-16s %12s   %s\n' target "median TPS" "per round"
        for t in "${W_TARGETS[@]}"; do
            printf '  %-16s %12s   %s\n' "$t" "$(med write "$mode" "$t" | grep . || echo -)" "${SHOWN["write $mode $t"]# }"
        done
        r="$(ratio "$(med write "$mode" "$W_SHIFT")" "$(med write "$mode" "$W_HAND")")"
        verdict=""
        [ "$r" != - ] && verdict="$(awk -v r="$r" 'BEGIN { print (r >= 0.80 ? "(target >= 0.80: met)" : "(target >= 0.80: NOT met)") }')"
        printf '  %-27s %s %s\n' "$W_SHIFT/$W_HAND" "$r" "$verdict"
        mean_us="$(awk -v s="${W_STAT["RW_SUM $mode"]:-0}" -v c="${W_STAT["RW_COUNT $mode"]:-0}" 'BEGIN { if (c > 0) printf "%.1f", s / c * 1e6; else print "-" }')"
        printf '  pgshift: %s statements rewritten (Query/Parse), %s old-name statements executed, %s refused, mean rewrite %s µs\n' \
            "${W_STAT["REWRITTEN $mode"]:-0}" "${W_STAT["OLD_NAMES $mode"]:-0}" "${W_STAT["REFUSED $mode"]:-0}" "$mean_us"
    done
    echo
    echo "dual-write check (directly in PostgreSQL, after the runs): $CHK_ROWS rows in bench_users, $CHK_SHIFT last written"
    echo "through pgshift, $CHK_HAND by hand, 0 with display_name IS DISTINCT FROM user_name"
    echo "$VERIFY_LINE"
fi
[ "$FAILED" -eq 0 ] || { log "some runs failed (logs kept in $WORK)"; exit 1; }
