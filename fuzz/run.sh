#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after the other, starting
# from the committed seeds (fuzz/corpus/TARGET) and what earlier runs found
# (fuzz/work/TARGET, not committed). Prints executions and corpus size per
# target; exits non-zero when a target crashes (its input is then in
# fuzz/artifacts/TARGET/).
#
#   fuzz/run.sh 30            # smoke run
#   TARGETS="path chunked" fuzz/run.sh 900
#
# Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
set -euo pipefail

seconds=${1:?usage: fuzz/run.sh SECONDS}
cd "$(dirname "$0")"
targets=${TARGETS:-$(cargo +nightly fuzz list)}
# Debug assertions on: overflow checks find arithmetic that input can drive.
cargo +nightly fuzz build -O -a >/dev/null

failed=0
for target in $targets; do
    mkdir -p "work/$target" "corpus/$target"
    log="work/$target.log"
    if cargo +nightly fuzz run -O -a "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    corpus=$(find "work/$target" "corpus/$target" -type f | wc -l)
    printf '%-14s %-5s %8ss %12s execs %6s corpus\n' \
        "$target" "$status" "$seconds" "${runs:-?}" "$corpus"
    if [ "$status" = CRASH ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 5 | sed 's/^/    /'
    fi
done
exit "$failed"
