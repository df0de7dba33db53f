"""Cost of a tensor- or pipeline-parallel run against one GPU doing the same work.

Run: python3 benchmarks/bench_parallel.py [--steps 64] [--repeat 3]

Per system, llama-3.1-70b, batch 16, 32K context on dgx-a100: the CPU seconds (user + system of this process,
best of ``--repeat``) of a run with ``--tp 8`` and of the same run on one of its GPUs (``--tp 1``: the same
tokens and KV; it does not fit, which the simulator reports and times anyway). Issue 13's target: the 8-GPU run
costs less than 3x the 1-GPU run. A TP run simulates one rank (design note 26), so the ratio is near 1. Also
``--pp 8`` (8 micro-batches) and ``--tp 2 --pp 4`` (4 micro-batches): a pipeline run simulates its last stage
(design note 29), one plan per micro-batch and step.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def best_cpu_s(cfg, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = cpu_s()
        simulate(cfg)
        best = min(best, cpu_s() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    base = dict(hardware="dgx-a100", model="llama-3.1-70b", batch=16, context=32768, steps=args.steps)
    simulate(make_config(**{**base, "steps": 1}))  # imports and preset loading outside the timings
    layouts = {"tp 8": dict(tp=8), "pp 8": dict(pp=8), "tp 2 x pp 4": dict(tp=2, pp=4)}
    print(f"{'system':10} {'1 GPU CPU s':>12}" + "".join(f" {name + ' CPU s':>17} {'ratio':>6}" for name in layouts))
    for system in ("gpu", "offload", "pim", "aqpim"):
        one = best_cpu_s(make_config(**base, system=system, tp=1), args.repeat)
        row = f"{system:10} {one:12.3f}"
        for layout in layouts.values():
            t = best_cpu_s(make_config(**base, system=system, **layout), args.repeat)
            row += f" {t:17.3f} {t / one:6.2f}"
        print(row)


if __name__ == "__main__":
    main()
