"""Issue 2's table, redone with FlexGen-style placement: share of decode latency spent on GPU-host communication.

Run: python3 experiments/offload_comm_share.py [--hardware NAME] [--prefetch] [--cpu-attention]
                                               [--kv-gpu-fraction auto|X] [--weights-gpu-fraction auto|X]
Prints a markdown table (rows: model x batch, columns: context) of comm_share under the given placement
(default: auto, the most that fits in GPU memory; ``--kv-gpu-fraction 0`` is issue 2's all-in-host table), and,
under it, the resident KV share of each cell. Cells whose configuration does not fit (host DRAM, or GPU memory
with explicit fractions) are marked '*'; cells that auto placement refuses (not even one streamed layer's
buffers fit the GPU) are '-'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.errors import ConfigError  # noqa: E402
from sim.run import simulate  # noqa: E402

MODELS = ("llama-2-7b", "llama-3-8b")
BATCHES = (1, 4, 16, 64)
CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default=make_config().hardware)
    ap.add_argument("--prefetch", action="store_true")
    ap.add_argument("--cpu-attention", action="store_true")
    ap.add_argument("--kv-gpu-fraction", default="auto")
    ap.add_argument("--weights-gpu-fraction", default="auto")
    args = ap.parse_args()
    print(f"comm_share, offload, {args.hardware}, prefetch={args.prefetch}, cpu_attention={args.cpu_attention}, "
          f"kv_gpu_fraction={args.kv_gpu_fraction}, weights_gpu_fraction={args.weights_gpu_fraction}, 2 steps "
          "('*' = does not fit, '-' = auto placement refused)\n")
    head = "| model | batch | " + " | ".join(f"{c // 1024}K" for c in CONTEXTS) + " |"
    rule = "|---|---|" + "---|" * len(CONTEXTS)
    shares, resident = [], []
    for model in MODELS:
        for batch in BATCHES:
            cells, kv = [], []
            for ctx in CONTEXTS:
                cfg = make_config(model=model, batch=batch, context=ctx, steps=2, hardware=args.hardware,
                                  prefetch=args.prefetch, cpu_attention=args.cpu_attention, trace_steps=0,
                                  kv_gpu_fraction=args.kv_gpu_fraction,
                                  weights_gpu_fraction=args.weights_gpu_fraction)
                try:
                    r = simulate(cfg)
                except ConfigError:
                    cells.append("-")
                    kv.append("-")
                    continue
                mark = "" if r.fits else "*"
                cells.append(f"{100 * r.comm_share:.1f}%{mark}")
                kv.append(f"{100 * r.details['kv_gpu_fraction']:.0f}%{mark}")
            shares.append(f"| {model} | {batch} | " + " | ".join(cells) + " |")
            resident.append(f"| {model} | {batch} | " + " | ".join(kv) + " |")
    print("\n".join([head, rule, *shares]))
    print("\nresident KV share (kv_gpu_fraction at the last step)\n")
    print("\n".join([head, rule, *resident]))


if __name__ == "__main__":
    main()
