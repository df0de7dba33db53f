"""Fixed costs of the PIM path: the per-operation overhead calibrated against AttAcc's artifact, and where the time
of one layer's PIM attention goes at batch 1.

Run: python3 experiments/pim_fixed_costs.py [--model llama-3.1-8b] [--contexts 2048 32768]

1. **Calibration of ``op_overhead_s``** (the ``attacc-hbm3`` preset). AttAcc's repository caches its Ramulator 2
   runs of bank-level HBM3-PIM attention on one HBM3 stack (``ramulator.out``; the rows kept are in
   ``experiments/data/attacc_ramulator_bank_l16.csv``). AttAcc maps one head to one legacy channel (two
   pseudo-channels) per round (``pim_ramulator_src/trace_gen/gen_trace_attacc_bank.py``: 16 channels, rounds of 16
   heads, tokens split over pseudo-channel x rank x bank group), so a row of ``nhead`` heads of ``L`` tokens is
   ``ceil(nhead / 16)`` rounds of one head on each pseudo-channel with ``L / 2`` tokens. This model gives each
   round ``A + n x op_overhead_s`` (``A``: streaming, first-access latency and channel I/O of the
   ``fp16_attention_works`` operations; ``n`` of them), so the row time is linear in the overhead and the
   relative least-squares fit over the rows has a closed form.
2. **Breakdown** of one layer's PIM path at batch 1 (default machine, ``attacc-hbm3``): link set-up, link bytes,
   per-operation overheads, first-access latency, channel interface I/O and array work, with each fixed cost's
   source from the preset.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import simpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw_models import pim as pim_model  # noqa: E402
from hw_models.machine import load_machine  # noqa: E402
from sim.config import make_config  # noqa: E402
from sim.engine import Tracer  # noqa: E402
from sim.machine import Machine  # noqa: E402
from sim.systems import SYSTEMS  # noqa: E402
from sim.systems.base import StepBatch  # noqa: E402
from sim.topology import GPU, PIM, Topology  # noqa: E402
from workloads.models import load_model  # noqa: E402

DATA = ROOT / "experiments" / "data" / "attacc_ramulator_bank_l16.csv"
PRESET = "attacc-hbm3"
TCK_S = 0.769e-9            # AttAcc src/ramulator_wrapper.py: tCK = 0.769 ns
CHANNELS_PER_STACK = 16     # AttAcc gen_trace_attacc_bank.py: n_channel = 16, one head per channel per round
PSEUDO_PER_CHANNEL = 2      # n_pch = 2: a head's tokens split over the two pseudo-channels


def load_rows(path: Path = DATA) -> list[tuple[int, int, bool, int]]:
    """(L, heads per stack, power constraint, cycles) of every kept ``ramulator.out`` row."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or line.startswith("L,") or not line.strip():
            continue
        length, nhead, capped, cycles = line.split(",")
        rows.append((int(length), int(nhead), capped == "True", int(cycles)))
    return rows


def round_parts(dev: pim_model.PimDeviceParams, tokens: int, capped: bool, softmax: str = "pim") -> tuple[float, int]:
    """One AttAcc round on one pseudo-channel (one head, ``tokens / 2`` of its tokens) in this model, as
    (seconds without per-operation overhead, number of operations)."""
    if not capped:
        dev = pim_model.with_channel(dev, bank_column_interval_cycles=4)
    ch = pim_model.with_channel(dev, op_overhead_s=0.0).channel
    works = pim_model.fp16_attention_works(ch, tokens / PSEUDO_PER_CHANNEL, 1, 0, head_dim=128, group=1,
                                           bytes_per_element=2, softmax=softmax).all
    return sum(w.duration_s for w in works), len(works)


def fit_op_overhead(rows, dev=None, softmax: str = "pim") -> dict:
    """Relative least squares of AttAcc's cycles by ``rounds x (A + n x op)``: the unconstrained optimum, the
    value kept (at least 0: an overhead cannot be negative) and the relative errors there and at ``compare_s``."""
    dev = dev or pim_model.load_pim(PRESET)
    y = np.array([c * TCK_S for _, _, _, c in rows])
    a = np.empty(len(rows))
    b = np.empty(len(rows))
    for i, (length, nhead, capped, _) in enumerate(rows):
        rounds = math.ceil(nhead / CHANNELS_PER_STACK)
        base, ops = round_parts(dev, length, capped, softmax)
        a[i], b[i] = rounds * base, rounds * ops
    optimum = -float(np.sum((a - y) * b / y**2) / np.sum(b**2 / y**2))
    kept = max(0.0, optimum)

    def errors(op):
        return (a + b * op) / y - 1

    return {"rows": len(rows), "optimum_s": optimum, "op_overhead_s": kept, "errors": errors(kept),
            "errors_at": errors, "lengths": np.array([r[0] for r in rows])}


def summary(e: np.ndarray) -> str:
    return (f"RMS {100 * np.sqrt(np.mean(e**2)):.1f}%, median {100 * np.median(e):+.1f}%, "
            f"range {100 * e.min():+.1f}% to {100 * e.max():+.1f}%")


def calibration_report(softmax: str = "pim") -> None:
    rows = load_rows()
    fit = fit_op_overhead(rows, softmax=softmax)
    dev = pim_model.load_pim(PRESET)
    print(f"Calibration of op_overhead_s against {fit['rows']} rows of AttAcc's ramulator.out (softmax '{softmax}', "
          "AttAcc's head-per-channel mapping):\n")
    print(f"- relative least-squares optimum: {fit['optimum_s'] * 1e9:+.2f} ns -> kept {fit['op_overhead_s'] * 1e9:.2f} ns"
          " (an overhead is not negative)")
    print("\n| rows | at the fitted value | at the old assumption (100 ns) | preset now "
          f"({dev.channel.op_overhead_s * 1e9:g} ns) |")
    print("|---|---|---|---|")
    for label, keep in (("all", slice(None)), ("L >= 1024", fit["lengths"] >= 1024), ("L <= 256", fit["lengths"] <= 256)):
        print(f"| {label} ({int(np.sum(np.ones(len(rows))[keep]))}) | {summary(fit['errors'][keep])} | "
              f"{summary(fit['errors_at'](100e-9)[keep])} | "
              f"{summary(fit['errors_at'](dev.channel.op_overhead_s)[keep])} |")


def breakdown(model_name: str, context: int) -> dict:
    """One layer's PIM path at batch 1 on the default machine, split by cause (seconds)."""
    cfg = make_config(system="pim", model=model_name, batch=1, context=context, steps=1, trace_steps=0)
    model = load_model(cfg.model)
    dev = pim_model.load_pim(cfg.options.pim)
    topo = Topology(load_machine(cfg.hardware), dev)
    system = SYSTEMS["pim"](Machine(simpy.Environment(), topo, Tracer(keep_steps=0)), model, cfg.options)
    batch = StepBatch.from_contexts(model, np.array([context]))
    (plan,) = system.plan(batch).plans
    ch = dev.channel
    (phase,) = plan.phases
    busiest = int(np.argmax(phase.durations_s))
    tokens, present, new = system.placement(batch).loads()
    m = model
    works = pim_model.fp16_attention_works(ch, tokens[busiest], present[busiest], new[busiest], head_dim=m.head_dim,
                                           group=m.gqa_group, bytes_per_element=m.bytes_per_element,
                                           softmax=cfg.options.softmax).all
    down, up = topo.route(GPU, PIM), topo.route(PIM, GPU)
    first = (ch.timing.tRCD_cycles + ch.timing.tCL_cycles) * ch.timing.tCK_s
    io_kinds = ("pim.q_in", "pim.out", "pim.append")
    overhead = len(works) * ch.op_overhead_s
    io = sum(w.duration_s - ch.op_overhead_s for w in works if w.kind in io_kinds)
    streams = [w for w in works if w.kind in ("pim.score", "pim.context")]
    first_access = first * len(streams)
    array = phase.makespan_s - overhead - io - first_access
    return {"link set-up": down.latency_s + up.latency_s,
            "link bytes": plan.down_bytes / down.bw_bytes_per_s + plan.up_bytes / up.bw_bytes_per_s,
            "op overheads": overhead, "first access": first_access, "channel I/O": io, "array": array,
            "path": down.time_s(plan.down_bytes) + phase.makespan_s + up.time_s(plan.up_bytes),
            "sources": {"link set-up": dev.sources.get("link_latency_s", ""),
                        "op overheads": ch.sources.get("op_overhead_s", ""),
                        "first access": ch.timing.sources.get("tRCD_cycles", "") + "; "
                        + ch.timing.sources.get("tCL_cycles", "")},
            "ops": len(works), "channels used": int(np.sum(phase.durations_s > 0)), "channels": dev.channels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 32768])
    ap.add_argument("--softmax", default="pim", choices=("pim", "near"))
    args = ap.parse_args()
    calibration_report(args.softmax)
    print(f"\nPIM path per layer at batch 1, {args.model}, default machine, {PRESET} (us):\n")
    keys = ("link set-up", "link bytes", "op overheads", "first access", "channel I/O", "array", "path")
    print("| context | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    last = None
    for context in args.contexts:
        b = breakdown(args.model, context)
        print(f"| {context} | " + " | ".join(f"{b[k] * 1e6:.3f}" for k in keys) + " |")
        last = b
    print(f"\n(busiest channel; {last['ops']} operations per channel; {last['channels used']} of {last['channels']} "
          "channels hold the sequence's stripes)\n\nSources of the fixed costs:")
    for k, v in last["sources"].items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
