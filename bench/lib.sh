# Helpers shared by the bench scripts (sourced, not run).

# need COMMAND PACKAGE: installs the Debian package when the command is missing.
need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2 ..." >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq "$2" >/dev/null
    fi
}

# wait_port PORT: until something accepts connections on 127.0.0.1:PORT.
wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    exit 1
}

# base_binary REV: the release binary of commit REV, built once in a
# detached worktree under target/bench-base/REV (its own target dir).
base_binary() {
    local tree=${TARGET_DIR:-$ROOT/target}/bench-base/$1
    if [ ! -x "$tree/target/release/microgateway" ]; then
        echo "building microgateway $1 (release) ..." >&2
        rm -rf "$tree"
        git -C "$ROOT" worktree prune
        git -C "$ROOT" worktree add --detach --force "$tree" "$1" >/dev/null
        (cd "$tree" && CARGO_TARGET_DIR="$tree/target" cargo build --release --quiet)
    fi
    echo "$tree/target/release/microgateway"
}

# bench_workdir NAME: a fresh temporary directory in $WORK and an empty
# PIDS list; on exit every process in PIDS is stopped, then the script's
# own `on_cleanup` runs if it defines one, then $WORK is removed.
bench_workdir() {
    WORK=$(mktemp -d "/tmp/mcgw-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if declare -F on_cleanup >/dev/null; then on_cleanup; fi
    rm -rf "$WORK"
}

# build_release [CARGO ARGS...]: cargo build --release of this checkout,
# unless BUILD=0 (the binary already built is measured).
build_release() {
    [ "${BUILD:-1}" = 1 ] || return 0
    echo "building microgateway (release) ..." >&2
    (cd "$ROOT" && cargo build --release --quiet "$@")
}

# upstream_conf PORT: $WORK/upstream/nginx.conf, an nginx upstream on
# 127.0.0.1:PORT answering every request with the same small JSON body
# (one worker; keep-alive without a request limit worth the name).
upstream_conf() {
    mkdir -p "$WORK/upstream/logs"
    cat >"$WORK/upstream/nginx.conf" <<EOF_CONF
worker_processes 1;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$1 reuseport;
        location / {
            default_type application/json;
            return 200 '{"ok":true,"service":"bench","items":[1,2,3]}';
        }
    }
}
EOF_CONF
}

# The fields microgateway adds to every request it forwards, by default,
# in nginx's terms: an nginx proxy doing the gateway's work, for the
# "equal work" contenders; `nginx_fields_location` goes in the proxying
# `location {}`. To the upstream:
# X-Request-Id (a new random id; the gateway replaces a client's),
# X-Forwarded-For (the peer; the gateway replaces a client's that is not
# from a trusted proxy), X-Forwarded-Proto, X-Forwarded-Host; to the
# client: X-Request-Id. (`Forwarded` is made only with
# `forwarding.forwarded: true`, a traceparent only with
# `forwarding.traceparent: true`.)
nginx_fields_location() {
    cat <<'EOF_FIELDS'
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            add_header X-Request-Id $request_id always;
EOF_FIELDS
}
