"""The `aqpim-sim` command: one entry point, one subcommand per module in ``sim/commands``.

Every input error of any layer becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import sim.commands
from hw_models.loading import did_you_mean
from sim.errors import INPUT_ERRORS

# The main jobs first; every other module in sim/commands follows alphabetically.
FIRST = ("compare", "run")


def command_names() -> list[str]:
    """Each module in ``sim/commands`` with ``add_parser(subparsers)`` and ``run(args) -> int`` is a subcommand."""
    names = sorted(m.name for m in pkgutil.iter_modules(sim.commands.__path__) if not m.name.startswith("_"))
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other input error; no abbreviated flags (``--bat 4`` is not
    ``--batch 4``), and a mistyped flag gets a did-you-mean."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            flags = [a for a in message.removeprefix("unrecognized arguments: ").split() if a.startswith("--")]
            known = [o for o in self._option_string_actions if o.startswith("--") and o != "--help"]
            hints = [f"{f.split('=')[0]}{did_you_mean(f.split('=')[0], known)}" for f in flags]
            if any("did you mean" in h for h in hints):
                message = "unrecognized arguments: " + ", ".join(hints)
        elif "invalid choice: " in message and "(choose from " in message:
            word = message.split("invalid choice: ", 1)[1].split("'")[1]
            choices = [c.strip(" '") for c in message.split("(choose from ", 1)[1].rstrip(")").split(",")]
            message += did_you_mean(word, choices)
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
        sub.choices[name].set_defaults(_module=module, _parser=sub.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's own parser, which knows its flags for a did-you-mean
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args._module.run(args)
    except INPUT_ERRORS as e:
        print(f"aqpim-sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aqpim-sim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`aqpim-sim presets | head`): stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
