#!/usr/bin/env bash
# Rules v2 timers at scale, through the real binary, a private Mosquitto (shipped config) and
# PostgreSQL (a fresh database), for BENCHMARKS.md "Rules v2 timers at scale":
#   1. RESIDENTS residents labelled lives_alone (inactivity, per resident) and DEVICES devices
#      bound to them, DEVICES / RESIDENTS each (watch, living-room PIR, bedroom PIR, door,
#      smoke), every device under device_offline (report_interval); one heartbeat from each.
#      Pending: one offline absence per device + one inactivity absence per resident.
#   2. SIGKILL. Start-up with the shipped rules minus the two absence rules (same data, same
#      registry: the memory baseline), SIGKILL, then with the shipped rules: spawn → /readyz,
#      the engine's own "Timer state loaded" time, pending gauges, RSS. Memory per pending
#      deadline = (RSS with − RSS without) / pending.
#   3. Firing lag while ingesting: the last SILENT devices (report_interval 40–79 s, so offline
#      after 120–237 s) stay silent while the simulator publishes the mixed load (~1 % alarms,
#      whose critical alerts escalate at 60 s and 180 s) to the others at RATE msg/s. Lag =
#      timeline entry time (committed) − the deadline's due_at, per fired offline alert and
#      escalation step, from the database; the engine's lag histogram besides. Checks that each
#      silent device fired exactly once and no online device did.
# Usage: bash benches/timers.sh  (env: DEVICES=100000 RESIDENTS=20000 SILENT=5000 RATE=2000,
# ANXIN_TEST_POSTGRES_URL; PHASES=startup stops after step 2).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-100000}
RESIDENTS=${RESIDENTS:-20000}
SILENT=${SILENT:-5000}
RATE=${RATE:-2000}
PG_ADMIN=${ANXIN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN%/*}
TOKEN=bench-token-0123456789

. benches/brokers.sh
bench_bins
tmp=$(mktemp -d)
DB="anxin_timers_$RANDOM$RANDOM"
cleanup() {
    [ -n "${ENGINE_PID:-}" ] && kill -9 "$ENGINE_PID" 2>/dev/null || true
    [ -n "${SIM_PID:-}" ] && kill "$SIM_PID" 2>/dev/null || true
    broker_stop
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB" >/dev/null
URL="$PG_BASE/$DB"
q() { psql -qtA "$URL" -c "$1"; }

broker_start mosquitto "$tmp/broker"
ROOT="timers-$$/v1"
echo "$(broker_version mosquitto) on $BROKER_PORT; $DEVICES devices, $RESIDENTS residents, $SILENT go silent; $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"

# The shipped rules, and the same without the two absence rules (the memory baseline).
cp config/rules.toml "$tmp/rules.toml"
python3 - "$tmp/rules.toml" "$tmp/rules-noabsence.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r'(?m)^(?=\[\[rule\]\])', text)
kept = [b for b in blocks if not re.search(r'(?m)^name = "(inactivity|device_offline)"', b)]
assert len(kept) == len(blocks) - 2, "the shipped rules changed: update benches/timers.sh"
open(sys.argv[2], "w").write("".join(kept))
PY

HTTP_PORT=$(free_port)
start_engine() { # $1 rules file, $2 log
    printf 'rules_file = "%s"\n[mqtt]\nprotocol = 5\n' "$1" > "$tmp/anxin.toml"
    SPAWNED=$(date +%s%N)
    ANXIN_MQTT_URL=$BROKER_URL ANXIN_MQTT_TOPIC_ROOT=$ROOT ANXIN_STORE_URL=$URL ANXIN_MQTT_CLIENT_ID=timers-$$ \
    ANXIN_DATA_DIR=$tmp ANXIN_HTTP_ADDR=127.0.0.1:$HTTP_PORT ANXIN_ADMIN_TOKEN=$TOKEN RUST_LOG=warn,anxin=info \
    "$ANXIN" run --config "$tmp/anxin.toml" > "$2" 2>&1 &
    ENGINE_PID=$!
    for _ in $(seq 1 6000); do
        curl -fsS "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
        kill -0 "$ENGINE_PID" 2>/dev/null || { echo "engine exited; log:"; tail -20 "$2"; exit 1; }
        sleep 0.01
    done
    READY_MS=$(( ($(date +%s%N) - SPAWNED) / 1000000 ))
}
kill9() { kill -9 "$ENGINE_PID"; wait "$ENGINE_PID" 2>/dev/null || true; ENGINE_PID=""; }
metric_sum() { curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" 'index($1, m "{") == 1 || $1 == m {s += $2} END {printf "%d", s}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$ENGINE_PID/status"; }
settle_rss() { # RSS once it stops moving (allocations of start-up done)
    local last=0 now
    for _ in $(seq 1 50); do now=$(rss_kib); [ "$now" = "$last" ] && break; last=$now; sleep 0.2; done
    echo "$now"
}

# 1. Residents, devices, one heartbeat each.
start_engine "$tmp/rules.toml" "$tmp/engine1.log"
t=$(date +%s%N)
python3 - "$HTTP_PORT" "$TOKEN" "$DEVICES" "$RESIDENTS" "$SILENT" <<'PY'
import http.client, json, sys
port, token, devices, residents, silent = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
c = http.client.HTTPConnection("127.0.0.1", int(port))
def call(method, path, body, ctype):
    c.request(method, path, body=body, headers={"Authorization": "Bearer " + token, "Content-Type": ctype})
    r = c.getresponse(); data = r.read()
    if r.status >= 300: sys.exit(f"{method} {path}: {r.status} {data[:300]}")
for r in range(residents):
    call("PUT", f"/api/residents/r-{r:05}", json.dumps({"name": f"Resident {r}", "region": "bench",
         "time_zone": "Asia/Shanghai", "labels": {"lives_alone": "true"}}), "application/json")
per = devices // residents
kinds = [("watch", ""), ("pir", "living"), ("pir", "bedroom"), ("door", "hall"), ("smoke", "kitchen")]
rows = []
for i in range(devices):
    typ, room = kinds[i % len(kinds)]
    # The devices that go silent report every 40–79 s, so they are offline 120–237 s later.
    interval = f"{40 + i % 40}s" if i >= devices - silent else ""
    rows.append(f"sim-{i:05},mqtt,{typ},{room},,r-{min(i // per, residents - 1):05},,{interval}")
for k in range(0, devices, 10000):
    body = "id,family,type,room,labels,resident_id,tz,report_interval\n" + "\n".join(rows[k:k + 10000]) + "\n"
    call("POST", "/api/devices", body.encode(), "text/csv")
PY
echo "registered $RESIDENTS residents and $DEVICES devices in $(( ($(date +%s%N) - t) / 1000000 )) ms"
$SIM --url "$BROKER_URL" --topic-root "$ROOT" load --devices "$DEVICES" --rate 0 --count "$DEVICES" --mix heartbeat --client-id "pub-$$" --progress-secs 0 | sed -n 1p | sed 's/^/heartbeats: /'
for _ in $(seq 1 3000); do [ "$(q "SELECT count(*) FROM events")" -ge "$DEVICES" ] && break; sleep 0.1; done
echo "stored $(q "SELECT count(*) FROM events") heartbeats; devices with a last message $(q "SELECT count(*) FROM devices WHERE last_seen > 0")"
sleep 1.5
before_kill=$(metric_sum anxin_rules_timers_pending)
echo "pending while running: $before_kill; RSS $(settle_rss) KiB"
kill9

# 2. Start-up after SIGKILL: without the absence rules (baseline), then the shipped rules.
start_engine "$tmp/rules-noabsence.toml" "$tmp/engine2.log"
sleep 1.5
base_rss=$(settle_rss); base_ready=$READY_MS; base_pending=$(metric_sum anxin_rules_timers_pending)
echo "baseline (no absence rules): ready in $base_ready ms, pending $base_pending, RSS $base_rss KiB; $(grep -o 'Timer state loaded.*' "$tmp/engine2.log" | head -1)"
kill9
start_engine "$tmp/rules.toml" "$tmp/engine3.log"
# Absences are rebuilt at each shard's first look at its timers; the gauge follows each look.
for _ in $(seq 1 6000); do [ "$(metric_sum anxin_rules_timers_pending)" -ge "$before_kill" ] && break; sleep 0.01; done
all_ms=$(( ($(date +%s%N) - SPAWNED) / 1000000 ))
sleep 1.5
rss=$(settle_rss); pending=$(metric_sum anxin_rules_timers_pending)
echo "shipped rules: ready in $READY_MS ms after spawn, all $before_kill deadlines pending again $all_ms ms after spawn, pending $pending, RSS $rss KiB; $(grep -o 'Timer state loaded.*' "$tmp/engine3.log" | head -1)"
python3 -c "print(f'memory per pending deadline: ({$rss} - {$base_rss}) KiB / ({$pending} - {$base_pending}) = {($rss - $base_rss) * 1024 / max($pending - $base_pending, 1):.0f} bytes')"

[ "${PHASES:-all}" = startup ] && exit 0

# 3. Firing lag while ingesting.
online=$(( DEVICES - SILENT ))
last_due=$(q "SELECT max(last_seen) + 3 * 79000 FROM devices")
now_ms=$(( $(date +%s%N) / 1000000 ))
secs=$(( (last_due - now_ms) / 1000 + 30 ))
echo "ingest: mixed load at $RATE msg/s to $online devices for ~$secs s (the last offline deadline is due in $(( (last_due - now_ms) / 1000 )) s; escalations at 60 s / 180 s)"
$SIM --url "$BROKER_URL" --topic-root "$ROOT" load --devices "$online" --rate "$RATE" --count $(( RATE * secs )) --client-id "pub2-$$" --progress-secs 0 > "$tmp/sim.out" 2>&1 &
SIM_PID=$!
wait "$SIM_PID" || { echo "simulator failed:"; cat "$tmp/sim.out"; exit 1; }
SIM_PID=""
sed -n 1p "$tmp/sim.out" | sed 's/^/publisher: /'
sleep 2
echo "offline alerts: $(q "SELECT count(*) FROM alerts WHERE rule = 'device_offline'") (silent devices: $SILENT), of silent devices: $(q "SELECT count(DISTINCT device_id) FROM alerts WHERE rule = 'device_offline' AND substr(device_id, 5)::int >= $online"), of online devices: $(q "SELECT count(*) FROM alerts WHERE rule = 'device_offline' AND substr(device_id, 5)::int < $online"), late: $(q "SELECT count(*) FROM alert_timeline t JOIN alerts a ON a.id = t.alert_id WHERE a.rule = 'device_offline' AND t.action = 'opened' AND (t.detail::json->>'late')::boolean")"
lag() { # $1 label, $2 where
    q "SELECT '$1: ' || count(*) || ' fired, lag (due → committed) p50 ' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY l)) || ' ms, p99 ' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY l)) || ' ms, max ' || max(l) || ' ms' FROM (SELECT t.at - (extract(epoch FROM (t.detail::json->>'due_at')::timestamptz) * 1000)::bigint AS l FROM alert_timeline t JOIN alerts a ON a.id = t.alert_id WHERE $2) x"
}
lag "offline absences" "a.rule = 'device_offline' AND t.action = 'opened'"
lag "escalation steps" "t.action = 'escalated'"
curl -s "127.0.0.1:$HTTP_PORT/metrics" | grep '^anxin_rules_timer_lag_seconds' | sed 's/^/engine histogram: /'
echo "events stored during ingest: $(( $(q "SELECT count(*) FROM events") - DEVICES )); pending at the end: $(metric_sum anxin_rules_timers_pending); RSS $(rss_kib) KiB"
