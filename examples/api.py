"""aqpim-sim from Python (a notebook or a script): the same pieces the CLI uses, without the CLI.

    python examples/api.py [OUT_DIR]        (default: a new temporary folder; prints what it wrote)

Each block stands alone in a notebook cell. Results are plain dataclasses with every number in SI units
(seconds, bytes, joules); figures read the files written here, never the objects in memory.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from plots import plot_breakdown, plot_sweep, plot_timeline
from sim.chrome_trace import chrome_trace_json
from sim.compare import results_json, run_variants
from sim.config import from_mapping, make_config
from sim.explain import explain
from sim.results import iter_records
from sim.run import simulate, simulate_traced
from sim.sweep import load_sweep, run_sweep
from sim.variants import variant_configs

EXAMPLES = Path(__file__).resolve().parent


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)

    # 1. One run. make_config validates flat settings (as a TOML run file has them) into a RunConfig: the
    #    shared settings, plus the chosen system's own options (cfg.options) with their defaults.
    cfg = make_config(model="llama-3.1-8b", batch=4, context=16384, steps=2)
    r = simulate(cfg)
    print(f"{r.system}: {r.mean_step_latency_s * 1e3:.1f} ms per step, {r.tokens_per_s:.1f} tokens/s, "
          f"{100 * r.comm_share:.0f}% exposed PCIe time, KV {r.kv_bytes / 2**30:.1f} GiB in {r.kv_location}")

    # 2. The same with prefetch, traced: spans -> Chrome trace (open in ui.perfetto.dev) -> timeline figure.
    pf = make_config(**{**cfg.to_dict(), "prefetch": True, "trace_steps": 2})
    result, spans = simulate_traced(pf)
    (out / "prefetch.trace.json").write_text(chrome_trace_json(spans, {"system": result.system}))
    plot_timeline(out / "prefetch.trace.json", out / "prefetch-timeline.png")

    # 3. Why is it that fast (or slow)? The explanation `aqpim-sim explain` prints.
    print(explain(from_mapping({"batch": 4, "context": 16384, "steps": 1})))

    # 4. Every available system variant on one configuration, as `aqpim-sim compare` does.
    runs = run_variants(variant_configs({"batch": 4, "context": 16384, "steps": 2}))
    for run in runs:
        print(f"  {run.label:<24} {run.result.tokens_per_s:10.1f} tokens/s  fits: {run.result.fits}")
    (out / "results.json").write_text(results_json(runs))
    plot_breakdown(out / "results.json", out / "breakdown.png")

    # 5. A sweep from a file (parallel processes, resumable), then a plot from its JSONL.
    summary = run_sweep(load_sweep(EXAMPLES / "sweep-pcie.toml"), out / "pcie", jobs=2, quiet=True)
    print(f"sweep: {summary.ran} points run, {summary.skipped} already there")
    best = min((rec for rec in iter_records(out / "pcie" / "results.jsonl") if "result" in rec),
               key=lambda rec: rec["result"]["mean_step_latency_s"])
    print("fastest point:", best["factors"])
    plot_sweep(out / "pcie" / "results.jsonl", out / "pcie.png", x="link", metric="speedup")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="aqpim-api-")))
