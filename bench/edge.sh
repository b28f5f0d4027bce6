#!/usr/bin/env bash
# What an edge spends its life on: TLS and HTTP/2, against nginx and HAProxy
# terminating the same way in front of the same upstream.
#
#   bench/edge.sh               # ROUNDS=3 DURATION=10 CONNECTIONS=64 STREAMS=16 RESUMERS=8
#
# An nginx upstream answers a small JSON body over HTTP/1.1 keep-alive. Each
# front end terminates TLS 1.3 with one ECDSA P-256 certificate (made here
# with openssl) and proxies to it:
#
#   https         wrk over TLS, keep-alive: req/s, p50, p99
#   new-tls       wrk over TLS with `Connection: close`: every request a new
#                 connection and a full handshake (wrk resumes no session)
#   resumed-tls   RESUMERS (8) `openssl s_time -reuse` clients: every request a new
#                 connection resuming the session of the first (TLS 1.3
#                 PSK with ECDHE: no certificate signed or sent); each
#                 front end keeps sessions in a cache of its own (no
#                 stateless tickets)
#   h2-tls        h2load -c CONNECTIONS -m STREAMS over TLS (ALPN h2): req/s
#   h2c           the same over plain TCP, HTTP/2 by prior knowledge
#                 (gateway and nginx; HAProxy's h2c needs its own frontend
#                 mode and is left out)
#
# Interleaved rounds, medians, ratios against the best peer of each row.
# Needs nginx, haproxy, wrk, h2load, openssl (Debian packages, installed when
# missing). Everything it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-16}
RESUMERS=${RESUMERS:-8}
PORT_UPSTREAM=${PORT_UPSTREAM:-18380}
PORT_NGINX_TLS=${PORT_NGINX_TLS:-18381}
PORT_NGINX_H2C=${PORT_NGINX_H2C:-18382}
PORT_HAPROXY_TLS=${PORT_HAPROXY_TLS:-18383}
PORT_MCGW_TLS=${PORT_MCGW_TLS:-18384}
PORT_MCGW=${PORT_MCGW:-18385}
PORT_ADMIN=${PORT_ADMIN:-18386}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/microgateway

bench_workdir edge
need wrk wrk
need nginx nginx-light
need haproxy haproxy
need h2load nghttp2-client
need openssl openssl
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)
build_release

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

mkdir -p "$WORK/proxy/logs"
upstream_conf "$PORT_UPSTREAM"
cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes $(nproc);
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000;
    http2_max_concurrent_streams 256;
    upstream backend {
        server 127.0.0.1:$PORT_UPSTREAM;
        keepalive 128;
    }
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache shared:SSL:10m;
    server {
        listen 127.0.0.1:$PORT_NGINX_TLS ssl http2 reuseport;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$PORT_NGINX_H2C http2 reuseport;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $(nproc)
    maxconn 8192
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend tls
    bind 127.0.0.1:$PORT_HAPROXY_TLS ssl crt $WORK/haproxy.pem alpn h2,http/1.1
    default_backend upstream
backend upstream
    server up 127.0.0.1:$PORT_UPSTREAM
EOF
cat >"$WORK/microgateway.yaml" <<EOF
ports: { http: $PORT_MCGW, https: $PORT_MCGW_TLS, bind: 127.0.0.1 }
admin: { port: $PORT_ADMIN, bind: 127.0.0.1 }
tls: { certificate: "$WORK/cert.pem", key: "$WORK/key.pem" }
apis:
- name: bench
  version: "1.0"
  base_path: /bench
  upstream: { url: "http://127.0.0.1:$PORT_UPSTREAM/bench" }
  authentication: { type: none }
  resources: ["GET /items"]
EOF

for name in upstream proxy; do
    "$NGINX" -p "$WORK/$name" -c "$WORK/$name/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
done
"$HAPROXY" -f "$WORK/haproxy.cfg" -db &
PIDS+=($!)
MCGW_LOG=warn "$BIN" start -c "$WORK/microgateway.yaml" 2>"$WORK/microgateway.log" &
PIDS+=($!)
for port in "$PORT_UPSTREAM" "$PORT_NGINX_TLS" "$PORT_NGINX_H2C" "$PORT_HAPROXY_TLS" "$PORT_MCGW_TLS" "$PORT_MCGW"; do
    wait_port "$port"
done

to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# wrk_run NAME URL [HEADER]: appends "rate p50 p99 errors" to $WORK/NAME.txt.
wrk_run() {
    local out rate p50 p99 errors
    if [ -n "${3:-}" ]; then
        out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$3" "$2" 2>&1)
    else
        out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$2" 2>&1)
    fi
    rate=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
    errors=$(echo "$out" | awk '/Socket errors|Non-2xx/ {print}' | tr '\n' ' ')
    echo "${rate:-0} $p50 $p99" >>"$WORK/$1.txt"
    printf '  %-26s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms %s\n' "$1" "${rate:-0}" "$p50" "$p99" "$errors" >&2
}
# resumed_run NAME PORT: RESUMERS s_time clients at once, each connecting
# again and again with the session of its first connection and asking for
# one response per connection; appends the connections per second of all
# to $WORK/NAME.txt. A client any of whose connections was not resumed
# (s_time prints `*` for it instead of `r`) counts 0.
resumed_run() {
    local total=0 n i clients=()
    for i in $(seq 1 "$RESUMERS"); do
        openssl s_time -connect "127.0.0.1:$2" -www /bench/items -reuse -time "$DURATION" \
            >"$WORK/s_time.$i" 2>&1 &
        clients+=($!)
    done
    wait "${clients[@]}" || true
    for i in $(seq 1 "$RESUMERS"); do
        n=$(awk '/session id reuse/ {r = 1; next}
            r && /\*/ {fresh = 1}
            r && / connections in .* real seconds/ {if (!fresh && $4 > 0) print $1 / $4; exit}' "$WORK/s_time.$i")
        total=$(awk -v a="$total" -v b="${n:-0}" 'BEGIN { print a + b }')
    done
    echo "$total 0 0" >>"$WORK/$1.txt"
    printf '  %-26s %10.0f connections/s\n' "$1" "$total" >&2
}
# h2_run NAME URL: appends "rate" to $WORK/NAME.txt.
h2_run() {
    local out rate failed
    out=$(h2load -D "$DURATION" -c "$CONNECTIONS" -m "$STREAMS" -t 2 "$2" 2>&1)
    rate=$(echo "$out" | awk '/^finished in/ {print $4}')
    failed=$(echo "$out" | awk '/^requests:/ {print $10 + $12}')
    echo "${rate:-0} 0 0" >>"$WORK/$1.txt"
    printf '  %-26s %10.0f req/s  failed %s\n' "$1" "${rate:-0}" "$failed" >&2
}

echo "warm-up ..." >&2
wrk -t2 -c"$CONNECTIONS" -d2s "https://127.0.0.1:$PORT_MCGW_TLS/bench/items" >/dev/null
wrk -t2 -c"$CONNECTIONS" -d2s "https://127.0.0.1:$PORT_NGINX_TLS/bench/items" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    wrk_run https-nginx "https://127.0.0.1:$PORT_NGINX_TLS/bench/items"
    wrk_run https-haproxy "https://127.0.0.1:$PORT_HAPROXY_TLS/bench/items"
    wrk_run https-microgateway "https://127.0.0.1:$PORT_MCGW_TLS/bench/items"
    wrk_run new-tls-nginx "https://127.0.0.1:$PORT_NGINX_TLS/bench/items" "Connection: close"
    wrk_run new-tls-haproxy "https://127.0.0.1:$PORT_HAPROXY_TLS/bench/items" "Connection: close"
    wrk_run new-tls-microgateway "https://127.0.0.1:$PORT_MCGW_TLS/bench/items" "Connection: close"
    resumed_run resumed-tls-nginx "$PORT_NGINX_TLS"
    resumed_run resumed-tls-haproxy "$PORT_HAPROXY_TLS"
    resumed_run resumed-tls-microgateway "$PORT_MCGW_TLS"
    h2_run h2-tls-nginx "https://127.0.0.1:$PORT_NGINX_TLS/bench/items"
    h2_run h2-tls-haproxy "https://127.0.0.1:$PORT_HAPROXY_TLS/bench/items"
    h2_run h2-tls-microgateway "https://127.0.0.1:$PORT_MCGW_TLS/bench/items"
    h2_run h2c-nginx "http://127.0.0.1:$PORT_NGINX_H2C/bench/items"
    h2_run h2c-microgateway "http://127.0.0.1:$PORT_MCGW/bench/items"
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1.txt" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
best() { awk -v a="$1" -v b="${2:-0}" 'BEGIN { print (a > b ? a : b) }'; }

echo
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
echo "tools:   $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$HAPROXY" -v 2>&1 | head -1 | awk '{print "HAProxy", $3}'), $(h2load --version 2>&1 | head -1), microgateway $("$BIN" --version | awk '{print $2}')"
echo "load:    $ROUNDS interleaved rounds of ${DURATION}s, medians; wrk -t2 -c$CONNECTIONS; h2load -c$CONNECTIONS -m$STREAMS; TLS 1.3, ECDSA P-256"
echo
printf '%-28s %12s %10s %10s\n' "" "req/s" "p50 ms" "p99 ms"
for name in https-nginx https-haproxy https-microgateway new-tls-nginx new-tls-haproxy new-tls-microgateway \
    resumed-tls-nginx resumed-tls-haproxy resumed-tls-microgateway h2-tls-nginx h2-tls-haproxy h2-tls-microgateway h2c-nginx h2c-microgateway; do
    case $name in
        h2* | resumed*) printf '%-28s %12.0f %10s %10s\n' "$name" "$(col "$name" 1)" - - ;;
        *) printf '%-28s %12.0f %10.3f %10.3f\n' "$name" "$(col "$name" 1)" "$(col "$name" 2)" "$(col "$name" 3)" ;;
    esac
done
echo
for row in https new-tls resumed-tls h2-tls; do
    peer=$(best "$(col "$row-nginx" 1)" "$(col "$row-haproxy" 1)")
    echo "$row: microgateway / best of nginx and HAProxy $(ratio "$(col "$row-microgateway" 1)" "$peer")x (target >= 1.0)"
done
echo "h2-tls: microgateway / nginx $(ratio "$(col h2-tls-microgateway 1)" "$(col h2-tls-nginx 1)")x (target >= 1.0), / HAProxy $(ratio "$(col h2-tls-microgateway 1)" "$(col h2-tls-haproxy 1)")x"
echo "h2c: microgateway / nginx $(ratio "$(col h2c-microgateway 1)" "$(col h2c-nginx 1)")x (target >= 1.0)"
