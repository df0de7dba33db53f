"""The explorer server under load (not a test: prints numbers for docs/explore.md).

Starts `aqpim-sim explore --port 0 --no-browser` as its own process, then measures:
1. response time per control change, p50/p99 over N changes (a random control moved each time: context, batch,
   channels, pq_m, capacity policy, PCIe bandwidth), for /api/estimate (closed forms) and /api/run (2 simulated
   steps), with the page's default four variants;
2. robustness: 200 concurrent requests with random bounded parameters (some deliberately bad) to 127.0.0.1: every
   answer must be 200 or a 400 carrying a one-line error;
3. memory: the server's RSS (from /proc) before and after M quick requests.

    python benchmarks/bench_explore.py                 # 100 changes, 200 concurrent, 10,000 requests
    python benchmarks/bench_explore.py --changes 20 --requests 1000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post(base: str, path: str, state: dict, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=json.dumps(state).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def change(rng: random.Random, state: dict) -> dict:
    key = rng.choice(["context", "batch", "channels", "pq_m", "capacity_policy", "pcie_gbps"])
    state = dict(state)
    state[key] = {"context": lambda: str(rng.choice([2**k for k in range(10, 18)]) + rng.randrange(64)),
                  "batch": lambda: str(rng.choice([1, 2, 4, 8, 16, 32, 64])),
                  "channels": lambda: str(rng.choice([64, 128, 160, 256, 320, 640])),
                  "pq_m": lambda: str(rng.choice([4, 8, 16, 32])),
                  "capacity_policy": lambda: rng.choice(["spill", "limit"]),
                  "pcie_gbps": lambda: str(rng.choice([16, 32, 64, 128]))}[key]()
    return state


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def random_request(rng: random.Random) -> tuple[str, dict]:
    state = {"context": str(rng.randrange(1, 200_000)), "batch": str(rng.randrange(1, 65)),
             "variants": ",".join(rng.sample(["offload", "pim", "pim+limit", "aqpim", "gpu"], rng.randrange(1, 4)))}
    if rng.random() < 0.3:
        state[rng.choice(["batch", "context", "channels"])] = rng.choice(["-1", "0", "abc", "1e99", ""])
    if rng.random() < 0.1:
        state["model"] = rng.choice(["llama-9", "mistral-7b", "../etc/passwd"])
    path = rng.choices(["/api/estimate", "/api/run", "/api/sweep"], [0.7, 0.2, 0.1])[0]
    if path == "/api/run":
        state["steps"] = str(rng.randrange(1, 5))
    if path == "/api/sweep":
        state.update(sweep_x="context", sweep_from="1024", sweep_to="65536", sweep_points=str(rng.randrange(2, 9)))
    return path, state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=200)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "explore", "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        base = line.split("serving ")[1].split()[0].rstrip("/")
        print(f"server pid {proc.pid} at {base}")
        rng = random.Random(args.seed)
        state: dict = {}
        post(base, "/api/estimate", state)
        post(base, "/api/run", state)  # warm: the first request loads presets and accuracy tables
        rss0 = rss_kib(proc.pid)
        est, run = [], []
        for _ in range(args.changes):
            state = change(rng, state)
            t = time.perf_counter()
            s1, _ = post(base, "/api/estimate", state)
            est.append(time.perf_counter() - t)
            t = time.perf_counter()
            s2, out = post(base, "/api/run", state)
            run.append(time.perf_counter() - t)
            assert s1 == 200 and s2 == 200, out
        for name, xs, target in (("estimate", est, 0.05), ("run", run, 1.0)):
            print(f"/api/{name:8} per control change over {len(xs)}: p50 {1e3 * pct(xs, 50):.1f} ms, "
                  f"p99 {1e3 * pct(xs, 99):.1f} ms, mean {1e3 * statistics.mean(xs):.1f} ms "
                  f"(target p50 < {1e3 * target:.0f} ms)")

        reqs = [random_request(rng) for _ in range(args.concurrent)]
        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            answers = list(pool.map(lambda r: post(base, *r, timeout=600), reqs))
        wall = time.perf_counter() - t
        codes: dict[int, int] = {}
        for code, _ in answers:
            codes[code] = codes.get(code, 0) + 1
        bad = [(r, a) for r, a in zip(reqs, answers, strict=True)
               if a[0] not in (200, 400) or (a[0] == 400 and ("\n" in a[1].get("error", "\n")))]
        print(f"{args.concurrent} concurrent requests in {wall:.1f} s: status counts {codes}; "
              f"{len(bad)} answers other than 200 or a one-line 400")
        for r, a in bad[:5]:
            print("  unexpected:", r, a)
        examples = sorted({a[1]["error"] for a in answers if a[0] == 400})[:4]
        for e in examples:
            print("  e.g. 400:", e)

        rss1 = rss_kib(proc.pid)
        marks = []
        t = time.perf_counter()
        for i in range(args.requests):
            kind = i % 4
            if kind == 0:
                s, _ = post(base, "/api/estimate", {"variants": "gpu", "context": str(rng.randrange(1, 2**20))})
            elif kind == 1:
                s, _ = post(base, "/api/estimate", {"variants": "pim", "context": str(rng.randrange(1, 2**17)),
                                                    "batch": str(rng.randrange(1, 33))})
            elif kind == 2:
                s, _ = post(base, "/api/estimate", {"batch": "-1"})
            else:
                s, _ = post(base, "/api/estimate", {"variants": "offload", "pcie_gbps": str(rng.randrange(8, 300))})
            assert s in (200, 400)
            if (i + 1) % (args.requests // 5) == 0:
                marks.append((i + 1, rss_kib(proc.pid)))
        print(f"RSS: {rss0 / 1024:.1f} MiB after warm-up, {rss1 / 1024:.1f} MiB after the changes and the concurrent "
              f"burst; over {args.requests} more requests ({time.perf_counter() - t:.0f} s): "
              + ", ".join(f"{n}: {r / 1024:.1f} MiB" for n, r in marks))
        return 1 if bad else 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
