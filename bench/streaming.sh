#!/usr/bin/env bash
# WebSocket and gRPC through microgateway and through nginx, same load.
#
#   bench/streaming.sh          # ROUNDS=3 DURATION=10 TUNNELS=64 STREAMS=16
#
# WebSocket: an echo upstream (bench/stream_load.rs); TUNNELS connections,
# each sending a 32-byte binary message and waiting for its echo, again and
# again for DURATION seconds: round trips per second, p50 and p99. nginx
# proxies with the upgrade headers (`proxy_http_version 1.1`, `Upgrade`,
# `Connection: upgrade`); the gateway's API has `websocket: true`.
#
# gRPC: a unary echo upstream over h2c (HTTP/2 by prior knowledge, the
# request's message back with `grpc-status: 0`), driven by h2load with 64
# clients x STREAMS concurrent streams, a 64-byte message, `te: trailers`:
# calls per second and mean latency. nginx: `listen … http2` and
# `grpc_pass`; the gateway: `grpc: true`, `upstream.protocol: h2c`.
#
# Both in interleaved rounds, medians; every route without authentication
# (the proxying is measured, not the token check). Targets: >= 1.0x nginx.
# Needs nginx, h2load (Debian nginx-light, nghttp2-client; installed when
# missing). Everything it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
TUNNELS=${TUNNELS:-64}
STREAMS=${STREAMS:-16}
PORT_WS_UP=${PORT_WS_UP:-18280}
PORT_GRPC_UP=${PORT_GRPC_UP:-18281}
PORT_NGINX_WS=${PORT_NGINX_WS:-18282}
PORT_NGINX_GRPC=${PORT_NGINX_GRPC:-18283}
PORT_MCGW=${PORT_MCGW:-18284}
PORT_ADMIN=${PORT_ADMIN:-18285}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/microgateway
LOAD=$TARGET_DIR/release/examples/stream-load
bench_workdir streaming

need nginx nginx-light
need h2load nghttp2-client
NGINX=$(command -v nginx)

build_release
build_release --example stream-load

mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $(nproc);
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    upstream grpc_echo {
        server 127.0.0.1:$PORT_GRPC_UP;
        keepalive 1024;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX_WS reuseport;
        location / {
            proxy_pass http://127.0.0.1:$PORT_WS_UP;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
    }
    server {
        listen 127.0.0.1:$PORT_NGINX_GRPC reuseport http2;
        http2_max_concurrent_streams 256;
        location / {
            grpc_pass grpc://grpc_echo;
        }
    }
}
EOF
cat >"$WORK/microgateway.yaml" <<EOF
ports: { http: $PORT_MCGW, bind: 127.0.0.1 }
admin: { port: $PORT_ADMIN, bind: 127.0.0.1 }
apis:
- name: ws
  version: "1.0"
  base_path: /ws
  websocket: true
  upstream: { url: "http://127.0.0.1:$PORT_WS_UP/ws" }
  authentication: { type: none }
  resources: ["GET /echo"]
- name: grpc
  version: "1.0"
  base_path: /echo.Echo
  grpc: true
  upstream: { url: "http://127.0.0.1:$PORT_GRPC_UP/echo.Echo", protocol: h2c }
  authentication: { type: none }
  resources: ["POST /Unary"]
EOF

"$LOAD" ws-server "127.0.0.1:$PORT_WS_UP" &
PIDS+=($!)
"$LOAD" grpc-server "127.0.0.1:$PORT_GRPC_UP" &
PIDS+=($!)
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
MCGW_LOG=warn "$BIN" start -c "$WORK/microgateway.yaml" 2>"$WORK/microgateway.log" &
PIDS+=($!)
for port in "$PORT_WS_UP" "$PORT_GRPC_UP" "$PORT_NGINX_WS" "$PORT_NGINX_GRPC" "$PORT_MCGW"; do
    wait_port "$port"
done
"$LOAD" grpc-message "$WORK/message.bin" 64

# ws NAME URL: one WebSocket run; appends "rate p50 p99 failed".
ws() {
    local out
    out=$("$LOAD" ws-load "$2" "$TUNNELS" "$DURATION")
    echo "$out" >>"$WORK/$1.txt"
    read -r rate p50 p99 failed <<<"$out"
    printf '  %-22s %10.0f round trips/s  p50 %7.3f ms  p99 %7.3f ms  failed %s\n' "$1" "$rate" "$p50" "$p99" "$failed" >&2
}
# grpc NAME URL: one h2load run; appends "rate mean_ms failed".
grpc() {
    local out rate mean failed
    out=$(h2load -D "$DURATION" -c 64 -m "$STREAMS" -t 2 -d "$WORK/message.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "$2" 2>&1)
    rate=$(echo "$out" | awk '/^finished in/ {print $4}')
    failed=$(echo "$out" | awk '/^requests:/ {print $10 + $12}')
    mean=$(echo "$out" | awk '/^time for request:/ {print $6}')
    case $mean in
        *us) mean=$(awk -v v="${mean%us}" 'BEGIN {printf "%.3f", v / 1000}') ;;
        *ms) mean=${mean%ms} ;;
        *s) mean=$(awk -v v="${mean%s}" 'BEGIN {printf "%.3f", v * 1000}') ;;
    esac
    echo "$rate $mean $failed" >>"$WORK/$1.txt"
    printf '  %-22s %10.0f calls/s        mean %7.3f ms  failed %s\n' "$1" "$rate" "$mean" "$failed" >&2
}

echo "warm-up ..." >&2
"$LOAD" ws-load "ws://127.0.0.1:$PORT_MCGW/ws/echo" "$TUNNELS" 2 >/dev/null
"$LOAD" ws-load "ws://127.0.0.1:$PORT_NGINX_WS/ws/echo" "$TUNNELS" 2 >/dev/null
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    ws websocket-nginx "ws://127.0.0.1:$PORT_NGINX_WS/ws/echo"
    ws websocket-microgateway "ws://127.0.0.1:$PORT_MCGW/ws/echo"
    grpc grpc-nginx "http://127.0.0.1:$PORT_NGINX_GRPC/echo.Echo/Unary"
    grpc grpc-microgateway "http://127.0.0.1:$PORT_MCGW/echo.Echo/Unary"
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1.txt" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
sum() { awk -v c="$2" '{s += $c} END {print s + 0}' "$WORK/$1.txt"; }

echo
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
echo "tools:   $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(h2load --version 2>&1 | head -1), microgateway $("$BIN" --version | awk '{print $2}')"
echo "load:    $ROUNDS interleaved rounds of ${DURATION}s, medians; $TUNNELS WebSocket tunnels; h2load -c 64 -m $STREAMS"
echo
printf '%-24s %14s %10s %10s %8s\n' "" "per second" "p50 ms" "p99 ms" "failed"
for name in websocket-nginx websocket-microgateway; do
    printf '%-24s %14.0f %10.3f %10.3f %8s\n' "$name" "$(col "$name" 1)" "$(col "$name" 2)" "$(col "$name" 3)" "$(sum "$name" 4)"
done
printf '%-24s %14s %10s\n' "" "per second" "mean ms"
for name in grpc-nginx grpc-microgateway; do
    printf '%-24s %14.0f %10.3f %10s %8s\n' "$name" "$(col "$name" 1)" "$(col "$name" 2)" "" "$(sum "$name" 3)"
done
echo
echo "websocket: microgateway / nginx round trips/s $(ratio "$(col websocket-microgateway 1)" "$(col websocket-nginx 1)")x (target >= 1.0), p99 $(ratio "$(col websocket-microgateway 3)" "$(col websocket-nginx 3)")x"
echo "grpc:      microgateway / nginx calls/s $(ratio "$(col grpc-microgateway 1)" "$(col grpc-nginx 1)")x (target >= 1.0), mean latency $(ratio "$(col grpc-microgateway 2)" "$(col grpc-nginx 2)")x"
