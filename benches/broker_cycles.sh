#!/usr/bin/env bash
# Does the broker slow down as messages pass through it? CYCLES × COUNT messages through ONE
# private broker started from its shipped config, published by `anxin-sim load` as fast as the
# broker acks, with a bare subscriber (persistent session, acks on receipt) consuming all of
# them live; prints the publisher rate and the broker's on-disk size per cycle.
#
# AWAY=1 (the default) adds a second persistent session subscribed to the same topics that is
# not connected: an engine instance that is down (an outage), or a session left behind by a
# renamed client id (kept for persistent_client_expiration). The broker holds a copy of every
# message for it, as it must; this is what made Mosquitto's shipped settings degrade.
# AWAY=0: only the live subscriber.
#
# Usage: BROKER=mosquitto|nats benches/broker_cycles.sh   (env: CYCLES, COUNT, DEVICES, AWAY,
# MOSQ_OVERRIDE / NATS_OVERRIDE for experiments, e.g. MOSQ_OVERRIDE="autosave_interval 1000")
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/brokers.sh
BROKER=${BROKER:-mosquitto}
CYCLES=${CYCLES:-4}
COUNT=${COUNT:-50000}
DEVICES=${DEVICES:-1000}
AWAY=${AWAY:-1}
bench_bins
tmp=$(mktemp -d)
trap 'kill ${DRAIN_PID:-} 2>/dev/null || true; broker_stop; rm -rf "$tmp"' EXIT
broker_start "$BROKER" "$tmp/broker"
# nats-server speaks MQTT 3.1.1 only.
PROTO=$([ "$BROKER" = nats ] && echo 4 || echo 5)
ROOT="cycles-$$/v1"
echo "$(broker_version "$BROKER"), shipped config${MOSQ_OVERRIDE:+ + $MOSQ_OVERRIDE}${NATS_OVERRIDE:+ + $NATS_OVERRIDE}; $CYCLES x $COUNT messages, $DEVICES devices, MQTT $PROTO, live acking subscriber, away sessions: $AWAY"
if [ "$AWAY" = 1 ]; then
    $SIM --url "$BROKER_URL" --topic-root "$ROOT" --protocol $PROTO drain --subscribe-only --client-id "away-$$" >/dev/null 2>&1
fi
$SIM --url "$BROKER_URL" --topic-root "$ROOT" --protocol $PROTO drain --subscribe-only --client-id "live-$$" >/dev/null 2>&1
$SIM --url "$BROKER_URL" --topic-root "$ROOT" --protocol $PROTO drain --count $((CYCLES * COUNT)) --client-id "live-$$" --timeout-secs 120 > "$tmp/drain.out" &
DRAIN_PID=$!
sleep 0.5 # the drain's CONNACK; messages published before it would be queued for it anyway
for c in $(seq 1 "$CYCLES"); do
    out=$($SIM --url "$BROKER_URL" --topic-root "$ROOT" load --devices "$DEVICES" --rate 0 --count "$COUNT" --client-id "pub-$$-$c" --seed "$c" | sed -n 1p)
    rate=$(sed -E 's/.*: ([0-9.]+) msg\/s.*/\1/' <<< "$out")
    echo "cycle $c: $out; broker store $(broker_store_bytes) bytes"
    echo "$rate" >> "$tmp/rates"
done
wait "$DRAIN_PID" || true
DRAIN_PID=""
echo "live subscriber: $(sed -n 1p "$tmp/drain.out")"
awk 'NR == 1 { first = $1 } { last = $1; if (min == "" || $1 < min) min = $1; if ($1 > max) max = $1 }
     END { printf "publisher rate: first %.0f, last %.0f msg/s (last/first %.2f), min/max %.2f\n", first, last, last / first, min / max }' "$tmp/rates"
