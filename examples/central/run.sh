#!/usr/bin/env bash
# A central gateway (the fleet's authorization server too) and two
# downstream sidecars on one machine: a token from the central, an allowed
# and a refused request through a sidecar, then a scope changed on the
# central that the sidecar follows without a restart.
#
#   cargo build --release && examples/central/run.sh
#
# The binary: $MICROGATEWAY, else target/release/microgateway, else
# `microgateway` on the PATH (`cargo install --path .`). Needs curl. The
# configuration files are copied to a temporary directory (the scope change
# edits the copy; signing key, token store and the sidecars' cache files go
# there too) and everything is stopped and removed on exit. Ports: central
# 4485 (API) and 9485 (admin), sidecar A 4486/9486, sidecar B 4487/9487,
# all on 127.0.0.1; PORT_OFFSET=N adds N to each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${MICROGATEWAY:-$here/../../target/release/microgateway}"
if [ ! -x "$bin" ]; then
  bin="$(command -v microgateway || true)"
fi
[ -n "$bin" ] && [ -x "$bin" ] ||
  { echo "build first: cargo build --release (or set MICROGATEWAY)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

offset="${PORT_OFFSET:-0}"
central_api=$((4485 + offset)) a_api=$((4486 + offset)) b_api=$((4487 + offset))
central_admin=$((9485 + offset)) a_admin=$((9486 + offset)) b_admin=$((9487 + offset))

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The files as committed, with the ports moved by PORT_OFFSET.
for file in central.yaml sidecar-a.yaml sidecar-b.yaml; do
  sed -E -e "s/\b4485\b/@CA@/g; s/\b4486\b/@AA@/g; s/\b4487\b/@BA@/g" \
    -e "s/\b9485\b/@CM@/g; s/\b9486\b/@AM@/g; s/\b9487\b/@BM@/g" \
    -e "s/@CA@/$central_api/g; s/@AA@/$a_api/g; s/@BA@/$b_api/g" \
    -e "s/@CM@/$central_admin/g; s/@AM@/$a_admin/g; s/@BM@/$b_admin/g" \
    "$here/$file" >"$work/$file"
done

export FLEET_PASSWORD="fleet-$RANDOM$RANDOM" INTROSPECTION_SECRET="introspection-$RANDOM$RANDOM"
export TRAVELS_PASSWORD="travels-$RANDOM$RANDOM" ADMIN_PASSWORD="admin-$RANDOM$RANDOM"
export MCGW_PORTS_BIND=127.0.0.1 MCGW_ADMIN_BIND=127.0.0.1 MCGW_LOG="${MCGW_LOG:-warn}" NO_COLOR=1

ready() { # admin port, name
  for _ in $(seq 300); do
    curl -fs "127.0.0.1:$1/health/ready" >/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not become ready; its log:" >&2
  cat "$work/$2.log" >&2
  exit 1
}

"$bin" start -c "$work/central.yaml" 2>"$work/central.log" & pids+=($!)
ready "$central_admin" central
echo "central gateway ready: API 127.0.0.1:$central_api, admin 127.0.0.1:$central_admin"
for s in a b; do
  api_var="${s}_api" admin_var="${s}_admin"
  MCGW_API_GATEWAY_POLL_INTERVAL=1s "$bin" start -c "$work/sidecar-$s.yaml" \
    2>"$work/sidecar-$s.log" & pids+=($!)
  ready "${!admin_var}" "sidecar-$s"
  echo "sidecar $s ready: API 127.0.0.1:${!api_var}, settings downloaded from the central"
done

field() { # JSON field of a flat answer on stdin
  sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p"
}
status() { # method, URL, token
  curl -s -o /dev/null -w '%{http_code}' -X "$1" "$2" -H "Authorization: Bearer $3"
}
generation() { # admin port
  curl -s "127.0.0.1:$1/rest/microgateway/status" | field generation
}

echo
echo "1. a token with scope \"view\" from the central's authorization server"
token=$(curl -s -u booking-app:booking-app-secret -d grant_type=client_credentials \
  -d scope=view "127.0.0.1:$central_api/oauth2/token" | field access_token)
[ -n "$token" ] || { echo "no token" >&2; exit 1; }
echo "   token issued (JWT, $(echo "$token" | wc -c) bytes)"

echo "2. through sidecar A"
echo "   GET  /travels/bookings: $(status GET "127.0.0.1:$a_api/travels/bookings" "$token") (allowed: view grants ViewTickets)"
echo "   POST /travels/bookings: $(status POST "127.0.0.1:$a_api/travels/bookings" "$token") (refused: BookTickets needs scope book)"
echo "   GET  /invoices/invoices: $(status GET "127.0.0.1:$a_api/invoices/invoices" "$token") (sidecar A serves only Time travels)"
client=$(curl -s "127.0.0.1:$a_api/travels/bookings" -H "Authorization: Bearer $token" | field x-client-id)
echo "   the upstream learns the caller: X-Client-Id: $client"
echo "   the same through sidecar B: GET /travels/bookings $(status GET "127.0.0.1:$b_api/travels/bookings" "$token")"

echo "3. on the central, scope \"view\" now also grants Time travels:BookTickets"
before=$(generation "$a_admin")
sed -i 's|scope: view,    api_scopes: \["Time travels:ViewTickets"|scope: view,    api_scopes: ["Time travels:ViewTickets", "Time travels:BookTickets"|' \
  "$work/central.yaml"
grep -q '"Time travels:ViewTickets", "Time travels:BookTickets"' "$work/central.yaml" ||
  { echo "the scope mapping was not found in central.yaml" >&2; exit 1; }
curl -fs -X POST -u "Administrator:$ADMIN_PASSWORD" \
  "127.0.0.1:$central_admin/rest/microgateway/reload" >/dev/null
echo "   central reloaded; sidecar A polls it every second (If-None-Match)"
for _ in $(seq 300); do
  [ "$(generation "$a_admin")" != "$before" ] && break
  sleep 0.1
done
after=$(generation "$a_admin")
[ "$after" != "$before" ] || { echo "sidecar A did not follow the change" >&2; exit 1; }
echo "   sidecar A: generation $before -> $after, same process (pid ${pids[1]}), no restart"
echo "   POST /travels/bookings with the same token: $(status POST "127.0.0.1:$a_api/travels/bookings" "$token") (allowed now)"

echo
echo "stopping the three gateways"
