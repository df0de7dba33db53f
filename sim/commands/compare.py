"""`aqpim-sim compare`: every available system variant on the same model, trace and machine; one table, one folder.

The comparison starts from a long-context scenario (``SCENARIO``, below ``RunConfig``'s own defaults and below
every flag): 16 sequences of 64K tokens of LLaMA-3.1-8B, a 128 GiB KV cache. There the offload path is bound
by PCIe, and the cache is larger than a PIM device's memory, so the PIM baseline meets its capacity wall. The
folder gets ``results.json`` (a list of Results), ``trace.json`` (Chrome trace), ``breakdown.png``,
``timeline.png`` and ``report.md`` (ending with the values of the presets used that are tagged as assumptions,
``sim.ledger``); only the default folder name carries a timestamp.

The folder is written as a set: every file into a temporary sibling folder, renamed into place at the end, so an
interrupted run leaves no partial folder (and the next run removes its temporary). An existing folder that is not
empty is refused before anything runs, unless ``--overwrite``, which replaces the whole set (only a folder holding
nothing but this command's files).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import MappingProxyType

from sim.commands.run import add_config_arguments
from sim.compare import (
    accuracy_lines,
    combined_trace_json,
    comparison_table,
    report_markdown,
    results_json,
    run_variants,
    scenario_line,
)
from sim.config import SHARED, option_owners
from sim.errors import ConfigError
from sim.io import atomic_folder, check_target_folder, write_text_atomic
from sim.ledger import assumptions_markdown
from sim.variants import variant_configs

HELP = "run every system variant on one long-context configuration and compare them"
EXAMPLE = """examples:
  aqpim-sim compare                                  (the long-context scenario below, into results/compare-<time>/)
  aqpim-sim compare --model llama-2-7b --context 16384 --batch 8 --out results/l2
  aqpim-sim compare --variants offload,offload+prefetch --steps 2 --out /tmp/c
  aqpim-sim compare --steps 2 --out /tmp/c --overwrite      (replace the earlier comparison in /tmp/c)
scenario (flags override it): """

# The comparison's starting point, applied over RunConfig's defaults and under the user's flags.
SCENARIO = MappingProxyType({"context": 65536, "steps": 4, "trace_steps": 2})
FILES = MappingProxyType({"results": "results.json", "trace": "trace.json", "breakdown": "breakdown.png",
                          "timeline": "timeline.png", "report": "report.md"})


def add_parser(sub) -> None:
    scenario = ", ".join(f"{k}={v}" for k, v in SCENARIO.items())
    p = sub.add_parser("compare", help=HELP, description=HELP, epilog=EXAMPLE + scenario,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default results/compare-<timestamp>)")
    p.add_argument("--show-infeasible", action="store_true",
                   help="show the timing and energy of variants that do not fit their memory (marked *); by "
                   "default they show 'does not fit' and no headline")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if it already holds a comparison (as a whole: no old file "
                   "stays)")


def add_variant_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that choose what is compared: every run setting and system option, and ``--variants``."""
    add_config_arguments(p)
    p.add_argument("--variants", metavar="LIST",
                   help="comma-separated variant labels to run, e.g. offload,offload+prefetch (default: all "
                   "available; --system X keeps the variants of system X)")


def variant_pairs(args, scenario=SCENARIO) -> list:
    """(label, RunConfig) of every compared variant: ``scenario`` under the user's flags, ``--variants`` and
    ``--system`` applied."""
    keys = set(SHARED) | set(option_owners())
    given = {k: v for k, v in vars(args).items() if k in keys and v is not None}
    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    system = given.pop("system", None)
    scenario = dict(scenario)
    if "trace" in given or "requests" in given:
        scenario.pop("steps", None)  # a request list runs to its end unless the user caps it with --steps
    return variant_configs({**scenario, **given}, only, system=system)


def run(args) -> int:
    pairs = variant_pairs(args)
    if any(cfg.trace_steps < 1 for _, cfg in pairs):  # before the runs: the timeline figure needs a traced step
        raise ConfigError("compare draws the timeline of the first decode step: --trace-steps must be at least 1")
    out = Path(args.out) if args.out else Path("results") / time.strftime("compare-%Y%m%d-%H%M%S")
    check_target_folder(out, args.overwrite, FILES.values())  # before the runs: a refusal costs nothing
    runs = run_variants(pairs)
    print(scenario_line(runs))
    print(comparison_table(runs, args.show_infeasible))
    for line in accuracy_lines(runs):
        print(f"accuracy: {line}")
    for r in runs:
        for w in r.result.warnings:
            print(f"warning: {r.label}: {w}")
    # Figures come from the files just written, as every figure does (plots read saved results).
    from plots import plot_breakdown, plot_timeline

    with atomic_folder(out, args.overwrite, FILES.values()) as tmp:
        write_text_atomic(tmp / FILES["results"], results_json(runs))
        write_text_atomic(tmp / FILES["trace"], combined_trace_json(runs))
        plot_breakdown(tmp / FILES["results"], tmp / FILES["breakdown"])
        plot_timeline(tmp / FILES["trace"], tmp / FILES["timeline"], steps=1,
                      title=f"{scenario_line(runs)}: first decode step")
        write_text_atomic(tmp / FILES["report"], report_markdown(runs, dict(FILES), args.show_infeasible) + "\n"
                          + assumptions_markdown(pairs))
    print(f"wrote {out}/: " + ", ".join(FILES.values()))
    return 0
