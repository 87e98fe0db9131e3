#!/bin/sh
# Entrypoint of the PostgreSQL image deploy/debian-base.sh builds from Debian's packages, where the
# official image cannot be pulled: the same contract as that image for what compose.yaml uses.
# At first start (PGDATA empty) a cluster is made with POSTGRES_USER (superuser, password
# POSTGRES_PASSWORD, required) and the database POSTGRES_DB; then the server runs in the
# foreground as user postgres, listening on every interface of the container, passwords required
# over TCP (scram-sha-256).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD is required" >&2
    exit 2
fi
install -d -o postgres -g postgres -m 0700 "$PGDATA"
install -d -o postgres -g postgres -m 2775 /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != "postgres" ]; then
        # A server on its socket only, for as long as it takes to make the database.
        runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -s start
        runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\""
        runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w -s stop
    fi
    echo "postgres-entrypoint: made the cluster in $PGDATA with database $POSTGRES_DB"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*'
