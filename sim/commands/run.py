"""`aqpim-sim run`: one simulation from flags or a TOML run file; prints a summary, writes JSON and traces."""

from __future__ import annotations

import argparse
import json

from sim.config import SHARED, RunConfig, from_mapping, load_config_file, option_owners
from sim.io import check_output_file, write_text_atomic
from sim.options import add_arguments, specs
from sim.report import summary
from sim.run import run_simulation
from sim.serving import request_log_format
from sim.systems import SYSTEMS

HELP = "simulate one configuration and print a summary"
EXAMPLE = """examples:
  aqpim-sim run --system offload --model llama-2-7b --batch 16 --context 32768 --steps 8
  aqpim-sim run --model llama-3-8b --prefetch --json-out out.json --trace-out trace.json
  aqpim-sim run --steps 1000 --step-log steps.csv     (every step's latency and closed form, streamed to disk)
  aqpim-sim run --system pim --channels 320 --capacity-policy limit
  aqpim-sim run --system aqpim --pq-m 16 --pq-k 256 --sinks 4 --recent 128
  aqpim-sim run examples/offload.toml --batch 4      (flags override the file)"""


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for the shared settings and every system's options, generated from their declarations."""
    for name, (base, _, default, spec) in SHARED.items():
        add_arguments(p, name, base, default, spec, choices=tuple(SYSTEMS) if name == "system" else ())
    owners = option_owners()
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for key, systems in owners.items():
        cls = SYSTEMS[systems[0]].Options
        base, _, default, spec = specs(cls)[key]
        title = tuple(systems)
        if title not in groups:
            groups[title] = p.add_argument_group(f"options of {', '.join(title)}")
        add_arguments(groups[title], key, base, default, spec)


def config_from_args(args) -> RunConfig:
    keys = set(SHARED) | set(option_owners())
    given = {k: v for k, v in vars(args).items() if k in keys and v is not None}
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
    p.add_argument("--step-log", metavar="FILE",
                   help="write one CSV line per decode step to FILE as the run goes (step, start_s, latency_s, "
                        "analytic_s, exact, n_seqs, kv_tokens; docs/metrics.md)")
    p.add_argument("--request-log", metavar="FILE",
                   help="write one record per finished request to FILE (.csv or .jsonl) as the run goes: arrival, "
                        "start, first token, finish, queueing delay, TTFT, TPOT, end-to-end latency "
                        "(docs/metrics.md, \"Requests\")")


def run(args) -> int:
    cfg = config_from_args(args)
    if args.request_log:
        request_log_format(args.request_log)
    for out in (args.json_out, args.trace_out, args.step_log, args.request_log):
        if out:
            check_output_file(out)
    sim_run = run_simulation(cfg, step_log=args.step_log, request_log=args.request_log)
    result = sim_run.result
    print(summary(result))
    if args.json_out:
        write_text_atomic(args.json_out, result.to_json())
    if args.trace_out:
        trace = sim_run.chrome_trace({"system": result.system, "model": result.model})
        write_text_atomic(args.trace_out, json.dumps(trace, sort_keys=True) + "\n")
    return 0
