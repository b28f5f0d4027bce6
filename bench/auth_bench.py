"""OAuth2 enforcement benchmark (run by bench/compare.sh after the plain
proxy comparison, or alone): the same wrk load against

  nginx   plain keep-alive reverse proxy, with the same ~1 KiB Authorization header
  jwt     microgateway, JWT route (RS256), one token repeated (verified-token cache)
  ha-jwt  HAProxy (Debian's, nbthread = cores) doing the same work: `jwt_verify`
          of the RS256 signature, skipped for a token whose SHA-256 is already
          in a stick table of verified tokens, and per request the `exp`,
          `iss` and scope checks (jwt_payload_query)
  401     microgateway, JWT route, no token
  opaque  microgateway, introspection route, one cached opaque token
  rs256*  microgateway, every request a different RS256 token (signature verified)
  es256*  microgateway, every request a different ES256 token
  apikey  microgateway, API key route (SHA-256 digest, constant-time compare)
  basic   microgateway, HTTP Basic route (Argon2 checked once, then cached)

and reports req/s, p50/p99, ratios to nginx, CPU µs per request (from
/proc), and the introspection calls counted at the introspection server.
"""
import base64, http.server, json, os, re, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.request

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

BIN = os.path.abspath(os.environ.get("MCGW_BIN", "target/release/microgateway"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DISTINCT = int(os.environ.get("BENCH_DISTINCT_TOKENS", "30000"))
ISSUER = "https://idp.bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(n):
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Idp:
    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        self.jwks = json.dumps({"keys": [
            {"kty": "RSA", "kid": "rs", "alg": "RS256", "use": "sig", "n": b64(rn.n), "e": b64(rn.e)},
            {"kty": "EC", "kid": "es", "alg": "ES256", "use": "sig", "crv": "P-256",
             "x": b64(en.x).rjust(43, "A"), "y": b64(en.y).rjust(43, "A")},
        ]}).encode()
        self.introspections = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(idp.jwks)))
                self.end_headers()
                self.wfile.write(idp.jwks)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                idp.introspections += 1
                body = json.dumps({"active": True, "scope": "view", "client_id": "bench",
                                   "exp": int(time.time()) + 3600}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, alg, n=0, pad=0):
        claims = {"iss": ISSUER, "sub": f"user{n}", "client_id": "bench", "scope": "view",
                  "exp": int(time.time()) + 3600, "jti": f"{alg}-{n}"}
        if pad:
            claims["pad"] = "x" * pad
        key, kid = (self.rsa, "rs") if alg == "RS256" else (self.ec, "es")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})


def basic_hash(password):
    """An Argon2id PHC string made by the gateway itself (`hash-password`)."""
    out = subprocess.run([BIN, "hash-password"], input=password + "\n",
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def gateway_config(port, admin, upstream, idp):
    servers = "".join(f"""
  - id: {name}
    localIntrospectionConfig: {{ issuer: "{ISSUER}", jwksuri: "http://127.0.0.1:{idp.port}/jwks" }}
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:{idp.port}/introspect"
      clientId: gw
      clientSecret: gw-secret
      cache_ttl: 1h""" for name in ["idp"])
    return f"""
ports: {{ http: {port}, bind: 127.0.0.1 }}
admin: {{ port: {admin} }}
security_settings:
  auth_servers:{servers}
apis:
- name: jwt
  base_path: /jwt
  upstream: {{ url: "http://127.0.0.1:{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: view, resources: ["GET /x"] }}]
- name: apikey
  base_path: /apikey
  upstream: {{ url: "http://127.0.0.1:{upstream}" }}
  authentication: {{ type: api_key }}
  resources: ["GET /x"]
- name: basic
  base_path: /basic
  upstream: {{ url: "http://127.0.0.1:{upstream}" }}
  authentication: {{ type: basic }}
  resources: ["GET /x"]
applications:
- name: bench
  api_keys: ["bench-api-key-0123456789"]
  basic_users: [{{ username: bench, password_hash: "{basic_hash('bench-password')}" }}]
  apis: [apikey, basic]
"""


def haproxy_jwt_config(port, upstream, pubkey):
    """HAProxy verifying the JWT route's tokens as the gateway does: the
    signature once per token (a stick table of the SHA-256 of tokens
    verified), `exp`, `iss` and the scope on every request."""
    return f"""
global
    nbthread {os.cpu_count()}
    maxconn 8192
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    http-reuse always
backend verified
    stick-table type binary len 32 size 100k expire 1h
frontend jwt
    bind 127.0.0.1:{port}
    http-request deny deny_status 401 unless {{ http_auth_bearer -m found }}
    http-request set-var(txn.key) http_auth_bearer,digest(sha256)
    acl verified var(txn.key),in_table(verified)
    http-request deny deny_status 401 if !verified !{{ http_auth_bearer,jwt_verify("RS256","{pubkey}") -m int 1 }}
    http-request track-sc0 var(txn.key) table verified if !verified
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_payload_query('$.iss') -m str {ISSUER} }}
    http-request deny deny_status 401 if {{ http_auth_bearer,jwt_payload_query('$.exp','int'),sub(txn.now) -m int lt 0 }}
    http-request deny deny_status 403 unless {{ http_auth_bearer,jwt_payload_query('$.scope') -m reg (^|\ )view(\ |$) }}
    default_backend upstream
backend upstream
    server up 127.0.0.1:{upstream}
"""


def wrk(url, header=None, script=None):
    cmd = ["wrk", "-t2", "-c64", f"-d{SECONDS}s", "--latency"]
    if header:
        cmd += ["-H", header]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "total": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def status(url, header=None):
    """The status of one GET of `url`."""
    request = urllib.request.Request(url)
    if header:
        name, value = header.split(": ", 1)
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(runs, key):
    values = sorted(r[key] for r in runs)
    return values[len(values) // 2]


def run(upstream_port, nginx_proxy_port):
    idp = Idp()
    tmp = tempfile.mkdtemp()
    port, admin = free_port(), free_port()
    path = os.path.join(tmp, "gw.yaml")
    with open(path, "w") as f:
        f.write(gateway_config(port, admin, upstream_port, idp))
    gw = subprocess.Popen([BIN, "start", "-c", path], env=dict(os.environ, MCGW_LOG="warn"),
                          stderr=subprocess.DEVNULL)
    pubkey = os.path.join(tmp, "rs256.pub.pem")
    with open(pubkey, "wb") as f:
        f.write(idp.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ha_port = free_port()
    ha_cfg = os.path.join(tmp, "haproxy.cfg")
    with open(ha_cfg, "w") as f:
        f.write(haproxy_jwt_config(ha_port, upstream_port, pubkey))
    haproxy = subprocess.Popen(["haproxy", "-f", ha_cfg, "-db"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        one = idp.token("RS256", pad=600)  # ~1 KiB Authorization header
        header = f"Authorization: Bearer {one}"
        opaque = "opaque-" + "o" * 40
        print(f"generating {DISTINCT} RS256 and {DISTINCT} ES256 tokens ...", file=sys.stderr)
        scripts = {}
        for alg in ["RS256", "ES256"]:
            tokens = os.path.join(tmp, f"{alg}.txt")
            with open(tokens, "w") as f:
                for n in range(DISTINCT):
                    f.write(idp.token(alg, n) + "\n")
            lua = os.path.join(tmp, f"{alg}.lua")
            with open(lua, "w") as f:
                f.write(f"""
local tokens = {{}}
for line in io.lines("{tokens}") do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {{ ["Authorization"] = "Bearer " .. tokens[i] }})
end
""")
            scripts[alg] = lua
        cases = {
            "nginx": lambda: wrk(f"http://127.0.0.1:{nginx_proxy_port}/x", header),
            "jwt": lambda: wrk(f"http://127.0.0.1:{port}/jwt/x", header),
            "ha-jwt": lambda: wrk(f"http://127.0.0.1:{ha_port}/x", header),
            "401": lambda: wrk(f"http://127.0.0.1:{port}/jwt/x"),
            "opaque": lambda: wrk(f"http://127.0.0.1:{port}/jwt/x", f"Authorization: Bearer {opaque}"),
            "rs256*": lambda: wrk(f"http://127.0.0.1:{port}/jwt/x", script=scripts["RS256"]),
            "es256*": lambda: wrk(f"http://127.0.0.1:{port}/jwt/x", script=scripts["ES256"]),
            "apikey": lambda: wrk(f"http://127.0.0.1:{port}/apikey/x", "X-API-Key: bench-api-key-0123456789"),
            "basic": lambda: wrk(f"http://127.0.0.1:{port}/basic/x",
                                 "Authorization: Basic " + base64.b64encode(b"bench:bench-password").decode()),
        }
        results = {name: [] for name in cases}
        # HAProxy answers the token as the gateway does, or it is not a peer.
        for name, url in [("jwt", f"http://127.0.0.1:{port}/jwt/x"), ("ha-jwt", f"http://127.0.0.1:{ha_port}/x")]:
            for auth, want in [(header, 200), ("Authorization: Bearer " + one[:-4] + "AAAA", 401), (None, 401)]:
                got = status(url, auth)
                if got != want:
                    sys.exit(f"{name}: {got} for {'no token' if auth is None else 'a token'}, expected {want}")
        for _ in range(ROUNDS):
            for name, case in cases.items():
                pid = haproxy.pid if name == "ha-jwt" else gw.pid
                before = cpu_seconds(pid)
                r = case()
                r["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / max(r["total"], 1)
                results[name].append(r)
        base = median(results["nginx"], "rps")
        base_p99 = median(results["nginx"], "p99")
        print(f"\nOAuth2, API key and Basic routes (wrk -t2 -c64 -d{SECONDS}s, {ROUNDS} interleaved rounds, medians; {os.cpu_count()} cores)")
        print(f"{'case':8} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99/ng':>6} {'cpu µs/req':>10} {'non-2xx':>8}")
        for name, runs in results.items():
            rps = median(runs, "rps")
            p99 = median(runs, "p99")
            cpu = median(runs, "cpu_us") if name != "nginx" else float("nan")
            print(f"{name:8} {rps:9.0f} {rps / base:6.2f} {median(runs, 'p50'):7.2f} {p99:7.2f} {p99 / base_p99:6.2f} {cpu:10.1f} {median(runs, 'non2xx'):8d}")
        ha = median(results["ha-jwt"], "rps")
        print(f"jwt / ha-jwt: req/s {median(results['jwt'], 'rps') / ha:.2f}x, "
              f"p99 {median(results['jwt'], 'p99') / median(results['ha-jwt'], 'p99'):.2f}x, "
              f"cpu per request {median(results['jwt'], 'cpu_us') / median(results['ha-jwt'], 'cpu_us'):.2f}x")
        jwt_cpu = median(results["jwt"], "cpu_us")
        for alg in ["rs256*", "es256*"]:
            extra = median(results[alg], "cpu_us") - jwt_cpu
            print(f"{alg[:-1]} signature verification ≈ {extra:.1f} µs CPU each (distinct-token run minus cached run)")
        print(f"introspection calls at the introspection server: {idp.introspections} (distinct opaque tokens: 1)")
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=30)
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=30)
        idp.server.shutdown()


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]))
