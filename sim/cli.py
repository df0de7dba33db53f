"""The `aqpim-sim` command: one entry point, one subcommand per module in ``sim/commands``.

Every input error of any layer becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sim.errors import INPUT_ERRORS

# Subcommands in help order; each module has add_parser(subparsers) and run(args) -> int.
COMMANDS = ("run", "presets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aqpim-sim",
        description="Discrete-event simulator of long-context LLM decoding: KV offload, SOTA PIM and AQPIM.",
        epilog="example: aqpim-sim run --model llama-2-7b --batch 16 --context 32768",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
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
