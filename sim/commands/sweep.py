"""`aqpim-sim sweep`: run a sweep file's points in parallel, streaming results to a resumable JSONL and a CSV."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sim.results import MANIFEST, RESULTS_CSV, RESULTS_JSONL
from sim.sweep import EXECUTORS, load_sweep, run_sweep

HELP = "run many configurations from a sweep file (resumable; local processes or a Dask cluster)"
EXAMPLE = """sweep file: a [base] table of run settings and a [factors] table of lists, crossed into a grid:
  [base]
  model = "llama-3.1-8b"
  batch = 4
  steps = 2
  [factors]
  system = ["offload", "pim", "aqpim"]
  context = [4096, 8192]

examples:
  aqpim-sim sweep examples/sweep-pcie.toml --out results/pcie --jobs 2
  aqpim-sim sweep examples/sweep-context.toml --dry-run
  aqpim-sim sweep big.toml --out results/big --executor dask --scheduler tcp://127.0.0.1:8786
Rerunning the same command resumes: points already in results.jsonl are skipped."""


def _default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", metavar="SWEEP.toml", help="sweep file: [base], [factors], optional [[points]]")
    p.add_argument("--out", metavar="DIR", help="output folder (default results/<sweep file name>); "
                   "an existing one is resumed")
    p.add_argument("--jobs", type=int, default=None,
                   help=f"points run at once (default: the CPUs available, {_default_jobs()} here)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool on this machine; dask: an existing dask.distributed cluster")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--dry-run", action="store_true", help="list the points and exit without running")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    sweep = load_sweep(args.sweep_file)
    if args.dry_run:
        print(f"{sweep.path}: {len(sweep.points)} points" + (f" ({sweep.description})" if sweep.description else ""))
        for pt in sweep.points:
            desc = ", ".join(f"{k}={v}" for k, v in pt.factors.items()) or "base"
            print(f"  {pt.index:>4}  {pt.key[:12]}  {desc}")
        return 0
    out = Path(args.out) if args.out else Path("results") / Path(args.sweep_file).stem
    jobs = args.jobs if args.jobs is not None else _default_jobs()
    s = run_sweep(sweep, out, jobs=jobs, executor=args.executor, scheduler=args.scheduler,
                  progress_stream=sys.stderr, quiet=args.quiet)
    rate = f"{60 * s.ran / s.wall_s:.1f} points/min" if s.ran and s.wall_s > 0 else "nothing to run"
    print(f"{sweep.path}: {s.total} points; ran {s.ran}, {s.skipped} already done; "
          f"{s.wall_s:.1f} s ({rate}, {jobs} job{'s' if jobs > 1 else ''}, {args.executor})")
    if s.repaired_bytes:
        print(f"note: cut a torn last line ({s.repaired_bytes} bytes) left by an interrupted run")
    if s.failed:
        print(f"note: {s.failed} point(s) were rejected at run time; see the 'error' column of {RESULTS_CSV}")
    if s.foreign:
        print(f"note: {s.foreign} record(s) in {RESULTS_JSONL} belong to no point of this sweep file")
    print(f"wrote {out / RESULTS_JSONL}, {out / RESULTS_CSV}, {out / MANIFEST}")
    return 0
