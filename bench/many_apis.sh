#!/usr/bin/env bash
# Time to load, then let go of, a configuration of many APIs: `check`
# compiles the file and drops the snapshot, as a downstream gateway does
# with each document it downloads (validated apart, then applied) and a
# reload that removes them does. The time should grow with the number of
# APIs, not with its square.
#
#   bench/many_apis.sh                 # 1000, 2000 and 4000 APIs
#   COUNTS="500 8000" bench/many_apis.sh
#   BUILD=0 bench/many_apis.sh         # the release binary as it is
#   BASE=d373579 bench/many_apis.sh    # and another commit's, the same way
#
# Each API has three resources, the `echo` upstream and no authentication.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
COUNTS=${COUNTS:-1000 2000 4000}
BASE=${BASE:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
bench_workdir many-apis

build_release
declare -A BINS=([this]="$TARGET_DIR/release/microgateway")
if [ -n "$BASE" ]; then
    BINS[$BASE]=$(base_binary "$BASE")
fi

for count in $COUNTS; do
    file="$WORK/apis-$count.yaml"
    {
        echo "ports: { http: 0 }"
        echo "apis:"
        for i in $(seq 1 "$count"); do
            echo "- { name: \"A$i\", base_path: /a$i, upstream: { echo: true }, authentication: { type: none }, resources: [\"GET /x\", \"GET /y\", \"POST /z\"] }"
        done
    } >"$file"
    for name in "${!BINS[@]}"; do
        start=$(date +%s%N)
        "${BINS[$name]}" check -c "$file" >/dev/null 2>&1
        end=$(date +%s%N)
        printf '%-10s %6d APIs: check in %8.2f s\n' "$name" "$count" "$(awk -v ns=$((end - start)) 'BEGIN { print ns / 1e9 }')"
    done
done
