"""Issue 3's capacity-wall table: which configurations fit the default PIM machine, the pim-vs-offload speedup,
and how it collapses as the spilled share of the KV cache grows.

Run: python3 experiments/capacity_wall.py [--pim NAME] [--policy spill|limit] [--steps N]
Speedup is offload step latency over pim step latency for the same batch (spill), or tokens/s over tokens/s
(limit, where the PIM system decodes fewer sequences at a time).
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
    ap.add_argument("--pim", default=make_config(system="pim").options.pim)
    ap.add_argument("--policy", default="spill", choices=("spill", "limit"))
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    note = ("spilled share of KV tokens" if args.policy == "spill"
            else "sequences the PIM system decodes at a time when it must limit the batch")
    print(f"pim ({args.pim}, capacity_policy={args.policy}) vs offload on {make_config().hardware}, {args.steps} steps. "
          f"Cell: speedup ({note}); '-' = fits PIM\n")
    print("| model | batch | " + " | ".join(f"{c // 1024}K" for c in CONTEXTS) + " |")
    print("|---|---|" + "---|" * len(CONTEXTS))
    for model in MODELS:
        for batch in BATCHES:
            cells = []
            for ctx in CONTEXTS:
                common = dict(model=model, batch=batch, context=ctx, steps=args.steps, trace_steps=0)
                off = simulate(make_config(system="offload", **common))
                pim = simulate(make_config(system="pim", pim=args.pim, capacity_policy=args.policy, **common))
                if args.policy == "spill":
                    speedup = off.mean_step_latency_s / pim.mean_step_latency_s
                    note = f"{100 * pim.details['spilled_share']:.0f}% spilled" if pim.details["spilled_share"] else "-"
                else:
                    speedup = pim.tokens_per_s / off.tokens_per_s
                    note = f"batch {pim.peak_batch}" if pim.peak_batch < batch else "-"
                cells.append(f"{speedup:.1f}x ({note})")
            print(f"| {model} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
