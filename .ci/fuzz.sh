#!/usr/bin/env bash
# CI stage "fuzz": replays every fuzz target's corpus, then fuzzes it for a short while, on
# stable Rust (`--sanitizer none`, no nightly). Exits non-zero if any target crashes; the
# crashing input is in fuzz/artifacts/<target>/ and the log in fuzz/artifacts/<target>.log.
#   FUZZ_SECONDS  fuzzing time per target after the corpus replay (default 30)
#   FUZZ_TIMEOUT  seconds one input may take before it counts as a crash (default 10; a
#                 decoder that slow on one input is a denial of service; libFuzzer's own
#                 default is 1200 s)
#   FUZZ_TARGETS  space-separated targets (default: all of `cargo fuzz list`)
# Set up and targets: fuzz/Cargo.toml, fuzz/src/lib.rs; seeds: fuzz/seed.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

seconds=${FUZZ_SECONDS:-30}
timeout=${FUZZ_TIMEOUT:-10}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# The corpora are gitignored: seed them from the conformance frames and protocol vectors.
bash fuzz/seed.sh

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

# One build for all targets (they share the instrumented anxin), so each run below starts
# fuzzing at once.
s=$(date +%s)
cargo fuzz build --sanitizer none
echo "fuzz build took $(( $(date +%s) - s )) s"

mkdir -p fuzz/artifacts
failed=()
for t in $targets; do
    log=fuzz/artifacts/$t.log
    s=$(date +%s)
    if cargo fuzz run --sanitizer none "$t" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout="$timeout" -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz $t: ok in $(( $(date +%s) - s )) s"
        grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done [0-9]+ runs' "$log" | sed 's/^/    /'
    else
        echo "fuzz $t: FAILED after $(( $(date +%s) - s )) s (log: $log)"
        tail -n 60 "$log" | sed 's/^/    /'
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
    exit 1
fi
