#!/usr/bin/env bash
# microgateway against nginx and HAProxy, every workload of the speed table
# in one run.
#
#   bench/compare.sh            # ROUNDS=3 DURATION=10s CONNECTIONS=64 THREADS=2
#   QUICK=1 bench/compare.sh    # a quick look: one short round of each
#                               # workload, 1,000 idle connections
#
# The plain, logged, throttled and OAuth2 routes are measured here; then,
# once these contenders are stopped, TLS and HTTP/2 (bench/edge.sh, EDGE=0
# leaves it out) and idle connections, plain and over TLS (bench/idle.py,
# IDLE=0 leaves it out), each against the same peers.
#
# Starts an nginx upstream answering a small JSON body, then measures in
# interleaved rounds: the upstream direct, nginx proxying to it (keepalive
# pool, HTTP/1.1), and microgateway (release build, MCGW_LOG=warn) on a route
# with `authentication: none`. Prints the median req/s, p50 and p99 of each,
# the microgateway/nginx ratios, the same ratios paired round by round (the
# median of each round's ratio: drift that moves a whole round cancels),
# and resident memory idle and at its peak (VmHWM: nothing samples during
# the runs). Each round runs the contenders in another order (rotated by
# one): with ROUNDS a multiple of their number, each is measured in each
# position equally often. Everything it starts is stopped on exit.
#
# Targets: req/s >= 1.0x nginx and HAProxy, p99 <= HAProxy's, RSS idle <=
# 10 MiB and under load <= 12 MiB.
# Needs nginx, HAProxy and wrk (installed from Debian packages when missing).
# HAProxy runs beside nginx as the second peer (nbthread = cores, http-reuse
# always, no logging).
#
# With their access log on (LOGGED=1, the default): "nginx-logged"
# (nginx's default access_log, to a file) and "microgateway-logged"
# (MCGW_LOG=info: one access-log line per request, stderr to a file) in
# the same rounds; LOGGED=0 leaves them out.
#
# Equal work (FIELDS=1, the default): "nginx-fields" is the nginx proxy
# adding to each request the fields microgateway adds by default
# (X-Request-Id both ways, X-Forwarded-For/-Proto/-Host;
# bench/lib.sh) — the plain nginx adds none. The gateway's
# plain and throttled routes are reported against both; and
# "microgateway-bare", the same gateway with `forwarding` all off (it adds
# nothing either), against the plain nginx, with (THROTTLE=1)
# "throttled-bare", its throttled route: the throttle's cost against
# nginx's plain proxy when neither adds a request field.
#
# Throttling (THROTTLE=1, the default): the contender "throttled" is the
# same gateway on a route with one API-wide throttle too high to refuse
# anything (memory store; target req/s >= 1.0x nginx), and, when
# redis-server is installed, "throttled-redis" a second gateway counting
# the same limit on a redis-server of its own: req/s and the p99 added
# over the unthrottled route, in the same rounds.
#
#   PGO=1 bench/compare.sh      # also the profile-guided build (bench/pgo-build.sh)
#
# measures the PGO build as a fourth contender in the same rounds, and runs
# the OAuth2 routes once more with it (PGO_BIN=PATH: that binary, as
# bench/pgo-build.sh made it, instead of building one).
#
#   MCGW_BIN=target/pgo/release/microgateway-bolt bench/compare.sh
#
# measures that binary as the gateway of every contender instead (here
# the shipped build: the container image is built profile-guided, then
# laid out by BOLT). With PGO=1 PGO_BIN=target/pgo/release/microgateway
# beside it, the same rounds put the image's build against the
# profile-guided build without BOLT (paired: microgateway /
# microgateway-pgo).
#
#   BASE=39010b9 bench/compare.sh   # also the release build of another commit
#
# builds that commit in a detached worktree (target/bench-base/) and measures
# it as the contender "baseline" in the same rounds: a change's cost in req/s
# and in CPU per request, against the build before it, on the same machine
# at the same time. CPU per request is the process's user + system time
# (/proc/PID/stat) over the requests wrk completed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3s}
    export BENCH_ROUNDS=${BENCH_ROUNDS:-1} BENCH_SECONDS=${BENCH_SECONDS:-3}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT_UPSTREAM=${PORT_UPSTREAM:-18180}
PORT_NGINX=${PORT_NGINX:-18181}
PORT_MCGW=${PORT_MCGW:-18182}
PORT_ADMIN=${PORT_ADMIN:-18183}
PORT_PGO=${PORT_PGO:-18184}
PORT_PGO_ADMIN=${PORT_PGO_ADMIN:-18185}
PGO=${PGO:-0}
LOGGED=${LOGGED:-1}
EDGE=${EDGE:-1}
IDLE=${IDLE:-1}
PORT_HAPROXY=${PORT_HAPROXY:-18188}
PORT_NGINX_LOGGED=${PORT_NGINX_LOGGED:-18189}
PORT_LOGGED=${PORT_LOGGED:-18190}
PORT_LOGGED_ADMIN=${PORT_LOGGED_ADMIN:-18191}
BASE=${BASE:-}
PORT_BASE=${PORT_BASE:-18186}
PORT_BASE_ADMIN=${PORT_BASE_ADMIN:-18187}
THROTTLE=${THROTTLE:-1}
FIELDS=${FIELDS:-1}
PORT_NGINX_FIELDS=${PORT_NGINX_FIELDS:-18195}
PORT_BARE=${PORT_BARE:-18196}
PORT_BARE_ADMIN=${PORT_BARE_ADMIN:-18197}
PORT_REDIS=${PORT_REDIS:-18192}
PORT_REDIS_MCGW=${PORT_REDIS_MCGW:-18193}
PORT_REDIS_ADMIN=${PORT_REDIS_ADMIN:-18194}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# MCGW_BIN=PATH: that binary is the gateway of every contender (not built).
BIN=${MCGW_BIN:-$TARGET_DIR/release/microgateway}
bench_workdir bench

need wrk wrk
need nginx nginx-light
need haproxy haproxy
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

[ -n "${MCGW_BIN:-}" ] || build_release
CONTENDERS=(direct nginx microgateway haproxy)
if [ "$LOGGED" = 1 ]; then CONTENDERS+=(nginx-logged microgateway-logged); fi
if [ "$FIELDS" = 1 ]; then CONTENDERS+=(nginx-fields microgateway-bare); fi
if [ "$FIELDS" = 1 ] && [ "$THROTTLE" = 1 ]; then CONTENDERS+=(throttled-bare); fi
if [ "$PGO" = 1 ]; then
    if [ -z "${PGO_BIN:-}" ]; then
        echo "building microgateway (release, profile-guided) ..." >&2
        PGO_BIN=$("$ROOT/bench/pgo-build.sh" | tail -1)
    fi
    CONTENDERS+=(microgateway-pgo)
fi

if [ -n "$BASE" ]; then
    BASE_BIN=$(base_binary "$BASE")
    CONTENDERS+=(baseline)
fi
REDIS=0
if [ "$THROTTLE" = 1 ]; then
    CONTENDERS+=(throttled)
    if command -v redis-server >/dev/null 2>&1; then
        REDIS=1
        CONTENDERS+=(throttled-redis)
    else
        echo "redis-server not installed: no throttled-redis contender" >&2
    fi
fi

# nginx in the foreground, so its master is our child and its pid is known.
start_nginx() { # name conf
    mkdir -p "$WORK/$1/logs"
    "$NGINX" -p "$WORK/$1" -c "$WORK/$1/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}

upstream_conf "$PORT_UPSTREAM"
# proxy_conf NAME PORT [fields]: $WORK/NAME/nginx.conf, nginx proxying to
# the upstream (keep-alive pool, HTTP/1.1); with "fields", adding the
# fields microgateway adds (bench/lib.sh).
proxy_conf() {
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/nginx.conf" <<EOF
worker_processes $(nproc);
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    upstream backend {
        server 127.0.0.1:$PORT_UPSTREAM;
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
if [ "$FIELDS" = 1 ]; then proxy_conf proxy-fields "$PORT_NGINX_FIELDS" fields; fi
if [ "$LOGGED" = 1 ]; then
    mkdir -p "$WORK/proxy-logged"
    # The same proxy with nginx's default access log (combined format).
    sed -e "s#access_log off;#access_log $WORK/proxy-logged/logs/access.log;#" \
        -e "s#$WORK/proxy/#$WORK/proxy-logged/#g" \
        -e "s#127.0.0.1:$PORT_NGINX #127.0.0.1:$PORT_NGINX_LOGGED #" \
        "$WORK/proxy/nginx.conf" >"$WORK/proxy-logged/nginx.conf"
fi
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $(nproc)
    maxconn 8192
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend bench
    bind 127.0.0.1:$PORT_HAPROXY
    default_backend upstream
backend upstream
    server up 127.0.0.1:$PORT_UPSTREAM
EOF

# With a throttling store (memory or a redis:// URL), also the throttled
# route (a build before throttling would refuse the keys).
gateway_config() { # http-port admin-port [throttling-store]
    cat <<EOF
ports: { http: $1, bind: 127.0.0.1 }
admin: { port: $2, bind: 127.0.0.1 }
apis:
- name: bench
  version: "1.0"
  base_path: /bench
  upstream: { url: "http://127.0.0.1:$PORT_UPSTREAM/bench" }
  authentication: { type: none }
  resources: ["GET /items"]
EOF
    [ -n "${3:-}" ] || return 0
    cat <<EOF
- name: throttled
  version: "1.0"
  base_path: /throttled
  upstream: { url: "http://127.0.0.1:$PORT_UPSTREAM/bench" }
  authentication: { type: none }
  resources: ["GET /items"]
  policies:
    throttle:
    - { limit: 1000000, per: 1s }
throttling: { store: "$3" }
EOF
}
MCGW_STORE=
[ "$THROTTLE" = 1 ] && MCGW_STORE=memory
gateway_config "$PORT_MCGW" "$PORT_ADMIN" "$MCGW_STORE" >"$WORK/microgateway.yaml"

start_nginx upstream
start_nginx proxy
"$HAPROXY" -f "$WORK/haproxy.cfg" -db &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)
BARE_PID=
if [ "$FIELDS" = 1 ]; then
    start_nginx proxy-fields
    {
        gateway_config "$PORT_BARE" "$PORT_BARE_ADMIN" "$MCGW_STORE"
        echo "forwarding: { x_forwarded: false, forwarded: false, request_id: false, traceparent: false }"
    } >"$WORK/microgateway-bare.yaml"
    MCGW_LOG=warn "$BIN" start -c "$WORK/microgateway-bare.yaml" 2>"$WORK/microgateway-bare.log" &
    BARE_PID=$!
    PIDS+=($BARE_PID)
    wait_port "$PORT_NGINX_FIELDS"
    wait_port "$PORT_BARE"
fi
LOGGED_PID=
if [ "$LOGGED" = 1 ]; then
    start_nginx proxy-logged
    gateway_config "$PORT_LOGGED" "$PORT_LOGGED_ADMIN" >"$WORK/microgateway-logged.yaml"
    MCGW_LOG=info "$BIN" start -c "$WORK/microgateway-logged.yaml" 2>"$WORK/microgateway-logged.log" &
    LOGGED_PID=$!
    PIDS+=($LOGGED_PID)
    wait_port "$PORT_LOGGED"
    wait_port "$PORT_NGINX_LOGGED"
fi
MCGW_LOG=warn "$BIN" start -c "$WORK/microgateway.yaml" 2>"$WORK/microgateway.log" &
MCGW_PID=$!
PIDS+=($MCGW_PID)
wait_port "$PORT_UPSTREAM"
wait_port "$PORT_NGINX"
wait_port "$PORT_MCGW"
wait_port "$PORT_HAPROXY"
if [ "$PGO" = 1 ]; then
    gateway_config "$PORT_PGO" "$PORT_PGO_ADMIN" >"$WORK/microgateway-pgo.yaml"
    MCGW_LOG=warn "$PGO_BIN" start -c "$WORK/microgateway-pgo.yaml" 2>"$WORK/microgateway-pgo.log" &
    PIDS+=($!)
    wait_port "$PORT_PGO"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT_PGO/bench/items" >/dev/null
fi
REDIS_MCGW_PID=
if [ "$REDIS" = 1 ]; then
    mkdir -p "$WORK/redis"
    redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --dir "$WORK/redis" \
        --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    wait_port "$PORT_REDIS"
    gateway_config "$PORT_REDIS_MCGW" "$PORT_REDIS_ADMIN" "redis://127.0.0.1:$PORT_REDIS/0" >"$WORK/microgateway-redis.yaml"
    MCGW_LOG=warn "$BIN" start -c "$WORK/microgateway-redis.yaml" 2>"$WORK/microgateway-redis.log" &
    REDIS_MCGW_PID=$!
    PIDS+=($REDIS_MCGW_PID)
    wait_port "$PORT_REDIS_MCGW"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT_REDIS_MCGW/throttled/items" >/dev/null
fi
BASE_PID=
if [ -n "$BASE" ]; then
    gateway_config "$PORT_BASE" "$PORT_BASE_ADMIN" >"$WORK/microgateway-base.yaml"
    MCGW_LOG=warn "$BASE_BIN" start -c "$WORK/microgateway-base.yaml" 2>"$WORK/microgateway-base.log" &
    BASE_PID=$!
    PIDS+=($BASE_PID)
    wait_port "$PORT_BASE"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT_BASE/bench/items" >/dev/null
fi
PGO_PID=
if [ "$PGO" = 1 ]; then PGO_PID=$(pgrep -f "microgateway-pgo.yaml" | head -1 || true); fi
NGINX_PROXY_PID=$(cat "$WORK/proxy/nginx.pid" 2>/dev/null || echo "")
NGINX_UPSTREAM_PID=$(cat "$WORK/upstream/nginx.pid" 2>/dev/null || echo "")
sleep 0.5

rss_kib() { # pids...
    local total=0
    for pid in "$@"; do
        local kib
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}
nginx_upstream_pids() {
    [ -n "$NGINX_UPSTREAM_PID" ] || return 0
    echo "$NGINX_UPSTREAM_PID"
    pgrep -P "$NGINX_UPSTREAM_PID" || true
}
# cpu_ticks PIDS...: user + system time of the processes, in clock ticks.
cpu_ticks() {
    local total=0
    for pid in "$@"; do
        local t
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends
        # the command name (which may hold spaces).
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
# The processes that serve a contender's requests.
pids_of() { # name
    case $1 in
        direct) nginx_upstream_pids ;;
        nginx) nginx_proxy_pids ;;
        microgateway) echo "$MCGW_PID" ;;
        microgateway-pgo) echo "$PGO_PID" ;;
        baseline) echo "$BASE_PID" ;;
        haproxy) echo "$HAPROXY_PID" ;;
        nginx-logged) nginx_logged_pids ;;
        nginx-fields) nginx_master_and_workers proxy-fields ;;
        microgateway-bare) echo "$BARE_PID" ;;
        microgateway-logged) echo "$LOGGED_PID" ;;
        throttled) echo "$MCGW_PID" ;;
        throttled-redis) echo "$REDIS_MCGW_PID" ;;
        throttled-bare) echo "$BARE_PID" ;;
    esac
}
# nginx_master_and_workers NAME: the pids of the nginx in $WORK/NAME.
nginx_master_and_workers() {
    local master
    master=$(cat "$WORK/$1/nginx.pid" 2>/dev/null || echo "")
    [ -n "$master" ] || return 0
    echo "$master"
    pgrep -P "$master" || true
}
nginx_logged_pids() { nginx_master_and_workers proxy-logged; }
nginx_proxy_pids() { # the proxy's master and workers
    [ -n "$NGINX_PROXY_PID" ] || return 0
    echo "$NGINX_PROXY_PID"
    pgrep -P "$NGINX_PROXY_PID" || true
}

MCGW_IDLE_KIB=$(rss_kib "$MCGW_PID")
# shellcheck disable=SC2046
NGINX_IDLE_KIB=$(rss_kib $(nginx_proxy_pids))
HAPROXY_IDLE_KIB=$(rss_kib "$HAPROXY_PID")

# "1.23ms" / "850.00us" / "1.02s" -> milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000
        else if (v ~ /ms$/) n = n
        else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# run NAME PORT [PATH]: one wrk run; appends "rps p50 p99 cpu_us_per_request"
# to $WORK/NAME.txt (CPU of the contender's own processes only).
run() {
    local out pids before after
    # shellcheck disable=SC2046
    pids=$(pids_of "$1" | tr '\n' ' ')
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    # Resident memory under load: read once, halfway through the run.
    # shellcheck disable=SC2086
    (sleep "$HALFWAY"; rss_kib $pids >>"$WORK/$1.rss") &
    local sampler=$!
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$2${3:-/bench/items}")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    wait "$sampler"
    local rps p50 p99 errors requests cpu
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { if (n > 0) printf "%.2f", t * 1000000 / hz / n; else print 0 }')
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    [ -z "$errors" ] || echo "  $1: $errors" >&2
    echo "$rps $p50 $p99 $cpu" >>"$WORK/$1.txt"
    printf '  %-17s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  cpu %6.2f us/req\n' "$1" "$rps" "$p50" "$p99" "$cpu" >&2
}

# Halfway through a run of DURATION ("10s", "1m"), in seconds.
HALFWAY=$(awk -v d="$DURATION" 'BEGIN { n = d + 0; if (d ~ /m$/) n *= 60; printf "%.1f", n / 2 }')

echo "warm-up ..." >&2
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT_NGINX/bench/items" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT_MCGW/bench/items" >/dev/null

# Each round runs the contenders in another order (rotated by one), so
# that none is always measured first or last after the same neighbour.
RUNS=("nginx $PORT_NGINX" "microgateway $PORT_MCGW" "haproxy $PORT_HAPROXY")
if [ "$LOGGED" = 1 ]; then
    RUNS+=("nginx-logged $PORT_NGINX_LOGGED" "microgateway-logged $PORT_LOGGED")
fi
if [ "$FIELDS" = 1 ]; then RUNS+=("nginx-fields $PORT_NGINX_FIELDS" "microgateway-bare $PORT_BARE"); fi
if [ "$PGO" = 1 ]; then RUNS+=("microgateway-pgo $PORT_PGO"); fi
if [ -n "$BASE" ]; then RUNS+=("baseline $PORT_BASE"); fi
if [ "$THROTTLE" = 1 ]; then RUNS+=("throttled $PORT_MCGW /throttled/items"); fi
if [ "$REDIS" = 1 ]; then RUNS+=("throttled-redis $PORT_REDIS_MCGW /throttled/items"); fi
if [ "$FIELDS" = 1 ] && [ "$THROTTLE" = 1 ]; then RUNS+=("throttled-bare $PORT_BARE /throttled/items"); fi
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    run direct "$PORT_UPSTREAM"
    for k in $(seq 0 $((${#RUNS[@]} - 1))); do
        # shellcheck disable=SC2086
        run ${RUNS[$(((k + round - 1) % ${#RUNS[@]}))]}
    done
done
# Idle again, once the runs are over and what they took is given back
# (within 2 s): a proxy that has served, its request path resident.
sleep 3
MCGW_AFTER_KIB=$(rss_kib "$MCGW_PID")
# shellcheck disable=SC2046
NGINX_AFTER_KIB=$(rss_kib $(nginx_proxy_pids))
HAPROXY_AFTER_KIB=$(rss_kib "$HAPROXY_PID")
# The median of a contender's samples under load, in MiB.
loaded_mib() { median <"$WORK/$1.rss" | awk '{printf "%.1f", $1 / 1024}'; }

col() { awk -v c="$2" '{print $c}' "$WORK/$1.txt" | median; }
declare -A RPS P50 P99 CPU
for name in "${CONTENDERS[@]}"; do
    RPS[$name]=$(col "$name" 1)
    P50[$name]=$(col "$name" 2)
    P99[$name]=$(col "$name" 3)
    CPU[$name]=$(col "$name" 4)
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# paired A B COLUMN: the median of A/B round by round (a round's drift,
# which moves both, cancels out), the lowest and highest, and from six
# rounds on a confidence interval of that median that assumes nothing of
# the rounds' spread (median_ci).
paired() {
    local ratios
    ratios=$(paste "$WORK/$1.txt" "$WORK/$2.txt" | awk -v c="$3" -v n="$(awk '{print NF; exit}' "$WORK/$1.txt")" \
        '$(c + n) > 0 { printf "%.4f\n", $c / $(c + n) }')
    printf '%.2fx (rounds %.2f-%.2f%s)' "$(echo "$ratios" | median)" \
        "$(echo "$ratios" | sort -g | head -1)" "$(echo "$ratios" | sort -g | tail -1)" \
        "$(echo "$ratios" | median_ci)"
}

# median_ci: for n >= 6 values, "; 95% CI a-b": the k-th lowest and the
# k-th highest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5% (the
# sign test's interval for a median: at least 95% whatever the values'
# distribution, e.g. the 3rd and 10th of 12, the 6th and 15th of 20).
median_ci() {
    sort -g | awk '{ v[NR] = $1 } END {
        n = NR; if (n < 6) exit
        k = 0; cum = 0; p = 0.5 ^ n
        for (i = 0; i < n; i++) { cum += p; if (cum > 0.025) break; k = i + 1; p = p * (n - i) / (i + 1) }
        if (k < 1) exit
        printf "; 95%% CI %.2f-%.2f", v[k], v[n - k + 1]
    }'
}

echo
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
echo "tools:   $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$HAPROXY" -v 2>&1 | head -1 | awk '{print "HAProxy", $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), microgateway $("$BIN" --version | awk '{print $2}')"
echo "load:    wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS interleaved rounds, medians; all on one host"
echo
printf '%-17s %12s %10s %10s %12s\n' "" "req/s" "p50 ms" "p99 ms" "cpu us/req"
for name in "${CONTENDERS[@]}"; do
    printf '%-17s %12.0f %10.3f %10.3f %12.2f\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${CPU[$name]}"
done
echo
echo "microgateway / haproxy: req/s $(ratio "${RPS[microgateway]}" "${RPS[haproxy]}")x, p99 $(ratio "${P99[microgateway]}" "${P99[haproxy]}")x, cpu per request $(ratio "${CPU[microgateway]}" "${CPU[haproxy]}")x"
if [ "$LOGGED" = 1 ]; then
    echo "access log on: microgateway-logged / microgateway req/s $(ratio "${RPS[microgateway-logged]}" "${RPS[microgateway]}")x (target >= 0.9), microgateway-logged / nginx-logged $(ratio "${RPS[microgateway-logged]}" "${RPS[nginx-logged]}")x (target >= 1.0)"
fi
for name in microgateway microgateway-pgo baseline; do
    [ -n "${RPS[$name]:-}" ] || continue
    echo "$name / nginx: req/s $(ratio "${RPS[$name]}" "${RPS[nginx]}")x (target >= 1.0), p50 $(ratio "${P50[$name]}" "${P50[nginx]}")x, p99 $(ratio "${P99[$name]}" "${P99[nginx]}")x (target <= 1.25)"
done
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }
if [ "$THROTTLE" = 1 ]; then
    echo "throttled (memory): p99 $(added "${P99[throttled]}" "${P99[microgateway]}") ms over the unthrottled route, req/s $(ratio "${RPS[throttled]}" "${RPS[microgateway]}")x"
fi
if [ "$REDIS" = 1 ]; then
    echo "throttled (redis):  p99 $(added "${P99[throttled-redis]}" "${P99[microgateway]}") ms over the unthrottled route, req/s $(ratio "${RPS[throttled-redis]}" "${RPS[microgateway]}")x"
fi
if [ -n "$BASE" ]; then
    echo "microgateway / baseline ($BASE): req/s $(ratio "${RPS[microgateway]}" "${RPS[baseline]}")x, cpu per request $(ratio "${CPU[microgateway]}" "${CPU[baseline]}")x (a regression budget of 3%: req/s >= 0.97x, cpu <= 1.03x)"
fi
echo
echo "paired, the median of the ratios round by round (what the verdicts rest on):"
echo "  microgateway / nginx:   req/s $(paired microgateway nginx 1), cpu per request $(paired microgateway nginx 4)"
echo "  microgateway / haproxy: req/s $(paired microgateway haproxy 1), p99 $(paired microgateway haproxy 3), cpu per request $(paired microgateway haproxy 4)"
if [ "$THROTTLE" = 1 ]; then
    echo "  throttled / nginx:      req/s $(paired throttled nginx 1), cpu per request $(paired throttled nginx 4)"
fi
if [ "$FIELDS" = 1 ]; then
    echo "  equal work, nginx adding the same fields as the gateway (nginx-fields):"
    for name in microgateway throttled microgateway-pgo; do
        [ -n "${RPS[$name]:-}" ] || continue
        printf '    %-16s / nginx-fields: req/s %sx by medians, %s paired\n' "$name" \
            "$(ratio "${RPS[$name]}" "${RPS[nginx-fields]}")" "$(paired "$name" nginx-fields 1)"
    done
    echo "    nginx-fields / nginx: req/s $(paired nginx-fields nginx 1): what the fields cost nginx"
    echo "  equal work, neither adding a field: microgateway-bare / nginx: req/s $(ratio "${RPS[microgateway-bare]}" "${RPS[nginx]}")x by medians, $(paired microgateway-bare nginx 1) paired, cpu per request $(paired microgateway-bare nginx 4)"
    if [ "$THROTTLE" = 1 ]; then
        echo "    throttled-bare / nginx: req/s $(ratio "${RPS[throttled-bare]}" "${RPS[nginx]}")x by medians (target >= 1.0), $(paired throttled-bare nginx 1) paired, cpu per request $(paired throttled-bare nginx 4); / microgateway-bare: $(paired throttled-bare microgateway-bare 1)"
    fi
fi
if [ "$LOGGED" = 1 ]; then
    echo "  microgateway-logged / microgateway: req/s $(paired microgateway-logged microgateway 1); / nginx-logged: $(paired microgateway-logged nginx-logged 1)"
fi
if [ -n "$BASE" ]; then
    echo "  microgateway / baseline ($BASE): req/s $(paired microgateway baseline 1), cpu per request $(paired microgateway baseline 4)"
fi
if [ "$PGO" = 1 ]; then
    echo "  microgateway / microgateway-pgo: req/s $(paired microgateway microgateway-pgo 1), cpu per request $(paired microgateway microgateway-pgo 4)"
fi
printf 'RSS idle at start: microgateway %.1f MiB (target <= 10), nginx proxy %.1f MiB (master + workers), haproxy %.1f MiB\n' \
    "$(awk -v k="$MCGW_IDLE_KIB" 'BEGIN {print k / 1024}')" "$(awk -v k="$NGINX_IDLE_KIB" 'BEGIN {print k / 1024}')" \
    "$(awk -v k="$HAPROXY_IDLE_KIB" 'BEGIN {print k / 1024}')"
printf 'RSS idle after the runs: microgateway %.1f MiB, nginx proxy %.1f MiB, haproxy %.1f MiB\n' \
    "$(awk -v k="$MCGW_AFTER_KIB" 'BEGIN {print k / 1024}')" "$(awk -v k="$NGINX_AFTER_KIB" 'BEGIN {print k / 1024}')" \
    "$(awk -v k="$HAPROXY_AFTER_KIB" 'BEGIN {print k / 1024}')"
echo "RSS loaded: microgateway $(loaded_mib microgateway) MiB (target <= 12), nginx proxy $(loaded_mib nginx) MiB, haproxy $(loaded_mib haproxy) MiB (medians, read halfway through each run)"

# OAuth2, API key and Basic routes against the same nginx baseline, in the
# same run (JWT, 401, introspection, per-token signature verification, an
# API key, Basic with its Argon2 check cached).
if [ "${AUTH_BENCH:-1}" = 1 ]; then
    python3 -c 'import jwt, cryptography' 2>/dev/null || pip install -q "pyjwt[crypto]" >/dev/null
    python3 bench/auth_bench.py "$PORT_UPSTREAM" "$PORT_NGINX"
    if [ "$PGO" = 1 ]; then
        echo
        echo "the same with the profile-guided build:"
        MCGW_BIN=$PGO_BIN python3 bench/auth_bench.py "$PORT_UPSTREAM" "$PORT_NGINX"
    fi
fi

# TLS, HTTP/2 and idle connections: their scripts start their own
# contenders, once these are stopped (the binary measured is the same).
if [ "$EDGE" = 1 ] || [ "$IDLE" = 1 ]; then
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
fi
SHORT=$([ "$QUICK" = 1 ] && echo 3 || echo 10)
if [ "$EDGE" = 1 ]; then
    echo
    echo "TLS and HTTP/2 (bench/edge.sh):"
    BUILD=0 ROUNDS=$([ "$QUICK" = 1 ] && echo 1 || echo "$ROUNDS") DURATION=$SHORT \
        CARGO_TARGET_DIR=$TARGET_DIR "$ROOT/bench/edge.sh"
fi
if [ "$IDLE" = 1 ]; then
    IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-$([ "$QUICK" = 1 ] && echo 1000 || echo 10000)}
    for tls in 0 1; do
        echo
        echo "idle connections$([ "$tls" = 1 ] && echo ' over TLS') (bench/idle.py):"
        BUILD=0 BASE= TLS=$tls IDLE_CONNECTIONS=$IDLE_CONNECTIONS MCGW_BIN=$BIN python3 "$ROOT/bench/idle.py"
    done
fi
