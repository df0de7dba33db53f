"""Issue 4's comparison: offload, pim (spill and limit) and aqpim on the same long-context configurations.

Run: python3 experiments/system_comparison.py [--steps N] [--models a,b] [--pim NAME]
Cells are decode throughput ratios (tokens/s over tokens/s, so a PIM baseline that limits its batch pays for it):
aqpim / pim-spill, aqpim / pim-limit, aqpim / offload; plus offload's comm share. Marked where the 3.4x over a
SOTA PIM approach that the paper reports falls between neighbouring cells.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

BATCHES = (1, 4, 16, 64)
CONTEXTS = (8192, 16384, 32768, 65536, 131072)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--models", default="llama-2-7b,llama-3-8b")
    ap.add_argument("--pim", default=make_config(system="pim").options.pim)
    args = ap.parse_args()
    print(f"machine {make_config().hardware} + PIM {args.pim}; cells: aqpim/pim-spill | aqpim/pim-limit | "
          f"aqpim/offload (throughput ratios); offload comm share\n")
    print("| model | batch | context | aqpim tok/s | vs pim spill | vs pim limit | vs offload | offload comm |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for batch in BATCHES:
            for ctx in CONTEXTS:
                common = dict(model=model, batch=batch, context=ctx, steps=args.steps, trace_steps=0, pim=args.pim)
                aq = simulate(make_config(system="aqpim", **common))
                spill = simulate(make_config(system="pim", capacity_policy="spill", **common))
                limit = simulate(make_config(system="pim", capacity_policy="limit", **common))
                off = simulate(make_config(system="offload", **common))
                fit = "" if aq.fits else " (aqpim does not fit)"
                print(f"| {model} | {batch} | {ctx // 1024}K | {aq.tokens_per_s:.1f}{fit} | "
                      f"{aq.tokens_per_s / spill.tokens_per_s:.2f}x{'' if spill.fits else ' (spills)'} | "
                      f"{aq.tokens_per_s / limit.tokens_per_s:.2f}x"
                      f"{f' (batch {limit.peak_batch})' if limit.peak_batch < batch else ''} | "
                      f"{aq.tokens_per_s / off.tokens_per_s:.0f}x | {100 * off.comm_share:.1f}% |")


if __name__ == "__main__":
    main()
