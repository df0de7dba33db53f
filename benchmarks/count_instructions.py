"""Instructions executed by the simulator's own work (callgrind), for before/after comparisons that do not drift.

Wall and CPU time on a shared machine drift (on the 2-core machine of docs/metrics.md by up to 1.8x between
quarters of an hour), so a small change cannot be told from the drift by timing; the number of instructions a
piece of work executes does not drift. This runs the work under ``valgrind --tool=callgrind`` with
instrumentation switched on (``callgrind_control -i on``) only around it, so imports, the interpreter's start and
set-up are not counted.

Run: python3 benchmarks/count_instructions.py rows [--points 256] [--root CHECKOUT ...]
     python3 benchmarks/count_instructions.py serve [--system pim] [--requests 300] [--root CHECKOUT ...]

``rows``: ``Evaluator.row`` over ``--points`` points of the closed-form grid of ``bench_analytic_sweep.py`` (every
2,048 / points-th point, one decode step), warm: each point is evaluated once before counting, so the systems and
their per-batch-size caches are built. ``serve``: one ``aqpim-sim run`` of the issue-12 serving case (LLaMA-2-7B,
Poisson arrivals at 5 requests/s, 1,024-token prompts, 128 output tokens, at most 64 sequences per step, chunked
prefill). Each ``--root`` (default: this checkout) is measured with the same command, for example
``git worktree add /tmp/before <commit>`` then ``--root /tmp/before .``. Needs valgrind (Debian: ``apt-get install
valgrind``); a run takes about 50 times the work's own time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


def _toggle(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], capture_output=True,
                   check=False)


def child(args) -> None:
    """The measured work, in the process callgrind runs (``--child``): the checkout's code first on the path."""
    sys.path.insert(0, args.root)
    if args.case == "rows":
        sys.path.insert(0, str(Path(args.root) / "benchmarks"))
        import bench_analytic_sweep as grid

        from sim.analytic_sweep import Evaluator
        from sim.errors import INPUT_ERRORS
        from sim.sweep import load_sweep

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "grid.toml"
            path.write_text(grid.sweep_text(1, ["a100", "h100"]))
            configs = [pt.config for pt in load_sweep(path, max_points=10**6).points]
        configs = configs[::max(1, len(configs) // args.points)][:args.points]
        ev = Evaluator()

        def evaluate_all():
            for cfg in configs:
                try:
                    ev.row(cfg)
                except INPUT_ERRORS:
                    pass

        evaluate_all()  # warm: systems built, per-batch-size caches filled
        _toggle(True)
        evaluate_all()
        _toggle(False)
        return
    from sim.cli import build_parser, main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["run", "--system", args.system, "--model", "llama-2-7b", "--requests", str(args.requests),
                "--arrival-rate", "5", "--context", "1024", "--output-tokens", "128", "--max-batch", "64",
                "--prefill", "chunked", "--json-out", str(Path(tmp) / "r.json")]
        build_parser()  # imports every command's module before counting (the parser itself is counted)
        _toggle(True)
        code = main(argv)
        _toggle(False)
    if code:
        sys.exit(code)


def count(args, root: str) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null", sys.executable,
           str(HERE), args.case, "--child", "--root", root, "--points", str(args.points), "--system", args.system,
           "--requests", str(args.requests)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode or not found:
        sys.exit(f"callgrind run failed for {root}:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def _count(text: str) -> int:
    """A whole number of at least 1 (argparse prints the one-line error and exits 2 otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=("rows", "serve"))
    ap.add_argument("--root", nargs="+", default=[str(HERE.parents[1])], help="checkouts to measure")
    ap.add_argument("--points", type=_count, default=256, help="rows: points of the grid")
    ap.add_argument("--system", default="pim", choices=("gpu", "offload", "pim", "aqpim"), help="serve: the system")
    ap.add_argument("--requests", type=_count, default=300, help="serve: requests")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.root = args.root[0]
        child(args)
        return
    for root in args.root:
        if not (Path(root) / "sim" / "cli.py").is_file():
            ap.error(f"--root {root}: not a checkout of aqpim-sim (no sim/cli.py)")
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    what = (f"{args.points} warm table rows" if args.case == "rows"
            else f"aqpim-sim run --system {args.system}, {args.requests} requests, chunked prefill")
    print(f"instructions of {what} (callgrind):")
    first = None
    for root in args.root:
        n = count(args, str(Path(root).resolve()))
        rel = "" if first is None else f" ({n / first - 1:+.1%})"
        first = first or n
        print(f"  {root}: {n:,}{rel}")


if __name__ == "__main__":
    main()
