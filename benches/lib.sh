# Shared by the end-to-end bench scripts (pgbench-compare.sh, backfill.sh, connections.sh): logging, running as
# the database's OS user, finding the PostgreSQL binaries and free ports, small arithmetic, the
# tool checks and the release build. Source it after setting REPO; it sets IS_ROOT, and
# require_tools sets PG_BINDIR and puts it first on PATH.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# Run a command as the database's OS user: `postgres` when we are root, else ourselves.
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

find_pg_bindir() {
    local dir candidates=()
    [ -n "${PG_BINDIR:-}" ] && candidates+=("$PG_BINDIR")
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        [ -n "$dir" ] && candidates+=("$dir")
    fi
    while IFS= read -r dir; do
        candidates+=("$dir")
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rn)
    for dir in "${candidates[@]}"; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 0
}

# A TCP port on 127.0.0.1 that nothing listens on now and that we have not handed out yet,
# below Linux's ephemeral range (32768-60999 by default), where an outgoing connection could
# hold a port that nothing listens on.
USED_PORTS=" "
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((15000 + RANDOM % 17000))
        case "$USED_PORTS" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS="$USED_PORTS$port "
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ratio() {
    # ratio A B: A/B with two decimals, or "-" when either is missing.
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

# require_tools [EXTRA...]: the server binaries, psql, pgbench and each EXTRA command (with the
# Debian package to install), and what running as root needs.
require_tools() {
    PG_BINDIR="$(find_pg_bindir)"
    [ -n "$PG_BINDIR" ] || die "PostgreSQL server binaries not found; install them: apt-get install -y postgresql"
    PATH="$PG_BINDIR:$PATH"
    command -v pgbench >/dev/null 2>&1 || die "pgbench not found; install it: apt-get install -y postgresql-contrib"
    command -v psql >/dev/null 2>&1 || die "psql not found; install it: apt-get install -y postgresql-client"
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found; install it: apt-get install -y $tool"
    done
    if [ "$IS_ROOT" -eq 1 ]; then
        id -u postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' OS user (apt-get install -y postgresql creates it)"
        command -v runuser >/dev/null 2>&1 || die "runuser not found (package util-linux)"
    fi
}

# Sets PGSHIFT_BIN: the given binary, else a fresh release build.
build_pgshift() {
    if [ -z "${PGSHIFT_BIN:-}" ]; then
        log "building pgshift (cargo build --release)"
        cargo build --release
        PGSHIFT_BIN="$REPO/target/release/pgshift"
    fi
    [ -x "$PGSHIFT_BIN" ] || die "pgshift binary $PGSHIFT_BIN not found"
}

# start_postgres [SETTINGS]: initdb into $DATA and start PostgreSQL on a free port of
# 127.0.0.1 (fsync off; SETTINGS are more ` -c name=value` options). Sets PG_PORT and
# PG_STARTED, exports PGHOST and PGUSER. Needs WORK, DATA and PG_BINDIR.
start_postgres() {
    PG_PORT="$(free_port)"
    log "PostgreSQL $(postgres --version | awk '{print $3}') from $PG_BINDIR on 127.0.0.1:$PG_PORT (data in $DATA)"
    as_pg "$PG_BINDIR/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -l "$WORK/postgres.log" -w -t 60 start -o "\
 -c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='$WORK'\
 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off\
 -c shared_buffers=256MB ${1:-}" >/dev/null \
        || { tail -n 30 "$WORK/postgres.log" >&2; die "PostgreSQL did not start"; }
    PG_STARTED=1
    export PGHOST=127.0.0.1 PGUSER=postgres
}

# start_pgshift: runs `pgshift serve` with $WORK/pgshift.toml in the background (PGSHIFT_PID)
# and waits until it prints its ready line or SHIFT_PORT accepts; dies with its log otherwise.
start_pgshift() {
    # The throw-away cluster trusts every local connection; the variable only has to be set.
    export PGSHIFT_CONTROL_PASSWORD=bench
    log "pgshift on 127.0.0.1:$SHIFT_PORT (metrics on $METRICS_PORT)"
    "$PGSHIFT_BIN" serve --config "$WORK/pgshift.toml" >"$WORK/pgshift.out" 2>"$WORK/pgshift.err" &
    PGSHIFT_PID=$!
    local ready=0 rc=0
    for _ in $(seq 1 300); do
        if grep -q '"event" *: *"ready"' "$WORK/pgshift.out" 2>/dev/null || port_open "$SHIFT_PORT"; then
            ready=1
            break
        fi
        kill -0 "$PGSHIFT_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ "$ready" -eq 1 ] && return 0
    tail -n 30 "$WORK/pgshift.out" "$WORK/pgshift.err" >&2 || true
    if kill -0 "$PGSHIFT_PID" 2>/dev/null; then
        die "pgshift did not become ready within 30 s"
    fi
    wait "$PGSHIFT_PID" || rc=$?
    PGSHIFT_PID=""
    die "pgshift exited with status $rc before becoming ready"
}

# stop_pid PID [TRIES]: SIGTERM, up to TRIES × 0.2 s (default 50) for it to exit, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 "${2:-50}"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# finish STATUS: for the scripts' EXIT traps, after their own clean-up: stops pgshift and
# PostgreSQL if this script started them, removes $WORK unless KEEP=1 or STATUS is not 0, and
# exits with STATUS.
finish() {
    local status=$1
    set +e
    [ -n "${PGSHIFT_PID:-}" ] && stop_pid "$PGSHIFT_PID"
    if [ "${PG_STARTED:-0}" -eq 1 ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$status" -ne 0 ]; then
        log "logs and data kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
