"""`aqpim-sim explain`: one configuration's decode step in plain words, with the numbers behind each claim."""

from __future__ import annotations

import argparse

from sim.commands.run import add_config_arguments, config_from_args
from sim.explain import explain

HELP = "explain what limits one configuration's decode step (bytes moved where, at what rate)"
EXAMPLE = """examples:
  aqpim-sim explain --model llama-3.1-8b --batch 16 --context 32768
  aqpim-sim explain --batch 1 --context 2048 --prefetch
  aqpim-sim explain examples/offload.toml      (a TOML run file; flags override it)"""


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="optional TOML run file with the same keys as the flags")
    add_config_arguments(p)


def run(args) -> int:
    print(explain(config_from_args(args)))
    return 0
