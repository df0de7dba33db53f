"""Memory against run length: peak RSS and wall time of `aqpim-sim run` at 2,000, 10,000 and 100,000 decode steps.

Run: python3 benchmarks/bench_memory.py [--root CHECKOUT] [--steps 2000 10000 100000] [--cases fixed requests]

Each measurement is one `aqpim-sim run` command (printed in the table) executed through ``sim.cli.main`` in a fresh
Python process, so one run's heap never inflates the next; the child reports its peak resident set size
(``resource.getrusage``, the high-water mark of the whole process: interpreter, imports and the run), the wall
time of the command and its CPU time (user + system; steadier than wall time on a shared machine). ``--root`` measures another checkout of the simulator (for example ``git archive <commit> |
tar -x -C /tmp/before``) with the same commands, for before/after tables. The model is LLaMA-2-7B cut to one layer
(``benchmarks/models``), so that 100,000 steps take about a minute; what grows with steps is per-step state, which
a small model shows as well as a large one (a large model only makes each step slower).

Cases (N = decode steps):
  fixed     a fixed batch:  --batch 4 --context 512 --steps N
  requests  continuous batching of synthetic requests (all at t=0): --requests 8N/100 --output-tokens 100
            --max-batch 8 --context 1024 (N steps: batches of 8 requests, 100 tokens each)
  pim       the PIM system's channel bank: --system pim --batch 4 --context 512 --steps N
  full      the default model (LLaMA-3.1-8B, 32 layers), continuous batching of 200 sequences: --requests 2N
            --output-tokens 100 --max-batch 200 --context 1024 (about 8 ms per step: 100,000 steps take ~15 min).
            The request list itself (2N requests, about 100 bytes each) grows with N here.
  full-fixed  the default model, a fixed batch of 200: --batch 200 --context 1024 --steps N
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "models" / "llama-2-7b-1layer" / "config.json"

CHILD = r"""
import contextlib, io, json, resource, sys, time
root, argv = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, root)
import sim.cli
assert sim.cli.__file__.startswith(root), (sim.cli.__file__, root)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = sim.cli.main(argv)
wall = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"code": code, "wall_s": wall, "cpu_s": cpu, "import_rss_kib": r0.ru_maxrss,
                  "peak_rss_kib": r1.ru_maxrss,
                  "head": out.getvalue().splitlines()[0] if out.getvalue() else ""}))
"""


def argv_for(case: str, steps: int, model: Path) -> list[str]:
    common = ["--model", str(model)]
    if case == "fixed":
        return ["run", "--system", "offload", *common, "--batch", "4", "--context", "512", "--steps", str(steps)]
    if case == "requests":
        if steps * 8 % 100:
            raise SystemExit(f"--steps {steps}: the requests case needs 8 x steps divisible by 100")
        return ["run", "--system", "offload", *common, "--requests", str(steps * 8 // 100), "--output-tokens", "100",
                "--max-batch", "8", "--context", "1024"]
    if case == "pim":
        return ["run", "--system", "pim", *common, "--batch", "4", "--context", "512", "--steps", str(steps)]
    if case == "full":
        return ["run", "--system", "offload", "--requests", str(2 * steps), "--output-tokens", "100",
                "--max-batch", "200", "--context", "1024"]
    if case == "full-fixed":
        return ["run", "--system", "offload", "--batch", "200", "--context", "1024", "--steps", str(steps)]
    raise SystemExit(f"unknown case {case!r}; cases: fixed, requests, pim, full, full-fixed")


def measure(root: Path, argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), json.dumps(argv)], capture_output=True,
                          text=True, cwd=root)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(argv)}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["code"] != 0:
        raise SystemExit(f"aqpim-sim {' '.join(argv)} exited with {out['code']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE.parent, help="checkout of the simulator to measure")
    ap.add_argument("--steps", type=int, nargs="+", default=[2000, 10000, 100000])
    ap.add_argument("--cases", nargs="+", default=["fixed", "requests"])
    ap.add_argument("--json-out", type=Path, help="also write the measurements as JSON")
    args = ap.parse_args()
    root = args.root.resolve()
    rows = []
    print(f"code: {root}\n")
    print("| case | steps | peak RSS (MiB) | RSS at start (MiB) | wall (s) | CPU (s) | command |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for case in args.cases:
        for steps in args.steps:
            argv = argv_for(case, steps, MODEL)
            m = measure(root, argv)
            rows.append({"case": case, "steps": steps, "argv": argv, **m})
            shown = " ".join(argv).replace(str(MODEL), "benchmarks/models/llama-2-7b-1layer/config.json")
            print(f"| {case} | {steps:,} | {m['peak_rss_kib'] / 1024:.0f} | {m['import_rss_kib'] / 1024:.0f} | "
                  f"{m['wall_s']:.1f} | {m['cpu_s']:.1f} | `aqpim-sim {shown}` |", flush=True)
    for case in args.cases:
        peaks = [r["peak_rss_kib"] for r in rows if r["case"] == case]
        print(f"\n{case}: largest / smallest peak RSS = {max(peaks) / min(peaks):.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"root": str(root), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
