"""Issue 2's table: share of decode latency spent on GPU-host communication in the offload system.

Run: python3 experiments/offload_comm_share.py [--hardware NAME] [--prefetch]
Prints a markdown table (rows: model x batch, columns: context) of comm_share, with the step latency of
the largest case; configurations whose KV cache does not fit host DRAM are marked with '*'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

MODELS = ("llama-2-7b", "llama-3-8b")
BATCHES = (1, 4, 16, 64)
CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default=make_config().hardware)
    ap.add_argument("--prefetch", action="store_true")
    ap.add_argument("--cpu-attention", action="store_true")
    args = ap.parse_args()
    print(f"comm_share, offload, {args.hardware}, prefetch={args.prefetch}, cpu_attention={args.cpu_attention}, "
          "2 steps ('*' = KV does not fit host DRAM)\n")
    print("| model | batch | " + " | ".join(f"{c // 1024}K" for c in CONTEXTS) + " |")
    print("|---|---|" + "---|" * len(CONTEXTS))
    for model in MODELS:
        for batch in BATCHES:
            cells = []
            for ctx in CONTEXTS:
                r = simulate(make_config(model=model, batch=batch, context=ctx, steps=2, hardware=args.hardware,
                                       prefetch=args.prefetch, cpu_attention=args.cpu_attention, trace_steps=0))
                cells.append(f"{100 * r.comm_share:.1f}%{'' if r.fits else '*'}")
            print(f"| {model} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
