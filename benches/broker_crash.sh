#!/usr/bin/env bash
# What survives a broker crash: COUNT SOS presses (with seq) from DEVICES devices, published
# and acknowledged while the engine is stopped (its persistent session and subscriptions
# exist), then kill -9 of the broker, a restart from the same store, and the engine started:
# how many reach the store. RUNS times, each with a fresh broker and engine.
# WAIT_SECS: seconds between the last PUBACK and the kill (0: at once, the worst case).
# Usage: BROKER=mosquitto|nats benches/broker_crash.sh   (env: COUNT, DEVICES, RUNS, WAIT_SECS)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/brokers.sh
BROKER=${BROKER:-mosquitto}
COUNT=${COUNT:-5000}
DEVICES=${DEVICES:-250}
RUNS=${RUNS:-3}
WAIT_SECS=${WAIT_SECS:-0}
bench_bins
tmp=$(mktemp -d)
trap 'kill ${ENGINE_PID:-} 2>/dev/null || true; broker_stop; rm -rf "$tmp"' EXIT

start_engine() { # $1 data dir; topic root $ROOT
    HTTP=127.0.0.1:$(free_port)
    ANXIN_MQTT_URL=$BROKER_URL ANXIN_MQTT_TOPIC_ROOT=$ROOT ANXIN_MQTT_CLIENT_ID=crash-$$ ANXIN_DATA_DIR=$1 \
    ANXIN_HTTP_ADDR=$HTTP ANXIN_ADMIN_TOKEN=bench-token-0123456789 ANXIN_UNKNOWN_DEVICES=accept \
    ANXIN_TCP_LISTEN=watch=off,gt06=off,jt808=off,trv=off RUST_LOG=warn \
        "$ANXIN" run --config config/anxin.toml 2>> "$1/engine.log" &
    ENGINE_PID=$!
    for _ in $(seq 1 300); do curl -sf "$HTTP/readyz" >/dev/null && return 0; sleep 0.1; done
    echo "engine not ready"; tail "$1/engine.log"; return 1
}
metric() { curl -s "$HTTP/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

echo "$(broker_version "$BROKER"), shipped config; $COUNT SOS from $DEVICES devices, kill -9 ${WAIT_SECS} s after the last PUBACK"
total=0
for run in $(seq 1 "$RUNS"); do
    ROOT="crash$run-$$/v1"
    broker_start "$BROKER" "$tmp/broker$run"
    mkdir -p "$tmp/engine$run"
    start_engine "$tmp/engine$run"
    kill -TERM "$ENGINE_PID"; wait "$ENGINE_PID" || true
    acked=$($SIM --url "$BROKER_URL" --topic-root "$ROOT" load --mix sos --devices "$DEVICES" --rate 0 --count "$COUNT" --client-id "pub-$$" \
        | sed -n 1p | sed -E 's/.*\(acked ([0-9]+)\).*/\1/')
    sleep "$WAIT_SECS"
    broker_kill9
    broker_restart
    start_engine "$tmp/engine$run"
    # Everything the broker kept is delivered at once; stop when the count has not moved for
    # 5 s (or reached what was acknowledged).
    last=-1; still=0
    while :; do
        n=$(metric anxin_ingest_events_accepted_total); n=${n:-0}; n=${n%.*}
        [ "$n" -ge "$acked" ] && break
        if [ "$n" = "$last" ]; then still=$((still + 1)); [ $still -ge 50 ] && break; else still=0; fi
        last=$n; sleep 0.1
    done
    dups=$(metric anxin_ingest_duplicates_total); dups=${dups:-0}
    echo "run $run: acknowledged to the publisher $acked, stored $n, lost $((acked - n)), duplicates ${dups%.*}"
    total=$((total + acked - n))
    kill -TERM "$ENGINE_PID"; wait "$ENGINE_PID" || true; ENGINE_PID=""
    broker_stop
done
echo "lost over $RUNS runs: $total of $((RUNS * COUNT)) acknowledged"
