#!/bin/sh
# docker-compose.yml's workload: creates the sample table directly in PostgreSQL, then runs two
# applications through pgshift with pgbench (prepared statements, a few transactions/s):
#   old app: reads and writes users.user_name, from the start;
#   new app: reads and writes users.display_name, from the moment that name answers through
#            pgshift (once users_display_name has entered expand).
# Each prints a progress line every 30 s and, when its run of RUN_SECONDS ends, a summary with
# its failed transactions (`docker compose logs -f workload`).
# Settings (environment): DIRECT and THROUGH are libpq connection strings; RATE (transactions/s
# per app), CLIENTS (connections per app), RUN_SECONDS (length of one pgbench run).
set -u
DIRECT=${DIRECT:-postgresql://postgres@postgres:5432/app}
THROUGH=${THROUGH:-postgresql://postgres@pgshift:6432/app}
RATE=${RATE:-5}
CLIENTS=${CLIENTS:-2}
RUN_SECONDS=${RUN_SECONDS:-300}
HERE=$(dirname "$0")

pids=""
trap 'kill $pids 2>/dev/null; exit 0' TERM INT

until pg_isready -q -d "$DIRECT"; do sleep 1; done
psql -q -v ON_ERROR_STOP=1 -d "$DIRECT" -f "$HERE/schema.sql" || exit 1
until pg_isready -q -d "$THROUGH"; do sleep 1; done
echo "workload: table users ready; the old app starts through pgshift ($THROUGH)"

# Runs pgbench with script $2 under application_name $1, again and again.
app() {
    while :; do
        PGAPPNAME=$1 pgbench -n -M prepared -c "$CLIENTS" -R "$RATE" -T "$RUN_SECONDS" -P 30 \
            -f "$HERE/$2" "$THROUGH" 2>&1 | sed -u "s/^/$1: /"
        sleep 1
    done
}

app old-app old-app.sql &
pids="$!"

until psql -q -d "$THROUGH" -c 'SELECT display_name FROM users LIMIT 0' >/dev/null 2>&1; do
    sleep 2
done
echo "workload: users.display_name answers through pgshift; the new app starts"
app new-app new-app.sql &
pids="$pids $!"
wait
