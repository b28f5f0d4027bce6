#!/usr/bin/env bash
# Hot-reload benchmark: wrk load on a route while the configuration file is
# rewritten every 500 ms for 30 s. Reports failed requests, req/s with and
# without reloads, time from file write to the new snapshot serving
# (p50/p99), and RSS before/after 1 000 reloads.
#
#   bench/reload.sh            # needs wrk (installed from Debian if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q
exec python3 bench/reload_bench.py "$@"
