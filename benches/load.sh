#!/usr/bin/env bash
# End-to-end load measurement for BENCHMARKS.md:
#   anxin-sim → broker (BROKER=mosquitto: the shipped config/mosquitto.conf; BROKER=nats:
#               nats-server with JetStream from config/nats-server.conf; private, on a free port)
#             → anxin (ack after commit) → PostgreSQL (a fresh database per run).
# For each MQTT version it measures, on the same broker and payloads:
#   - the backlog drain rate of a bare rumqttc subscriber that acks on receipt (the baseline),
#   - the backlog drain rate of the engine (first receive → last commit, from the database),
# and, with the engine live, the publish → commit latency (device ts → committed_at) at the
# highest publisher rate and at a fixed rate. It also checks events stored = published and
# per-device order. Usage: benches/load.sh  (env: BROKER, COUNT, DEVICES, RATE, PROTOS,
# ANXIN_TEST_POSTGRES_URL; ENGINES="label=binary[@rules file] …" to compare builds on one backlog run;
# PHASES=backlog to stop after the backlog drains; SERIES=1 prints each drain's commits per
# 250 ms; METRICS_DIR=dir keeps each engine's /metrics after its drain). nats-server speaks MQTT 3.1.1 only: with BROKER=nats only protocol 4
# is measured and the engine's live runs reach it through its 3.1.1 fallback.
set -euo pipefail
cd "$(dirname "$0")/.."
BROKER=${BROKER:-mosquitto}
COUNT=${COUNT:-50000}
DEVICES=${DEVICES:-1000}
RATE=${RATE:-2000}
PG_ADMIN=${ANXIN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN%/*}

. benches/brokers.sh
bench_bins
# ANXIN_BIN: another engine binary to measure with the same script (e.g. an older build).
ANXIN=${ANXIN_BIN:-$ANXIN}
tmp=$(mktemp -d)
cleanup() {
    [ -n "${ENGINE_PID:-}" ] && kill "$ENGINE_PID" 2>/dev/null || true
    broker_stop
    # new_db runs in a command substitution (a subshell), so it lists its databases in a file.
    for db in $(cat "$tmp/dbs" 2>/dev/null); do psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# MOSQ_OVERRIDE / NATS_OVERRIDE: extra lines for experiments (e.g. "autosave_interval 1800").
broker_start "$BROKER" "$tmp/broker"
MQ_PORT=$BROKER_PORT
MQ_URL="mqtt://127.0.0.1:$MQ_PORT"
echo "$(broker_version "$BROKER") on $MQ_PORT (shipped config); $COUNT messages, $DEVICES devices"
[ "$BROKER" = nats ] && PROTOS=${PROTOS:-4}

new_db() {
    local db="anxin_bench_$RANDOM$RANDOM"
    psql -q "$PG_ADMIN" -c "CREATE DATABASE $db" >/dev/null
    echo "$db" >> "$tmp/dbs"
    echo "$PG_BASE/$db"
}
q() { psql -qtA "$1" -c "$2"; }

start_engine() { # $1 protocol, $2 store url, $3 client id, $4 log; topic root in $ROOT
    cat > "$tmp/anxin.toml" <<TOML
rules_file = "${RULES:-$PWD/config/rules.toml}"
[mqtt]
protocol = $1
TOML
    HTTP_PORT=$(free_port)
    ANXIN_MQTT_URL=${ENGINE_MQTT:-$MQ_URL} ANXIN_MQTT_TOPIC_ROOT=$ROOT ANXIN_STORE_URL=$2 ANXIN_MQTT_CLIENT_ID=$3 ANXIN_DATA_DIR=$tmp \
    ANXIN_HTTP_ADDR=127.0.0.1:$HTTP_PORT ANXIN_ADMIN_TOKEN=bench-token-0123456789 RUST_LOG=warn \
        "$ANXIN" run --config "$tmp/anxin.toml" 2> "$4" &
    ENGINE_PID=$!
    for _ in $(seq 1 200); do grep -q . <(q "$2" "SELECT 1 FROM _sqlx_migrations LIMIT 1" 2>/dev/null) && break; sleep 0.05; done
    sleep 1 # the subscription follows the migrations within milliseconds
}
stop_engine() { kill -TERM "$ENGINE_PID"; wait "$ENGINE_PID" || true; ENGINE_PID=""; }
wait_events() { # $1 url, $2 count
    # The engine's own counter of committed events: polling the database with count(*) would
    # add a psql process and a table scan every tenth of a second to what is measured.
    local n
    for _ in $(seq 1 1200); do
        n=$(curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^anxin_ingest_events_accepted_total/ {print $2}')
        [ "${n:-0}" -ge "$2" ] && return 0
        sleep 0.1
    done
    echo "timed out: $(q "$1" "SELECT count(*) FROM events") of $2 stored"; return 1
}
report() { # $1 url, $2 label
    local url=$1
    q "$url" "SELECT '$2: stored ' || count(*) || ', drain ' || round(count(*) * 1000.0 / greatest(max(committed_at) - min(received_at), 1)) || ' msg/s' || CASE WHEN '${BASE_RATE:-}' <> '' THEN ' (' || round(count(*) * 1000.0 / greatest(max(committed_at) - min(received_at), 1) / ${BASE_RATE:-1}, 3) || ' of the bare subscriber)' ELSE '' END || ' (first receive → last commit ' || (max(committed_at) - min(received_at)) || ' ms), publish→commit p50 ' || percentile_cont(0.5) WITHIN GROUP (ORDER BY committed_at - device_ts) || ' ms, p99 ' || percentile_cont(0.99) WITHIN GROUP (ORDER BY committed_at - device_ts) || ' ms, receive→commit p50 ' || percentile_cont(0.5) WITHIN GROUP (ORDER BY committed_at - received_at) || ' ms, p99 ' || percentile_cont(0.99) WITHIN GROUP (ORDER BY committed_at - received_at) || ' ms' FROM events"
    [ -n "${SERIES:-}" ] && q "$url" "WITH t AS (SELECT min(received_at) AS t0 FROM events) SELECT '$2 series: ' || string_agg(n::text, ' ' ORDER BY b) FROM (SELECT (committed_at - t0) / 250 AS b, count(*) AS n FROM events, t GROUP BY 1) x"
    local bad; bad=$(q "$url" "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY device_id ORDER BY id) AS prev FROM events) t WHERE prev IS NOT NULL AND seq <> prev + 1")
    sleep 1.5 # the peak gauge is refreshed every second
    local peak; peak=$(curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^anxin_mqtt_unacked_messages_peak/ {print $2}')
    echo "$2: per-device order violations: $bad; most messages held unacked at once: $peak"
    # Statements the server ran for this database, when it counts them (benches/pg_private.sh
    # starts a server with pg_stat_statements); migrations and this report add a few dozen.
    local db=${url##*/}; db=${db%%\?*}
    local stm; stm=$(q "$PG_ADMIN" "SELECT COALESCE(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '$db'" 2>/dev/null || true)
    [ -n "$stm" ] && echo "$2: statements run: $stm ($(python3 -c "print(round($stm / $COUNT, 3))") per message)"
    return 0
}

for proto in ${PROTOS:-5 4}; do
    window=$([ $proto = 5 ] && echo "Receive Maximum 1000" || { [ "$BROKER" = nats ] && echo "nats-server's max_ack_pending 1000 per subscription" || echo "Mosquitto's 3.1.1 window (max_inflight_messages 20)"; })
    echo "== MQTT $proto, $window =="
    # Each phase has its own topic root, so the persistent sessions of earlier phases (which
    # stay subscribed) do not make the broker queue this phase's messages for them too.
    ROOT="base$proto-$$/v1"
    # Baseline: a bare subscriber, same protocol and window, acking on receipt.
    $SIM --url "$MQ_URL" --topic-root "$ROOT" drain --subscribe-only --client-id "base$proto-$$" --protocol $proto --receive-maximum 1000 >/dev/null
    $SIM --url "$MQ_URL" --topic-root "$ROOT" load --devices "$DEVICES" --rate 0 --count "$COUNT" --client-id "pub-$$" | sed -n 1p | sed 's/^/publisher: /'
    base=$($SIM --url "$MQ_URL" --topic-root "$ROOT" drain --count "$COUNT" --client-id "base$proto-$$" --protocol $proto --receive-maximum 1000 | sed -n 1p)
    echo "baseline: $base"
    BASE_RATE=$(echo "$base" | grep -o '[0-9.]* msg/s' | cut -d' ' -f1)
    # The engine draining the same backlog; ENGINES="label=binary …" measures several builds
    # one after the other against the same broker and server (default: this build).
    for engine in ${ENGINES:-anxin=$ANXIN}; do
        label=${engine%%=*}; ANXIN=${engine#*=}
        # label=binary@rules: a build of another version with the rules file it reads.
        RULES=; [[ $ANXIN == *@* ]] && { RULES=${ANXIN#*@}; ANXIN=${ANXIN%%@*}; }
        ROOT="engine$proto-$label-$$/v1"
        url=$(new_db)
        start_engine $proto "$url" "engine$proto-$label-$$" "$tmp/engine$proto.log"
        stop_engine
        $SIM --url "$MQ_URL" --topic-root "$ROOT" load --devices "$DEVICES" --rate 0 --count "$COUNT" --client-id "pub-$$" >/dev/null
        start_engine $proto "$url" "engine$proto-$label-$$" "$tmp/engine$proto.log"
        wait_events "$url" "$COUNT"
        report "$url" "$label backlog, MQTT $proto"
        # METRICS_DIR: keep each engine's /metrics after its drain (batch sizes, commit times).
        [ -n "${METRICS_DIR:-}" ] && curl -s "127.0.0.1:$HTTP_PORT/metrics" > "$METRICS_DIR/$label-$proto-$(date +%s%N).prom"
        stop_engine
    done
done
BASE_RATE=
[ "${PHASES:-all}" = backlog ] && exit 0

echo "== live: engine (MQTT 5) consuming while the simulator publishes =="
for rate in ${LIVE_RATES:-0 $RATE}; do
    ROOT="live$rate-$$/v1"
    url=$(new_db)
    start_engine 5 "$url" "live$rate-$$" "$tmp/live.log"
    $SIM --url "$MQ_URL" --topic-root "$ROOT" load --devices "$DEVICES" --rate "$rate" --count "$COUNT" --client-id "pub-$$" | sed -n 1p | sed "s/^/publisher (--rate $rate): /"
    wait_events "$url" "$COUNT"
    report "$url" "engine live, --rate $rate"
    stop_engine
done
[ "$BROKER" = nats ] && exit 0 # the embedded broker does not depend on BROKER
echo "== embedded rumqttd (its fixed window of 100 is enforced), live =="
EMB=$(free_port)
ROOT="emb-$$/v1"
url=$(new_db)
ENGINE_MQTT="embedded://127.0.0.1:$EMB" start_engine 4 "$url" "emb-$$" "$tmp/emb.log"
$SIM --url "mqtt://127.0.0.1:$EMB" --topic-root "$ROOT" load --devices "$DEVICES" --rate 0 --count "$COUNT" --client-id "pub-$$" | sed -n 1p | sed "s/^/publisher: /"
wait_events "$url" "$COUNT"
report "$url" "engine live, embedded broker"
stop_engine
grep -h "Outgoing messages are being dropped" "$tmp/broker/broker.log" | head -3 || true
