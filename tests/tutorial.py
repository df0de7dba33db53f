"""Reading docs/tutorial.md as a test: its commands, their names, the excerpts and the numbers it quotes.

The markdown carries light annotations, HTML comments that do not render:

- Every line of a fenced ``bash`` block is a command the test runs (``python3 -m pip install .`` is the session's
  installed wheel; ``aqpim-sim <command> --help`` is every subcommand's help). ``<!-- as: NAME NAME -->`` just
  before the fence names its commands in order (``-`` leaves one unnamed); ``| test adds: ARGS`` after the names
  appends ARGS to each command of the block when the test runs it (for a slow command; the text must say so).
- ``<!-- excerpt of: NAME -->`` before a fence without a language: every piece of it (lines, cut at ``...``)
  must occur in NAME's output.
- ``NUMBER UNIT<!--=EXPR-->``: the quoted number, read in its unit, equals the value of EXPR (SI units: seconds,
  bytes, fractions; or a number ``shown`` in the output, taken as printed) to the digits it is quoted with.
- ``<!--?EXPR-->``: a statement of the text; EXPR must be true.
- ``NUMBER UNIT<!--input-->``: a number the text sets (a flag's value, a preset's), not a result.

``unchecked_numbers`` lists every number with a unit (s, ms, GiB, %, x, tokens/s, ...) or a decimal point in the
prose, and every number in a table's body, that carries none of these, so a number cannot be added unchecked.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

UNITS = {  # quoted unit -> its size in SI units (what EXPR evaluates to)
    "tokens/s": 1.0, "TFLOP/s": 1e12, "TB/s": 1e12, "GB/s": 1e9, "GiB": 2.0**30, "MiB": 2.0**20, "KiB": 2.0**10,
    "GB": 1e9, "ms": 1e-3, "us": 1e-6, "s": 1.0, "%": 0.01, "x": 1.0, "J": 1.0, "W": 1.0, "B": 1.0, "": 1.0,
}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True) if u)
NUMBER_BEFORE = re.compile(rf"(\d[\d,]*(?:\.\d+)?)(?:\s?({_UNIT_RE}))?[*`)]*\s*$")
COMMENT = re.compile(r"<!--(.*?)-->", re.S)
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
# a number with a unit in prose: "2.99 s", "97 %", "16.6x" (not "x16", not "2 x 32")
_SPACED = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True) if u not in ("", "x"))
QUOTED = re.compile(rf"(?<![\w.\-])(\d[\d,]*(?:\.\d+)?)(?:\s?(?:{_SPACED})(?![\w/])|x(?!\w))")

# ... and any decimal number ("0.989"), but a version ("PCIe 4.0")
QUOTED_OR_DECIMAL = re.compile(rf"{QUOTED.pattern}|(?<![\w.\-])(?<!PCIe )\d+\.\d+(?![\w.])")


@dataclass
class Command:
    line: str  # as written in the tutorial
    argv: list[str]  # as run (with any 'test adds' arguments)
    name: str | None
    block: int


@dataclass
class Check:
    kind: str  # '=' (a quoted number), '?' (a statement), 'input'
    expr: str
    quoted: str  # the number as written, with its unit ('' for statements)
    value: float | None
    unit: str
    decimals: int
    line: int


@dataclass
class Tutorial:
    text: str
    commands: list[Command] = field(default_factory=list)
    excerpts: list[tuple[str, str, int]] = field(default_factory=list)  # (name, body, line)
    checks: list[Check] = field(default_factory=list)
    pip_lines: list[str] = field(default_factory=list)
    help_lines: list[str] = field(default_factory=list)
    unread_fences: list[int] = field(default_factory=list)  # lines of fences that are neither run nor an excerpt


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _comment_before(text: str, pos: int) -> str | None:
    """The HTML comment that ends on the line just before ``pos`` (a fence), if any."""
    before = text[:pos].rstrip("\n ")
    if before.endswith("-->"):
        start = before.rfind("<!--")
        return before[start + 4:-3].strip()
    return None


def parse(path: Path) -> Tutorial:
    text = path.read_text()
    tut = Tutorial(text)
    for b, m in enumerate(FENCE.finditer(text)):
        lang, body = m.group(2), m.group(3)
        note = _comment_before(text, m.start()) or ""
        if lang == "bash":
            names, adds = [], []
            if note.startswith("as:"):
                spec, _, extra = note[3:].partition("|")
                names = spec.split()
                extra = extra.strip()
                if extra:
                    assert extra.startswith("test adds:"), f"line {_line_of(text, m.start())}: {note!r}"
                    adds = shlex.split(extra[len("test adds:"):])
            lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            commands = []
            for ln in lines:
                if ln.startswith("python3 -m pip install"):
                    tut.pip_lines.append(ln)
                elif "<command>" in ln:
                    tut.help_lines.append(ln)
                else:
                    commands.append(ln)
            assert not names or len(names) == len(commands), \
                f"line {_line_of(text, m.start())}: {len(names)} names for {len(commands)} commands"
            for i, ln in enumerate(commands):
                argv = shlex.split(ln, comments=True)
                assert argv[0] == "aqpim-sim", f"not an aqpim-sim command: {ln!r}"
                name = names[i] if names and names[i] != "-" else None
                tut.commands.append(Command(ln, argv[1:] + adds, name, b))
        elif lang == "" and note.startswith("excerpt of:"):
            tut.excerpts.append((note.split(":", 1)[1].strip(), body, _line_of(text, m.start())))
        else:
            tut.unread_fences.append(_line_of(text, m.start()))
    for m in COMMENT.finditer(text):
        body = m.group(1).strip()
        line = _line_of(text, m.start())
        if body.startswith("?"):
            tut.checks.append(Check("?", body[1:].strip(), "", None, "", 0, line))
        elif body.startswith("=") or body == "input":
            q = NUMBER_BEFORE.search(text[max(0, m.start() - 40):m.start()])
            assert q, f"line {line}: no number before <!--{body}-->"
            number, unit = q.group(1).replace(",", ""), q.group(2) or ""
            decimals = len(number.split(".")[1]) if "." in number else 0
            tut.checks.append(Check("=" if body != "input" else "input", body[1:].strip(), q.group(0).strip(),
                                    float(number), unit, decimals, line))
    return tut


def prose_without_code(text: str) -> str:
    """The text with fenced blocks and inline code blanked (same length, so positions keep their lines)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731
    text = FENCE.sub(blank, text)
    # an annotation stays as a bare marker "<!--=" (its expression blanked), any other comment goes
    marker = lambda m: "<!--=" + blank(m)[5:-3] + "-->"  # noqa: E731
    text = COMMENT.sub(lambda m: marker(m) if m.group(1).strip().startswith(("=", "input")) else blank(m), text)
    return re.sub(r"`[^`\n]*`", blank, text)


def unchecked_numbers(text: str) -> list[tuple[int, str]]:
    """Numbers quoted with a unit (or in a table) that carry no annotation: (line, the number)."""
    prose = prose_without_code(text)
    found = []
    for lineno, line in enumerate(prose.splitlines(), 1):
        table = line.lstrip().startswith("|") and not set(line.strip()) <= set("|-: ")
        pattern = re.compile(r"(?<![\w.\-])\d[\d,]*(?:\.\d+)?") if table else QUOTED_OR_DECIMAL
        for m in pattern.finditer(line):
            rest = line[m.end():]
            if table and lineno > 1 and not prose.splitlines()[lineno - 2].lstrip().startswith("|"):
                break  # a table's header row names its columns
            if not re.match(rf"(?:\s?(?:{_UNIT_RE}))?[*`)]*\s*<!--=", rest):
                found.append((lineno, m.group(0)))
    return found


# --- what the expressions see -------------------------------------------------------------------------------------


class Shown(float):
    """A number read from printed output: already in the unit it is quoted in."""


class J:
    """Attribute access into a JSON object: ``r.details.code_bits_per_element``."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, key):
        try:
            return wrap(self._data[key])
        except KeyError:
            raise AttributeError(f"no {key!r} in {sorted(self._data)[:40]}") from None

    def __getitem__(self, key):
        return wrap(self._data[key])


def wrap(v):
    return J(v) if isinstance(v, dict) else v


@dataclass
class Output:
    """One command's run: its printed output, and what it wrote (a run's Result, a compare's or sweep's results)."""

    command: Command
    stdout: str
    stderr: str
    returncode: int
    seconds: float
    folder: Path

    def shown(self, pattern: str, group: int = 1) -> Shown:
        m = re.search(pattern, self.stdout)
        assert m, f"{pattern!r} not in the output of {self.command.line!r}"
        return Shown(float(m.group(group).replace(",", "")))

    def _json_out(self):
        return json.loads((self.folder / f"{self.command.name}.json").read_text())

    def __getattr__(self, key):  # a run: the Result's fields
        if key.startswith("_"):
            raise AttributeError(key)
        return getattr(J(self._json_out()), key)

    def _out_dir(self) -> Path:
        argv = self.command.argv
        return self.folder / argv[argv.index("--out") + 1]

    def v(self, label: str) -> J:
        """A compare's variant by its label (the table's first column)."""
        labels = [ln.split()[0] for ln in self.stdout.splitlines()
                  if ln and not ln.startswith(("-", " ")) and len(ln.split()) > 3 and ln.split()[1].isdigit()]
        results = json.loads((self._out_dir() / "results.json").read_text())
        assert len(labels) == len(results), (labels, len(results))
        return J(results[labels.index(label)])

    def at(self, **factors) -> J:
        """A sweep's point by its factors."""
        rows = [json.loads(ln) for ln in (self._out_dir() / "results.jsonl").read_text().splitlines() if ln]
        hit = [r for r in rows if all(r["factors"].get(k) == v for k, v in factors.items())]
        assert len(hit) == 1, f"{len(hit)} points of {self.command.line!r} match {factors}"
        return J(hit[0]["result"])


def ratio(a, b) -> float:
    """Throughput of a over b's (the speedup the tables and figures print)."""
    return a.tokens_per_s / b.tokens_per_s


def agrees(check: Check, value) -> tuple[bool, float]:
    """The value in the quoted unit, and whether the quoted number agrees with it to the digits it is given with."""
    shown = value if isinstance(value, Shown) else float(value) / UNITS[check.unit]
    return abs(shown - check.value) <= 0.5 * 10.0 ** -check.decimals * (1 + 1e-9) + 1e-12, shown
