#!/usr/bin/env bash
# End-to-end throughput comparison (DESIGN §7): pgbench -S against PostgreSQL directly, through
# pgshift, and through PgBouncer in session mode (when installed), in simple, extended and
# prepared protocol mode. Targets are run interleaved within each round so that drift on a busy
# machine hits all of them alike; the table shows the median TPS per target and the ratios
# pgshift/direct and pgshift/pgbouncer.
#
# Usage: benches/pgbench-compare.sh
# Environment (all optional):
#   DURATION=15        seconds per pgbench run
#   ROUNDS=3           rounds per mode (each round runs every target once)
#   CLIENTS=8          pgbench -c
#   JOBS=2             pgbench -j (threads)
#   SCALE=10           pgbench -i -s
#   MODES="simple extended prepared"
#   PG_BINDIR=...      PostgreSQL server binaries (default: pg_config --bindir, then
#                      /usr/lib/postgresql/*/bin, newest first)
#   RESULTS=file.tsv   also write every run as a TSV row (mode, round, target, tps)
#   PGSHIFT_BIN=path   use this pgshift binary instead of building target/release/pgshift
#   PGBOUNCER=path     the pgbouncer binary (default: found on PATH or /usr/sbin); "none" skips it
#   KEEP=1             keep the work directory (logs, configs, data) instead of deleting it
#
# Everything runs on loopback in a throw-away cluster (fsync=off) under a mktemp directory and is
# stopped on exit. As root, PostgreSQL and PgBouncer run as the `postgres` OS user (runuser),
# since both refuse to run as root.
set -euo pipefail
export LC_ALL=C   # pgbench prints and printf/awk parse numbers with a '.' decimal point

DURATION="${DURATION:-15}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-8}"
JOBS="${JOBS:-2}"
SCALE="${SCALE:-10}"
MODES="${MODES:-simple extended prepared}"
RESULTS="${RESULTS:-}"
KEEP="${KEEP:-0}"
DB=bench

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"

for n in DURATION ROUNDS CLIENTS JOBS SCALE; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, got '${!n}'"
done
for mode in $MODES; do
    case "$mode" in simple|extended|prepared) ;; *) die "unknown pgbench mode '$mode'" ;; esac
done

median() {
    # Median of the numbers on stdin; empty when there are none.
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2]
        else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- tools ----------------------------------------------------------------------------------
require_tools
BOUNCER_SKIPPED="PgBouncer not installed"
if [ "${PGBOUNCER:-}" = none ]; then
    PGBOUNCER=""
    BOUNCER_SKIPPED="PgBouncer skipped (PGBOUNCER=none)"
elif [ -n "${PGBOUNCER:-}" ]; then
    [ -x "$PGBOUNCER" ] || die "PGBOUNCER=$PGBOUNCER is not an executable"
else
    PGBOUNCER="$(command -v pgbouncer 2>/dev/null || true)"
    [ -z "$PGBOUNCER" ] && [ -x /usr/sbin/pgbouncer ] && PGBOUNCER=/usr/sbin/pgbouncer
fi

# --- build ----------------------------------------------------------------------------------
build_pgshift

# --- work directory and cleanup -------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-bench.XXXXXX")"
chmod 0755 "$WORK"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK"
DATA="$WORK/pgdata"
PGSHIFT_PID=""
PG_STARTED=0

cleanup() {
    local status=$?
    set +e
    if [ -n "$PGSHIFT_PID" ] && kill -0 "$PGSHIFT_PID" 2>/dev/null; then
        kill -TERM "$PGSHIFT_PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$PGSHIFT_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$PGSHIFT_PID" 2>/dev/null
        wait "$PGSHIFT_PID" 2>/dev/null
    fi
    if [ -s "$WORK/pgbouncer.pid" ]; then
        local bpid
        bpid="$(cat "$WORK/pgbouncer.pid")"
        kill -TERM "$bpid" 2>/dev/null
        for _ in $(seq 1 25); do
            kill -0 "$bpid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$bpid" 2>/dev/null
    fi
    if [ "$PG_STARTED" -eq 1 ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ "$KEEP" = 1 ] || [ "$status" -ne 0 ]; then
        log "logs and data kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL -----------------------------------------------------------------------------
PG_PORT="$(free_port)"
log "PostgreSQL $(postgres --version | awk '{print $3}') from $PG_BINDIR on 127.0.0.1:$PG_PORT (data in $DATA)"
as_pg "$PG_BINDIR/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -l "$WORK/postgres.log" -w -t 60 start -o "\
 -c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='$WORK'\
 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off\
 -c shared_buffers=256MB" >/dev/null \
    || { tail -n 30 "$WORK/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_STARTED=1

export PGHOST=127.0.0.1 PGUSER=postgres
psql -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -p "$PG_PORT" "$DB" >"$WORK/pgbench-init.log" 2>&1 \
    || { tail -n 30 "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# --- pgshift --------------------------------------------------------------------------------
SHIFT_PORT="$(free_port)"
METRICS_PORT="$(free_port)"
cat >"$WORK/pgshift.toml" <<EOF
# Generated by benches/pgbench-compare.sh
[proxy]
listen = "127.0.0.1:$SHIFT_PORT"
upstream = "127.0.0.1:$PG_PORT"
max_client_connections = 1000

[admin]
socket = "$WORK/pgshift.sock"
metrics_listen = "127.0.0.1:$METRICS_PORT"

[control]
user = "postgres"
password_env = "PGSHIFT_CONTROL_PASSWORD"
EOF
# The throw-away cluster trusts every local connection; the variable only has to be set.
export PGSHIFT_CONTROL_PASSWORD=bench
log "pgshift on 127.0.0.1:$SHIFT_PORT (metrics on $METRICS_PORT)"
"$PGSHIFT_BIN" serve --config "$WORK/pgshift.toml" >"$WORK/pgshift.out" 2>"$WORK/pgshift.err" &
PGSHIFT_PID=$!
# Ready when it prints {"event":"ready",...} on stdout, or as soon as its port accepts.
ready=0
for _ in $(seq 1 300); do
    if grep -q '"event" *: *"ready"' "$WORK/pgshift.out" 2>/dev/null || port_open "$SHIFT_PORT"; then
        ready=1
        break
    fi
    kill -0 "$PGSHIFT_PID" 2>/dev/null || break
    sleep 0.1
done
if [ "$ready" -ne 1 ]; then
    tail -n 30 "$WORK/pgshift.out" "$WORK/pgshift.err" >&2 || true
    if kill -0 "$PGSHIFT_PID" 2>/dev/null; then
        die "pgshift did not become ready within 30 s"
    fi
    rc=0
    wait "$PGSHIFT_PID" || rc=$?
    PGSHIFT_PID=""
    die "pgshift exited with status $rc before becoming ready"
fi

# --- PgBouncer (optional) -------------------------------------------------------------------
BOUNCER_PORT=""
if [ -n "$PGBOUNCER" ]; then
    BOUNCER_PORT="$(free_port)"
    echo '"postgres" ""' >"$WORK/userlist.txt"
    cat >"$WORK/pgbouncer.ini" <<EOF
; Generated by benches/pgbench-compare.sh
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

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
else
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

# --- runs -----------------------------------------------------------------------------------
[ -n "$RESULTS" ] && printf 'mode\tround\ttarget\ttps\n' >"$RESULTS"
declare -A TPS=()     # "mode target" -> space-separated TPS of its successful rounds
declare -A SHOWN=()   # "mode target" -> every round's TPS or FAIL, for the table
FAILED=0
log "pgbench -n -S -c $CLIENTS -j $JOBS -T $DURATION, $ROUNDS round(s) per mode, targets: ${TARGETS[*]}"
for mode in $MODES; do
    for ((round = 1; round <= ROUNDS; round++)); do
        # Rotate the start target each round so no target always runs first/last.
        n=${#TARGETS[@]}
        for ((i = 0; i < n; i++)); do
            t="${TARGETS[$(((i + round - 1) % n))]}"
            runlog="$WORK/run-$mode-$round-$t.log"
            tps=""
            if pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
                -p "${PORT[$t]}" "$DB" >"$runlog" 2>&1; then
                tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$runlog")"
                [ -n "$tps" ] && tps="$(printf '%.1f' "$tps")"
            fi
            if [ -z "$tps" ]; then
                FAILED=1
                log "FAILED: $mode round $round via $t (log: $runlog)"
                tail -n 5 "$runlog" >&2 || true
                tps_shown="FAIL"
            else
                TPS["$mode $t"]="${TPS["$mode $t"]:-} $tps"
                tps_shown="$tps"
            fi
            SHOWN["$mode $t"]="${SHOWN["$mode $t"]:-} $tps_shown"
            printf '  %-9s round %d/%d  %-9s %12s tps\n' "$mode" "$round" "$ROUNDS" "$t" "$tps_shown" >&2
            [ -n "$RESULTS" ] && printf '%s\t%d\t%s\t%s\n' "$mode" "$round" "$t" "${tps:-}" >>"$RESULTS"
        done
    done
done

# --- report ---------------------------------------------------------------------------------
echo
echo "pgbench -S: clients=$CLIENTS jobs=$JOBS duration=${DURATION}s rounds=$ROUNDS scale=$SCALE, median TPS"
echo "machine: $(nproc) cores; PostgreSQL $(postgres --version | awk '{print $3}'); pgshift $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')"
for mode in $MODES; do
    declare -A MED=()
    echo
    echo "mode: $mode"
    printf '  %-10s %12s   %s\n' target "median TPS" "per round"
    for t in "${TARGETS[@]}"; do
        rounds="${TPS["$mode $t"]:-}"
        MED[$t]="$(tr ' ' '\n' <<<"$rounds" | grep . | median || true)"
        printf '  %-10s %12s   %s\n' "$t" "${MED[$t]:--}" "${SHOWN["$mode $t"]# }"
    done
    printf '  %-20s %s\n' "pgshift/direct" "$(ratio "${MED[pgshift]}" "${MED[direct]}")"
    if [ -n "$BOUNCER_PORT" ]; then
        printf '  %-20s %s\n' "pgshift/pgbouncer" "$(ratio "${MED[pgshift]}" "${MED[pgbouncer]}")"
    else
        printf '  %-20s %s\n' "pgshift/pgbouncer" "- ($BOUNCER_SKIPPED)"
    fi
    unset MED
done
[ "$FAILED" -eq 0 ] || { log "some runs failed (logs kept in $WORK)"; exit 1; }
