# Sourced by the bench scripts: a private broker of either kind, started from the shipped
# config with only its ports and store directory changed (as tests/common/mod.rs does), and
# SIGKILL + restart on the same port and store.
#   broker_start KIND DIR   KIND = mosquitto | nats; sets BROKER_PORT, BROKER_URL, BROKER_PID
#   broker_kill9            SIGKILL, no chance to save anything
#   broker_restart          same config, store and port
#   broker_store_bytes      bytes the broker keeps on disk
#   broker_stop
# Extra config lines for experiments: MOSQ_OVERRIDE / NATS_OVERRIDE (appended, later wins in
# Mosquitto; for nats-server they go at the top level).
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

broker_wait() {
    for _ in $(seq 1 200); do listening "$BROKER_PORT" && return 0; sleep 0.05; done
    echo "broker did not listen on $BROKER_PORT; log:"; tail -20 "$BROKER_DIR/broker.log"; return 1
}

broker_spawn() {
    case $BROKER_KIND in
        mosquitto) mosquitto -c "$BROKER_DIR/broker.conf" 2>> "$BROKER_DIR/broker.log" & ;;
        nats) nats-server -c "$BROKER_DIR/broker.conf" 2>> "$BROKER_DIR/broker.log" & ;;
        *) echo "unknown broker kind $BROKER_KIND (mosquitto | nats)"; return 1 ;;
    esac
    BROKER_PID=$!
    broker_wait
}

broker_start() { # $1 kind, $2 directory
    BROKER_KIND=$1
    BROKER_DIR=$2
    BROKER_PORT=$(free_port)
    BROKER_URL="mqtt://127.0.0.1:$BROKER_PORT"
    mkdir -p "$BROKER_DIR"
    case $BROKER_KIND in
        mosquitto)
            sed -e "s#^listener .*#listener $BROKER_PORT 127.0.0.1#" \
                -e "s#^persistence_location .*#persistence_location $BROKER_DIR/#" \
                "$REPO/config/mosquitto.conf" > "$BROKER_DIR/broker.conf"
            # As root, Mosquitto drops to its own user, which cannot write our directory.
            [ "$(id -u)" = 0 ] && echo "user root" >> "$BROKER_DIR/broker.conf"
            [ -n "${MOSQ_OVERRIDE:-}" ] && printf '%b\n' "$MOSQ_OVERRIDE" >> "$BROKER_DIR/broker.conf"
            ;;
        nats)
            { [ -n "${NATS_OVERRIDE:-}" ] && printf '%b\n' "$NATS_OVERRIDE"
              awk -v port="$BROKER_PORT" -v store="$BROKER_DIR/store" '
                { t = $0; sub(/^[ \t]+/, "", t) }
                t ~ /^#/ { print; next }
                t ~ /^listen:/ && depth == 0 { print "listen: 127.0.0.1:-1"; next }
                t ~ /^listen:/ && block == "mqtt" { print "listen: 127.0.0.1:" port; next }
                t ~ /^store_dir:/ && block == "jetstream" { print "store_dir: \"" store "\""; next }
                t ~ /\{$/ { depth++; block = t; sub(/[ \t]*\{$/, "", block) }
                t == "}" { depth--; block = "" }
                { print }' "$REPO/config/nats-server.conf"
            } > "$BROKER_DIR/broker.conf"
            ;;
    esac
    broker_spawn
}

broker_kill9() { kill -9 "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null || true; }
broker_restart() { broker_spawn; }
broker_stop() { [ -n "${BROKER_PID:-}" ] && { kill "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null || true; }; BROKER_PID=""; }

broker_store_bytes() {
    case $BROKER_KIND in
        mosquitto) stat -c %s "$BROKER_DIR/mosquitto.db" 2>/dev/null || echo 0 ;;
        nats) du -sb "$BROKER_DIR/store" 2>/dev/null | cut -f1 ;;
    esac
}

broker_version() { # $1 kind
    case $1 in
        mosquitto) mosquitto -h | sed -n 1p | awk '{print "mosquitto " $3}' ;;
        nats) nats-server --version ;;
    esac
}

# The release binaries, built into CARGO_TARGET_DIR when it is set.
bench_bins() {
    (cd "$REPO" && cargo build --release -q --workspace --bins)
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    SIM=$target/release/anxin-sim
    ANXIN=$target/release/anxin
}
