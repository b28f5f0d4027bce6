#!/usr/bin/env bash
# A two-endpoint API: microgateway (`upstream.endpoints`, round robin)
# against nginx with the same two upstreams in an `upstream {}` block, with
# the same wrk load; then a run of each where one endpoint is stopped a
# third of the way in, reporting the failed requests of both.
#
#   bench/endpoints.sh          # ROUNDS=3 DURATION=10s CONNECTIONS=64 THREADS=2
#   MCGW_BIN=target/pgo/release/microgateway-bolt bench/endpoints.sh
#                               # that binary as the gateway (here the
#                               # shipped build: the image is profile-guided)
#
# "nginx-fields" is the same nginx adding to each request the fields the
# gateway adds by default (bench/lib.sh): the equal-work peer, measured in
# the same rotated rounds.
#
# Targets: req/s >= 1.0x nginx; 0 failed requests for the gateway when an
# endpoint goes away (GETs go to the other endpoint). Needs nginx and wrk.
# BUILD=0 uses the release binary already built.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT_A=${PORT_A:-18190}
PORT_B=${PORT_B:-18191}
PORT_NGINX=${PORT_NGINX:-18192}
PORT_MCGW=${PORT_MCGW:-18193}
PORT_ADMIN=${PORT_ADMIN:-18194}
PORT_NGINX_FIELDS=${PORT_NGINX_FIELDS:-18195}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# MCGW_BIN=PATH: that binary is the gateway of every contender (not built).
BIN=${MCGW_BIN:-$TARGET_DIR/release/microgateway}
bench_workdir endpoints

need wrk wrk
need nginx nginx-light
NGINX=$(command -v nginx)

[ -n "${MCGW_BIN:-}" ] || build_release

# start_nginx NAME: nginx in the foreground on $WORK/NAME/nginx.conf; its
# master pid in $WORK/NAME/master.
start_nginx() {
    mkdir -p "$WORK/$1/logs"
    "$NGINX" -p "$WORK/$1" -c "$WORK/$1/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    echo $! >"$WORK/$1/master"
}

upstream_conf() { # name port
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$2 reuseport;
        location / {
            default_type application/json;
            return 200 '{"ok":true,"service":"$1"}';
        }
    }
}
EOF
}
upstream_conf a "$PORT_A"
upstream_conf b "$PORT_B"
# proxy_conf NAME PORT [fields]: nginx in $WORK/NAME balancing over both
# upstreams; with "fields", adding the fields microgateway adds
# (bench/lib.sh): the equal-work peer.
proxy_conf() {
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/nginx.conf" <<EOF
worker_processes $(nproc);
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log crit;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    upstream backend {
        server 127.0.0.1:$PORT_A;
        server 127.0.0.1:$PORT_B;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$2 reuseport;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$([ "${3:-}" = fields ] && nginx_fields_location)
        }
    }
}
EOF
}
proxy_conf proxy "$PORT_NGINX"
proxy_conf proxy-fields "$PORT_NGINX_FIELDS" fields
cat >"$WORK/microgateway.yaml" <<EOF
ports: { http: $PORT_MCGW, bind: 127.0.0.1 }
admin: { port: $PORT_ADMIN, bind: 127.0.0.1 }
apis:
- name: bench
  version: "1.0"
  base_path: /bench
  upstream:
    endpoints:
    - url: "http://127.0.0.1:$PORT_A/bench"
    - url: "http://127.0.0.1:$PORT_B/bench"
    retry: { attempts: 2, on: [connect_failure, refused_stream] }
  authentication: { type: none }
  resources: ["GET /items"]
EOF

start_nginx a
start_nginx b
start_nginx proxy
start_nginx proxy-fields
MCGW_LOG=warn "$BIN" start -c "$WORK/microgateway.yaml" 2>"$WORK/microgateway.log" &
PIDS+=($!)
for port in "$PORT_A" "$PORT_B" "$PORT_NGINX" "$PORT_NGINX_FIELDS" "$PORT_MCGW"; do wait_port "$port"; done

# wrk_run PORT: one wrk run; prints "req/s failed" (non-2xx answers plus
# socket errors).
wrk_run() {
    local out rps non2xx socket
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$1/bench/items")
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    socket=$(echo "$out" | awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}')
    echo "$rps $(( ${non2xx:-0} + ${socket:-0} ))"
}

echo "warm-up ..." >&2
DURATION=2s wrk_run "$PORT_NGINX" >/dev/null
DURATION=2s wrk_run "$PORT_MCGW" >/dev/null

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
measure() { # name port
    wrk_run "$2" | tee -a "$WORK/$1.txt" | sed "s/^/  $(printf '%-13s' "$1")/" >&2
}
CONTENDERS=("nginx $PORT_NGINX" "microgateway $PORT_MCGW" "nginx-fields $PORT_NGINX_FIELDS")
# Each round runs the contenders in another order (rotated by one).
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    for k in 0 1 2; do
        # shellcheck disable=SC2086
        measure ${CONTENDERS[$(((k + round - 1) % 3))]}
    done
done
NGINX_RPS=$(awk '{print $1}' "$WORK/nginx.txt" | median)
MCGW_RPS=$(awk '{print $1}' "$WORK/microgateway.txt" | median)
FIELDS_RPS=$(awk '{print $1}' "$WORK/nginx-fields.txt" | median)

# One endpoint stopped (SIGTERM: nginx's fast shutdown) a third of the way
# into a run, started again after; "req/s failed" in $WORK/killed-PORT.
seconds=${DURATION%s}
killed_run() { # port
    (
        sleep "$(awk -v s="$seconds" 'BEGIN {print s / 3}')"
        kill -TERM "$(cat "$WORK/b/master")" 2>/dev/null || true
    ) &
    local killer=$!
    wrk_run "$1" >"$WORK/killed-$1"
    wait "$killer" || true
    wait "$(cat "$WORK/b/master")" 2>/dev/null || true
    start_nginx b
    wait_port "$PORT_B"
    sleep 1
}
echo "endpoint b stopped mid-run ..." >&2
killed_run "$PORT_NGINX"
killed_run "$PORT_MCGW"
NGINX_FAILED=$(awk '{print $2}' "$WORK/killed-$PORT_NGINX")
MCGW_FAILED=$(awk '{print $2}' "$WORK/killed-$PORT_MCGW")

echo
echo "two endpoints, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, medians; all on one host"
printf '%-14s %12.0f req/s\n' nginx "$NGINX_RPS" microgateway "$MCGW_RPS" nginx-fields "$FIELDS_RPS"
# compared A B: A/B by medians, and paired: the median of the ratios round
# by round (drift that moves a whole round cancels), with their range.
compared() {
    local ratios
    ratios=$(paste "$WORK/$1.txt" "$WORK/$2.txt" | awk '$3 > 0 {print $1 / $3}')
    printf '%sx by medians, %.2fx paired (rounds %s)' \
        "$(awk -v a="$(awk '{print $1}' "$WORK/$1.txt" | median)" -v b="$(awk '{print $1}' "$WORK/$2.txt" | median)" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')" \
        "$(echo "$ratios" | median)" "$(echo "$ratios" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f-%.2f", lo, hi}')"
}
echo "microgateway / nginx: req/s $(compared microgateway nginx) (target >= 1.0)"
echo "equal work, nginx adding the fields the gateway adds (bench/lib.sh): microgateway / nginx-fields $(compared microgateway nginx-fields)"
echo "one endpoint stopped mid-run: failed requests nginx $NGINX_FAILED, microgateway $MCGW_FAILED (target 0)"
