#!/usr/bin/env bash
# The authorization server's store: SQLite against PostgreSQL, one and two
# replicas, in the same run.
#
#   bench/store.sh            # DURATION=10s CONNECTIONS=16 (per replica)
#
# For each store and replica count it starts the gateways (two SQLite
# replicas share one file in WAL mode on this host; two PostgreSQL replicas
# one database of a throwaway cluster), then measures with wrk, each
# replica loaded by its own wrk at once:
#
#   token       POST /oauth2/token, client credentials, a JWT each time
#               (one row written per token)
#   introspect  POST /oauth2/introspect of one JWT (signature, then one
#               lookup of its jti for revocation)
#
# and prints req/s (summed over the replicas) and the worst replica's p99.
# Needs wrk and the PostgreSQL server binaries (Debian packages, installed
# when missing). MCGW_BIN=path measures that binary instead of building.
# Everything it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
PG_PORT=${PG_PORT:-18290}
bench_workdir store
AS_PG=()
PG_BIN=""
on_cleanup() {
    if [ -n "$PG_BIN" ]; then
        "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || true
    fi
}

need wrk wrk
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need psql postgresql; fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

BIN=${MCGW_BIN:-}
if [ -z "$BIN" ]; then
    echo "building microgateway (release) ..." >&2
    (cd "$ROOT" && cargo build --release --quiet)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/microgateway
fi

# A throwaway cluster (as nobody under root: PostgreSQL refuses root).
mkdir -p "$WORK/pg"
if [ "$(id -u)" -eq 0 ]; then AS_PG=(runuser -u nobody --); chmod 755 "$WORK"; chown nobody: "$WORK/pg"; fi
"${AS_PG[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A trust --no-sync >/dev/null
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/pg" start >/dev/null

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("AUTH")
wrk.body = os.getenv("BODY")
LUA

config() { # STORE PORT ADMIN
    cat <<YAML
ports: { http: $2, bind: 127.0.0.1 }
admin: { port: $3, bind: 127.0.0.1 }
authorization_server:
  issuer: "http://127.0.0.1:18200"
  token_format: jwt
  signing_key: $WORK/signing-key.pem
  store: "$1"
  token_lifetime: 3600
  scopes: [{ name: view }]
  clients:
  - { name: App, client_id: app, client_secret: app-secret, grant_types: [client_credentials], scopes: [view] }
  - { name: RS, client_id: rs, client_secret: rs-secret, introspect: true, grant_types: [] }
YAML
}

# run_wrk NAME AUTH BODY PORT...: one wrk per port at once; "req/s p99ms".
run_wrk() {
    local name=$1 auth=$2 body=$3; shift 3
    local outs=()
    for port in "$@"; do
        AUTH="$auth" BODY="$body" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
            -s "$WORK/post.lua" "http://127.0.0.1:$port$name" >"$WORK/wrk.$port" 2>&1 &
        outs+=("$WORK/wrk.$port")
    done
    wait_wrk
    python3 - "${outs[@]}" <<'PY'
import re, sys
total, worst = 0.0, 0.0
for path in sys.argv[1:]:
    text = open(path).read()
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not found:
        sys.exit(f"wrk said:\n{text}")
    total += float(found.group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", text).groups()
    worst = max(worst, float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit])
    if "Non-2xx" in text:
        print("non-2xx answers in", path, file=sys.stderr)
print(f"{total:9.0f} req/s  p99 {worst:7.2f} ms")
PY
}
wait_wrk() { while pgrep -P $$ -x wrk >/dev/null; do sleep 0.2; done; }

APP="Basic $(printf app:app-secret | base64)"
RS="Basic $(printf rs:rs-secret | base64)"
n=0
for store in sqlite postgres; do
    for replicas in 1 2; do
        n=$((n + 1))
        if [ "$store" = sqlite ]; then
            url="sqlite:$WORK/oauth-$n.db"
        else
            "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "bench$n"
            url="postgres://postgres@127.0.0.1:$PG_PORT/bench$n?sslmode=disable"
        fi
        ports=()
        started=()
        for r in $(seq 1 "$replicas"); do
            port=$((18200 + 10 * n + 2 * r)); admin=$((port + 1))
            config "$url" "$port" "$admin" >"$WORK/gw-$n-$r.yaml"
            MCGW_LOG=warn "$BIN" start -c "$WORK/gw-$n-$r.yaml" 2>>"$WORK/gw.log" &
            PIDS+=($!); started+=($!)
            wait_port "$port"
            ports+=("$port")
        done
        token=$(curl -s -H "Authorization: $APP" -d grant_type=client_credentials \
            "http://127.0.0.1:${ports[0]}/oauth2/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
        printf '%-8s %d replica(s)  token       ' "$store" "$replicas"
        run_wrk /oauth2/token "$APP" "grant_type=client_credentials" "${ports[@]}"
        printf '%-8s %d replica(s)  introspect  ' "$store" "$replicas"
        run_wrk /oauth2/introspect "$RS" "token=$token" "${ports[@]}"
        for pid in "${started[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
    done
done
