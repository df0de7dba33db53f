"""Issue 4's sensitivity table: AQPIM's throughput speedup against M, K, channel count, PIM internal bandwidth
and host-link generation, at two operating points.

Run: python3 experiments/sensitivity.py [--steps N]
Operating points (both on the default machine and PIM device unless varied):
  A: llama-3-8b, batch 16, 32K context: the FP16 KV (64 GiB) fits the PIM device, so only bytes moved and
     compute on codes differ;
  B: llama-2-7b, batch 16, 32K context: the FP16 KV (256 GiB) is 3.2x the PIM capacity; the baseline limits its
     batch (capacity_policy = limit).
Cells: aqpim tokens/s over pim tokens/s (and over offload for the link generation).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw_models import pim as pim_model  # noqa: E402
from hw_models.machine import load_machine  # noqa: E402
from hw_models.params import override  # noqa: E402
from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

POINTS = {"A": dict(model="llama-3-8b", batch=16, context=32768),
          "B": dict(model="llama-2-7b", batch=16, context=32768)}


def ratio(point: str, steps: int, pim=None, aq: dict | None = None, base: dict | None = None, vs: str = "pim",
          params=None):
    common = dict(POINTS[point], steps=steps, trace_steps=0, capacity_policy="limit")
    a = simulate(make_config(**{**common, "system": "aqpim", **(aq or {})}), pim=pim, params=params)
    b = simulate(make_config(**{**common, "system": vs, **(base or {})}), pim=pim, params=params)
    return a.tokens_per_s / b.tokens_per_s


def row(label: str, cells: list[str]) -> None:
    print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    s = args.steps
    print("| factor | value | A: aqpim/pim | B: aqpim/pim-limit |\n|---|---|---|---|")
    for m in (8, 16, 32):
        row("PQ M (K=256)", [str(m)] + [f"{ratio(p, s, aq={'pq_m': m}):.2f}x" for p in POINTS])
    for k in (16, 64, 256, 1024):
        row("PQ K (M=16)", [str(k)] + [f"{ratio(p, s, aq={'pq_k': k}):.2f}x" for p in POINTS])
    for lut in (4096, 16384, 65536):
        row("LUT bytes per unit", [str(lut)] + [f"{ratio(p, s, aq={'lut_bytes': lut}):.2f}x" for p in POINTS])
    dev = pim_model.load_pim(make_config(system="pim").options.pim)
    for ch in (40, 80, 160, 320, 640):
        d = override(dev, channels=ch)
        row("PIM channels", [str(ch)] + [f"{ratio(p, s, pim=d):.2f}x" for p in POINTS])
    c = dev.channel
    variants = [(f"units x{f}", dict(unit_bw_bytes_per_s=c.unit_bw_bytes_per_s * f,
                                     unit_flops_per_s=c.unit_flops_per_s * f)) for f in (0.25, 0.5, 1.0)]
    # AttAcc's power cap spaces PIM column reads 6 cycles apart; without it (4 cycles) banks stream 1.5x faster
    variants.append(("no power cap, units x1.5", dict(bank_column_interval_cycles=4,
                                                      unit_bw_bytes_per_s=c.unit_bw_bytes_per_s * 1.5,
                                                      unit_flops_per_s=c.unit_flops_per_s * 1.5)))
    for label, changes in variants:
        d = pim_model.with_channel(dev, **changes)
        bw = d.internal_bw_bytes_per_s / 1e12
        row("PIM internal bandwidth", [f"{label} ({bw:.1f} TB/s)"] + [f"{ratio(p, s, pim=d):.2f}x" for p in POINTS])
    print("\n| host link (default machine, PCIe x16 generation) | A: aqpim/offload | B: aqpim/offload "
          "| B: aqpim/pim-spill |\n|---|---|---|---|")
    machine = load_machine()
    measured_fraction = machine.pcie.h2d_bw_bytes_per_s / 31.5e9  # Gen4: 25 of 31.5 GB/s raw (REFERENCE.md)
    for gen, raw in ((3, 15.75e9), (4, 31.5e9), (5, 63e9), (6, 128e9)):  # raw per direction, REFERENCE.md (V)
        bw = raw * measured_fraction
        hw = dataclasses.replace(machine, pcie=override(
            machine.pcie, generation=gen, h2d_bw_bytes_per_s=bw, d2h_bw_bytes_per_s=bw))
        cells = [f"{ratio(p, s, vs='offload', params=hw):.0f}x" for p in POINTS]
        spill = ratio("B", s, base={"capacity_policy": "spill"}, params=hw)
        row(f"Gen{gen} ({bw / 1e9:.1f} GB/s)", cells + [f"{spill:.0f}x"])

if __name__ == "__main__":
    main()
