"""A 70B model on a DGX: offload, pim (and its capacity-limited variant) and aqpim under tensor and pipeline
parallelism.

    python3 experiments/tp_sweep.py [--model llama-3.1-70b] [--hardware dgx-a100] [--out experiments/out/tp_sweep.csv]

Per context (32K, 128K) and parallelism (TP 1, 2, 4, 8; PP 2 with 2 micro-batches beside TP 2, the same two
GPUs), batch 16: each system's step latency, tokens/s over the run, whether it fits, the all-reduce share of the
step and the energy per token. TP = 1 is listed so that the wall (the 70B model's weights alone exceed one 80 GB
GPU) shows. Every row is a plain ``aqpim-sim run --hardware H --model M --tp N --pp P --system S --batch 16
--context C --steps 4`` (PP's first step fills the pipeline; 4 steps average it in).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

CONTEXTS = (32768, 131072)
PARALLEL = ((1, 1), (2, 1), (4, 1), (8, 1), (1, 2))  # (tp, pp)
VARIANTS = (("offload", {"system": "offload"}),
            ("offload+cpu-attention+bandwidth", {"system": "offload", "cpu_attention": True,
                                                 "cpu_kernel": "bandwidth"}),
            ("pim", {"system": "pim"}), ("pim+limit", {"system": "pim", "capacity_policy": "limit"}),
            ("aqpim", {"system": "aqpim"}))
COLUMNS = ("context", "tp", "pp", "variant", "fits", "admitted_batch", "step_s", "tokens_per_s", "allreduce_share",
           "energy_per_token_j")


def rows(model: str, hardware: str, batch: int):
    for context in CONTEXTS:
        for tp, pp in PARALLEL:
            for name, opts in VARIANTS:
                r = simulate(make_config(**opts, model=model, hardware=hardware, tp=tp, pp=pp, batch=batch,
                                         context=context, steps=4, trace_steps=0))
                ar = r.busy_by_kind_s.get("allreduce", 0.0) / r.steps if r.steps else 0.0
                yield (context, tp, pp, name, r.fits, r.peak_batch, f"{r.mean_step_latency_s:.6g}",
                       f"{r.tokens_per_s:.4g}", f"{ar / r.mean_step_latency_s:.3f}", f"{r.energy_per_token_j:.4g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-70b")
    ap.add_argument("--hardware", default="dgx-a100")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="experiments/out/tp_sweep.csv")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = csv.writer(sys.stdout)
    with out.open("w", newline="") as f:
        fw = csv.writer(f)
        for row in (COLUMNS, *rows(args.model, args.hardware, args.batch)):
            fw.writerow(row)
            w.writerow(row)


if __name__ == "__main__":
    main()
