"""Sweeps: parsing and validation of sweep files, the resumable JSONL, the CSV, local and Dask executors."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sim.sweep as sweep_mod
from sim.cli import main
from sim.config import make_config
from sim.results import ResultsError, iter_records
from sim.sweep import config_key, load_sweep, repair_and_scan, run_sweep

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMALL = """
[base]
model = "llama-3.1-8b"
batch = 2
steps = {steps}

[factors]
context = {contexts}
variant = [{{ name = "sync", system = "offload" }}, {{ name = "prefetch", system = "offload", prefetch = true }}]
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def small_sweep(tmp_path: Path, steps: int = 2, contexts=(1024, 2048)) -> Path:
    return write(tmp_path, SMALL.format(steps=steps, contexts=list(contexts)))


def by_key(path: Path) -> dict:
    recs = list(iter_records(path))
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "a point appears twice"
    return {r["key"]: r for r in recs}


def test_grid_zipped_factors_and_points(tmp_path):
    p = write(tmp_path, """
[sweep]
description = "demo"
x = "context"
[base]
batch = 2
steps = 1
[factors]
context = [1024, 2048, 4096]
variant = [{ name = "sync", system = "offload" }, { system = "offload", cpu_attention = true }]
[[points]]
name = "big"
batch = 8
context = 8192
""")
    s = load_sweep(p)
    assert len(s.points) == 3 * 2 + 1
    assert s.factor_names == ("context", "variant", "point")
    assert s.points[0].factors == {"context": 1024, "variant": "sync"}
    assert s.points[1].factors["variant"] == "system=offload, cpu_attention=True"
    assert s.points[1].config.options.cpu_attention and s.points[1].config.batch == 2
    assert s.points[-1].factors == {"point": "big"} and s.points[-1].config.batch == 8
    assert s.hints == {"x": "context"} and s.description == "demo"
    assert [pt.index for pt in s.points] == list(range(7))


def test_key_is_sha256_of_the_full_configuration():
    a, b = make_config(batch=2), make_config(batch=2, seed=0)
    assert config_key(a) == config_key(b) and len(config_key(a)) == 64
    assert config_key(a) != config_key(make_config(batch=2, seed=1))


def test_base_only_is_one_point_and_duplicates_collapse(tmp_path):
    assert len(load_sweep(write(tmp_path, "[base]\nbatch = 2\n")).points) == 1
    dup = write(tmp_path, "[base]\nbatch = 2\n[factors]\nseed = [0, 0, 1]\n", "dup.toml")
    assert len(load_sweep(dup).points) == 2


def test_relative_machine_files_resolve_against_the_sweep_file(tmp_path):
    s = load_sweep(EXAMPLES / "sweep-pcie.toml")
    hw = {pt.config.hardware for pt in s.points}
    assert "a100-pcie4-ddr5" in hw
    assert all(Path(h).is_file() for h in hw if h.endswith(".toml"))


@pytest.mark.parametrize("text, expected", [
    ("[base]\ncontxt = 4096\n", ["[base]", "'contxt'", "did you mean 'context'"]),
    ("[base]\nbatch = 2\n[factor]\ncontext = [1]\n", ["'factor'", "did you mean 'factors'"]),
    ("batch = 2\n", ["'batch'", "[base]"]),
    ("[factors]\ncontext = 4096\n", ["[factors]", "'context'", "list"]),
    ("[factors]\nbatchh = [1, 2]\n", ["[factors]", "'batchh'", "did you mean 'batch'"]),
    ("[factors]\nv = [{ system = \"offload\", prefech = true }]\n", ["v[0]", "'prefech'", "did you mean 'prefetch'"]),
    ("[factors]\nsystem = [\"ofload\"]\n", ["point (system=ofload)", "did you mean 'offload'"]),
    ("[factors]\nbatch = [1, -2]\n", ["point (batch=-2)", "batch must be a positive integer"]),
    ("[base]\nmodel = \"llama-9\"\n", ["model", "llama-9"]),
    ("[base]\nbatch = 2\n[[points]]\nstepz = 1\n", ["[[points]] #1", "'stepz'"]),
    ("[sweep]\nmetrc = \"x\"\n", ["[sweep]", "did you mean 'metric'"]),
    ("[base]\nbatch = = 2\n", ["malformed TOML", "line 2"]),
])
def test_bad_sweep_files_give_one_line_naming_file_and_key(tmp_path, capsys, text, expected):
    p = write(tmp_path, text, "bad.toml")
    assert main(["sweep", str(p), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aqpim-sim: error: ")
    assert "bad.toml" in err
    for piece in expected:
        assert piece in err, (piece, err)
    assert not (tmp_path / "out").exists(), "nothing may run before the file is valid"


def test_run_writes_jsonl_csv_manifest_and_rerun_skips(tmp_path, capsys):
    p = small_sweep(tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(p), "--out", str(out), "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert "ran 4, 0 already done" in captured.out
    assert "4/4 points" in captured.err and "points/min" in captured.err
    recs = by_key(out / "results.jsonl")
    assert set(recs) == {pt.key for pt in load_sweep(p).points}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3]
    assert {"factor.context", "factor.variant", "mean_step_latency_s", "fits", "breakdown_s.compute",
            "config.prefetch"} <= set(rows[0])
    for row in rows:
        assert float(row["mean_step_latency_s"]) == recs[row["key"]]["result"]["mean_step_latency_s"]
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["factors"] == ["context", "variant"] and manifest["points"] == 4
    before = (out / "results.jsonl").read_bytes()
    assert main(["sweep", str(p), "--out", str(out), "--quiet"]) == 0
    assert "ran 0, 4 already done" in capsys.readouterr().out
    assert (out / "results.jsonl").read_bytes() == before


def test_torn_last_line_is_cut_and_the_point_rerun(tmp_path):
    p = small_sweep(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_sweep(load_sweep(p), ref, jobs=1, quiet=True)
    lines = (ref / "results.jsonl").read_bytes().splitlines(keepends=True)
    (out).mkdir()
    (out / "results.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    keys, cut = repair_and_scan(out / "results.jsonl")
    assert len(keys) == 2 and cut == len(lines[2]) // 2
    (out / "results.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:40])
    s = run_sweep(load_sweep(p), out, jobs=1, quiet=True)
    assert s.repaired_bytes == 40 and s.skipped == 2 and s.ran == 2
    assert by_key(out / "results.jsonl") == by_key(ref / "results.jsonl")


def test_corrupt_middle_line_is_an_error_not_silently_dropped(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ResultsError, match="line 2"):
        run_sweep(load_sweep(small_sweep(tmp_path)), out, quiet=True)


class _FailingExecutor(cf.ThreadPoolExecutor):
    """Runs points in threads and fails the third one, as a crashing worker would."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.calls = 0

    def submit(self, fn, *args):
        self.calls += 1
        if self.calls == 3:
            def boom(*_):
                raise RuntimeError("worker crashed")
            return super().submit(boom, *args)
        return super().submit(fn, *args)


def test_injected_failure_keeps_finished_points_and_resume_completes(tmp_path, monkeypatch):
    p = small_sweep(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_sweep(load_sweep(p), ref, jobs=1, quiet=True)
    ex = _FailingExecutor()
    monkeypatch.setattr(sweep_mod, "_executor", lambda *a: (ex, lambda: ex.shutdown(wait=True)))
    with pytest.raises(RuntimeError, match="worker crashed"):
        run_sweep(load_sweep(p), out, jobs=1, quiet=True)
    written = len(by_key(out / "results.jsonl"))
    assert written in (2, 3)  # the points that finished before and while the failure was seen, never the failed one
    monkeypatch.undo()
    s = run_sweep(load_sweep(p), out, jobs=2, quiet=True)
    assert (s.skipped, s.ran) == (written, 4 - written)
    assert by_key(out / "results.jsonl") == by_key(ref / "results.jsonl")
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()


def _cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_killed_sweep_resumes_with_each_point_exactly_once(tmp_path):
    # Points of about 0.2 s each, one at a time, so the kill lands part-way.
    p = small_sweep(tmp_path, steps=100, contexts=(1024, 2048, 3072, 4096, 5120))
    out, ref = tmp_path / "out", tmp_path / "ref"
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "sweep", str(p), "--out", str(out), "--jobs", "1",
                             "--quiet"], cwd=tmp_path, env=_cli_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes, all started here
    proc.wait()
    done = len(by_key(jsonl))
    assert 2 <= done < 10
    with jsonl.open("ab") as f:  # and a torn line, as a kill in the middle of a write would leave
        f.write(b'{"factors":{"context":')
    s = run_sweep(load_sweep(p), out, jobs=2, quiet=True)
    assert s.skipped == done and s.ran == 10 - done and s.repaired_bytes > 0
    run_sweep(load_sweep(p), ref, jobs=2, quiet=True)
    assert by_key(jsonl) == by_key(ref / "results.jsonl")
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()


def test_dask_executor_on_a_local_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    p = small_sweep(tmp_path)
    run_sweep(load_sweep(p), tmp_path / "ref", jobs=1, quiet=True)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        s = run_sweep(load_sweep(p), tmp_path / "dask", jobs=2, executor="dask",
                      scheduler=cluster.scheduler_address, quiet=True)
    assert s.ran == 4
    assert by_key(tmp_path / "dask" / "results.jsonl") == by_key(tmp_path / "ref" / "results.jsonl")


def test_dask_executor_errors_are_one_line(tmp_path, capsys, monkeypatch):
    p = small_sweep(tmp_path)
    assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--executor", "dask", "--quiet"]) == 2
    assert "--scheduler" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if the extra were not installed
    assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--executor", "dask",
                 "--scheduler", "tcp://127.0.0.1:1", "--quiet"]) == 2
    assert "pip install 'dask[distributed]'" in capsys.readouterr().err


def test_progress_bar_reports_done_rate_and_time_left():
    class Stream(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    now = [0.0]
    stream = Stream()
    bar = sweep_mod.Progress(10, 2, stream, clock=lambda: now[0])
    now[0] = 30.0
    bar.update(5)
    line = stream[-1]
    assert line.startswith("\r") and "5/10 points" in line and "6.0 points/min" in line and "left 0:50" in line
