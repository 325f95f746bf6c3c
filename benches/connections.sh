#!/usr/bin/env bash
# pgshift's resident memory per client connection (issue 7: hundreds of client connections, most
# of them idle). CONNECTIONS client sessions are opened through pgshift: CONNECTIONS - BUSY idle
# ones (a pgbench whose clients connect, authenticate and then hold their session without
# sending anything until the script releases them) and BUSY ones running `pgbench -S` for
# DURATION seconds. pgshift's VmRSS and RssAnon (/proc/PID/status) are sampled
#
#   - with 0 client connections, after one warm-up connection (the smoke query);
#   - with the idle sessions open, before any busy traffic;
#   - with all CONNECTIONS open, every second while the busy pgbench runs;
#   - with the idle sessions open again after the busy ones ended;
#   - with 0 client connections again at the end (what the allocator kept).
#
# and the open sessions are counted at each step both in pg_stat_activity (asked of PostgreSQL
# directly) and by `pgshift ctl connections`. Prints the figures and
#
#   RSS per idle connection = (VmRSS with the idle ones open after the busy ones ended
#                              - VmRSS at 0) / (CONNECTIONS - BUSY)          target < 64 KiB
#
# (the same from RssAnon, and from the before-busy sample, are printed too), the busy pgbench's
# TPS and failed transactions. Exits non-zero if a pgbench reported an error, a failed
# transaction or a failed connection, if the session counts were not what they should be, if
# pgshift logged an ERROR or counted an upstream error, or if pgshift died. The 64 KiB target is
# reported, not enforced.
#
# pgshift needs two descriptors per session (client and upstream) and the idle pgbench one per
# client, so the script raises its open-files limit (`ulimit -n`) to 65536, or to the hard limit
# when that is lower, and stops if that is not enough. PostgreSQL gets max_connections =
# CONNECTIONS + 50.
#
# Takes about DURATION + 30 s with the defaults on 2 cores (plus the release build).
#
# Usage: benches/connections.sh
# Environment (all optional):
#   CONNECTIONS=500    client sessions open at once through pgshift
#   BUSY=50            of which run `pgbench -S` (the rest stay idle)
#   DURATION=15        seconds of the busy pgbench run
#   JOBS=2             pgbench -j (threads) of both pgbench processes
#   SCALE=1            pgbench -i -s
#   PG_BINDIR=...      PostgreSQL server binaries (default: pg_config --bindir, then
#                      /usr/lib/postgresql/*/bin, newest first)
#   PGSHIFT_BIN=path   use this pgshift binary instead of building target/release/pgshift
#   KEEP=1             keep the work directory (logs, configs, data, rss.tsv) instead of deleting it
#
# Everything runs on loopback in a throw-away cluster (fsync=off) under a mktemp directory and is
# stopped on exit. As root, PostgreSQL runs as the `postgres` OS user (runuser), since it refuses
# to run as root. Needs pgbench, psql, jq and curl.
set -euo pipefail
export LC_ALL=C   # pgbench prints and printf/awk parse numbers with a '.' decimal point

CONNECTIONS="${CONNECTIONS:-500}"
BUSY="${BUSY:-50}"
DURATION="${DURATION:-15}"
JOBS="${JOBS:-2}"
SCALE="${SCALE:-1}"
KEEP="${KEEP:-0}"
DB=bench
SAMPLES=5          # RSS samples, one a second, per steady state
TARGET_KIB=64

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"

for n in CONNECTIONS BUSY DURATION JOBS SCALE; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, got '${!n}'"
done
IDLE=$((CONNECTIONS - BUSY))
[ "$IDLE" -ge 1 ] || die "BUSY ($BUSY) must be smaller than CONNECTIONS ($CONNECTIONS)"
[ "$JOBS" -le "$BUSY" ] && [ "$JOBS" -le "$IDLE" ] || die "JOBS ($JOBS) must not exceed BUSY ($BUSY) or the idle count ($IDLE)"

# --- open-files limit -----------------------------------------------------------------------
# pgshift: a client and an upstream socket per session, plus listeners, control connections and
# files; the idle pgbench: a socket per client (it checks the limit itself at start).
NOFILE_NEEDED=$((2 * CONNECTIONS + 200))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt "$NOFILE_NEEDED" ]; then
    die "open-files limit is $NOFILE (hard limit $(ulimit -Hn)); $CONNECTIONS connections need $NOFILE_NEEDED"
fi
log "open-files limit (ulimit -n) for pgshift and pgbench: $NOFILE (asked 65536; hard limit $(ulimit -Hn))"

# --- tools ----------------------------------------------------------------------------------
require_tools jq curl

# --- build ----------------------------------------------------------------------------------
build_pgshift

# --- work directory and cleanup -------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-conn.XXXXXX")"
chmod 0755 "$WORK"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK"
DATA="$WORK/pgdata"
SOCK="$WORK/pgshift.sock"
RELEASE="$WORK/release-idle"   # the idle clients end their session once this file exists
PGSHIFT_PID=""
PG_STARTED=0
IDLE_PID=""
BUSY_PID=""

cleanup() {
    local status=$?
    set +e
    touch "$RELEASE" 2>/dev/null
    for pid in "$BUSY_PID" "$IDLE_PID"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    finish "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL -----------------------------------------------------------------------------
# start_postgres passes -c max_connections=200 first; a later -c of the same setting wins.
PG_MAX_CONNECTIONS=$((CONNECTIONS + 50))
start_postgres "-c max_connections=$PG_MAX_CONNECTIONS"
got="$(psql -X -At -p "$PG_PORT" -d postgres -c 'SHOW max_connections')"
[ "$got" = "$PG_MAX_CONNECTIONS" ] || die "PostgreSQL runs with max_connections=$got, wanted $PG_MAX_CONNECTIONS"
psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -p "$PG_PORT" "$DB" >"$WORK/pgbench-init.log" 2>&1 \
    || { tail -n 30 "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# --- pgshift --------------------------------------------------------------------------------
SHIFT_PORT="$(free_port)"
METRICS_PORT="$(free_port)"
cat >"$WORK/pgshift.toml" <<EOF
# Generated by benches/connections.sh
[proxy]
listen = "127.0.0.1:$SHIFT_PORT"
upstream = "127.0.0.1:$PG_PORT"
max_client_connections = $((CONNECTIONS + 10))

[admin]
socket = "$SOCK"
metrics_listen = "127.0.0.1:$METRICS_PORT"

[control]
user = "postgres"
password_env = "PGSHIFT_CONTROL_PASSWORD"
EOF
start_pgshift

# --- measuring ------------------------------------------------------------------------------
# status_kib FIELD: a field of pgshift's /proc status in KiB (empty when the kernel lacks it).
status_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PGSHIFT_PID/status"; }

# The client sessions PostgreSQL sees from the pgbench processes (through pgshift).
pg_sessions() {
    psql -X -At -p "$PG_PORT" -d postgres -c "SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND datname = '$DB' AND application_name = 'pgbench'"
}
# The client sessions pgshift has established (authenticated and relaying).
shift_sessions() {
    "$PGSHIFT_BIN" ctl --socket "$SOCK" --json connections | jq '.connections | length'
}
metric() {
    curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}

alive() { kill -0 "$PGSHIFT_PID" 2>/dev/null || die "pgshift exited (log: $WORK/pgshift.err)"; }

# wait_sessions N WHAT: until both PostgreSQL and pgshift count N sessions (60 s at most).
wait_sessions() {
    local pg="" sh=""
    for _ in $(seq 1 300); do
        alive
        if [ -n "$IDLE_PID" ] && ! kill -0 "$IDLE_PID" 2>/dev/null; then
            tail -n 5 "$WORK/pgbench-idle.log" >&2
            die "the idle pgbench ended early (log: $WORK/pgbench-idle.log)"
        fi
        pg="$(pg_sessions)"
        sh="$(shift_sessions)"
        [ "$pg" = "$1" ] && [ "$sh" = "$1" ] && return 0
        sleep 0.2
    done
    die "expected $1 sessions ($2), pg_stat_activity shows $pg and pgshift ctl connections $sh"
}

printf 'phase\tt_s\tvmrss_kib\trssanon_kib\n' >"$WORK/rss.tsv"
T0="$(date +%s.%N)"
# sample PHASE: one RSS sample, appended to rss.tsv.
sample() {
    alive
    local t
    t="$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
    printf '%s\t%s\t%s\t%s\n' "$1" "$t" "$(status_kib VmRSS)" "$(status_kib RssAnon)" >>"$WORK/rss.tsv"
}
# steady PHASE: SAMPLES samples one second apart.
steady() {
    for ((i = 0; i < SAMPLES; i++)); do
        sample "$1"
        [ "$i" -lt $((SAMPLES - 1)) ] && sleep 1
    done
    return 0
}
# stat PHASE COLUMN median|max|min|n: over that phase's samples (COLUMN 3 VmRSS, 4 RssAnon).
stat() {
    awk -F'\t' -v p="$1" -v c="$2" '$1 == p && $c != "" { print $c }' "$WORK/rss.tsv" | sort -n | awk -v w="$3" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print ""; exit }
            if (w == "n") print NR
            else if (w == "min") print v[1]
            else if (w == "max") print v[NR]
            else if (NR % 2) print v[(NR + 1) / 2]
            else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}
declare -A COUNTED=()   # phase -> "pg_stat_activity/ctl" sessions when sampled

# --- 0 connections, after a warm-up connection ----------------------------------------------
got="$(psql -X -At -p "$SHIFT_PORT" -d "$DB" -c 'SELECT count(*) FROM pgbench_branches' 2>&1)" \
    || die "warm-up query through pgshift failed: $got"
[ "$got" = "$SCALE" ] || die "warm-up query through pgshift returned '$got', expected $SCALE"
wait_sessions 0 "after the warm-up connection"
sleep 1
steady zero
COUNTED[zero]="$(pg_sessions)/$(shift_sessions)"

# --- the idle sessions ----------------------------------------------------------------------
# Each idle client runs one transaction made of a single \shell that waits for $RELEASE: pgbench
# opens and authenticates every client's connection before any script runs (and \shell blocks
# the whole thread), so the sessions stay open with no traffic until the file appears; then each
# client ends its transaction and closes its session normally (Terminate).
cat >"$WORK/hold.sh" <<EOF
#!/bin/sh
while [ ! -e "$RELEASE" ]; do sleep 0.2; done
EOF
chmod +x "$WORK/hold.sh"
printf '\\shell %s\n' "$WORK/hold.sh" >"$WORK/idle.sql"
log "opening $IDLE idle sessions through pgshift (pgbench -c $IDLE -j $JOBS -t 1 -f idle.sql)"
pgbench -n -c "$IDLE" -j "$JOBS" -t 1 -f "$WORK/idle.sql" -p "$SHIFT_PORT" "$DB" >"$WORK/pgbench-idle.log" 2>&1 &
IDLE_PID=$!
wait_sessions "$IDLE" "the idle pgbench"
sleep 1
steady idle_before
COUNTED[idle_before]="$(pg_sessions)/$(shift_sessions)"

# --- all CONNECTIONS: the idle ones plus BUSY running pgbench -S ------------------------------
log "pgbench -n -S -c $BUSY -j $JOBS -T $DURATION through pgshift, with the $IDLE idle sessions open"
pgbench -n -S -c "$BUSY" -j "$JOBS" -T "$DURATION" -p "$SHIFT_PORT" "$DB" >"$WORK/pgbench-busy.log" 2>&1 &
BUSY_PID=$!
wait_sessions "$CONNECTIONS" "idle and busy"
COUNTED[all]="$(pg_sessions)/$(shift_sessions)"
checked_mid=0
t_busy="$(date +%s)"
while kill -0 "$BUSY_PID" 2>/dev/null; do
    sample all
    # Count once more halfway through the run (the counting itself costs the run a little).
    if [ "$checked_mid" -eq 0 ] && [ $(($(date +%s) - t_busy)) -ge $((DURATION / 2)) ]; then
        COUNTED[all]="${COUNTED[all]}, $(pg_sessions)/$(shift_sessions)"
        checked_mid=1
    fi
    sleep 1
done
busy_rc=0
wait "$BUSY_PID" || busy_rc=$?
BUSY_PID=""

# --- the idle sessions again, after the busy ones ended -------------------------------------
wait_sessions "$IDLE" "the idle ones after the busy pgbench ended"
sleep 1
steady idle_after
COUNTED[idle_after]="$(pg_sessions)/$(shift_sessions)"

# --- release the idle sessions: 0 connections again -----------------------------------------
touch "$RELEASE"
idle_rc=0
wait "$IDLE_PID" || idle_rc=$?
IDLE_PID=""
wait_sessions 0 "after the idle pgbench ended"
sleep 1
steady zero_end
COUNTED[zero_end]="$(pg_sessions)/$(shift_sessions)"
UPSTREAM_ERRORS="$(metric pgshift_upstream_errors_total)"

# --- checks ---------------------------------------------------------------------------------
FAILED=0
fail() { log "FAILED: $*"; FAILED=1; }

# pgbench_check NAME LOG RC CLIENTS: exit status, error lines, failed transactions, aborted clients.
pgbench_check() {
    local name="$1" file="$2" rc="$3" clients="$4" failed
    [ "$rc" -eq 0 ] || fail "$name pgbench exited with status $rc (log: $file)"
    if grep -Eiq 'error|fatal|abort|could not' "$file"; then
        fail "$name pgbench reported errors (log: $file):"
        grep -Ei 'error|fatal|abort|could not' "$file" | head -n 5 >&2
    fi
    failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$file")"
    [ "$failed" = 0 ] || fail "$name pgbench: failed transactions '${failed:-not reported}' (log: $file)"
    grep -q "^number of clients: $clients\$" "$file" || fail "$name pgbench did not run $clients clients (log: $file)"
}
pgbench_check busy "$WORK/pgbench-busy.log" "$busy_rc" "$BUSY"
pgbench_check idle "$WORK/pgbench-idle.log" "$idle_rc" "$IDLE"
grep -q "^number of transactions actually processed: $IDLE/$IDLE\$" "$WORK/pgbench-idle.log" \
    || fail "idle pgbench: not every idle client finished its session (log: $WORK/pgbench-idle.log)"
PGSHIFT_ERRORS="$(grep -c ' ERROR ' "$WORK/pgshift.err" || true)"
PGSHIFT_WARNINGS="$(grep -c ' WARN ' "$WORK/pgshift.err" || true)"
if [ "$PGSHIFT_ERRORS" -gt 0 ]; then
    fail "pgshift logged $PGSHIFT_ERRORS ERROR line(s) (log: $WORK/pgshift.err):"
    grep ' ERROR ' "$WORK/pgshift.err" | head -n 5 >&2
fi
[ "$UPSTREAM_ERRORS" = 0 ] || fail "pgshift counted $UPSTREAM_ERRORS upstream error(s) (pgshift_upstream_errors_total)"

TPS="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$WORK/pgbench-busy.log")"
[ -n "$TPS" ] && TPS="$(printf '%.1f' "$TPS")"
BUSY_FAILED="$(sed -n 's/^number of failed transactions: \(.*\)$/\1/p' "$WORK/pgbench-busy.log")"
BUSY_TX="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/pgbench-busy.log")"

# --- report ---------------------------------------------------------------------------------
mib() { if [ -z "$1" ]; then echo -; else awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; fi; }
row() {
    # row LABEL PHASE: median VmRSS and RssAnon (min-max over its samples), sessions counted.
    local p="$2"
    printf '  %-40s %9s %9s %13s %8s   %s\n' "$1" \
        "$(stat "$p" 3 median)" "$(stat "$p" 4 median)" \
        "$(stat "$p" 3 min)-$(stat "$p" 3 max)" "$(stat "$p" 3 n)" "${COUNTED[$p]}"
}
per_conn() {
    # per_conn PHASE COLUMN: (median of PHASE - median at 0) / IDLE, KiB.
    local a b
    a="$(stat "$1" "$2" median)"
    b="$(stat zero "$2" median)"
    if [ -z "$a" ] || [ -z "$b" ]; then echo -; return; fi
    awk -v a="$a" -v b="$b" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }'
}

echo
echo "pgshift memory per client connection: $CONNECTIONS sessions = $IDLE idle + $BUSY busy (pgbench -S -j $JOBS, ${DURATION}s), scale $SCALE"
echo "machine: $(nproc) cores; PostgreSQL $(postgres --version | awk '{print $3}') (max_connections $PG_MAX_CONNECTIONS); pgshift $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '(no commit)') ($PGSHIFT_BIN); ulimit -n $NOFILE"
echo
printf '  %-40s %9s %9s %13s %8s   %s\n' "pgshift RSS in KiB, median of samples" VmRSS RssAnon "VmRSS min-max" samples "sessions (pg_stat_activity/ctl)"
row "0 connections (after warm-up)" zero
row "$IDLE idle (before any busy traffic)" idle_before
row "$CONNECTIONS open ($IDLE idle + $BUSY busy)" all
row "$IDLE idle (after the busy ones ended)" idle_after
row "0 connections (at the end)" zero_end
echo
PER="$(per_conn idle_after 3)"
verdict="-"
[ "$PER" != - ] && verdict="$(awk -v v="$PER" -v t="$TARGET_KIB" 'BEGIN { print (v < t) ? "below the " t " KiB target" : "ABOVE the " t " KiB target" }')"
echo "RSS per idle connection = (VmRSS with $IDLE idle - VmRSS at 0) / $IDLE = $PER KiB ($verdict)"
echo "  from RssAnon:                          $(per_conn idle_after 4) KiB"
echo "  from the before-busy sample (VmRSS):   $(per_conn idle_before 3) KiB (RssAnon $(per_conn idle_before 4) KiB)"
echo "  VmRSS at 0 / $CONNECTIONS open / $IDLE idle / 0 at the end: $(mib "$(stat zero 3 median)") / $(mib "$(stat all 3 median)") / $(mib "$(stat idle_after 3 median)") / $(mib "$(stat zero_end 3 median)") MiB"
echo
echo "busy pgbench -S ($BUSY clients, ${DURATION}s, with $IDLE idle sessions open): tps ${TPS:--}, transactions ${BUSY_TX:--}, failed ${BUSY_FAILED:--}, exit status $busy_rc"
echo "pgshift log: $PGSHIFT_ERRORS ERROR, $PGSHIFT_WARNINGS WARN line(s); pgshift_upstream_errors_total $UPSTREAM_ERRORS"
if [ "$FAILED" -ne 0 ]; then
    log "the run had errors (logs kept in $WORK)"
    exit 1
fi
