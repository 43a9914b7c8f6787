#!/usr/bin/env bash
# Times POST /api/residents/import with ROWS generated template rows (benches/template_rows.py)
# on SQLite and PostgreSQL (a fresh database each): a dry run, the first import (every row
# new), and the same file again (every row unchanged). Wall time of the HTTP request, as
# an operator uploading the file waits for it.
#   ROWS=50000 bash benches/import.sh        (ENCODING=gb18030 for the GB18030 file)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-50000}
PG_ADMIN=${ANXIN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN%/*}
. benches/brokers.sh
bench_bins
tmp=$(mktemp -d)
ENGINE_PID=""
DB=""
cleanup() {
    [ -n "$ENGINE_PID" ] && kill "$ENGINE_PID" 2>/dev/null || true
    [ -n "$DB" ] && psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

flag=""
[ "${ENCODING:-utf8}" = gb18030 ] && flag=--gb18030
python3 benches/template_rows.py "$ROWS" $flag > "$tmp/rows.csv"
echo "$ROWS rows, $(du -h "$tmp/rows.csv" | cut -f1) (${ENCODING:-utf8}); $(nproc) cores; $(date -u +%F)"

run() { # $1 label, $2 store url
    HTTP_PORT=$(free_port)
    mkdir -p "$tmp/$1"
    ANXIN_MQTT_URL="embedded://127.0.0.1:$(free_port)" ANXIN_STORE_URL=$2 ANXIN_DATA_DIR="$tmp/$1" \
    ANXIN_TCP_LISTEN=watch=off,gt06=off,jt808=off,trv=off ANXIN_HTTP_ADDR=127.0.0.1:$HTTP_PORT ANXIN_ADMIN_TOKEN=bench-token-0123456789 RUST_LOG=warn \
        "$ANXIN" run 2> "$tmp/$1/engine.log" &
    ENGINE_PID=$!
    for _ in $(seq 1 200); do curl -sf "127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.05; done
    for step in "dry_run=true" "" ""; do
        local out
        out=$(curl -s -w '\n%{time_total}' -H 'Authorization: Bearer bench-token-0123456789' \
            -H 'Content-Type: text/csv' --data-binary @"$tmp/rows.csv" \
            "127.0.0.1:$HTTP_PORT/api/residents/import?region=bench&$step")
        local secs=${out##*$'\n'}
        local body=${out%$'\n'*}
        printf '%-10s %-14s %6.2f s  %s\n' "$1" "${step:-import}" "$secs" \
            "$(echo "$body" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("imported=%d updated=%d unchanged=%d rejected=%d" % (r["imported"], r["updated"], r["unchanged"], len(r["rejected"])))')"
    done
    kill -TERM "$ENGINE_PID"; wait "$ENGINE_PID" || true; ENGINE_PID=""
}

run sqlite "sqlite://$tmp/anxin.db"
DB="anxin_bench_import_$RANDOM$RANDOM"
psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB" >/dev/null
run postgres "$PG_BASE/$DB"
