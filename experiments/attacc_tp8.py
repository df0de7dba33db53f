"""Whole decode steps with TP = 8 against AttAcc's simulator: GPU-only and GPU + AttAcc, GPT-3 175B and LLaMA-65B.

    python3 experiments/attacc_tp8.py

Each row is a plain run, ``aqpim-sim run --hardware dgx-a100a-attacc --tp 8 --model M --batch B --context 2049
--steps 127`` with ``--system gpu`` (AttAcc's DGX baseline) or ``--system pim --softmax near`` (AttAcc: attention and
softmax in the PIM stacks beside each GPU, the PIM preset attacc-hbm3), the same 127 decode steps (L = 2049..2175)
that AttAcc averages. AttAcc's numbers (experiments/data/attacc_tp8_reference.csv, with the commit and commands) are
its 'noopt' runs: this simulator has no counterpart of --ffopt (FFN time scaled by 1 / (1 + 9 / batch)). AttAcc
models no LM head, embedding, final norm or residual add: "step - head" leaves out this simulator's final norm, LM
head and logits gather. Per operator: ms per step here against AttAcc's output.csv columns.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

REFERENCE = ROOT / "experiments" / "data" / "attacc_tp8_reference.csv"
SYSTEMS = {"gpu": ("gpu", {}), "attacc_noopt": ("pim", {"softmax": "near"})}
HEAD = ("final_norm", "lm_head", "logits_gather")
# this simulator's span kinds per AttAcc column
PARTS = {"qkv": ("qkv_proj", "rope"), "attn": ("attn_score", "softmax", "attn_context", "pim.attention",
                                                "attn_merge"),
         "x2g": ("q_kv_down", "partials_up"), "proj": ("o_proj",), "ffn": ("ffn",), "act": ("act",),
         "lnorm": ("attn_norm", "ffn_norm"), "allreduce": ("allreduce",)}


def reference() -> dict:
    with REFERENCE.open() as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {(r["model"], int(r["batch"]), r["system"]): r for r in rows}


def main() -> None:
    ref = reference()
    print(f"{'model':11} {'batch':>5} {'system':13} {'here ms':>8} {'- head':>8} {'AttAcc':>8} {'error':>7}   "
          + " ".join(f"{p:>13}" for p in PARTS))
    for model in ("gpt-3-175b", "llama-65b"):
        for batch in (1, 16, 64):
            for name, (system, opts) in SYSTEMS.items():
                r = simulate(make_config(system=system, **opts, hardware="dgx-a100a-attacc", model=model, tp=8,
                                         batch=batch, context=2049, steps=127, trace_steps=0))
                per_step = {k: v / r.steps for k, v in r.busy_by_kind_s.items()}
                head = sum(per_step.get(k, 0.0) for k in HEAD)
                step = r.mean_step_latency_s
                a = ref[(model, batch, name)]
                att = float(a["step_ms"])
                err = (step - head) * 1e3 / att - 1
                parts = " ".join(f"{1e3 * sum(per_step.get(k, 0.0) for k in kinds):6.2f}/{float(a[p + '_ms']):6.2f}"
                                 for p, kinds in PARTS.items())
                print(f"{model:11} {batch:5d} {name:13} {1e3 * step:8.2f} {1e3 * (step - head):8.2f} {att:8.2f} "
                      f"{100 * err:+6.1f}%   {parts}")


if __name__ == "__main__":
    main()
