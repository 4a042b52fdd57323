"""The explorer's server under load and its latency, end to end over HTTP (standard library only).

Starts `resprop serve --port 0`, then:

- latency: one client, the page's requests one after another, `--repeat` times each after a
  warm-up: a 50-unit residual MLP (width 32, batch 32) and ResNet-110 at batch 32 (3x32x32):
  median, min and max seconds per answer, from sending the request to the last byte;
- load: `--requests` requests from `--clients` concurrent clients (small MLPs of 2-6 units,
  each answer checked against the first answer for the same request), the server's resident
  memory (VmRSS) before, at the end and after a settle.

    cargo build --release
    python3 benches/serve_load.py target/release/resprop
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(url + "api/profile", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        answer = json.loads(r.read())
        return r.status, answer, time.perf_counter() - t


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--clients", type=int, default=4)
    a = p.parse_args()
    server = subprocess.Popen([a.binary, "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", server.stdout.readline()).group(1)
        print(f"server VmRSS at start: {rss_mib(server.pid):.1f} MiB")
        for name, body in [
            ("MLP, 50 units, width 32, batch 32", {"net": "mlp", "units": 50, "width": 32, "batch": 32}),
            ("ResNet-110, batch 32, 3x32x32", {"net": "resnet110", "batch": 32}),
        ]:
            post(url, body)  # warm-up
            times = [post(url, dict(body, seed=s))[2] for s in range(a.repeat)]
            print(f"latency {name}: median {statistics.median(times):.3f} s, "
                  f"min {min(times):.3f}, max {max(times):.3f} ({a.repeat} answers)")
        bodies = [{"net": "mlp", "units": u, "width": 8, "batch": 8, "seed": u} for u in range(2, 7)]
        want = {b["units"]: post(url, b)[1]["csv"] for b in bodies}
        before = rss_mib(server.pid)
        results, lock = [], threading.Lock()

        def client(c):
            for i in range(c, a.requests, a.clients):
                b = bodies[i % len(bodies)]
                status, answer, secs = post(url, b)
                with lock:
                    results.append((status == 200 and answer["csv"] == want[b["units"]], secs))

        t = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        after = rss_mib(server.pid)
        time.sleep(2)
        settled = rss_mib(server.pid)
        good = sum(ok for ok, _ in results)
        secs = [s for _, s in results]
        print(f"server VmRSS after the latency runs: {before:.1f} MiB")
        print(f"load: {len(results)} requests from {a.clients} clients in {wall:.2f} s, {good} answered "
              f"correctly; per answer median {statistics.median(secs):.3f} s, max {max(secs):.3f} s; "
              f"server VmRSS {before:.1f} MiB before, {after:.1f} MiB after, {settled:.1f} MiB 2 s later")
        return 0 if good == len(results) == a.requests else 1
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
