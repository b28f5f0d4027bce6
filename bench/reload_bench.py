"""Hot-reload benchmark driver (see bench/reload.sh)."""
import json, os, re, signal, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request

BIN = os.path.abspath("target/release/microgateway")
DURATION = int(os.environ.get("RELOAD_SECONDS", "30"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(port, admin, marker):
    return f"""
ports: {{ http: {port}, bind: 127.0.0.1 }}
admin: {{ port: {admin}, bind: 127.0.0.1, user: bench, password: bench }}
apis:
- name: bench
  base_path: /bench
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
  policies:
    request_transformation:
      set_headers:
        X-Marker: "{marker}"
"""


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def marker_seen(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/x", timeout=2) as r:
        return json.load(r)["headers"].get("x-marker")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def wrk(port, seconds):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/bench/x"],
                         capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(errors.group(1)) if errors else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, failed


def main():
    port, admin = free_port(), free_port()
    d = tempfile.mkdtemp()
    path = os.path.join(d, "microgateway.yaml")
    write_atomic(path, config(port, admin, "m0"))
    env = dict(os.environ, MCGW_LOG="warn")
    gw = subprocess.Popen([BIN, "start", "-c", path], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                marker_seen(port)
                break
            except Exception:
                time.sleep(0.05)
        base_rps, base_failed = wrk(port, 10)

        latencies, stop = [], threading.Event()

        def rewrite():
            n = 0
            while not stop.is_set():
                n += 1
                marker = f"m{n}"
                t0 = time.monotonic()
                write_atomic(path, config(port, admin, marker))
                while marker_seen(port) != marker:
                    if time.monotonic() - t0 > 5:
                        break
                    time.sleep(0.002)
                latencies.append((time.monotonic() - t0) * 1000)
                stop.wait(0.5)

        t = threading.Thread(target=rewrite)
        t.start()
        reload_rps, reload_failed = wrk(port, DURATION)
        stop.set()
        t.join()

        rss_before = rss_kib(gw.pid)
        auth = "Basic " + __import__("base64").b64encode(b"bench:bench").decode()
        for _ in range(1000):
            req = urllib.request.Request(f"http://127.0.0.1:{admin}/rest/microgateway/reload", method="POST",
                                         headers={"Authorization": auth})
            urllib.request.urlopen(req, timeout=5).read()
        rss_after = rss_kib(gw.pid)

        latencies.sort()
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
        print(f"machine: {os.cpu_count()} cores; wrk -t2 -c64; reload every 500 ms for {DURATION} s")
        print(f"without reloads: {base_rps:.0f} req/s, failed {base_failed}")
        print(f"with reloads:    {reload_rps:.0f} req/s, failed {reload_failed} ({len(latencies)} reloads)")
        print(f"ratio during/without: {reload_rps / base_rps:.2f}")
        print(f"write -> serving: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {latencies[-1]:.1f} ms")
        print(f"RSS before/after 1000 reloads: {rss_before} KiB / {rss_after} KiB")
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
