"""Speed of the closed-form sweep (`aqpim-sim sweep --analytic`), and the error of a re-simulated sample.

Run: python3 benchmarks/bench_analytic_sweep.py [--steps 1] [--jobs 1 2] [--check-sample 20] [--hardware a100 h100]
                                                [--mode full table]
     python3 benchmarks/bench_analytic_sweep.py --write-grid grid.toml   (then time the CLI on it)
     python3 benchmarks/bench_analytic_sweep.py --per-system   (ms per point of each system, Results and rows)

The grid: 16 system variants (gpu; offload sync, prefetch, CPU attention; pim and aqpim at 32, 64, 160 and 256
channels; pim with capacity_policy limit and with INT4) x 8 batch sizes (1-128) x 8 contexts (1K-128K) x the
machines given (default: the A100 and H100 presets), 1,024 points per machine, on LLaMA-3.1-8B. ``--steps``
decode steps per point (1: one step per configuration, as an analytic tool such as llm-analysis evaluates one).

For each ``--mode`` (full: a whole Result per point, as ``sweep --analytic``; table: a row of headline numbers,
as ``sweep --analytic --table``) and ``--jobs`` value the sweep runs into a fresh folder: the wall time of ``run_analytic_sweep`` (evaluation,
writing results.jsonl, ordering it, rebuilding the CSV; not the parsing of the sweep file, timed apart) and the
CPU seconds of this process and its workers. Then ``--check-sample`` points (seed 0) are re-run through the
simulation. The machine's load is printed first: other processes on the same cores slow every number down.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sim.analytic_sweep import check_points, run_analytic_sweep  # noqa: E402
from sim.results import RESULTS_JSONL  # noqa: E402
from sim.sweep import load_sweep  # noqa: E402

HARDWARE = {"a100": "a100-pcie4-ddr5", "h100": "h100-pcie5-ddr5"}
VARIANTS = (['{ name = "gpu", system = "gpu" }', '{ name = "offload", system = "offload" }',
             '{ name = "offload+prefetch", system = "offload", prefetch = true }',
             '{ name = "offload+cpu", system = "offload", cpu_attention = true }']
            + [f'{{ name = "{s}-{c}", system = "{s}", channels = {c} }}' for s in ("pim", "aqpim")
               for c in (32, 64, 160, 256)]
            + ['{ name = "pim+limit", system = "pim", capacity_policy = "limit" }',
               '{ name = "pim+int4", system = "pim", kv_format = "int4" }',
               '{ name = "pim+chunks", system = "pim", link_chunks = 4 }',
               '{ name = "pim+sub2", system = "pim", sub_batches = 2 }'])


def sweep_text(steps: int, hardware: list[str]) -> str:
    hw = ", ".join(f'"{HARDWARE.get(h, h)}"' for h in hardware)
    variants = ",\n  ".join(VARIANTS)
    return (f'[base]\nmodel = "llama-3.1-8b"\nsteps = {steps}\n[factors]\nhardware = [{hw}]\n'
            f'variant = [\n  {variants},\n]\n'
            'batch = [2, 4, 8, 16, 24, 32, 64, 128]\n'
            'context = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]\n')


def cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def per_system() -> None:
    """CPU ms per point, one evaluator per system and mode (its system built before the clock starts), the
    median of three runs."""
    from sim.analytic_sweep import Evaluator
    from sim.config import make_config
    from sim.errors import INPUT_ERRORS

    batches, contexts = (2, 4, 8, 16, 24, 32, 64, 128), (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| system | 1 decode step, Result | 1 decode step, row | 8 decode steps, Result | 8 decode steps, row |")
    print("|---|---|---|---|---|")
    for system in ("gpu", "offload", "pim", "aqpim"):
        cells = []
        for steps in (1, 8):
            cfgs = [make_config(model="llama-3.1-8b", system=system, batch=b, context=c, steps=steps)
                    for b in batches for c in contexts]
            for mode in ("full", "table"):
                times = []
                for _ in range(3):  # the median of three: single timings this small move by a third here
                    ev = Evaluator()
                    ev.setup(cfgs[0])
                    evaluate = ev.point_dict if mode == "full" else ev.row
                    t0 = time.process_time()
                    for cfg in cfgs:
                        try:
                            evaluate(cfg)
                        except INPUT_ERRORS:
                            pass
                    times.append((time.process_time() - t0) / len(cfgs))
                cells.append(f"{1e3 * sorted(times)[1]:.2f} ms")
        print(f"| {system} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--check-sample", type=int, default=20)
    ap.add_argument("--hardware", nargs="+", default=["a100", "h100"])
    ap.add_argument("--mode", nargs="+", choices=("full", "table"), default=["full", "table"])
    ap.add_argument("--per-system", action="store_true",
                    help="instead: CPU ms per point of each system at its defaults (64 points, 1 and 8 decode "
                         "steps), whole Results against table rows (the table in docs/metrics.md)")
    ap.add_argument("--write-grid", metavar="FILE", help="write the grid's sweep file and exit (to time the CLI: "
                    "aqpim-sim sweep FILE --analytic --jobs 2 --check-sample 50)")
    args = ap.parse_args()
    if args.per_system:
        per_system()
        return
    if args.write_grid:
        Path(args.write_grid).write_text(sweep_text(args.steps, args.hardware))
        return
    print(f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} usable cores")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.toml"
        path.write_text(sweep_text(args.steps, args.hardware))
        t0 = time.perf_counter()
        sweep = load_sweep(path, max_points=10**6)
        parse_s = time.perf_counter() - t0
        n = len(sweep.points)
        print(f"grid: {n} points, {args.steps} decode step(s) each; parsing and keying the sweep file: "
              f"{parse_s:.2f} s ({n / parse_s:,.0f} points/s)")
        last = None
        for mode in args.mode:
            for jobs in args.jobs:
                out = Path(tmp) / f"out-{mode}-{jobs}"
                c0, t0 = cpu_s(), time.perf_counter()
                s = run_analytic_sweep(sweep, out, jobs=jobs, force_jobs=True, table=mode == "table")
                wall, cpu = time.perf_counter() - t0, cpu_s() - c0
                size = (out / RESULTS_JSONL).stat().st_size
                print(f"{mode:5s} --jobs {jobs}: {s.ran} points in {wall:.2f} s wall = {s.ran / wall:,.0f} points/s "
                      f"(CPU {cpu:.2f} s, {1e3 * cpu / s.ran:.2f} ms per point; {s.failed} rejected; "
                      f"{size / max(1, s.total):,.0f} bytes per point in {RESULTS_JSONL})")
                last = out
        if args.check_sample and last is not None:
            t0 = time.perf_counter()
            c = check_points(sweep, last / RESULTS_JSONL, args.check_sample, 0, jobs=max(args.jobs))
            bound = (f", bound points {c['bound_points']} (smallest simulated/bound {c['min_sim_over_bound']:.6f})"
                     if c["bound_points"] else "")
            print(f"check: {c['sampled']} points re-simulated in {time.perf_counter() - t0:.1f} s: exact points "
                  f"{c['exact_points']}, largest relative error {c['max_rel_error_exact']:.3g}{bound}; "
                  f"{'passed' if c['ok'] else 'FAILED'}")


if __name__ == "__main__":
    main()
