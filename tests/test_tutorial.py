"""docs/tutorial.md runs as a test: every command from the installed package, every quoted number checked.

The commands of the tutorial's fenced ``bash`` blocks run through the ``aqpim-sim`` console script of the session's
installed wheel (tests/installed.py), from a fresh folder that holds only a copy of ``examples/`` (a student reads
the tutorial in a checkout, after ``python3 -m pip install .``; the package's own data must come from the wheel).
The first command runs through the script itself; the others in two worker processes of the installed package
that call the script's entry point (so imports are paid twice, not once per command), the commands of a block in
order (a block must not read another block's files); once per session. ``run`` commands also get ``--json-out NAME.json`` so the text's numbers can name Result fields.

Then: every command exits 0 without a traceback; every excerpt of output occurs in its command's output; every
quoted number agrees with the expression it is annotated with, to the digits it is quoted with; every statement
annotated ``<!--?...-->`` holds; and no number with a unit is left unannotated (tests/tutorial.py has the syntax).
The explorer chapter's answers are read from the explorer's API in-process (``page(URL)``: the URL the exercise
gives the student, as the page would send it).

``TUTORIAL_OUT=DIR`` keeps the run in DIR and reuses it when the commands have not changed (for editing the text;
an unchanged command's output is then not re-run: do not use it to check a changed simulator).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import tutorial as tut  # tests/tutorial.py
from installed import ROOT  # tests/installed.py

DOC = ROOT / "docs" / "tutorial.md"
TUTORIAL = tut.parse(DOC)


def _argv(c: tut.Command) -> list[str]:
    if c.argv[0] == "run" and c.name:
        return [*c.argv, "--json-out", f"{c.name}.json"]
    return c.argv


# One process of the installed package per worker runs its blocks' commands through the console script's own
# entry point (what the `aqpim-sim` script calls), so the imports are paid once per worker, not once per command.
DRIVER = """
import contextlib, io, json, sys, time, traceback
from importlib.metadata import entry_points
(main_ep,) = [e for e in entry_points(group="console_scripts") if e.name == "aqpim-sim"]
main = main_ep.load()
jobs, out = json.loads(sys.argv[1]), []
for argv in jobs:
    o, e, t0 = io.StringIO(), io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            rc = main(argv)
        except SystemExit as x:
            rc = x.code if isinstance(x.code, int) else (0 if x.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    out.append({"stdout": o.getvalue(), "stderr": e.getvalue(), "returncode": rc or 0,
                "seconds": time.perf_counter() - t0})
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


def _run_worker(installed, folder: Path, commands: list[tut.Command], index: int) -> list[dict]:
    done = folder / f".worker{index}.json"
    r = subprocess.run([str(installed.python), "-c", DRIVER, json.dumps([_argv(c) for c in commands]), str(done)],
                       cwd=folder, env=installed.env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [{"line": c.line, "argv": _argv(c), **o} for c, o in zip(commands, json.loads(done.read_text()), strict=True)]


def _run_script(installed, folder: Path, c: tut.Command) -> dict:
    """A command through the console script itself, as a shell runs it."""
    t0 = time.perf_counter()
    r = subprocess.run([str(installed.script), *_argv(c)], cwd=folder, env=installed.env(), capture_output=True,
                       text=True, timeout=600)
    return {"line": c.line, "argv": _argv(c), "stdout": r.stdout, "stderr": r.stderr, "returncode": r.returncode,
            "seconds": time.perf_counter() - t0}


def _help_texts(installed) -> dict[str, str]:
    """Every subcommand's --help, in one process of the installed package."""
    code = ("import contextlib, io, json, sys\n"
            "from sim.cli import build_parser\n"
            "p = build_parser()\n"
            "subs = next(a for a in p._actions if a.dest == 'command').choices\n"
            "out = {}\n"
            "for name in subs:\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
            "        p.parse_args([name, '--help'])\n"
            "    out[name] = buf.getvalue()\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([str(installed.python), "-c", code], capture_output=True, text=True, env=installed.env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="session")
def tutorial_run(installed, tmp_path_factory):
    keep = os.environ.get("TUTORIAL_OUT")
    folder = Path(keep) if keep else tmp_path_factory.mktemp("tutorial")
    saved = folder / "tutorial-outputs.json"
    lines = [c.line + " " + " ".join(c.argv) for c in TUTORIAL.commands]
    if keep and saved.exists() and json.loads(saved.read_text())["lines"] == lines:
        data = json.loads(saved.read_text())
    else:
        if keep and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / "examples", folder / "examples")
        blocks: dict[int, list[tut.Command]] = {}
        for c in TUTORIAL.commands[1:]:
            blocks.setdefault(c.block, []).append(c)
        # two workers, the blocks shared by a rough cost (a default `compare` is the longest)
        cost = {b: sum(1 + 8 * (c.argv[0] == "compare" and "--variants" not in c.argv)
                       + 2 * (c.argv[0] in ("sweep", "plot", "compare", "accuracy")) for c in cmds)
                for b, cmds in blocks.items()}
        shares: list[list[int]] = [[], []]
        for b in sorted(blocks, key=lambda b: -cost[b]):
            min(shares, key=lambda sh: sum(cost[x] for x in sh)).append(b)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(_run_script, installed, folder, TUTORIAL.commands[0])
            work = [pool.submit(_run_worker, installed, folder, [c for b in sorted(sh) for c in blocks[b]], i)
                    for i, sh in enumerate(shares)]
            by_line = {o["line"]: o for w in work for o in w.result()}
            by_line[TUTORIAL.commands[0].line] = first.result()
        assert len(by_line) == len(TUTORIAL.commands), "two commands of the tutorial are the same line"
        data = {"lines": lines, "outputs": [by_line[c.line] for c in TUTORIAL.commands],
                "help": _help_texts(installed), "seconds": time.perf_counter() - t0}
        saved.write_text(json.dumps(data))
    outputs = [tut.Output(c, o["stdout"], o["stderr"], o["returncode"], o["seconds"], folder)
               for c, o in zip(TUTORIAL.commands, data["outputs"], strict=True)]
    slowest = sorted(outputs, key=lambda o: -o.seconds)[:3]
    print(f"\ntutorial: {len(outputs)} commands in {data['seconds']:.1f} s (two at a time); slowest: "
          + ", ".join(f"{o.command.line.split('#')[0].strip()[:60]} {o.seconds:.1f} s" for o in slowest))
    return outputs, data["help"]


@pytest.fixture(scope="session")
def namespace(tutorial_run, installed, tmp_path_factory):
    outputs, _ = tutorial_run
    ns: dict = {"ratio": tut.ratio, "min": min, "max": max, "abs": abs, "all": all, "any": any}
    for o in outputs:
        if o.command.name:
            assert o.command.name not in ns, f"two commands named {o.command.name}"
            ns[o.command.name] = o
    (table,) = {p.resolve() for p in installed.venv.glob("lib*/python*/site-packages/workloads/presets/accuracy.json")}
    entries = json.loads(table.read_text())["entries"]

    def acc(fmt: str, held_out: bool = False, unseen: bool = False) -> tut.J:
        """The shipped accuracy table's row (what `run` prints as its accuracy line): tuned or held-out layers, or
        the held-out layers' tokens the codebooks never saw (``unseen``)."""
        kind = "real-heldout-unseen" if unseen else "real-heldout" if held_out else "real"
        rows = [e for e in entries if e["format"] == fmt and e["data"]["kind"] == kind]
        assert len(rows) == 1, (fmt, held_out, len(rows))
        return tut.J(rows[0]["metrics"])

    from sim.explore.server import App

    app = App(str(tmp_path_factory.mktemp("explore")))

    @functools.cache
    def page(url: str, api: str = "estimate") -> tut.J:
        """What the explorer page shows for this URL: its /api/estimate (or /api/sweep, /api/run) answer."""
        state = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        status, _, body = app.dispatch("POST", f"/api/{api}", json.dumps(state).encode())
        assert status == 200, body
        return tut.J(json.loads(body))

    ns.update(acc=acc, page=page)
    return ns


def test_every_command_runs_from_the_installed_package(tutorial_run):
    outputs, helps = tutorial_run
    assert TUTORIAL.pip_lines == ["python3 -m pip install .          # installs the aqpim-sim command"]
    assert len(TUTORIAL.help_lines) == 1
    assert len(outputs) >= 20
    for o in outputs:
        assert o.returncode == 0 and "Traceback" not in o.stderr, f"{o.command.line}\n{o.stderr[-2000:]}"
        assert o.stdout.strip(), o.command.line
    assert {"run", "compare", "explain", "sweep", "plot", "accuracy", "explore"} <= set(helps)
    for name, text in helps.items():
        assert "example" in text.lower(), f"aqpim-sim {name} --help has no example"


def test_every_fence_is_run_or_checked():
    """A fenced block is commands (``bash``, all run) or an excerpt of one's output (checked): nothing else."""
    assert not TUTORIAL.unread_fences, f"docs/tutorial.md: fences at lines {TUTORIAL.unread_fences} are neither"


def test_every_quoted_number_is_annotated():
    missing = tut.unchecked_numbers(TUTORIAL.text)
    assert not missing, "numbers without <!--=...--> (or <!--input-->) in docs/tutorial.md, (line, number): " \
                        + str(missing)


def test_excerpts_occur_in_their_output(namespace):
    assert TUTORIAL.excerpts
    for name, body, line in TUTORIAL.excerpts:
        out = namespace[name].stdout
        for piece in (p.strip() for ln in body.splitlines() for p in ln.split("...")):
            assert piece in out, f"docs/tutorial.md line {line}: {piece!r} not in the output of {name}"


def test_quoted_numbers_agree_with_the_run(namespace):
    checks = [c for c in TUTORIAL.checks if c.kind != "input"]
    assert len(checks) >= 100
    wrong = []
    for c in checks:
        try:
            value = eval(c.expr, {"__builtins__": {}, **namespace})  # the docs' own expressions
        except Exception as e:  # noqa: BLE001 - reported with its line below
            wrong.append(f"line {c.line}: {c.expr!r} failed: {type(e).__name__}: {e}")
            continue
        if c.kind == "?":
            if value is not True:
                wrong.append(f"line {c.line}: statement {c.expr!r} is {value!r}")
        else:
            ok, shown = tut.agrees(c, value)
            if not ok:
                wrong.append(f"line {c.line}: quoted {c.quoted!r}, the run gives {shown:.6g} {c.unit} ({c.expr})")
    quoted = sum(c.kind == "=" for c in checks)
    print(f"\ntutorial: {quoted} quoted numbers and {len(checks) - quoted} statements checked")
    assert not wrong, "\n".join(wrong)


def test_the_three_statements_the_issue_found_wrong():
    """Issue 14: the baseline fits at 160 channels (not 128), M = 16 is 1 bit per element at head_dim 128 (not 2),
    and the GPU-only reference has about 65 GiB for KV, not the PIM baseline's 80 GiB (on the capacity grid they stop
    at the same cells, for different sizes); each carries a checked annotation in the text."""
    text = TUTORIAL.text
    assert re.search(r"The baseline needs 160 channels<!--\?ch.at\(system=\"pim\", channels=160\).fits and not "
                     r"ch.at\(system=\"pim\", channels=128\).fits-->", text)
    assert re.search(r"\*\*1 code bit per element\*\*<!--\?aq64.details.code_bits_per_element == 1-->", text)
    assert "at the same place" not in text
    assert re.search(r"but not at the same size: the GPU has\s+65 GiB<!--=off64.details.gpu_capacity_bytes - ", text)
