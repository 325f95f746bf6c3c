#!/usr/bin/env bash
# Backfill and verify throughput (docs/jobs.md), and what a running backfill costs the
# application's traffic through pgshift.
#
# 1. Idle: on a ROWS-row table, with the default batch size (BATCH) and no throttle, for both
#    migration kinds:
#      columns  accounts2(id bigint PK, balance text, note text) gets balance_int bigint
#               (expand_sql), up = CASE WHEN balance ~ '^[0-9]+$' THEN balance::bigint END,
#               down = balance_int::text;
#      table    orders(id, customer, total numeric(12,2), created_at) moves to
#               orders_v2(id, customer, total_cents bigint, created_at),
#               up = (total * 100)::bigint.
#    Each migration enters expand (`ctl phase NAME expand`), then `ctl backfill NAME start
#    --wait` and `ctl verify NAME --wait` are timed (wall clock), and the job's own rate is read
#    from `ctl --json status`: rows_done / (finished_at - started_at).
# 2. Under load: a custom pgbench script (point reads, an UPDATE and an INSERT on `accounts`,
#    by its old column names, through pgshift) runs DURATION seconds with `accounts`'
#    migration in expand before its backfill (baseline), then again while `accounts` itself
#    (an identical ROWS-row table, so a real full copy) is backfilled. The workload hits the
#    very table being copied, so it meets the backfill's row locks, not just its CPU and I/O.
#    Prints both TPS figures and their ratio, the backfill's rows/s while pgbench ran (from
#    rows_done sampled at the workload's start and end) and overall, and verifies the result
#    (it must be clean: dual writes and the backfill together). Should the backfill end before
#    the workload, the during-backfill TPS counts only the seconds it ran (pgbench -P 1).
#
# Takes about 2 minutes with the defaults on 2 cores (plus the release build). Figures from one
# run on a machine doing other work are noisy; compare runs, not single numbers.
#
# Usage: benches/backfill.sh
# Environment (all optional):
#   ROWS=1000000       rows in each table
#   BATCH=             backfill batch size (default: pgshift's [jobs].batch_size, 1000)
#   DURATION=15        seconds per pgbench run
#   CLIENTS=8          pgbench -c
#   JOBS=2             pgbench -j (threads)
#   MODE=prepared      pgbench -M (simple, extended or prepared)
#   PG_BINDIR=...      PostgreSQL server binaries (default: pg_config --bindir, then
#                      /usr/lib/postgresql/*/bin, newest first)
#   PGSHIFT_BIN=path   use this pgshift binary instead of building target/release/pgshift
#   KEEP=1             keep the work directory (logs, configs, data) instead of deleting it
#
# Everything runs on loopback in a throw-away cluster (fsync=off) under a mktemp directory and is
# stopped on exit. As root, PostgreSQL runs as the `postgres` OS user (runuser), since it refuses
# to run as root. Needs pgbench, psql and jq.
set -euo pipefail
export LC_ALL=C   # pgbench prints and printf/awk parse numbers with a '.' decimal point

ROWS="${ROWS:-1000000}"
BATCH="${BATCH:-}"
DURATION="${DURATION:-15}"
CLIENTS="${CLIENTS:-8}"
JOBS="${JOBS:-2}"
MODE="${MODE:-prepared}"
KEEP="${KEEP:-0}"
DB=bench

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"

for n in ROWS DURATION CLIENTS JOBS; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, got '${!n}'"
done
[ -z "$BATCH" ] || [[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "BATCH must be a positive integer, got '$BATCH'"
case "$MODE" in simple|extended|prepared) ;; *) die "unknown pgbench mode '$MODE'" ;; esac

now() { date +%s.%N; }

# calc EXPR [vars...]: awk arithmetic, e.g. calc 'a - b' a=1 b=2; prints "-" on division by 0.
calc() {
    local expr="$1"
    shift
    local args=()
    for v in "$@"; do args+=(-v "$v"); done
    awk "${args[@]}" "BEGIN { printf \"%.6f\", $expr }"
}

# fmt DECIMALS VALUE: rounds, or prints "-" for an empty value.
fmt() { if [ -z "$2" ] || [ "$2" = - ]; then echo -; else printf "%.${1}f" "$2"; fi; }

# --- tools ----------------------------------------------------------------------------------
require_tools jq

# --- build ----------------------------------------------------------------------------------
build_pgshift

# --- work directory and cleanup -------------------------------------------------------------
T_BEGIN="$(now)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-backfill.XXXXXX")"
chmod 0755 "$WORK"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK"
DATA="$WORK/pgdata"
SOCK="$WORK/pgshift.sock"
PGSHIFT_PID=""
PG_STARTED=0
BG_PIDS=()

cleanup() {
    local status=$?
    set +e
    for pid in "${BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    finish "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL -----------------------------------------------------------------------------
start_postgres "-c max_wal_size=4GB -c checkpoint_timeout=30min"
sql() { psql -X -q -At -p "$PG_PORT" -d "$DB" -v ON_ERROR_STOP=1 "$@"; }
psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null

log "loading 4 tables of $ROWS rows (accounts, accounts2, orders; orders_v2 empty)"
t0="$(now)"
sql >"$WORK/load.log" 2>&1 <<EOF || { tail -n 30 "$WORK/load.log" >&2; die "loading the tables failed"; }
CREATE TABLE accounts (id bigint PRIMARY KEY, balance text, note text);
-- Mostly numeric balances; every 50th is not a number (balance_int becomes NULL).
INSERT INTO accounts
    SELECT i, CASE WHEN i % 50 = 0 THEN 'n/a' ELSE ((i::bigint * 7919) % 1000000)::text END,
           'account ' || i
    FROM generate_series(1, $ROWS) AS i;
CREATE TABLE accounts2 (id bigint PRIMARY KEY, balance text, note text);
INSERT INTO accounts2 SELECT * FROM accounts;
-- Ids for the workload's INSERTs, past the loaded ones.
CREATE SEQUENCE accounts_new_ids START $((ROWS + 1));
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL,
    total numeric(12,2) NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO orders
    SELECT i, 'customer ' || (i % 5000), ((i::bigint * 37) % 1000000) / 100.0,
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
    FROM generate_series(1, $ROWS) AS i;
CREATE TABLE orders_v2 (id bigint PRIMARY KEY, customer text NOT NULL,
    total_cents bigint NOT NULL, created_at timestamptz NOT NULL);
VACUUM ANALYZE;
CHECKPOINT;
EOF
LOAD_S="$(calc 'b - a' a="$t0" b="$(now)")"
log "loaded in $(fmt 1 "$LOAD_S") s"

# --- pgshift --------------------------------------------------------------------------------
SHIFT_PORT="$(free_port)"
METRICS_PORT="$(free_port)"
cat >"$WORK/pgshift.toml" <<EOF
# Generated by benches/backfill.sh
[proxy]
listen = "127.0.0.1:$SHIFT_PORT"
upstream = "127.0.0.1:$PG_PORT"
max_client_connections = 1000

[admin]
socket = "$SOCK"
metrics_listen = "127.0.0.1:$METRICS_PORT"

[control]
user = "postgres"
password_env = "PGSHIFT_CONTROL_PASSWORD"

# Idle backfill of a column migration.
[[migration]]
name = "accounts2_balance"
database = "$DB"
kind = "columns"
table = "public.accounts2"
phase = "planned"
expand_sql = "ALTER TABLE accounts2 ADD COLUMN balance_int bigint"
[[migration.columns]]
old = "balance"
new = "balance_int"
up = "CASE WHEN balance ~ '^[0-9]+\$' THEN balance::bigint END"
down = "balance_int::text"

# Idle backfill of a table move.
[[migration]]
name = "orders_v2"
database = "$DB"
kind = "table"
table = "public.orders"
new_table = "public.orders_v2"
key = ["id"]
phase = "planned"
[[migration.columns]]
old = "total"
new = "total_cents"
up = "(total * 100)::bigint"
down = "total_cents / 100.0"

# Backfilled while pgbench writes to it.
[[migration]]
name = "accounts_balance"
database = "$DB"
kind = "columns"
table = "public.accounts"
phase = "planned"
expand_sql = "ALTER TABLE accounts ADD COLUMN balance_int bigint"
[[migration.columns]]
old = "balance"
new = "balance_int"
up = "CASE WHEN balance ~ '^[0-9]+\$' THEN balance::bigint END"
down = "balance_int::text"
EOF
start_pgshift

# ctl ARGS...: pgshift ctl on our socket.
ctl() { "$PGSHIFT_BIN" ctl --socket "$SOCK" "$@"; }

# job_record NAME JOB: the migration's backfill/verify record from `ctl --json status`.
job_record() {
    local status
    status="$(ctl --json status)" || die "ctl status failed: $status"
    local rec
    rec="$(jq -c --arg n "$1" --arg j "$2" '.migrations[] | select(.name == $n) | (.[$j] // {})' <<<"$status")" \
        || die "unreadable ctl status: $status"
    [ -n "$rec" ] || die "ctl status does not show migration $1: $status"
    printf '%s\n' "$rec"
}

# field JSON KEY: one field of a record (empty when null/missing).
field() { jq -r --arg k "$2" '.[$k] // empty' <<<"$1"; }

# job_seconds RECORD: finished_at - started_at.
job_seconds() {
    local a b
    a="$(field "$1" started_at)"
    b="$(field "$1" finished_at)"
    [ -n "$a" ] && [ -n "$b" ] || { echo -; return; }
    calc 'b - a' a="$a" b="$b"
}

for m in accounts2_balance orders_v2 accounts_balance; do
    out="$(ctl phase "$m" expand 2>&1)" || die "ctl phase $m expand failed: $out"
    log "$m: $(tr -d '\n' <<<"$out")"
done

# Smoke test through pgshift, by old names.
got="$(psql -X -At -p "$SHIFT_PORT" -d "$DB" -c 'SELECT count(*) FROM accounts WHERE id <= 10' 2>&1)" \
    || die "smoke query through pgshift failed: $got"
[ "$got" = 10 ] || die "smoke query through pgshift returned '$got', expected 10"

START_ARGS=()
[ -n "$BATCH" ] && START_ARGS+=("batch=$BATCH")
FAILED=0
declare -A R=()   # result name -> value

# run_backfill NAME TAG: times `ctl backfill NAME start --wait`; fills R[TAG.*].
run_backfill() {
    local name="$1" tag="$2" t0 t1 rec rc=0
    t0="$(now)"
    ctl backfill "$name" start "${START_ARGS[@]}" --wait >"$WORK/backfill-$tag.out" 2>"$WORK/backfill-$tag.err" || rc=$?
    t1="$(now)"
    rec="$(job_record "$name" backfill)"
    collect_backfill "$tag" "$rec" "$(calc 'b - a' a="$t0" b="$t1")" "$rc"
}

# collect_backfill TAG RECORD WALL_S RC
collect_backfill() {
    local tag="$1" rec="$2" wall="$3" rc="$4" secs state
    printf '%s\n' "$rec" >"$WORK/backfill-$tag.json"
    state="$(field "$rec" state)"
    secs="$(job_seconds "$rec")"
    R[$tag.state]="$state"
    R[$tag.rows]="$(field "$rec" rows_done)"
    R[$tag.written]="$(field "$rec" written)"
    R[$tag.wall]="$wall"
    R[$tag.job_s]="$secs"
    R[$tag.rate]="-"
    [ "$secs" != - ] && R[$tag.rate]="$(calc 'r / s' r="${R[$tag.rows]:-0}" s="$secs")"
    R[$tag.status_rate]="$(field "$rec" rate)"
    if [ "$rc" -ne 0 ] || [ "$state" != done ]; then
        FAILED=1
        log "backfill $tag did not end done (exit $rc, state '$state'): $(cat "$WORK/backfill-$tag.out" "$WORK/backfill-$tag.err" 2>/dev/null | tail -n 3)"
        log "record: $rec"
    else
        log "backfill $tag: ${R[$tag.rows]} rows in $(fmt 2 "$wall") s wall, $(fmt 2 "$secs") s job, $(fmt 0 "${R[$tag.rate]}") rows/s"
    fi
}

# run_verify NAME TAG: times `ctl verify NAME --wait`; fills R[TAG.*].
run_verify() {
    local name="$1" tag="$2" t0 t1 rec rc=0 state secs
    t0="$(now)"
    ctl verify "$name" --wait >"$WORK/verify-$tag.out" 2>"$WORK/verify-$tag.err" || rc=$?
    t1="$(now)"
    rec="$(job_record "$name" verify)"
    printf '%s\n' "$rec" >"$WORK/verify-$tag.json"
    state="$(field "$rec" state)"
    secs="$(job_seconds "$rec")"
    R[$tag.vstate]="$state"
    R[$tag.vrows]="$(field "$rec" rows_checked)"
    R[$tag.vmismatch]="$(field "$rec" mismatches)"
    R[$tag.vwall]="$(calc 'b - a' a="$t0" b="$t1")"
    R[$tag.vrate]="-"
    [ "$secs" != - ] && R[$tag.vrate]="$(calc 'r / s' r="${R[$tag.vrows]:-0}" s="$secs")"
    if [ "$rc" -ne 0 ] || [ "$state" != clean ]; then
        FAILED=1
        log "verify $tag did not end clean (exit $rc, state '$state'): $(cat "$WORK/verify-$tag.out" "$WORK/verify-$tag.err" 2>/dev/null | tail -n 3)"
        log "record: $rec"
    else
        log "verify $tag: ${R[$tag.vrows]} rows in $(fmt 2 "${R[$tag.vwall]}") s wall, $(fmt 0 "${R[$tag.vrate]}") rows/s"
    fi
}

# --- 1. idle backfills ----------------------------------------------------------------------
log "idle backfill + verify: columns (accounts2_balance)"
run_backfill accounts2_balance columns
run_verify accounts2_balance columns
log "idle backfill + verify: table move (orders_v2)"
run_backfill orders_v2 table
run_verify orders_v2 table

# --- 2. pgbench before and during a backfill ------------------------------------------------
cat >"$WORK/workload.sql" <<EOF
\set id random(1, $ROWS)
\set id2 random(1, $ROWS)
\set bal random(0, 1000000)
SELECT balance, note FROM accounts WHERE id = :id;
SELECT id, balance FROM accounts WHERE id = :id2;
UPDATE accounts SET balance = :bal WHERE id = :id;
INSERT INTO accounts (id, balance, note) VALUES (nextval('accounts_new_ids'), :bal, 'pgbench');
EOF

# run_pgbench TAG: DURATION seconds of the workload through pgshift; sets TPS_OUT, T_START, T_END.
run_pgbench() {
    local tag="$1" runlog="$WORK/pgbench-$1.log"
    T_START="$(now)"
    if ! pgbench -n -f "$WORK/workload.sql" -M "$MODE" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -P 1 \
        -p "$SHIFT_PORT" "$DB" >"$runlog" 2>&1; then
        tail -n 10 "$runlog" >&2 || true
        die "pgbench ($tag) failed (log: $runlog)"
    fi
    T_END="$(now)"
    TPS_OUT="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$runlog")"
    [ -n "$TPS_OUT" ] || die "no TPS in pgbench output ($runlog)"
    grep -q '^number of failed transactions: 0\b' "$runlog" \
        || ! grep -q '^number of failed transactions' "$runlog" \
        || { FAILED=1; log "pgbench ($tag): $(grep '^number of failed transactions' "$runlog")"; }
}

log "pgbench -M $MODE -c $CLIENTS -j $JOBS -T $DURATION on accounts via pgshift: baseline (expand, no backfill)"
run_pgbench baseline
R[tps.base]="$TPS_OUT"
log "baseline: $(fmt 1 "$TPS_OUT") tps"

log "pgbench again while accounts_balance is backfilled"
t0="$(now)"
bf_rc=0
# In the background; it notes its own end time and exit status (the workload may outlast it).
(
    rc=0
    ctl backfill accounts_balance start "${START_ARGS[@]}" --wait \
        >"$WORK/backfill-load.out" 2>"$WORK/backfill-load.err" || rc=$?
    echo "$(now) $rc" >"$WORK/backfill-load.end"
) &
BF_PID=$!
BG_PIDS+=("$BF_PID")
# Start the workload once the backfill runs (it first waits for every instance's ack).
for _ in $(seq 1 300); do
    st="$(field "$(job_record accounts_balance backfill)" state)"
    [ "$st" = running ] || [ "$st" = done ] || [ "$st" = failed ] && break
    kill -0 "$BF_PID" 2>/dev/null || break
    sleep 0.1
done
[ "$st" = running ] || log "warning: backfill of accounts_balance is '$st' before the workload starts"
# rows_done when the workload starts and ends: the backfill's rate while pgbench ran (its
# overall rate also counts the time after the workload, when it has the machine to itself).
w0="$(now)"
rows0="$(field "$(job_record accounts_balance backfill)" rows_done)"
run_pgbench during
w1="$(now)"
rec="$(job_record accounts_balance backfill)"
rows1="$(field "$rec" rows_done)"
fin="$(field "$rec" finished_at)"
# A backfill that ended during the workload ran under load until finished_at.
[ -n "$fin" ] && awk -v f="$fin" -v e="$w1" 'BEGIN { exit !(f < e) }' && w1="$fin"
R[load.window_rate]="$(calc '(r1 - r0) / (b - a)' r0="${rows0:-0}" r1="${rows1:-0}" a="$w0" b="$w1")"
R[tps.during]="$TPS_OUT"
PGB_START="$T_START"
PGB_END="$T_END"
wait "$BF_PID" || true
BG_PIDS=()
read -r t1 bf_rc <"$WORK/backfill-load.end" || die "the background backfill left no end time"
rec="$(job_record accounts_balance backfill)"
collect_backfill load "$rec" "$(calc 'b - a' a="$t0" b="$t1")" "$bf_rc"
# If the backfill ended before the workload did, count only the seconds it ran (pgbench -P 1).
R[tps.note]=""
fin="$(field "$rec" finished_at)"
if [ -n "$fin" ] && awk -v f="$fin" -v e="$PGB_END" 'BEGIN { exit !(f < e - 0.5) }'; then
    covered="$(calc 'f - s' f="$fin" s="$PGB_START")"
    windowed="$(awk -v c="$covered" '
        /^progress: / { t = $2 + 0; sub(/,$/, "", $4); if (t <= c) { n++; s += $4 } }
        END { if (n) printf "%.1f", s / n }' "$WORK/pgbench-during.log")"
    log "backfill ended $(fmt 1 "$(calc 'e - f' e="$PGB_END" f="$fin")") s before the workload did; during-backfill TPS is over its first $(fmt 0 "$covered") s (pgbench -P 1)"
    if [ -n "$windowed" ]; then
        R[tps.during]="$windowed"
        R[tps.note]=" (first $(fmt 0 "$covered") s of $DURATION, the backfill's span)"
    else
        R[tps.note]=" (backfill ended within the first second; figure is the whole run)"
    fi
fi
log "during backfill: $(fmt 1 "${R[tps.during]}") tps${R[tps.note]}"
run_verify accounts_balance load

# --- pgshift's log --------------------------------------------------------------------------
# Warnings and errors it logged (plain or JSON lines), for the report.
sed 's/\x1b\[[0-9;]*m//g' "$WORK/pgshift.err" "$WORK/pgshift.out" 2>/dev/null \
    | grep -E '(^|[^A-Za-z])(WARN|ERROR)([^A-Za-z]|$)|"level" *: *"(WARN|ERROR|warn|error)"' \
    >"$WORK/pgshift-problems.log" || true
PROBLEMS="$(wc -l <"$WORK/pgshift-problems.log")"
# And PostgreSQL's (lock timeouts, deadlocks, failed statements).
grep -E '(ERROR|FATAL|PANIC):' "$WORK/postgres.log" >"$WORK/postgres-problems.log" || true
PG_PROBLEMS="$(wc -l <"$WORK/postgres-problems.log")"

# --- report ---------------------------------------------------------------------------------
TOTAL_S="$(calc 'b - a' a="$T_BEGIN" b="$(now)")"
echo
echo "backfill/verify: rows=$ROWS batch=${BATCH:-default (1000)} rate=unthrottled"
echo "machine: $(nproc) cores; PostgreSQL $(postgres --version | awk '{print $3}') (fsync=off); pgshift $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes')"
echo
echo "1. backfill + verify (rows/s = rows_done / (finished_at - started_at) from ctl status; wall = ctl ... --wait)"
printf '  %-22s %-6s %9s %9s %8s %8s %8s | %-6s %8s %8s\n' \
    migration state rows written "wall s" "job s" "rows/s" verify "wall s" "rows/s"
for spec in "columns:accounts2_balance" "table:orders_v2" "load:accounts_balance (under load)"; do
    tag="${spec%%:*}"
    label="${spec#*:}"
    printf '  %-22s %-6s %9s %9s %8s %8s %8s | %-6s %8s %8s\n' "${label%% *}" \
        "${R[$tag.state]:--}" "${R[$tag.rows]:--}" "${R[$tag.written]:--}" "$(fmt 2 "${R[$tag.wall]:-}")" \
        "$(fmt 2 "${R[$tag.job_s]:-}")" "$(fmt 0 "${R[$tag.rate]:-}")" \
        "${R[$tag.vstate]:--}" "$(fmt 2 "${R[$tag.vwall]:-}")" "$(fmt 0 "${R[$tag.vrate]:-}")"
done
echo "  accounts2_balance (columns) and orders_v2 (table move) ran on an idle machine; accounts_balance"
echo "  (columns) ran during the second pgbench run below, and for a while after it"
echo
echo "2. pgbench on accounts via pgshift (-M $MODE -c $CLIENTS -j $JOBS -T $DURATION; 2 point reads, 1 UPDATE, 1 INSERT per transaction)"
printf '  %-34s %10s\n' "baseline (expand, no backfill)" "$(fmt 1 "${R[tps.base]}")"
printf '  %-34s %10s%s\n' "during backfill" "$(fmt 1 "${R[tps.during]}")" "${R[tps.note]}"
printf '  %-34s %10s\n' "during/baseline" "$(ratio "${R[tps.during]}" "${R[tps.base]}")"
printf '  %-34s %10s\n' "backfill rows/s while pgbench ran" "$(fmt 0 "${R[load.window_rate]:-}")"
printf '  %-34s %10s\n' "backfill rows/s overall" "$(fmt 0 "${R[load.rate]:-}")"
printf '  %-34s %10s\n' "backfill rows/s idle (columns)" "$(fmt 0 "${R[columns.rate]:-}")"
echo
echo "load ${LOAD_S%.*} s; total $(fmt 0 "$TOTAL_S") s (without the build); pgshift logged $PROBLEMS warning/error line(s)"
if [ "$PROBLEMS" -gt 0 ]; then
    head -n 5 "$WORK/pgshift-problems.log" | cut -c1-400 | sed 's/^/  /'
fi
echo "PostgreSQL logged $PG_PROBLEMS ERROR/FATAL line(s)"
if [ "$PG_PROBLEMS" -gt 0 ]; then
    head -n 5 "$WORK/postgres-problems.log" | cut -c1-400 | sed 's/^/  /'
fi
[ "$FAILED" -eq 0 ] || { log "some steps failed (logs kept in $WORK)"; exit 1; }
