"""Chrome traces (Trace Event Format structure, span sums against busy times) and the figures drawn from files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from plots import plot_breakdown, plot_capacity, plot_sweep, plot_timeline
from plots.timeline import read_runs
from sim.chrome_trace import chrome_trace_json
from sim.cli import main
from sim.engine import Span
from sim.results import Result
from sim.sweep import load_sweep, run_sweep

METADATA_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index", "process_labels"}


def validate_trace(trace: dict) -> list[dict]:
    """Check the Trace Event Format as Perfetto and chrome://tracing read it; return the complete events."""
    json.dumps(trace, allow_nan=False)
    assert isinstance(trace, dict) and isinstance(trace["traceEvents"], list)
    assert trace.get("displayTimeUnit", "ms") in ("ms", "ns")
    procs, threads, complete = set(), set(), []
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M"), e
        for k in ("pid", "tid"):
            assert isinstance(e[k], int) and not isinstance(e[k], bool), e
        assert isinstance(e["name"], str) and e["name"], e
        if e["ph"] == "M":
            assert e["name"] in METADATA_NAMES, e
            if e["name"] == "process_name":
                assert isinstance(e["args"]["name"], str) and e["args"]["name"]
                procs.add(e["pid"])
            elif e["name"] == "thread_name":
                assert isinstance(e["args"]["name"], str) and e["args"]["name"]
                threads.add((e["pid"], e["tid"]))
        else:
            for k in ("ts", "dur"):
                assert isinstance(e[k], int | float) and math.isfinite(e[k]) and e[k] >= 0, e
            assert isinstance(e["args"]["step"], int)
            complete.append(e)
    for e in complete:
        assert e["pid"] in procs and (e["pid"], e["tid"]) in threads, "every event's process and thread are named"
    return complete


def lane_of(component: str) -> tuple[str, str]:
    device, _, lane = component.partition(".")
    return device, lane or "compute"


def test_compare_trace_is_valid_and_sums_to_busy_times(tmp_path, capsys):
    assert main(["compare", "--steps", "2", "--trace-steps", "2", "--context", "4096", "--batch", "2",
                 "--out", str(tmp_path)]) == 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    complete = validate_trace(trace)
    results = [Result.from_dict(d) for d in json.loads((tmp_path / "results.json").read_text())]
    runs = trace["otherData"]["runs"]
    assert len(runs) == len(results) >= 1
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    checked = set()
    for run, result in zip(runs, results, strict=True):
        assert result.steps == 2
        pids = {int(p): dev for p, dev in run["processes"].items()}
        assert all(names[p] == f"{run['label']} / {dev}" for p, dev in pids.items())
        sums: dict[tuple[str, str], float] = {}
        detail_lanes = set()
        for e in complete:
            if e["pid"] in pids:
                key = (pids[e["pid"]], threads[(e["pid"], e["tid"])])
                if e["args"].get("detail"):
                    detail_lanes.add(key)
                    continue
                sums[key] = sums.get(key, 0.0) + e["dur"] * 1e-6
        expected = {lane_of(c): b for c, b in result.busy_s.items() if b > 0}
        # Detail lanes are single channels of a bank whose totals the bank's own component carries.
        assert all(re.fullmatch(r"ch\d+", lane) and (dev, "compute") in expected for dev, lane in detail_lanes)
        assert set(sums) - set(expected) == set(), run["label"]
        assert set(expected) <= set(sums), run["label"]
        for key, busy in expected.items():
            assert sums[key] == pytest.approx(busy, rel=1e-9), (run["label"], key)
        checked.add(result.system)
    assert {"offload"} <= checked


def _h2d_gpu_overlap_s(trace_path: Path) -> float:
    (run,) = read_runs(json.loads(trace_path.read_text()))
    lanes = {lane.label: lane.events for lane in run.lanes}
    total = 0.0
    for s1, e1, _ in lanes["PCIe H2D"]:
        for s2, e2, _ in lanes["GPU"]:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


def test_prefetch_timeline_shows_h2d_overlapping_gpu_and_sync_does_not(tmp_path, capsys):
    base = ["run", "--steps", "2", "--context", "2048", "--batch", "1", "--kv-gpu-fraction", "0"]
    assert main([*base, "--trace-out", str(tmp_path / "sync.json")]) == 0
    assert main([*base, "--prefetch", "--trace-out", str(tmp_path / "pf.json")]) == 0
    validate_trace(json.loads((tmp_path / "pf.json").read_text()))
    assert _h2d_gpu_overlap_s(tmp_path / "sync.json") < 1e-12  # only rounding from µs
    assert _h2d_gpu_overlap_s(tmp_path / "pf.json") > 1e-3
    for name in ("sync", "pf"):
        assert_picture(plot_timeline(tmp_path / f"{name}.json", tmp_path / f"{name}.png"))


def assert_picture(path: Path) -> None:
    """A real figure: a sizeable file with many colours and a good part of the canvas drawn on."""
    assert path.stat().st_size > 10_000
    img = imread(path)[..., :3]
    drawn = (img < 0.95).any(axis=2).mean()
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert drawn > 0.03 and colours > 20, (drawn, colours)


def synthetic_pim_trace(path: Path, channels: int) -> Path:
    spans, t = [], 0.0
    for step in range(2):
        for _layer in range(4):
            spans.append(Span(step, "gpu", "qkv_proj", t, t + 2e-5, 0, 0, 0))
            t += 2e-5
            spans.append(Span(step, "pcie.h2d", "q_send", t, t + 5e-6, 0, 0, 0))
            t += 5e-6
            for ch in range(channels):
                d = 3e-5 + 1e-7 * (ch % 7)
                spans.append(Span(step, f"pim.ch{ch}", "pim_score", t, t + d, 0, 0, 0))
                spans.append(Span(step, f"pim.ch{ch}", "pim_context", t + d, t + 2 * d, 0, 0, 0))
            t += 2 * (3e-5 + 7e-7)
            spans.append(Span(step, "pcie.d2h", "attn_out", t, t + 5e-6, 0, 0, 0))
            t += 5e-6
    path.write_text(chrome_trace_json(spans, {"system": "pim"}))
    return path


def test_timeline_groups_hundreds_of_channels_into_density_lanes(tmp_path):
    trace = synthetic_pim_trace(tmp_path / "pim.json", 256)
    validate_trace(json.loads(trace.read_text()))
    (run,) = read_runs(json.loads(trace.read_text()), max_channel_lanes=8)
    pim = [lane for lane in run.lanes if lane.label.startswith("pim")]
    assert len(pim) == 8 and all(lane.members == 32 for lane in pim)
    assert [lane.label for lane in run.lanes[:3]] == ["GPU", "PCIe H2D", "PCIe D2H"]
    assert sorted(run.step_starts) == [0, 1]
    assert_picture(plot_timeline(trace, tmp_path / "pim.png"))
    (few,) = read_runs(json.loads(synthetic_pim_trace(tmp_path / "few.json", 4).read_text()))
    assert [lane.label for lane in few.lanes if lane.label.startswith("pim")] == [f"pim ch{i}" for i in range(4)]


def test_breakdown_figure_and_determinism(tmp_path, capsys):
    assert main(["run", "--steps", "2", "--context", "4096", "--batch", "2", "--json-out",
                 str(tmp_path / "r.json")]) == 0
    a = plot_breakdown(tmp_path / "r.json", tmp_path / "a.png")
    b = plot_breakdown(tmp_path / "r.json", tmp_path / "b.png")
    assert_picture(a)
    assert a.read_bytes() == b.read_bytes()
    s1 = plot_breakdown(tmp_path / "r.json", tmp_path / "a.svg").read_text()
    s2 = plot_breakdown(tmp_path / "r.json", tmp_path / "b.svg").read_text()
    assert s1 == s2 and "<svg" in s1 and "energy per token" in s1


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("grid")
    (d / "grid.toml").write_text("""
[sweep]
description = "grid for plots"
[base]
model = "llama-2-7b"
steps = 1
[factors]
variant = [{ name = "offload", system = "offload" }, { name = "cpu-attention", system = "offload", cpu_attention = true }]
batch = [1, 16, 64]
context = [4096, 32768, 131072]
""")
    run_sweep(load_sweep(d / "grid.toml"), d / "out", jobs=2, quiet=True)
    return d / "out" / "results.jsonl"


def test_sweep_plots(grid_sweep, tmp_path):
    assert_picture(plot_sweep(grid_sweep, tmp_path / "lat.png", x="context"))
    assert_picture(plot_sweep(grid_sweep, tmp_path / "speed.png", x="context", metric="speedup"))
    assert_picture(plot_sweep(grid_sweep, tmp_path / "tps.png", x="batch", metric="tokens_per_s"))
    with pytest.raises(ValueError, match="not a number"):
        plot_sweep(grid_sweep, tmp_path / "x.png", x="context", metric="kv_location")


def test_capacity_map(grid_sweep, tmp_path):
    out = plot_capacity(grid_sweep, tmp_path / "cap.svg")
    text = out.read_text()
    assert "nothing fits" in text and "cpu-attention wins" in text and "fits inside the edge" in text
    assert_picture(plot_capacity(grid_sweep, tmp_path / "cap.png"))


def test_plot_cli_reads_sweep_files(grid_sweep, tmp_path, capsys):
    assert main(["plot", "sweep", str(grid_sweep), "--x", "context", "--metric", "speedup",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert main(["plot", "capacity", str(grid_sweep), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["plot", "breakdown", str(grid_sweep), "--out", str(tmp_path / "b.png")]) == 0
    assert main(["plot", "sweep", str(grid_sweep), "--x", "contxt", "--out", str(tmp_path / "e.png")]) == 2
    assert "'contxt'" in capsys.readouterr().err


def test_timeline_panels_share_their_axis_only_when_runs_compare():
    from plots.timeline import shares_time_axis

    assert shares_time_axis([0.015, 0.017, 0.012])       # pim, aqpim, pim+limit steps: one axis
    assert not shares_time_axis([2.99, 0.015])            # a 3 s offload step beside a 15 ms PIM step: their own
    assert not shares_time_axis([0.015])                  # one panel: nothing to share
    assert not shares_time_axis([0.0, 0.0])
