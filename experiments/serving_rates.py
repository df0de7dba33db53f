"""Request-level latency of offload, pim, pim+limit and aqpim under Poisson arrivals at three rates.

    python3 experiments/serving_rates.py [--requests 200] [--rates 0.05 0.15 0.3] [--prefill first]
                                         [--out experiments/out/serving_rates.csv]

Issue 12's case: llama-3.1-8b on the default machine, 32K-token prompts, 256 output tokens, at most 16 sequences per
step, prefill in the timeline, SLO TTFT <= 5 s and TPOT <= 20 ms. Each row is one run of

    aqpim-sim run --system S [--capacity-policy limit] --requests N --context 32768 --output-tokens 256
                  --arrival-rate R --prefill P --max-batch 16 --slo-ttft 5 --slo-tpot 0.02 --seed 0

Percentiles are over the N requests (docs/metrics.md, "Requests"; with the streaming histogram beyond its exact
limit, 0.1 % relative error). Throughput and goodput are over the wall clock, first arrival to last token. Writes a
CSV and prints a markdown table (tokens/s: `request_tokens_per_s`, every output token over the wall clock);
the CPU seconds each run took are printed beside it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import make_config  # noqa: E402
from sim.errors import INPUT_ERRORS  # noqa: E402
from sim.run import simulate  # noqa: E402

SYSTEMS = (("offload", {}), ("pim", {}), ("pim+limit", {"capacity_policy": "limit"}), ("aqpim", {}))
COLUMNS = ("system", "rate_per_s", "requests", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s",
           "e2e_p99_s", "queue_p50_s", "request_tokens_per_s", "slo_attainment", "goodput_tokens_per_s", "cpu_s")


def run(name: str, options: dict, rate: float, requests: int, prefill: str) -> tuple:
    cfg = make_config(system=name.split("+")[0], requests=requests, context=32768, output_tokens=256,
                      arrival_rate_per_s=rate, prefill=prefill, max_batch=16, slo_ttft_s=5.0, slo_tpot_s=0.02,
                      trace_steps=0, seed=0, **options)
    t = time.process_time()
    r = simulate(cfg)
    cpu = time.process_time() - t
    return (name, rate, r.requests_completed, r.ttft_p50_s, r.ttft_p99_s, r.tpot_p50_s, r.tpot_p99_s, r.e2e_p50_s,
            r.e2e_p99_s, r.queue_p50_s, r.request_tokens_per_s, r.slo_attainment, r.goodput_tokens_per_s, cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.15, 0.3])
    ap.add_argument("--prefill", choices=["first", "chunked"], default="first")
    ap.add_argument("--out", default="experiments/out/serving_rates.csv")
    args = ap.parse_args()
    try:
        rows = [run(name, options, rate, args.requests, args.prefill) for rate in args.rates
                for name, options in SYSTEMS]
    except INPUT_ERRORS as e:  # a bad --requests or --rates: one line, as the CLI gives it
        print(f"serving_rates.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *rows])
    print("| system | req/s | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) | E2E p50 / p99 (s) | queue p50 (s) | "
          "tokens/s | SLO met | goodput (tokens/s) | CPU (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:g} | {r[3]:.2f} / {r[4]:.2f} | {1e3 * r[5]:.1f} / {1e3 * r[6]:.1f} | "
              f"{r[7]:.1f} / {r[8]:.1f} | {r[9]:.2f} | {r[10]:.1f} | {100 * r[11]:.1f} % | {r[12]:.2f} | {r[13]:.1f} |")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
