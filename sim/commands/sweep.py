"""`aqpim-sim sweep`: run a sweep file's points in parallel, streaming results to a resumable JSONL and a CSV.

Exit status: 0 when every point ran (or was already done), 2 for an input error (nothing ran), 1 when the
executor failed under the sweep (``SweepAborted``: a lost Dask scheduler or workers, a killed worker process);
then every finished point is on disk and rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.analytic_sweep import CHECK_FILE, check_sweep, run_analytic_sweep
from sim.errors import ConfigError
from sim.results import MANIFEST, RESULTS_CSV, RESULTS_JSONL
from sim.sweep import (
    DASK_TIMEOUT_S,
    EXECUTORS,
    MAX_POINTS,
    SweepAborted,
    check_jobs,
    load_sweep,
    run_sweep,
    usable_cores,
)

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
  aqpim-sim sweep big.toml --out results/big --executor dask --scheduler tcp://127.0.0.1:8786 --dask-timeout 120
  aqpim-sim sweep huge.toml --max-points 500000 --dry-run      (more points than the default limit)
  aqpim-sim sweep examples/sweep-capacity.toml --analytic --check-sample 8 --out results/capacity-analytic
  aqpim-sim sweep examples/sweep-capacity.toml --analytic --table --out results/capacity-table
Rerunning the same command resumes, also after a kill (even kill -9): points already in results.jsonl are
skipped, and the files end in point order, the same bytes whatever --jobs or executor."""


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", metavar="SWEEP.toml", help="sweep file: [base], [factors], optional [[points]]")
    p.add_argument("--out", metavar="DIR", help="output folder (default results/<sweep file name>); "
                   "an existing one is resumed")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help=f"points run at once (default: the cores this process may use, {usable_cores()} here; "
                   f"dask: the cluster's threads); never more than the points left to run")
    p.add_argument("--force-jobs", action="store_true",
                   help="allow --jobs beyond the usable cores (local executor)")
    p.add_argument("--max-points", type=int, default=MAX_POINTS, metavar="N",
                   help=f"refuse a sweep file with more points than this (default {MAX_POINTS:,}), "
                   f"counted before the grid is built")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool on this machine; dask: an existing dask.distributed cluster")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--dask-timeout", type=float, default=DASK_TIMEOUT_S, metavar="SECONDS",
                   help=f"dask: give up when the scheduler cannot be reached, or the cluster has had no worker, "
                   f"for this long (default {DASK_TIMEOUT_S:g})")
    p.add_argument("--analytic", action="store_true",
                   help="evaluate each point from the systems' closed forms, without the discrete-event engine "
                   "(thousands of points per second; exact or a lower bound per point, see docs/metrics.md)")
    p.add_argument("--table", action="store_true",
                   help="with --analytic: keep a row of headline numbers per point (latency, throughput, fit, KV "
                        "bytes, energy per token) instead of a whole Result: for sweeps of millions of points")
    p.add_argument("--check-sample", type=int, default=0, metavar="N",
                   help="with --analytic: re-run N randomly chosen points through the simulation and report the "
                   "largest relative error (exit status 1 if an exact point is off by more than 1e-9 or a "
                   "bound lies above the simulation)")
    p.add_argument("--check-seed", type=int, default=0, metavar="SEED",
                   help="with --check-sample: seed of the sample's choice (default 0)")
    p.add_argument("--dry-run", action="store_true", help="list the points and exit without running")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    jobs = check_jobs(args.jobs, args.executor, args.force_jobs)  # before the file: a bad flag fails at once
    if args.max_points < 1:
        raise ConfigError(f"--max-points must be a positive number, got {args.max_points}")
    if args.table and not args.analytic:
        raise ConfigError("--table applies only with --analytic (a simulated point keeps its whole Result)")
    if args.check_sample and not args.analytic:
        raise ConfigError("--check-sample applies only with --analytic (it checks closed forms against the simulation)")
    if args.check_sample < 0:
        raise ConfigError(f"--check-sample must be a number of points (0 or more), got {args.check_sample}")
    if args.check_seed < 0:
        raise ConfigError(f"--check-seed must be 0 or more, got {args.check_seed}")
    if args.analytic and args.executor != "local":
        raise ConfigError("--analytic runs in local processes; drop --executor dask (a closed-form sweep needs no "
                          "cluster)")
    sweep = load_sweep(args.sweep_file, max_points=args.max_points)
    if args.analytic:
        check_sweep(sweep)
    if args.dry_run:
        print(f"{sweep.path}: {len(sweep.points)} points" + (f" ({sweep.description})" if sweep.description else ""))
        for pt in sweep.points:
            desc = ", ".join(f"{k}={v}" for k, v in pt.factors.items()) or "base"
            print(f"  {pt.index:>4}  {pt.key[:12]}  {desc}")
        return 0
    out = Path(args.out) if args.out else Path("results") / Path(args.sweep_file).stem
    if args.analytic:
        return _run_analytic(args, sweep, jobs, out)
    try:
        s = run_sweep(sweep, out, jobs=jobs, executor=args.executor, scheduler=args.scheduler,
                      progress_stream=sys.stderr, quiet=args.quiet, force_jobs=args.force_jobs,
                      dask_timeout_s=args.dask_timeout)
    except SweepAborted as e:
        print(f"aqpim-sim: error: {e}", file=sys.stderr)
        return 1
    how = (f"{60 * s.ran / s.wall_s:.1f} points/min, {s.jobs} job{'s' if s.jobs != 1 else ''}, {args.executor}"
           if s.ran and s.wall_s > 0 else "nothing to run")
    print(f"{sweep.path}: {s.total} points; ran {s.ran}, {s.skipped} already done; {s.wall_s:.1f} s ({how})")
    if s.repaired_bytes:
        print(f"note: cut a torn last line ({s.repaired_bytes} bytes) left by an interrupted run")
    if s.failed:
        print(f"note: {s.failed} point(s) were rejected at run time; see the 'error' column of {RESULTS_CSV}")
    if s.duplicates:
        print(f"note: dropped {s.duplicates} repeated record(s) from {RESULTS_JSONL} (kept the first of each)")
    if s.foreign:
        print(f"note: {s.foreign} record(s) in {RESULTS_JSONL} belong to no point of this sweep file")
    print(f"wrote {out / RESULTS_JSONL}, {out / RESULTS_CSV}, {out / MANIFEST}")
    return 0


def _run_analytic(args, sweep, jobs, out: Path) -> int:
    s = run_analytic_sweep(sweep, out, jobs=jobs, force_jobs=args.force_jobs, check_sample=args.check_sample,
                           check_seed=args.check_seed, table=args.table)
    how = (f"{s.points_per_s:,.0f} points/s, {s.jobs} job{'s' if s.jobs != 1 else ''}, analytic"
           if s.ran and s.wall_s > 0 else "nothing to run")
    print(f"{sweep.path}: {s.total} points; ran {s.ran}, {s.skipped} already done; {s.wall_s:.2f} s ({how})")
    if s.repaired_bytes:
        print(f"note: cut a torn last line ({s.repaired_bytes} bytes) left by an interrupted run")
    if s.failed:
        print(f"note: {s.failed} point(s) were rejected at run time; see the 'error' column of {RESULTS_CSV}")
    print(f"wrote {out / RESULTS_JSONL}, {out / RESULTS_CSV}, {out / MANIFEST}"
          + (f", {out / CHECK_FILE}" if s.check else ""))
    if s.check:
        c = s.check
        bound = (f"; bound points {c['bound_points']}, simulation/bound >= {c['min_sim_over_bound']:.6f}"
                 if c["bound_points"] else "")
        print(f"check: {c['sampled']} points re-simulated (seed {c['seed']}): exact points {c['exact_points']}, "
              f"largest relative error {c['max_rel_error_exact']:.3g}{bound}; "
              f"{'passed' if c['ok'] else 'FAILED'}")
        if not c["ok"]:
            bad = next(p for p in c["points"] if not p["ok"])
            print(f"aqpim-sim: error: analytic check failed at point {bad['index']} "
                  f"({bad.get('field') or bad.get('error', '')}); see {out / CHECK_FILE}", file=sys.stderr)
            return 1
    return 0
