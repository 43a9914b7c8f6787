#!/usr/bin/env bash
# Paired backlog-drain comparison of two engine builds, for figures that single runs cannot
# resolve on a 2-core box (one build against itself spreads ±15 % per pair). Runs
# benches/load.sh RUNS times with both engines on the same backlog, alternating which goes
# first, and prints each engine's rates, their mean and the pairwise ratio B/A.
# Usage: A="label=binary[@rules]" B="label=binary[@rules]" RUNS=8 COUNT=100000 bash benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?A=label=binary[@rules]}" "${B:?B=label=binary[@rules]}"
RUNS=${RUNS:-8}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq 1 "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then engines="$A $B"; else engines="$B $A"; fi
    ENGINES="$engines" PHASES=backlog PROTOS=${PROTOS:-5} bash benches/load.sh 2>&1 |
        grep -E "backlog, MQTT [45]: stored" | tee -a "$out" | sed -E 's/ \(first receive.*//'
done
python3 - "$out" "${A%%=*}" "${B%%=*}" <<'PY'
import re, statistics as st, sys
path, a, b = sys.argv[1:]
runs = {a: [], b: []}
for line in open(path):
    m = re.match(r"(\S+) backlog, .*drain (\d+) msg/s \(([\d.]+)", line)
    if m and m[1] in runs:
        runs[m[1]].append((int(m[2]), float(m[3])))
for k, v in runs.items():
    print(f"{k}: mean {round(st.mean(r for r, _ in v))} msg/s (range {min(r for r, _ in v)}–{max(r for r, _ in v)}), ratio to the bare subscriber {st.mean(x for _, x in v):.3f}")
pairs = [y[0] / x[0] for x, y in zip(runs[a], runs[b])]
print(f"{b}/{a} pairwise: {', '.join(f'{p:.2f}' for p in pairs)}; mean {st.mean(pairs):.2f}")
PY
