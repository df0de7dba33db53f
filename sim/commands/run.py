"""`aqpim-sim run`: one simulation from flags or a TOML run file; prints a summary, writes JSON and traces."""

from __future__ import annotations

import argparse

from sim.chrome_trace import chrome_trace_json
from sim.config import CHOICES, FIELDS, RunConfig, from_mapping, load_config_file
from sim.io import write_text_atomic
from sim.report import summary
from sim.run import simulate_traced
from sim.systems import SYSTEMS

HELP = "simulate one configuration and print a summary"
EXAMPLE = """examples:
  aqpim-sim run --system offload --model llama-2-7b --batch 16 --context 32768 --steps 8
  aqpim-sim run --model llama-3-8b --prefetch --json-out out.json --trace-out trace.json
  aqpim-sim run --system pim --channels 320 --capacity-policy limit
  aqpim-sim run --system aqpim --pq-m 16 --pq-k 256 --sinks 4 --recent 128
  aqpim-sim run examples/offload.toml --batch 4      (flags override the file)"""


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for every RunConfig field; unset flags stay None so a config file's values survive."""
    d = RunConfig()
    p.add_argument("--system", choices=sorted(SYSTEMS), help=f"which system to simulate (default {d.system})")
    p.add_argument("--model", help=f"model preset name or path to a config.json (default {d.model})")
    p.add_argument("--hardware", help=f"machine preset name or path to a .toml file (default {d.hardware})")
    p.add_argument("--batch", type=int, help=f"sequences decoded together (default {d.batch})")
    p.add_argument("--context", type=int, help=f"KV tokens per sequence at the first step (default {d.context})")
    p.add_argument("--steps", type=int, help="decode steps (default 8; with a request list: a cap)")
    p.add_argument("--trace", help="request trace file, CSV or JSONL: arrival_s, prompt_tokens, output_tokens")
    p.add_argument("--requests", type=int, help="synthetic request list of this many requests (prompt = --context)")
    p.add_argument("--output-tokens", type=int, help=f"synthetic requests: tokens each decodes (default {d.output_tokens})")
    p.add_argument("--arrival-rate", dest="arrival_rate_per_s", type=float,
                   help="synthetic requests: Poisson arrivals per second (default 0: all at t=0)")
    p.add_argument("--max-batch", type=int, help="continuous batching limit (default: --batch)")
    p.add_argument("--prefetch", action="store_true", default=None,
                   help="offload: load the next layer's KV while this layer computes")
    p.add_argument("--cpu-attention", action="store_true", default=None,
                   help="offload: compute attention on the host CPU; only q and outputs cross PCIe")
    pim = p.add_argument_group("PIM systems (pim, aqpim)")
    pim.add_argument("--pim", help=f"PIM device preset or .toml file (default {d.pim}; see aqpim-sim presets)")
    pim.add_argument("--channels", type=int, help="override the PIM device's channel count")
    pim.add_argument("--capacity-policy", choices=CHOICES["capacity_policy"],
                     help=f"KV beyond PIM capacity: spill to host or limit the batch (default {d.capacity_policy})")
    pim.add_argument("--placement", choices=CHOICES["placement"],
                     help=f"KV across channels (default {d.placement})")
    pim.add_argument("--softmax", choices=CHOICES["softmax"], help=f"where softmax runs (default {d.softmax})")
    pim.add_argument("--sub-batches", type=int, help="2: sub-batches alternate between GPU and PIM (default 1)")
    pim.add_argument("--link-chunks", type=int,
                     help="pipeline q in / partials out over the PIM link in this many chunks (default 1: none)")
    aq = p.add_argument_group("AQPIM (product-quantized KV in PIM)")
    aq.add_argument("--pq-m", type=int, help=f"PQ sub-spaces per head (default {d.pq_m})")
    aq.add_argument("--pq-k", type=int, help=f"centroids per sub-space (default {d.pq_k})")
    aq.add_argument("--sinks", type=int, help=f"first tokens kept in FP16 (default {d.sinks})")
    aq.add_argument("--recent", type=int, help=f"last tokens kept in FP16 (default {d.recent})")
    aq.add_argument("--outliers", type=int, help=f"key channels per head kept in FP16 (default {d.outliers})")
    aq.add_argument("--lut-bytes", type=int, help=f"lookup buffer per PIM unit (default {d.lut_bytes})")
    aq.add_argument("--kmeans-iters", type=int, help=f"k-means iterations at prefill (default {d.kmeans_iters})")
    p.add_argument("--seed", type=int, help=f"seed of the run's random generator (default {d.seed})")
    p.add_argument("--trace-steps", type=int, help=f"decode steps kept in traces and timelines (default {d.trace_steps})")
    p.add_argument("--trace-channels", type=int,
                   help=f"PIM channels drawn one per lane in traces (default {d.trace_channels})")


def config_from_args(args) -> RunConfig:
    given = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    if getattr(args, "config", None):
        return load_config_file(args.config, overrides=given)
    return from_mapping(given, where="command line")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="optional TOML run file with the same keys as the flags")
    add_config_arguments(p)
    p.add_argument("--json-out", metavar="FILE", help="write the Result as JSON")
    p.add_argument("--trace-out", metavar="FILE", help="write a Chrome trace (open in Perfetto)")


def run(args) -> int:
    cfg = config_from_args(args)
    result, spans = simulate_traced(cfg)
    print(summary(result))
    if args.json_out:
        write_text_atomic(args.json_out, result.to_json())
    if args.trace_out:
        write_text_atomic(args.trace_out, chrome_trace_json(spans, {"system": result.system, "model": result.model}))
    return 0
