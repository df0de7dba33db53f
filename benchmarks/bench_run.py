"""Speed of the simulator: wall time, SimPy events per second and peak memory for reference runs.

Run: python3 benchmarks/bench_run.py [--repeat N] [--only NAME]
Events are counted in a second, instrumented pass (counting slows the loop), so the wall times are clean.
The bare SimPy rates (plain timeouts, and request/hold/release cycles on a contended Resource) are measured in
the same process as references for what the machine can do.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

BIG = dict(model="llama-2-70b", batch=32, context=131072, steps=32)
CASES = {
    "default-offload": make_config(),
    "default-pim": make_config(system="pim"),
    "default-aqpim": make_config(system="aqpim"),
    "70b-128k-b32-s32 offload": make_config(**BIG),
    "70b-128k-b32-s32 offload prefetch": make_config(**BIG, prefetch=True),
    "70b-128k-b32-s32 pim spill": make_config(**BIG, system="pim"),
    "70b-128k-b32-s32 aqpim": make_config(**BIG, system="aqpim"),
    **{f"70b-128k-b32-s32 pim {c} ch": make_config(**BIG, system="pim", channels=c) for c in (64, 256, 1024)},
    **{f"70b-128k-b32-s32 aqpim {c} ch": make_config(**BIG, system="aqpim", channels=c) for c in (64, 256, 1024)},
    "70b-1M-b32-s32 aqpim 1024 ch": make_config(**{**BIG, "context": 1 << 20}, system="aqpim", channels=1024),
}


def bare_timeouts_per_s(n: int = 200_000) -> float:
    env = simpy.Environment()

    def proc():
        for _ in range(n):
            yield env.timeout(1)

    env.process(proc())
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


def bare_resource_cycles_per_s(n_procs: int = 10, cycles: int = 5_000) -> float:
    env = simpy.Environment()
    res = simpy.Resource(env, capacity=1)

    def proc():
        for _ in range(cycles):
            with res.request() as req:
                yield req
                yield env.timeout(1)

    for _ in range(n_procs):
        env.process(proc())
    t = time.perf_counter()
    env.run()
    return n_procs * cycles / (time.perf_counter() - t)


def count_events(cfg) -> int:
    counter = [0]
    original = simpy.Environment.schedule

    def schedule(self, event, priority=1, delay=0):
        counter[0] += 1
        return original(self, event, priority, delay)

    simpy.Environment.schedule = schedule
    try:
        simulate(cfg)
    finally:
        simpy.Environment.schedule = original
    return counter[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", help="run only the cases whose name contains this text")
    args = ap.parse_args()
    print(f"bare SimPy: {bare_timeouts_per_s():,.0f} timeouts/s, "
          f"{bare_resource_cycles_per_s():,.0f} contended request/hold/release cycles/s")
    for name, cfg in CASES.items():
        if args.only and args.only not in name:
            continue
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            r = simulate(cfg)
            best = min(best, time.perf_counter() - t)
        events = count_events(cfg)
        print(f"{name:<36} wall {best * 1e3:8.1f} ms  events {events:>9,}  {events / best:>12,.0f} events/s  "
              f"steps {r.steps}  mean step {r.mean_step_latency_s:.3f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
