"""The shipped examples: every sweep file is valid for this build, and the Python API example runs."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from sim.sweep import load_sweep

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name, points", [("sweep-pcie.toml", 24), ("sweep-context.toml", 48),
                                          ("sweep-channels.toml", 16), ("sweep-capacity.toml", 64),
                                          ("sweep-wall.toml", 8), ("sweep-pq.toml", 7)])
def test_example_sweeps_resolve(name, points):
    sweep = load_sweep(EXAMPLES / name)
    assert len(sweep.points) == points
    assert sweep.description and all(pt.factors for pt in sweep.points)


def test_api_example_runs(tmp_path, capsys):
    module = runpy.run_path(str(EXAMPLES / "api.py"))
    module["main"](tmp_path)
    out = capsys.readouterr().out
    assert "What limits the step" in out and "fastest point" in out
    for name in ("prefetch-timeline.png", "breakdown.png", "pcie.png", "results.json", "pcie/results.jsonl"):
        assert (tmp_path / name).stat().st_size > 1000, name
