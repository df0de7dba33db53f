"""Where AQPIM wins: a context x batch map of aqpim's throughput over the PIM baselines that fit.

Run: python3 experiments/aqpim_map.py [--steps N] [--models a,b] [--jobs J] [--figure out.png]

Each cell is aqpim's decode throughput (tokens/s over the wall clock) divided by the best of the PIM baselines on
the same machine that fit: ``pim`` with ``capacity_policy = limit`` (FP16 KV, admits what fits) and ``pim`` with
INT4 KV (also under ``limit``). A baseline whose admission cannot take even one sequence does not fit and gets
no ratio; a cell where aqpim itself does not fit is ``-``. Below 1.00x the baseline wins.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.errors import INPUT_ERRORS  # noqa: E402
from sim.run import simulate  # noqa: E402

BATCHES = (1, 4, 16, 64)
CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072, 262144)
VARIANTS = {"aqpim": {"system": "aqpim"},
            "pim+limit": {"system": "pim", "capacity_policy": "limit"},
            "pim+int4+limit": {"system": "pim", "capacity_policy": "limit", "kv_format": "int4"}}


def cell(args: tuple[str, int, int, int]) -> dict:
    model, batch, context, steps = args
    out = {}
    for label, v in VARIANTS.items():
        try:
            r = simulate(make_config(model=model, batch=batch, context=context, steps=steps, trace_steps=0, **v))
        except INPUT_ERRORS as e:  # e.g. admission that can take no sequence at all
            out[label] = (0.0, False, str(e))
            continue
        out[label] = (r.tokens_per_s, r.fits and r.tokens_per_s > 0, r.details.get("admitted_batch", batch))
    return out


def ratio(c: dict) -> tuple[float | None, str]:
    aq, aq_fits, _ = c["aqpim"]
    if not aq_fits:
        return None, "-"
    base = [(c[k][0], k) for k in ("pim+limit", "pim+int4+limit") if c[k][1]]
    if not base:
        return None, "only aqpim fits"
    best, name = max(base)
    return aq / best, f"{aq / best:.2f}x" + (" (int4)" if name == "pim+int4+limit" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--models", default="llama-3.1-8b,llama-2-7b")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--figure", help="write the map as a PNG heat map")
    args = ap.parse_args()
    models = args.models.split(",")
    grid = [(m, b, c, args.steps) for m in models for b in BATCHES for c in CONTEXTS]
    with ProcessPoolExecutor(args.jobs) as pool:
        cells = dict(zip(grid, pool.map(cell, grid), strict=True))
    print(f"aqpim tokens/s over the best fitting PIM baseline (pim+limit FP16 or pim+int4+limit), {args.steps} "
          f"steps, default machine\n")
    for m in models:
        print(f"**{m}**\n")
        print("| batch | " + " | ".join(f"{c // 1024}K" for c in CONTEXTS) + " |")
        print("|---|" + "---|" * len(CONTEXTS))
        for b in BATCHES:
            print(f"| {b} | " + " | ".join(ratio(cells[(m, b, c, args.steps)])[1] for c in CONTEXTS) + " |")
        print()
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.4), squeeze=False)
        for ax, m in zip(axes[0], models, strict=True):
            z = np.array([[ratio(cells[(m, b, c, args.steps)])[0] or np.nan for c in CONTEXTS] for b in BATCHES])
            im = ax.imshow(np.log2(z), cmap="RdBu", vmin=-3, vmax=3, origin="lower", aspect="auto")
            for i, b in enumerate(BATCHES):
                for j, c in enumerate(CONTEXTS):
                    ax.text(j, i, ratio(cells[(m, b, c, args.steps)])[1].replace(" (int4)", "*"), ha="center",
                            va="center", fontsize=7)
            ax.set_xticks(range(len(CONTEXTS)), [f"{c // 1024}K" for c in CONTEXTS])
            ax.set_yticks(range(len(BATCHES)), [str(b) for b in BATCHES])
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel("batch")
            ax.set_title(f"{m}: aqpim / best PIM baseline", fontsize=9)
        fig.colorbar(im, ax=axes[0].tolist(), label="log2 ratio (* baseline is INT4)")
        fig.savefig(args.figure, dpi=130, bbox_inches="tight")
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
