"""AQPIM's prefill cost against its decode savings over pim: after how many output tokens it pays off, per context.

    python3 experiments/aqpim_prefill_payoff.py [--out experiments/out/aqpim_prefill_payoff.csv]

Per prompt length (4K..128K) and decode batch (1, 16), on llama-3.1-8b and the default machine:

* prefill: one request alone, ``prefill = "first"``: the prefill step's simulated time for pim (GPU prefill + the
  FP16 K/V over the device link) and for aqpim (the same + k-means and quantization on the GPU + codes, codebooks
  and window over the link); the extra is AQPIM's one-off cost per request;
* decode: the mean step latency of a fixed batch at that context for both systems (each step gives every
  sequence one token, so the per-token saving of a request is the step-latency difference);
* payoff: extra prefill / saving per token (output tokens after which AQPIM is ahead); "never" if it saves nothing.

Writes a CSV (header row) and prints it; the simulator runs here, plots would read the CSV.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402

CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)
BATCHES = (1, 16)
COLUMNS = ("context", "batch", "pim_prefill_s", "aqpim_prefill_s", "aqpim_extra_prefill_s", "pim_step_s",
           "aqpim_step_s", "saving_per_token_s", "payoff_tokens")


def prefill_s(system: str, context: int) -> float:
    return simulate(make_config(system=system, requests=1, context=context, output_tokens=1, prefill="first",
                                trace_steps=0)).prefill_time_s


def step_s(system: str, context: int, batch: int) -> float:
    return simulate(make_config(system=system, batch=batch, context=context, steps=2,
                                trace_steps=0)).mean_step_latency_s


def rows():
    for context in CONTEXTS:
        pim_p, aq_p = prefill_s("pim", context), prefill_s("aqpim", context)
        for batch in BATCHES:
            pim_d, aq_d = step_s("pim", context, batch), step_s("aqpim", context, batch)
            saving = pim_d - aq_d
            payoff = (aq_p - pim_p) / saving if saving > 0 else float("inf")
            yield (context, batch, pim_p, aq_p, aq_p - pim_p, pim_d, aq_d, saving,
                   f"{payoff:.1f}" if saving > 0 else "never")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/out/aqpim_prefill_payoff.csv")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        print(",".join(COLUMNS))
        for r in rows():
            w.writerow(r)
            print(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r))


if __name__ == "__main__":
    main()
