#!/usr/bin/env bash
# Installs the toolchains and packages of the driver matrix (tests/drivers.rs): Python with
# psycopg 3 and asyncpg (PyPI), Node.js with node-postgres (npm), a JDK with the PostgreSQL
# JDBC driver (Debian's libpostgresql-jdbc-java). `.ci/run` calls it; run it yourself (as
# root, or with sudo available) to run the whole matrix locally. Without it, the drivers whose
# toolchain is missing are reported as skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '==> drivers: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -q
        apt_updated=1
    fi
    as_root apt-get install -y -q --no-install-recommends "$@"
}

# --- Python: psycopg 3, asyncpg ------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
    log "installing python3"
    apt_install python3 python3-pip
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi
log "pip install -r python/requirements.txt"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python3 -m pip install -q -r python/requirements.txt 2>/tmp/pgshift-pip.err; then
    # Debian's own Python refuses system-wide installs (PEP 668) unless told otherwise.
    if grep -q externally-managed /tmp/pgshift-pip.err; then
        python3 -m pip install -q --break-system-packages -r python/requirements.txt
    else
        cat /tmp/pgshift-pip.err >&2
        exit 1
    fi
fi

# --- Node.js: node-postgres ---------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs and npm"
    apt_install nodejs npm
fi
log "npm ci (node-postgres)"
(cd node && npm ci --no-audit --no-fund --loglevel=error)

# --- Java: the PostgreSQL JDBC driver -------------------------------------------------------
if ! command -v java >/dev/null 2>&1; then
    log "installing a JDK"
    apt_install default-jdk-headless
fi
if [ ! -e /usr/share/java/postgresql.jar ]; then
    log "installing libpostgresql-jdbc-java"
    apt_install libpostgresql-jdbc-java
fi

log "python3 $(python3 -c 'import psycopg, asyncpg; print("psycopg", psycopg.__version__, "asyncpg", asyncpg.__version__)')"
log "node $(node --version), pg $(node -p 'require("./node/node_modules/pg/package.json").version')"
log "$(java -version 2>&1 | head -1), JDBC $(readlink -f /usr/share/java/postgresql.jar)"
