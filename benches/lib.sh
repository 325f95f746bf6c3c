# Shared by the end-to-end bench scripts (pgbench-compare.sh, backfill.sh): logging, running as
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

# A TCP port on 127.0.0.1 that nothing listens on now and that we have not handed out yet.
USED_PORTS=" "
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
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
