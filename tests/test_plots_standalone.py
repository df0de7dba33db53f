"""Plots read saved results alone: every figure kind drawn in a fresh process that never loads the simulator.

The inputs are written by the simulator first (a ``run`` Result and Chrome trace, a ``compare`` folder, a small
sweep); then a subprocess imports ``plots``, draws from those files, and reports which modules it loaded: from
``sim`` only ``sim`` and ``sim.results``, and nothing of hw_models, workloads, SimPy or networkx. Bad plot inputs
are one line and exit status 2 through the CLI.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main
from sim.results import ResultsError, scan_records

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "1", "--batch", "1", "--context", "1024"]
SWEEP = """
[base]
steps = 1
[factors]
system = ["offload", "pim"]
batch = [1, 2]
context = [1024, 2048]
"""
FORBIDDEN = ("hw_models", "workloads", "simpy", "networkx")

DRAW = """
import json, sys
from pathlib import Path
import plots

d = Path(sys.argv[1])
out = [
    plots.plot_timeline(d / "run.trace.json", d / "fig-timeline-run.png"),
    plots.plot_timeline(d / "compare" / "trace.json", d / "fig-timeline-compare.png", steps=1, max_channel_lanes=2),
    plots.plot_breakdown(d / "run.json", d / "fig-breakdown-run.png"),
    plots.plot_breakdown(d / "compare" / "results.json", d / "fig-breakdown-compare.svg"),
    plots.plot_breakdown(d / "sweep" / "results.jsonl", d / "fig-breakdown-sweep.png"),
    plots.plot_sweep(d / "sweep" / "results.jsonl", d / "fig-sweep.png", x="context"),
    plots.plot_sweep(d / "sweep" / "results.jsonl", d / "fig-speedup.png", x="context", metric="speedup",
                     baseline="offload"),
    plots.plot_capacity(d / "sweep" / "results.jsonl", d / "fig-capacity.png"),
]
print(json.dumps({"figures": [str(p) for p in out], "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """Files the simulator wrote: a Result and its trace, a compare folder, a small sweep."""
    d = tmp_path_factory.mktemp("saved")
    assert main(["run", *TINY, "--json-out", str(d / "run.json"), "--trace-out", str(d / "run.trace.json")]) == 0
    assert main(["compare", *TINY, "--variants", "offload,pim+limit", "--out",
                 str(d / "compare")]) == 0
    (d / "sweep.toml").write_text(SWEEP)
    assert main(["sweep", str(d / "sweep.toml"), "--out", str(d / "sweep"), "--quiet"]) == 0
    return d


def test_plots_draw_every_figure_without_loading_the_simulator(saved):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", DRAW, str(saved)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    for fig in report["figures"]:
        assert Path(fig).stat().st_size > 5_000, fig
    modules = report["modules"]
    assert [m for m in modules if m.split(".")[0] in FORBIDDEN] == []
    assert [m for m in modules if m.split(".")[0] == "sim"] == ["sim", "sim.results"]


def test_results_module_imports_only_the_standard_library():
    tree = ast.parse((ROOT / "sim" / "results.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {n.split(".")[0] for n in names} <= set(sys.stdlib_module_names)
    assert (ROOT / "sim" / "__init__.py").read_text().count("import") == 0


def test_one_scan_gives_line_numbers_offsets_and_stops_at_a_torn_line(tmp_path):
    lines = [b'{"key": "a", "index": 0}\n', b'{"key": "b", "index": 1}\n', b'{"key": "c", "ind']
    p = tmp_path / "results.jsonl"
    p.write_bytes(b"".join(lines))
    got = list(scan_records(p))
    assert [(n, off, raw) for n, off, raw, _ in got] == [(1, 0, lines[0]), (2, len(lines[0]), lines[1])]
    assert [rec["key"] for *_, rec in got] == ["a", "b"]
    p.write_bytes(lines[0] + b'{"key": 3}\n')
    with pytest.raises(ResultsError, match="line 2 is not a sweep record"):
        list(scan_records(p))
    with pytest.raises(ResultsError, match="cannot read"):
        list(scan_records(tmp_path / "missing.jsonl"))


def _one_line_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("aqpim-sim: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_plot_inputs_are_one_line_and_exit_2(saved, tmp_path, capsys):
    png = ["--out", str(tmp_path / "x.png")]
    jsonl = str(saved / "sweep" / "results.jsonl")
    (tmp_path / "shape.json").write_text(json.dumps({"system": "pim", "steps": 1}))
    _one_line_error(capsys, ["plot", "breakdown", str(tmp_path / "shape.json"), *png], "expected a Result JSON")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    _one_line_error(capsys, ["plot", "breakdown", str(tmp_path / "list.json"), *png], "expected a Result JSON")
    broken = json.loads((saved / "run.json").read_text())
    broken["breakdown_s"] = [1.0]
    (tmp_path / "field.json").write_text(json.dumps(broken))
    _one_line_error(capsys, ["plot", "breakdown", str(tmp_path / "field.json"), *png], "'breakdown_s'")
    (tmp_path / "torn.json").write_text('{"system": ')
    _one_line_error(capsys, ["plot", "breakdown", str(tmp_path / "torn.json"), *png], "not valid JSON")
    _one_line_error(capsys, ["plot", "breakdown", str(tmp_path / "missing.json"), *png], "cannot read")
    _one_line_error(capsys, ["plot", "sweep", jsonl, "--metric", "speedup", "--baseline", "ofload", *png],
                    "unknown baseline 'ofload'", "did you mean 'offload'")
    _one_line_error(capsys, ["plot", "sweep", str(tmp_path / "missing.jsonl"), *png], "cannot read")
    _one_line_error(capsys, ["plot", "capacity", jsonl, "--metric", "kv_location", *png], "not a number")
    _one_line_error(capsys, ["plot", "timeline", str(saved / "run.trace.json"), "--max-lanes", "0", *png],
                    "--max-lanes", "at least 1")
    _one_line_error(capsys, ["plot", "timeline", str(saved / "run.json"), *png], "not a Chrome trace")
    (tmp_path / "events.json").write_text(json.dumps({"traceEvents": [1, 2]}))
    _one_line_error(capsys, ["plot", "timeline", str(tmp_path / "events.json"), *png], "malformed Chrome trace")
