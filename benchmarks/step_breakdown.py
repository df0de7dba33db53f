"""Where a serving run's time goes, part by part of the step-level path (``sim.fastpath.Stepper``).

Run: python3 benchmarks/step_breakdown.py [--system pim] [--requests 600] [--rounds 2] [--root CHECKOUT ...]

The issue-12 serving case (LLaMA-2-7B, Poisson arrivals at 5 requests/s, 1,024-token prompts, 128 output tokens, at
most 64 sequences per step, chunked prefill), with the stepper's functions wrapped in timers:

* ``plan``: the system's plan of a decode batch (inside ``entry``), ``entry``: the plan with its closed form and
  its cache entry;
* ``run``: decode steps that run alone (a layer walked or simulated, the others replayed; only the time spent in
  the generator itself, not in the events it waits for);
* ``prefill_step``: prefill steps of GPU holds alone; ``contended_step``: prefill steps beside a decode chain that
  uses links or PIM channels;
* ``rest``: everything else of the run (the driver, the batcher, statistics, the start of the command).

Each checkout (``--root``, default this one) runs in a fresh process with its own code first on the path; with
several roots and ``--rounds N`` they alternate N times and the median of each part is printed. Wall time on a
shared machine drifts (docs/metrics.md), so compare shares, or checkouts measured in the same call; for a
before/after figure that does not drift, count instructions (``count_instructions.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from count_instructions import _count  # (this directory is first on the path of a script run from it)

HERE = Path(__file__).resolve()
PARTS = ("plan", "entry", "run", "prefill_step", "contended_step")


def _timed(cls, name: str, acc: dict, label: str) -> None:
    f = getattr(cls, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            acc[label] += time.perf_counter() - t

    setattr(cls, name, wrapper)


def _timed_generator(cls, name: str, acc: dict, label: str) -> None:
    """A generator method timed while it runs, not while the events it yields are pending."""
    f = getattr(cls, name)

    def wrapper(*args, **kwargs):
        gen = f(*args, **kwargs)
        value = None
        while True:
            t = time.perf_counter()
            try:
                item = gen.send(value)
            except StopIteration as stop:
                acc[label] += time.perf_counter() - t
                return stop.value
            acc[label] += time.perf_counter() - t
            value = yield item

    setattr(cls, name, wrapper)


def child(root: str, system: str, requests: int) -> None:
    sys.path.insert(0, root)
    from sim import fastpath
    from sim.cli import main
    from sim.systems import SYSTEMS

    acc = dict.fromkeys(PARTS, 0.0)
    _timed(SYSTEMS[system], "plan", acc, "plan")
    _timed(fastpath.Stepper, "entry", acc, "entry")
    _timed(fastpath.Stepper, "prefill_step", acc, "prefill_step")
    _timed(fastpath.Stepper, "contended_step", acc, "contended_step")
    _timed_generator(fastpath.Stepper, "run", acc, "run")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["run", "--system", system, "--model", "llama-2-7b", "--requests", str(requests), "--arrival-rate",
                "5", "--context", "1024", "--output-tokens", "128", "--max-batch", "64", "--prefill", "chunked",
                "--json-out", str(Path(tmp) / "r.json")]
        t = time.perf_counter()
        code = main(argv)
        acc["total"] = time.perf_counter() - t
    if code:
        sys.exit(code)
    print(json.dumps(acc))


def measure(root: str, system: str, requests: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE), "--child", "--root", root, "--system", system, "--requests",
                          str(requests)], capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"run failed for {root}:\n{out.stderr[-2000:]}")
    acc = json.loads(out.stdout.strip().splitlines()[-1])
    # plan is inside entry, and entry, prefill_step and contended_step are inside the run's steps
    acc["rest"] = acc["total"] - acc["entry"] - acc["run"] - acc["prefill_step"] - acc["contended_step"]
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", nargs="+", default=[str(HERE.parents[1])], help="checkouts to measure")
    ap.add_argument("--system", default="pim", choices=("gpu", "offload", "pim", "aqpim"))
    ap.add_argument("--requests", type=_count, default=600)
    ap.add_argument("--rounds", type=_count, default=1, help="times each checkout runs, alternating")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.root[0], args.system, args.requests)
        return
    for root in args.root:
        if not (Path(root) / "sim" / "fastpath.py").is_file():
            sys.exit(f"{root}: not a checkout of aqpim-sim with the step-level path (no sim/fastpath.py)")
    runs: dict[str, list[dict]] = {root: [] for root in args.root}
    for _ in range(args.rounds):
        for root in args.root:
            runs[root].append(measure(root, args.system, args.requests))
    print(f"{args.system}, {args.requests} requests, chunked prefill: seconds (median of {args.rounds}), "
          f"share of the run")
    labels = ("total", *PARTS, "rest")
    print("| part | " + " | ".join(args.root) + " |")
    print("|---|" + "---:|" * len(args.root))
    for label in labels:
        cells = []
        for root in args.root:
            v = statistics.median(r[label] for r in runs[root])
            total = statistics.median(r["total"] for r in runs[root])
            cells.append(f"{v:.2f}" if label == "total" else f"{v:.2f} ({100 * v / total:.0f}%)")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
