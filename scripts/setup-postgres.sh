#!/usr/bin/env bash
# A PostgreSQL server for the `postgres` tests, on 127.0.0.1 only, with its data under $PG_ROOT.
#
# Installs PostgreSQL with apt-get when it is missing (as root), creates the cluster once (initdb as the
# `postgres` user when run as root: initdb refuses root), starts it if it is not running, creates the
# user `converge` with a random password and the database `converge_test`, and writes the SQLAlchemy URL
# to $PG_ROOT/url (mode 600). The password is printed nowhere. Idempotent: a second run reuses all of it.
#
#   scripts/setup-postgres.sh          # then: CONVERGE_TEST_PG_URL_FILE=/tmp/converge-pg/url pytest -m postgres
#   scripts/setup-postgres.sh stop     # stop the server (the data stay)
set -euo pipefail

PG_ROOT=${CONVERGE_PG_ROOT:-/tmp/converge-pg}
PG_PORT=${CONVERGE_PG_PORT:-54329}
DATA=$PG_ROOT/data
URL_FILE=$PG_ROOT/url
DB_USER=converge
DB_NAME=converge_test

find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(readlink -f "$(command -v initdb)")"; return 0; }
    return 1
}

BINDIR=$(find_bindir || true)
if [ -z "$BINDIR" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup-postgres: PostgreSQL is not installed and this is not root: install the 'postgresql' package" >&2
        exit 1
    fi
    echo "setup-postgres: installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    BINDIR=$(find_bindir)
fi

# As root, the server runs as `postgres`; otherwise as whoever runs this script.
if [ "$(id -u)" = 0 ]; then
    as_db() { runuser -u postgres -- "$@"; }
    OWNER=postgres
else
    as_db() { "$@"; }
    OWNER=$(id -un)
fi

mkdir -p "$PG_ROOT"
chown "$OWNER" "$PG_ROOT"
chmod 700 "$PG_ROOT"

if [ "${1:-}" = "stop" ]; then
    as_db "$BINDIR/pg_ctl" -D "$DATA" -m fast stop || true
    exit 0
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
    as_db "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-locale >/dev/null
fi

if ! as_db "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_db "$BINDIR/pg_ctl" -D "$DATA" -l "$PG_ROOT/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_ROOT -c max_connections=100" \
        start >/dev/null
fi

psql_admin() { as_db "$BINDIR/psql" -h "$PG_ROOT" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

# The password is made once and kept in the URL file (readable by its owner only).
if [ -f "$URL_FILE" ]; then
    PASSWORD=$(sed -E 's#^[^:]+://[^:]+:([^@]+)@.*#\1#' "$URL_FILE")
else
    PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$PASSWORD'" >/dev/null
else
    psql_admin -c "ALTER ROLE $DB_USER LOGIN PASSWORD '$PASSWORD'" >/dev/null
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
fi

umask 077
printf 'postgresql+psycopg://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$PASSWORD" "$PG_PORT" "$DB_NAME" > "$URL_FILE.tmp"
mv "$URL_FILE.tmp" "$URL_FILE"
echo "setup-postgres: server on 127.0.0.1:$PG_PORT, postgresql+psycopg://$DB_USER:***@127.0.0.1:$PG_PORT/$DB_NAME"
echo "setup-postgres: URL in $URL_FILE"
