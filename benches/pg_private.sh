#!/usr/bin/env bash
# A private PostgreSQL cluster for measurements that need server-side counters the shared
# server does not keep: pg_stat_statements (loaded at start, so every statement of every
# database is counted) and TLS off (loopback). Never touches the machine's own server.
#   bash benches/pg_private.sh start DIR   → prints the admin URL (port chosen free)
#   bash benches/pg_private.sh stop DIR
# Usage with the load bench:
#   url=$(bash benches/pg_private.sh start /tmp/pgbench) && ANXIN_TEST_POSTGRES_URL=$url bash benches/load.sh
# load.sh then prints the statements the engine ran per message (pg_stat_statements).
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
start)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
    cat >> "$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.max = 10000
pg_stat_statements.track_planning = on
ssl = off
CONF
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
    psql -q "postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE EXTENSION pg_stat_statements" >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
    rm -rf "$dir"
    ;;
esac
