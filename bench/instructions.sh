#!/usr/bin/env bash
# Instructions per proxied request on the plain bench route, counted by
# callgrind: repeatable whatever else the machine is doing, so a change's
# cost shows where wall-clock rounds on a shared host are noise.
#
#   bench/instructions.sh                 # this checkout's release build
#   BASE=39010b9 bench/instructions.sh    # and another commit's, the same way
#   BUILD=0 bench/instructions.sh         # the release binary as it is
#   TOKEN_BYTES=900 bench/instructions.sh # each request with a bearer token
#                                         # that long (forwarded as it is)
#   BARE=1 bench/instructions.sh          # with `forwarding` all off (the
#                                         # gateway adds no field)
#   ROUTE=throttled bench/instructions.sh # one API-wide throttle (memory) too
#                                         # high to refuse; ROUTE=balanced: two
#                                         # endpoints (the same upstream), round robin
#
# An nginx upstream answers a small JSON body; the gateway runs under
# `valgrind --tool=callgrind`; after a warm-up its counters are zeroed, one
# keep-alive client sends REQUESTS requests (default 3000) one after
# another, and the instructions counted in that window are divided by them.
# BASE is built as in bench/compare.sh (a detached worktree in
# target/bench-base/). Needs nginx and valgrind (installed when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
REQUESTS=${REQUESTS:-3000}
PORT_UPSTREAM=${PORT_UPSTREAM:-18190}
PORT_MCGW=${PORT_MCGW:-18191}
PORT_ADMIN=${PORT_ADMIN:-18192}
BASE=${BASE:-}
ROUTE=${ROUTE:-plain}
TOKEN_BYTES=${TOKEN_BYTES:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
bench_workdir instr
need nginx nginx-light
need valgrind valgrind

build_release
# KEEP=DIR keeps the profiles there (callgrind_annotate DIR/cg.this.*.1).
on_cleanup() {
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/cg.* "$KEEP"/; fi
}
declare -A BINS=([this]="$TARGET_DIR/release/microgateway")
if [ -n "$BASE" ]; then
    BINS[$BASE]=$(base_binary "$BASE")
fi

upstream_conf "$PORT_UPSTREAM"
nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port "$PORT_UPSTREAM"

case "$ROUTE" in
plain) UPSTREAM="{ url: \"http://127.0.0.1:$PORT_UPSTREAM/bench\" }"; POLICIES= ;;
throttled)
    UPSTREAM="{ url: \"http://127.0.0.1:$PORT_UPSTREAM/bench\" }"
    POLICIES="  policies: { throttle: [{ limit: 1000000, per: 1s }] }" ;;
balanced)
    UPSTREAM="{ endpoints: [{ url: \"http://127.0.0.1:$PORT_UPSTREAM/bench\" }, { url: \"http://localhost:$PORT_UPSTREAM/bench\" }] }"
    POLICIES= ;;
*) echo "ROUTE is plain, throttled or balanced" >&2; exit 2 ;;
esac
cat >"$WORK/microgateway.yaml" <<CONF
ports: { http: $PORT_MCGW, bind: 127.0.0.1 }
admin: { port: $PORT_ADMIN, bind: 127.0.0.1 }
apis:
- name: bench
  version: "1.0"
  base_path: /bench
  upstream: $UPSTREAM
  authentication: { type: none }
  resources: ["GET /items"]
$POLICIES
CONF
if [ "${BARE:-0}" = 1 ]; then
    echo "forwarding: { x_forwarded: false, forwarded: false, request_id: false, traceparent: false }" >>"$WORK/microgateway.yaml"
fi

# client COUNT: COUNT keep-alive requests on one connection, each answered 200.
client() {
    python3 - "$PORT_MCGW" "$1" "$TOKEN_BYTES" <<'PY'
import socket, sys
port, count, token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
auth = b"Authorization: Bearer " + b"eyJ0" * (token // 4) + b"\r\n" if token else b""
req = b"GET /bench/items HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nAccept: */*\r\n" + auth + b"\r\n"
buf = b""
for _ in range(count):
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(buf) < length:
        buf += s.recv(65536)
    buf = buf[length:]
PY
}

for name in "${!BINS[@]}"; do
    MCGW_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$name.%p" \
        "${BINS[$name]}" start -c "$WORK/microgateway.yaml" 2>"$WORK/$name.log" &
    pid=$!
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT_MCGW") 2>/dev/null && break
        sleep 0.1
    done
    client 300
    callgrind_control -z "$pid" >/dev/null
    client "$REQUESTS"
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
    total=0
    # Every dump since the zeroing (one per thread with --separate-threads
    # off: one file), its "summary:" line; the final dump at exit is not
    # counted (it holds what came after).
    for f in "$WORK"/cg."$name".*.1; do
        ir=$(awk '/^summary:/ {print $2}' "$f")
        total=$((total + ${ir:-0}))
    done
    printf '%-10s %8d instructions per request (%d requests, %s route, token %d bytes)\n' "$name" $((total / REQUESTS)) "$REQUESTS" "$ROUTE" "$TOKEN_BYTES"
done
