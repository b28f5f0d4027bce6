"""Memory of idle keep-alive connections: microgateway against nginx.

  python3 bench/idle.py              # IDLE_CONNECTIONS=10000
  BASE=39010b9 python3 bench/idle.py # also the release build of another commit
  TLS=1 python3 bench/idle.py        # the connections over TLS 1.3 (ECDSA P-256
                                     # certificate, no session tickets)

Starts an nginx upstream, nginx as a keep-alive reverse proxy to it and
microgateway (release build) proxying to it too. For each contender it
measures the resident memory (RSS of all its processes, /proc) idle (after
a few requests, closed), then
with IDLE_CONNECTIONS connections open that have each made one request and
wait for the next, then 10 s after they have all closed. Prints the RSS
figures and the cost per idle connection: (RSS open - RSS idle) / N.

Targets: <= 2 KiB per idle connection; RSS back within 20 % of idle 10 s
after the connections close.
"""
import asyncio, os, resource, shutil, socket, ssl, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(os.environ.get("IDLE_CONNECTIONS", "10000"))
BIN = os.path.abspath(
    os.environ.get("MCGW_BIN", os.path.join(ROOT, "target/release/microgateway"))
)
TLS = os.environ.get("TLS", "0") == "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} did not open")


def rss_kib(pids, field="VmRSS:"):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def anon_kib(pids):
    """The anonymous part of the RSS (the heap; the rest is the binary's
    and libraries' pages, which the page cache decides)."""
    return rss_kib(pids, "RssAnon:")


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]
    except FileNotFoundError:
        return []


def client_tls():
    """TLS 1.3 to the bench's own certificate (not verified: a throwaway)."""
    if not TLS:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def one(port, request, conns, tls):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    conns.append(writer)


async def hold(port, path, pids):
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    tls = client_tls()
    # Idle is a proxy that has served: a few requests first (the code they
    # run is then resident, as it is in any proxy in use; microgateway gives
    # back what only its start read), closed, and the memory they took
    # given back (within 2 s).
    warm = []
    await asyncio.gather(*(one(port, request, warm, tls) for _ in range(8)))
    for writer in warm:
        writer.close()
    await asyncio.sleep(3)
    idle = rss_kib(pids)
    idle_anon = anon_kib(pids)
    conns = []
    sem = asyncio.Semaphore(256)

    async def guarded():
        async with sem:
            await one(port, request, conns, tls)

    await asyncio.gather(*(guarded() for _ in range(N)))
    # Held a few seconds: microgateway parks a connection idle for 1 s.
    await asyncio.sleep(3)
    opened = rss_kib(pids)
    for writer in conns:
        writer.close()
    await asyncio.sleep(10)
    closed = rss_kib(pids)
    return idle, opened, closed, len(conns), (idle_anon, anon_kib(pids))


def main():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < N + 1000:
        sys.exit(f"the open-files limit ({hard}) is too low for {N} connections")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(BIN, os.X_OK) or os.environ.get("BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="mcgw-idle.")
    procs = []
    up, px = free_port(), free_port()
    if TLS:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", f"{work}/key.pem",
             "-out", f"{work}/cert.pem"],
            check=True, capture_output=True,
        )
    nginx_tls = (f"""ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem;
  ssl_protocols TLSv1.3; ssl_session_tickets off;""" if TLS else "")
    for name, conf in [
        ("upstream", f"""worker_processes 1;
pid {work}/upstream/nginx.pid;
error_log {work}/upstream/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{up};
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }} }}
"""),
        ("proxy", f"""worker_processes {os.cpu_count()};
worker_rlimit_nofile {N + 1000};
pid {work}/proxy/nginx.pid;
error_log {work}/proxy/logs/error.log warn;
events {{ worker_connections 32768; }}
http {{ access_log off; keepalive_timeout 300s; keepalive_requests 100000;
  {nginx_tls}
  upstream backend {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{ listen 127.0.0.1:{px} reuseport{" ssl" if TLS else ""};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"""),
    ]:
        os.makedirs(f"{work}/{name}/logs")
        with open(f"{work}/{name}/nginx.conf", "w") as f:
            f.write(conf)
        procs.append(
            subprocess.Popen([nginx, "-p", f"{work}/{name}", "-c", f"{work}/{name}/nginx.conf",
                              "-g", "daemon off;"])
        )
    contenders = [("nginx", px, "/items", procs[1].pid)]
    bins = [("microgateway", BIN)]
    if os.environ.get("BASE"):
        base = subprocess.run(
            ["bash", "-c", f'ROOT="{ROOT}"; . "{ROOT}/bench/lib.sh"; base_binary {os.environ["BASE"]}'],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        bins.append(("baseline", base))
    for name, binary in bins:
        port, admin = free_port(), free_port()
        if TLS:
            ports = f"""ports: {{ http: {free_port()}, https: {port}, bind: 127.0.0.1 }}
tls: {{ certificate: "{work}/cert.pem", key: "{work}/key.pem" }}"""
        else:
            ports = f"ports: {{ http: {port}, bind: 127.0.0.1 }}"
        with open(f"{work}/{name}.yaml", "w") as f:
            f.write(f"""{ports}
admin: {{ port: {admin}, bind: 127.0.0.1 }}
limits: {{ max_connections: {2 * N} }}
timeouts: {{ idle: 300s }}
apis:
- name: bench
  base_path: /bench
  upstream: {{ url: "http://127.0.0.1:{up}/bench" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
""")
        env = dict(os.environ, MCGW_LOG="warn")
        proc = subprocess.Popen([binary, "start", "-c", f"{work}/{name}.yaml"],
                                env=env, stderr=subprocess.DEVNULL)
        procs.append(proc)
        contenders.append((name, port, "/bench/items", proc.pid))
    try:
        wait_port(up)
        for _, port, _, _ in contenders:
            wait_port(port)
        time.sleep(1)
        print(f"{N} idle keep-alive connections{' over TLS 1.3' if TLS else ''}")
        print(f"{'contender':<14} {'RSS idle':>10} {'RSS open':>10} {'per conn':>10} "
              f"{'RSS +10s closed':>16} {'anon idle -> closed':>20}")
        for name, port, path, pid in contenders:
            pids = [pid] + children(pid)
            idle, opened, closed, n, anon = asyncio.run(hold(port, path, pids))
            per = (opened - idle) / max(n, 1)
            print(f"{name:<14} {idle / 1024:>8.1f}Mi {opened / 1024:>8.1f}Mi {per:>8.2f}Ki "
                  f"{closed / 1024:>14.1f}Mi {anon[0] / 1024:>10.1f} -> {anon[1] / 1024:.1f}Mi")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
