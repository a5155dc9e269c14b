#!/usr/bin/env bash
# Start a private PostgreSQL server on loopback for the cms-server tests and print its URL.
#
# Prints exactly ONE line on stdout: a postgres:// URL (user + database created, the user may
# create schemas in it). Everything else goes to stderr. Idempotent: a re-run reuses the running
# server, or restarts the existing cluster, or creates a new one.
#
# - Installs PostgreSQL from Debian apt when no server binaries are found (needs root).
# - Runs a private cluster (initdb + pg_ctl) in $CMS_PG_DIR (default /var/tmp/cms-ci-postgres),
#   owned by the `postgres` user when run as root, on 127.0.0.1:$CMS_PG_PORT (default 54329),
#   so it never touches the distribution's own cluster or its port 5432.
# - Stop it with: pg_ctl -D "$CMS_PG_DIR/data" stop   (as the cluster owner)
set -euo pipefail

PG_DIR="${CMS_PG_DIR:-/var/tmp/cms-ci-postgres}"
PG_PORT="${CMS_PG_PORT:-54329}"
PG_USER="${CMS_PG_USER:-cms}"
PG_PASSWORD="${CMS_PG_PASSWORD:-cms}"
PG_DB="${CMS_PG_DB:-cms_test}"
DATA="$PG_DIR/data"

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local dir
    # Highest installed major version first.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

install_postgres() {
    if [ "$(id -u)" -ne 0 ]; then
        log "PostgreSQL is not installed and this script is not root; install 'postgresql' first"
        exit 1
    fi
    log "installing PostgreSQL from Debian apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
}

BINDIR="$(find_bindir || true)"
if [ -z "$BINDIR" ]; then
    install_postgres
    BINDIR="$(find_bindir)"
fi

# Run a command as the cluster owner: `postgres` when we are root (initdb refuses root).
if [ "$(id -u)" -eq 0 ]; then
    OWNER=postgres
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER="$(id -un)"
    as_owner() { "$@"; }
fi

mkdir -p "$PG_DIR"
chown "$OWNER" "$PG_DIR"
chmod 0700 "$PG_DIR"
# The owner may not be allowed into the caller's working directory.
cd "$PG_DIR"

if [ ! -f "$DATA/PG_VERSION" ]; then
    log "creating a new cluster in $DATA"
    rm -rf "$DATA"
    as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C >&2
fi

if ! as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # A crash may leave a stale pid file behind; pg_ctl handles it when the pid is dead.
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200" \
        start >&2
fi

PSQL="$BINDIR/psql"
[ -x "$PSQL" ] || PSQL=psql
psql_owner() {
    as_owner "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres "$@"
}

# Wait until it accepts connections (pg_ctl -w already does; this covers a server started
# by a concurrent run of this script).
for _ in $(seq 1 60); do
    if psql_owner -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
        break
    fi
    sleep 1
done

role_exists="$(psql_owner -d postgres -tA -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")"
if [ "$role_exists" != "1" ]; then
    psql_owner -d postgres -c "CREATE ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
else
    psql_owner -d postgres -c "ALTER ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
fi
db_exists="$(psql_owner -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")"
if [ "$db_exists" != "1" ]; then
    psql_owner -d postgres -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\"" >&2
fi

echo "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
