#!/usr/bin/env bash
# A profile-guided (PGO) release build of microgateway, laid out again by
# BOLT.
#
#   bench/pgo-build.sh            # prints the binary's path on its last line:
#                                 # target/pgo/release/microgateway-bolt
#   BOLT=0 bench/pgo-build.sh     # profile-guided only: .../microgateway
#
# 1. builds an instrumented release binary (target/pgo-instrumented);
# 2. trains it: the binary serves a training configuration and wrk and
#    h2load drive its data path — plain proxying through its own upstream
#    client, a throttled route and one balanced over two endpoints,
#    JWT-protected calls (tokens from its own authorization
#    server) and the same tokens through RFC 7662 introspection, 401s and
#    403s, POST bodies, HTTPS and HTTP/2 (h2c and over TLS) — then it stops
#    cleanly and writes its profile;
# 3. builds the release binary again with that profile (target/pgo);
# 4. with llvm-bolt (Debian's bolt-19), instruments that binary (BOLT's own
#    counters, no sampling hardware needed), trains it the same way, and
#    lays its functions and blocks out for the paths taken: hot code
#    packed together, cold code split off (microgateway-bolt beside it).
#
# The same code as `cargo build --release`, laid out and inlined for the
# paths the training took: about 24% fewer instructions per proxied request
# with PGO alone (callgrind). Paths the training does not take (the
# authorization server's grants beyond client credentials, say) are laid
# out as cold code. Needs the rustup component llvm-tools (added when
# missing), curl, openssl, wrk, h2load and llvm-bolt-19 (installed from
# Debian packages when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
TRAIN_SECONDS=${TRAIN_SECONDS:-6}
PORT=${PGO_PORT:-18290}
ADMIN=${PGO_ADMIN_PORT:-18291}
TLS_PORT=${PGO_TLS_PORT:-18292}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
INSTRUMENTED=$TARGET_DIR/pgo-instrumented
OPTIMIZED=$TARGET_DIR/pgo
WORK=$(mktemp -d /tmp/mcgw-pgo.XXXXXX)
GATEWAY=""

cleanup() {
    if [ -n "$GATEWAY" ]; then kill "$GATEWAY" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need wrk wrk
need curl curl
need openssl openssl
need h2load nghttp2-client
rustup component add llvm-tools >/dev/null 2>&1 || true
PROFDATA=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
if [ ! -x "$PROFDATA" ]; then
    echo "llvm-profdata not found: rustup component add llvm-tools" >&2
    exit 1
fi

BOLT=${BOLT:-1}
if [ "$BOLT" = 1 ]; then
    need llvm-bolt-19 bolt-19
    # Its runtime for instrumented binaries is found beside the real
    # binary (/usr/lib/llvm-19/lib), not beside the /usr/bin link.
    BOLT_BIN=$(readlink -f "$(command -v llvm-bolt-19)")
fi

STEPS=$([ "$BOLT" = 1 ] && echo 4 || echo 3)
echo "1/$STEPS instrumented build ..." >&2
# Paths in RUSTFLAGS stay the same from run to run: cargo rebuilds
# everything when its flags change.
PROFILES=$INSTRUMENTED/profiles
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$PROFILES" CARGO_TARGET_DIR="$INSTRUMENTED" \
    cargo build --release --locked --quiet)
# Build scripts ran instrumented too: only the gateway's own run counts.
rm -rf "$PROFILES"

echo "2/$STEPS training ..." >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -keyout "$WORK/server.key" -out "$WORK/server.crt" 2>/dev/null
cat >"$WORK/training.yaml" <<YAML
ports: { http: $PORT, https: $TLS_PORT, bind: 127.0.0.1 }
tls: { certificate: $WORK/server.crt, key: $WORK/server.key }
admin: { port: $ADMIN, bind: 127.0.0.1 }
authorization_server:
  issuer: "http://127.0.0.1:$PORT"
  token_format: jwt
  signing_key: $WORK/signing-key.pem
  store: sqlite:$WORK/oauth.db
  token_lifetime: 3600
  scopes: [{ name: view }, { name: book }]
  clients:
  - { name: Trainer, client_id: trainer, client_secret: trainer-secret,
      grant_types: [client_credentials], scopes: [view, book] }
  - { name: Gateway, client_id: gateway, client_secret: gateway-secret,
      grant_types: [], scopes: [], introspect: true }
security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://127.0.0.1:$PORT" }
  - id: introspected
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:$PORT/oauth2/introspect"
      clientId: gateway
      clientSecret: gateway-secret
apis:
- name: echo
  base_path: /echo
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["GET /items", "POST /items"]
- name: plain
  base_path: /plain
  upstream: { url: "http://127.0.0.1:$PORT/echo" }
  authentication: { type: none }
  resources: ["GET /items", "POST /items"]
- name: throttled
  base_path: /throttled
  upstream: { url: "http://127.0.0.1:$PORT/echo" }
  authentication: { type: none }
  resources: ["GET /items"]
  policies: { throttle: [{ limit: 1000000, per: 1s }] }
- name: balanced
  base_path: /balanced
  upstream:
    endpoints: [{ url: "http://127.0.0.1:$PORT/echo" }, { url: "http://localhost:$PORT/echo" }]
  authentication: { type: none }
  resources: ["GET /items"]
- name: protected
  base_path: /protected
  upstream: { url: "http://127.0.0.1:$PORT/echo" }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - { name: view, resources: ["GET /items"] }
  - { name: book, resources: ["POST /items"] }
- name: introspected
  base_path: /introspected
  upstream: { url: "http://127.0.0.1:$PORT/echo" }
  authentication: { type: oauth2, auth_server: introspected }
  scopes: [{ name: view, resources: ["GET /items"] }]
YAML
token() { # scope
    curl -sf -u trainer:trainer-secret -d grant_type=client_credentials -d "scope=$1" \
        "http://127.0.0.1:$PORT/oauth2/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
}
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"seat":"12A","from":"1985","to":"1955"}'
wrk.headers["Content-Type"] = "application/json"
LUA
load() { # seconds url [wrk args...]
    local seconds=$1 url=$2
    shift 2
    wrk -t2 -c64 -d"${seconds}s" "$@" "$url" >/dev/null
}
# serve BINARY: BINARY serves the training configuration, its
# authorization server afresh; stop_serving stops it (an instrumented
# binary writes its counts as it exits) and fails if it did not end well.
serve() {
    rm -f "$WORK"/oauth.db* "$WORK/signing-key.pem"
    MCGW_LOG=warn "$1" start -c "$WORK/training.yaml" 2>"$WORK/gateway.log" &
    GATEWAY=$!
    wait_port "$PORT"
}
stop_serving() {
    local ended=0
    kill -TERM "$GATEWAY"
    wait "$GATEWAY" || ended=$?
    GATEWAY=""
    return "$ended"
}
# train BINARY: BINARY serves the training configuration under the load
# above, then stops.
train() {
    serve "$1"
    VIEW=$(token view)
    if [ -z "$VIEW" ]; then
        echo "the training gateway issued no token:" >&2
        cat "$WORK/gateway.log" >&2
        exit 1
    fi
    load "$TRAIN_SECONDS" "http://127.0.0.1:$PORT/plain/items"
    load "$TRAIN_SECONDS" "http://127.0.0.1:$PORT/protected/items" -H "Authorization: Bearer $VIEW"
    load 3 "http://127.0.0.1:$PORT/throttled/items"
    load 3 "http://127.0.0.1:$PORT/balanced/items"
    load 2 "http://127.0.0.1:$PORT/plain/items" -s "$WORK/post.lua"
    load 2 "http://127.0.0.1:$PORT/protected/items"
    load 2 "http://127.0.0.1:$PORT/protected/items" -s "$WORK/post.lua" -H "Authorization: Bearer $VIEW"
    load 3 "http://127.0.0.1:$PORT/introspected/items" -H "Authorization: Bearer $VIEW"
    load 3 "https://127.0.0.1:$TLS_PORT/plain/items"
    load 2 "https://127.0.0.1:$TLS_PORT/protected/items" -H "Authorization: Bearer $VIEW"
    h2load -n 40000 -c 16 -m 8 "http://127.0.0.1:$PORT/plain/items" >/dev/null
    h2load -n 20000 -c 16 -m 8 -H "Authorization: Bearer $VIEW" "https://127.0.0.1:$TLS_PORT/protected/items" >/dev/null
    stop_serving || true
}
# smoke BINARY: the binary about to be handed out answers as the gateway
# must on each kind of route the training took (its layout changed, its
# code did not: any other answer is a broken build).
smoke() {
    serve "$1"
    local view failed=""
    view=$(token view || true)
    expect() { # status curl-args...
        local want=$1 got
        shift
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true)
        [ "$got" = "$want" ] || failed="$failed\n  $* -> $got (want $want)"
    }
    expect 200 "http://127.0.0.1:$PORT/plain/items"
    expect 200 "http://127.0.0.1:$PORT/throttled/items"
    expect 200 "http://127.0.0.1:$PORT/balanced/items"
    expect 200 -X POST -d '{"seat":"12A"}' "http://127.0.0.1:$PORT/plain/items"
    expect 401 "http://127.0.0.1:$PORT/protected/items"
    expect 200 -H "Authorization: Bearer $view" "http://127.0.0.1:$PORT/protected/items"
    expect 403 -X POST -H "Authorization: Bearer $view" "http://127.0.0.1:$PORT/protected/items"
    expect 200 -H "Authorization: Bearer $view" "http://127.0.0.1:$PORT/introspected/items"
    expect 200 -k "https://127.0.0.1:$TLS_PORT/plain/items"
    expect 200 --http2-prior-knowledge "http://127.0.0.1:$PORT/plain/items"
    expect 200 -k --http2 "https://127.0.0.1:$TLS_PORT/plain/items"
    stop_serving || failed="$failed\n  did not stop cleanly"
    if [ -n "$failed" ]; then
        printf "the optimized gateway answered wrongly:%b\n" "$failed" >&2
        cat "$WORK/gateway.log" >&2
        exit 1
    fi
}
LLVM_PROFILE_FILE="$PROFILES/gateway-%p.profraw" train "$INSTRUMENTED/release/microgateway"
"$PROFDATA" merge -o "$WORK/merged.profdata" "$PROFILES"/*.profraw

echo "3/$STEPS optimized build ..." >&2
# cargo does not look into the profile: named by its digest, a new profile
# is new flags, and every crate is built again with it.
mkdir -p "$OPTIMIZED"
rm -f "$OPTIMIZED"/microgateway-*.profdata
PROFILE=$OPTIMIZED/microgateway-$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata
cp "$WORK/merged.profdata" "$PROFILE"
# BOLT moves functions only in a binary that keeps its relocations.
RELOCS=
if [ "$BOLT" = 1 ]; then RELOCS=" -Clink-arg=-Wl,--emit-relocs"; fi
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$PROFILE$RELOCS" CARGO_TARGET_DIR="$OPTIMIZED" \
    cargo build --release --locked --quiet)
BIN=$OPTIMIZED/release/microgateway
if [ "$BOLT" != 1 ]; then
    smoke "$BIN"
    echo "$BIN"
    exit 0
fi

echo "4/4 BOLT layout ..." >&2
# BOLT takes a function whose name has `.cold` or `.warm` after a dot
# (`..warm_this_thread` in a mangled Rust path, say) for a part split off
# another, and refuses the binary when there is no such other: no
# function is named so here. Should a build still be refused, the
# profile-guided binary is the result, said loudly, rather than no image
# at all; no earlier BOLT output is left to be taken for this one.
rm -f "$BIN-bolt"
without_bolt() {
    grep -E 'BOLT-ERROR|error' "$WORK/bolt.log" | head -5 >&2 || true
    echo "BOLT could not lay this build out ($1); the profile-guided binary is the result, without it" >&2
    smoke "$BIN"
    echo "$BIN"
    exit 0
}
"$BOLT_BIN" "$BIN" -instrument -instrumentation-file="$WORK/bolt.fdata" \
    -o "$WORK/microgateway-bolt-instrumented" >"$WORK/bolt.log" 2>&1 ||
    without_bolt "instrumenting"
train "$WORK/microgateway-bolt-instrumented"
if [ ! -s "$WORK/bolt.fdata" ]; then
    echo "the BOLT-instrumented gateway wrote no profile" >&2
    exit 1
fi
# Written beside it and renamed into place: a gateway still running the
# last build keeps its file (writing over it would fail, "text file busy").
"$BOLT_BIN" "$BIN" -data="$WORK/bolt.fdata" -o "$WORK/microgateway-bolt" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -icf=1 -use-gnu-stack -dyno-stats >"$WORK/bolt.log" 2>&1 ||
    without_bolt "laying out"
mv -f "$WORK/microgateway-bolt" "$BIN-bolt"
smoke "$BIN-bolt"
echo "$BIN-bolt"
