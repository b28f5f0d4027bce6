#!/usr/bin/env bash
# Two replicas of one issuer on a throwaway PostgreSQL cluster: a token
# issued by one is introspected, refreshed and revoked on the other.
#
#   cargo build --release && examples/central/postgres/run-two-replicas.sh
#
# Needs the PostgreSQL server binaries (Debian: apt-get install postgresql),
# curl and jq. Everything runs on 127.0.0.1 and is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${MICROGATEWAY:-$here/../../../target/release/microgateway}"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bin" ] || { echo "build first: cargo build --release (or set MICROGATEWAY)" >&2; exit 1; }
[ -n "$pg_bin" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }

work="$(mktemp -d)"
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u nobody --); chown nobody: "$work"; chmod 755 "$work"; fi
port=55432
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

export PGPASSWORD="example-$RANDOM$RANDOM"
(umask 077; echo "$PGPASSWORD" > "$work/pwfile")
[ ${#as_pg[@]} = 0 ] || chown nobody: "$work/pwfile"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres -A scram-sha-256 \
  --pwfile="$work/pwfile" >/dev/null
rm -f "$work/pwfile"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work" start >/dev/null
"$pg_bin/psql" -h 127.0.0.1 -p $port -U postgres -Xq \
  -c "CREATE ROLE microgateway LOGIN PASSWORD '$PGPASSWORD'" \
  -c "CREATE DATABASE microgateway OWNER microgateway"

sed "s/127.0.0.1:5432/127.0.0.1:$port/" "$here/issuer.yaml" > "$work/issuer.yaml"
"$bin" check -c "$work/issuer.yaml"
"$bin" start -c "$work/issuer.yaml" 2>"$work/a.log" & pids+=($!)
MCGW_PORTS_HTTP=4495 MCGW_ADMIN_PORT=9495 "$bin" start -c "$work/issuer.yaml" 2>"$work/b.log" & pids+=($!)
for admin in 9485 9495; do
  for _ in $(seq 100); do
    curl -fs "localhost:$admin/health/ready" >/dev/null && break
    sleep 0.2
  done
done

cmp <(curl -s localhost:4485/oauth2/jwks) <(curl -s localhost:4495/oauth2/jwks) \
  && echo "both replicas publish the same keys"
grant=$(curl -s -u bookyourticket:bookyourticket-secret localhost:4485/oauth2/token \
  -d grant_type=password -d username=alice -d password=wonderland -d scope=view)
access=$(jq -r .access_token <<<"$grant")
refresh=$(jq -r .refresh_token <<<"$grant")
echo "issued by replica A, introspected by B:"
curl -s -u resource-server:resource-server-secret localhost:4495/oauth2/introspect \
  --data-urlencode "token=$access" | jq -c '{active, client_id, username, scope}'
echo "refreshed on B:"
curl -s -u bookyourticket:bookyourticket-secret localhost:4495/oauth2/token \
  -d grant_type=refresh_token --data-urlencode "refresh_token=$refresh" | jq -c '{scope, expires_in}'
echo "the same refresh token again on A (reuse: the family is revoked):"
curl -s -u bookyourticket:bookyourticket-secret localhost:4485/oauth2/token \
  -d grant_type=refresh_token --data-urlencode "refresh_token=$refresh" | jq -c .
curl -s -u resource-server:resource-server-secret localhost:4485/oauth2/introspect \
  --data-urlencode "token=$access" | jq -c '{active}'
echo "rotating the signing key:"
"$bin" rotate-signing-key -c "$work/issuer.yaml"
