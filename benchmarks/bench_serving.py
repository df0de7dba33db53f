"""Speed and memory of long serving runs: wall time, CPU time and peak RSS of `aqpim-sim run` on Poisson requests.

Run: python3 benchmarks/bench_serving.py [--root CHECKOUT] [--systems gpu offload pim aqpim] [--requests 1000 10000]
     [--detail auto full] [--prefill none chunked] [--case 7b|70b] [--repeat N] [--json-out FILE]

The issue-12 case (``--case 7b``, the default): LLaMA-2-7B on the default A100 machine, Poisson arrivals at 5
requests/s, 1,024-token prompts, 128 output tokens, at most 64 sequences per step:

    aqpim-sim run --system S --model llama-2-7b --requests N --arrival-rate 5 --context 1024 --output-tokens 128
                  --max-batch 64 [--prefill first|chunked] [--detail auto|full]

``--prefill`` (default ``none chunked``): ``none`` assumes the prompts' K/V in place (no prefill); ``first`` and
``chunked`` simulate prefill in the timeline (the issue's "prefill included"; ``chunked`` is Sarathi-Serve's
schedule at the default 512-token chunk; Vidur 0.0.26 defaults to a fixed-chunk FCFS scheduler of 512 tokens).
Each is passed as ``--prefill`` only when it is not ``none`` (a checkout from before prefill existed runs without
it).

Cost growth (wall time linear in requests, memory flat): ``--systems gpu aqpim --requests 1000 10000 100000
--prefill none --detail auto``; the full-detail mode beside the step-level path: ``--detail auto full``.

``--case 70b``: the same with ``--model llama-2-70b --channels 1024`` (offload takes no --channels).

Each measurement is one command executed through ``sim.cli.main`` in a fresh Python process (so one run's heap
never inflates the next); the child reports the command's wall time, its CPU time (user + system, steadier than
wall time on a shared machine) and the process's peak resident set size (``resource.getrusage``: interpreter,
imports and the run). With ``--repeat N`` each command runs N times and the medians are printed. ``--root``
measures another checkout with the same commands (for example ``git archive <commit> | tar -x -C /tmp/before``),
for before/after tables; ``--detail`` is passed only when it is not ``auto`` (a checkout from before the setting
existed runs the default, which was full detail).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The child process that runs one command and reports its times and peak RSS: the memory benchmark's own.
from bench_memory import measure  # noqa: E402  (run as a script: benchmarks/ is on sys.path)

CASES = {
    "7b": ["--model", "llama-2-7b"],
    "70b": ["--model", "llama-2-70b"],
}


def argv_for(case: str, system: str, requests: int, detail: str, prefill: str = "none") -> list[str]:
    argv = ["run", "--system", system, *CASES[case], "--requests", str(requests), "--arrival-rate", "5",
            "--context", "1024", "--output-tokens", "128", "--max-batch", "64"]
    if prefill != "none":
        argv += ["--prefill", prefill]
    if case == "70b" and system != "offload" and system != "gpu":
        argv += ["--channels", "1024"]
    if requests > 10**6 // 10:
        argv += ["--allow-large"]
    if detail != "auto":
        argv += ["--detail", detail]
    return argv




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE.parent, help="checkout of the simulator to measure")
    ap.add_argument("--case", choices=sorted(CASES), default="7b")
    ap.add_argument("--systems", nargs="+", default=["gpu", "offload", "pim", "aqpim"])
    ap.add_argument("--requests", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--detail", nargs="+", default=["auto", "full"], choices=["auto", "full"])
    ap.add_argument("--prefill", nargs="+", default=["none", "chunked"], choices=["none", "first", "chunked"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json-out", type=Path, help="also write the measurements as JSON")
    args = ap.parse_args()
    root = args.root.resolve()
    rows = []
    print(f"code: {root}; medians of {args.repeat} run(s) each\n")
    print("| system | requests | prefill | detail | wall (s) | CPU (s) | peak RSS (MiB) | ms CPU per request | "
          "command |")
    print("|---|---:|---|---|---:|---:|---:|---:|---|")
    for system in args.systems:
        for n in args.requests:
            for prefill in args.prefill:
                for detail in args.detail:
                    argv = argv_for(args.case, system, n, detail, prefill)
                    runs = [measure(root, argv) for _ in range(args.repeat)]
                    wall = statistics.median(r["wall_s"] for r in runs)
                    cpu = statistics.median(r["cpu_s"] for r in runs)
                    rss = statistics.median(r["peak_rss_kib"] for r in runs) / 1024
                    rows.append({"system": system, "requests": n, "prefill": prefill, "detail": detail, "argv": argv,
                                 "runs": runs, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss})
                    print(f"| {system} | {n:,} | {prefill} | {detail} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | "
                          f"{1e3 * cpu / n:.2f} | `aqpim-sim {' '.join(argv)}` |", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"root": str(root), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
