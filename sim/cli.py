"""The `aqpim-sim` command: one entry point, one subcommand per module in ``sim/commands``.

Every input error of any layer becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import sim.commands
from sim.errors import INPUT_ERRORS

# The main jobs first; every other module in sim/commands follows alphabetically.
FIRST = ("compare", "run")


def command_names() -> list[str]:
    """Each module in ``sim/commands`` with ``add_parser(subparsers)`` and ``run(args) -> int`` is a subcommand."""
    names = sorted(m.name for m in pkgutil.iter_modules(sim.commands.__path__) if not m.name.startswith("_"))
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="aqpim-sim",
        description="Discrete-event simulator of long-context LLM decoding: KV offload, SOTA PIM and AQPIM.",
        epilog="example: aqpim-sim run --model llama-2-7b --batch 16 --context 32768",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        module = importlib.import_module(f"sim.commands.{name}")
        module.add_parser(sub)
        sub.choices[name].set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._module.run(args)
    except INPUT_ERRORS as e:
        print(f"aqpim-sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aqpim-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
