"""End to end through the CLI: compare (table, folder, determinism), explain, plot, and the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main
from sim.results import Result, config_labels
from sim.systems import SYSTEMS
from sim.variants import available_variants, variant_configs

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--steps", "2", "--context", "4096", "--batch", "2"]


def test_variants_cover_every_registered_system_and_only_those():
    avail = available_variants()
    assert {s for s, _ in avail} == set(SYSTEMS)
    assert [o for s, o in avail if s == "offload"] == [dict(v) for v in SYSTEMS["offload"].variants]


def test_labels_name_what_differs_within_a_system():
    cfgs = [{"system": "offload", "prefetch": False, "cpu_attention": False, "seed": 0},
            {"system": "offload", "prefetch": True, "cpu_attention": False, "seed": 0},
            {"system": "pim", "capacity_policy": "limit", "channels": 256, "seed": 0},
            {"system": "pim", "capacity_policy": "limit", "channels": 1024, "seed": 0},
            {"system": "offload", "prefetch": False, "cpu_attention": False, "seed": 0,
             "hardware": "/x/machines/a100-pcie3-ddr5.toml"}]
    assert config_labels(cfgs) == ["offload", "offload+prefetch", "pim+channels=256", "pim+channels=1024",
                                   "offload+a100-pcie3-ddr5"]
    # with the systems' defaults, an option at its default leaves the label (unless labels would collide)
    pims = [{"system": "pim", "capacity_policy": p, "kv_format": f} for p, f in
            (("spill", "fp16"), ("limit", "fp16"), ("spill", "int4"))]
    defaults = [{"capacity_policy": "spill", "kv_format": "fp16"}] * 3
    assert config_labels(pims, defaults) == ["pim", "pim+limit", "pim+int4"]
    assert config_labels(pims) == ["pim+spill+fp16", "pim+limit+fp16", "pim+spill+int4"]


def test_variant_filter_and_unknown_variant(capsys):
    pairs = variant_configs({"steps": 1}, ["offload+prefetch"])
    assert [lab for lab, _ in pairs] == ["offload+prefetch"]
    assert main(["compare", *SMALL, "--variants", "offload+prefech", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'offload+prefetch'" in err


def test_compare_writes_the_folder_and_is_byte_identical(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["compare", *SMALL, "--trace-steps", "2", "--out", str(a)]) == 0
    out = capsys.readouterr().out
    for head in ("variant", "step latency", "tokens/s", "speedup", "comm share", "KV cache", "KV lives in",
                 "fits", "energy/token"):
        assert head in out
    labels = [lab for lab, _ in variant_configs({})]
    for lab in labels:
        assert f"\n{lab} " in out
    assert "1.00x" in out
    files = sorted(p.name for p in a.iterdir())
    assert files == ["breakdown.png", "report.md", "results.json", "timeline.png", "trace.json"]
    results = [Result.from_dict(d) for d in json.loads((a / "results.json").read_text())]
    assert len(results) == len(labels) and all(r.steps == 2 and r.context == 4096 for r in results)
    report = (a / "report.md").read_text()
    assert "![breakdown](breakdown.png)" in report and "![timeline](timeline.png)" in report
    assert "| offload |" in report
    assert main(["compare", *SMALL, "--trace-steps", "2", "--out", str(b)]) == 0
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_compare_default_scenario_is_long_context_and_pcie_bound(tmp_path, capsys):
    assert main(["compare", "--variants", "offload", "--steps", "1", "--out", str(tmp_path)]) == 0
    (r,) = [Result.from_dict(d) for d in json.loads((tmp_path / "results.json").read_text())]
    assert r.context >= 65536 and r.comm_share > 0.9
    assert "compare-" not in (tmp_path / "report.md").read_text()


def test_explain_names_the_bottleneck_with_numbers(capsys):
    host = ["--kv-gpu-fraction", "0"]  # the whole KV cache in host DRAM: the offload path at its plainest
    assert main(["explain", "--steps", "1", "--batch", "2", "--context", "32768", *host]) == 0
    out = capsys.readouterr().out
    assert "The step is bound by pcie.h2d" in out
    assert "GB/s" in out and "KV cache" in out and "per step" in out
    assert main(["explain", "--steps", "1", "--batch", "16", "--context", "32768", "--cpu-attention", *host]) == 0
    assert "The step is bound by host.cpu" in capsys.readouterr().out
    assert main(["explain", "--steps", "1", "--batch", "16", "--context", "32768", "--system", "pim"]) == 0
    out = capsys.readouterr().out
    assert "The step is mostly gpu's work" in out and "channels' internal bandwidth" in out
    assert "pim.ch" not in out  # the traced channel lanes are detail of the pim unit, not resources of their own
    assert main(["explain", "--steps", "1", "--batch", "1", "--context", "2048", *host]) == 0
    out = capsys.readouterr().out
    assert "No single resource is busy for most of the step" in out and "whether overlapping them pays" in out
    assert "--prefetch: " in out and "faster, simulated)" in out  # the overlap, confirmed by simulating it


def test_plot_command_kinds(tmp_path, capsys):
    trace, res = tmp_path / "t.json", tmp_path / "r.json"
    assert main(["run", *SMALL, "--trace-out", str(trace), "--json-out", str(res)]) == 0
    assert main(["plot", "timeline", str(trace), "--out", str(tmp_path / "t.svg"), "--steps", "1"]) == 0
    assert main(["plot", "breakdown", str(res), "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "b.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["plot", "breakdown", str(res), "--out", str(tmp_path / "b.pdf")]) == 2
    assert main(["plot", "timeline", str(res), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["plot", "breakdown", str(tmp_path / "missing.json"), "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and ".png or .svg" in err[0] and "Chrome trace" in err[1] and "cannot read" in err[2]


def test_help_of_new_commands_has_examples(capsys):
    for cmd in ("compare", "sweep", "plot", "explain"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "example" in capsys.readouterr().out


def test_console_script_subprocess(tmp_path):
    exe = shutil.which("aqpim-sim")
    cmd = [exe] if exe else [sys.executable, "-m", "sim.cli"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ok = subprocess.run([*cmd, "explain", "--steps", "1", *SMALL[2:]], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "What limits the step" in ok.stdout
    bad = subprocess.run([*cmd, "sweep", str(tmp_path / "none.toml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "none.toml" in bad.stderr
