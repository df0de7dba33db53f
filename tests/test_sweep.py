"""Sweeps: parsing and validation of sweep files, the resumable JSONL, the CSV, local and Dask executors, and
what survives a kill: workers die with the sweep, the lock, bounded jobs and grids, Dask failures, byte-identical
output."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
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
from sim.errors import ConfigError
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
    monkeypatch.setattr(sweep_mod, "_make_pool", lambda *a: sweep_mod.FuturesPool(ex, 1))
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


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays a zombie until the init process reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_main_process_only_kills_its_workers_and_resume_runs_at_once(tmp_path):
    # As the OOM killer does: SIGKILL to the sweep's own process, not to its workers. The workers must die with
    # it and must not hold the folder's lock, so the resume right after runs, each point exactly once.
    p = small_sweep(tmp_path, steps=20, contexts=(1024, 2048, 3072, 4096, 5120))
    out, ref = tmp_path / "out", tmp_path / "ref"
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "sweep", str(p), "--out", str(out), "--jobs", "2",
                             "--force-jobs", "--quiet"], cwd=tmp_path, env=_cli_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        jsonl = out / "results.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        workers = _children(proc.pid)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        assert workers
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(w) for w in workers):
            time.sleep(0.02)
        assert not any(_running(w) for w in workers), "a worker outlived the sweep"
        done = len(by_key(jsonl))
        assert 2 <= done < 10
        with jsonl.open("ab") as f:  # and a torn line, as a kill in the middle of a write would leave
            f.write(b'{"factors":{"context":')
        s = run_sweep(load_sweep(p), out, jobs=2, force_jobs=True, quiet=True)  # no "another sweep" refusal
        assert s.skipped == done and s.ran == 10 - done and s.repaired_bytes > 0
        run_sweep(load_sweep(p), ref, jobs=1, quiet=True)
        assert by_key(jsonl) == by_key(ref / "results.jsonl")
        for name in ("results.jsonl", "results.csv"):  # in point order, byte for byte
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # only if the test failed part-way: everything it started


def _hold_lock(path: Path, recorded: str) -> subprocess.Popen:
    """Another process holding the folder's flock, with ``recorded`` written as the owner's pid."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0)\n"
            "os.pwrite(fd, (sys.argv[2] if sys.argv[2] != 'self' else str(os.getpid())).encode(), 0)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), recorded], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_names_its_holder_and_a_dead_owners_lock_is_taken_over(tmp_path, capsys):
    p = small_sweep(tmp_path, contexts=(1024,))
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".sweep.lock"
    holder = _hold_lock(lock, "self")
    try:
        assert main(["sweep", str(p), "--out", str(out), "--jobs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another sweep (pid {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()
    dead = _dead_pid()
    holder = _hold_lock(lock, str(dead))  # the owner died, a process it left behind still holds the lock
    try:
        assert main(["sweep", str(p), "--out", str(out), "--jobs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        if sys.platform.startswith("linux"):
            assert f"(pid {dead}) has exited" in err and f"kill {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    lock.write_text(f"{dead}\n")  # a stale record, nobody holding the lock: taken over
    s = run_sweep(load_sweep(p), out, jobs=1, quiet=True)
    assert s.ran == 2 and lock.read_text() == f"{os.getpid()}\n"
    assert not list(out.glob(".*.tmp"))


def test_jobs_are_bounded_by_cores_and_points(tmp_path, capsys):
    p = write(tmp_path, "[base]\nbatch = 1\nsteps = 1\ncontext = 1024\n")
    out = str(tmp_path / "out")
    cores = sweep_mod.usable_cores()
    for bad in ("0", "-3"):
        assert main(["sweep", str(p), "--out", out, "--jobs", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--jobs must be a positive number" in err
    assert main(["sweep", str(p), "--out", out, "--jobs", str(cores + 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"more than the {cores} core" in err and "--force-jobs" in err
    assert not (tmp_path / "out").exists(), "a bad --jobs fails before anything is written"
    assert main(["sweep", str(p), "--out", out, "--jobs", str(cores + 1), "--force-jobs", "--quiet"]) == 0
    assert "ran 1, 0 already done" in capsys.readouterr().out  # and with one job: one point to run
    s = run_sweep(load_sweep(p), tmp_path / "api", jobs=cores + 1, force_jobs=True, quiet=True)
    assert s.jobs == 1
    with pytest.raises(ConfigError, match="--jobs"):
        run_sweep(load_sweep(p), tmp_path / "api", jobs=0, quiet=True)


def test_a_grid_is_counted_before_it_is_built(tmp_path, capsys):
    keys = ("batch", "context", "steps", "seed", "output_tokens", "trace_steps", "max_batch", "requests")
    huge = write(tmp_path, "[factors]\n" + "".join(f"{k} = {list(range(1, 31))}\n" for k in keys), "huge.toml")
    t0 = time.monotonic()
    assert main(["sweep", str(huge), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 5
    assert err.count("\n") == 1 and "656,100,000,000 points" in err and "30 x 30 x 30" in err
    assert "limit of 100,000" in err and "--max-points" in err
    small = write(tmp_path, "[base]\nsteps = 1\n[factors]\nbatch = [1, 2, 3]\ncontext = [1024, 2048, 4096]\n"
                            "[[points]]\nbatch = 8\n", "small.toml")
    assert main(["sweep", str(small), "--dry-run", "--max-points", "9"]) == 2
    err = capsys.readouterr().err
    assert "10 points (3 x 3 grid + 1 [[points]])" in err and "limit of 9" in err
    assert main(["sweep", str(small), "--dry-run", "--max-points", "10"]) == 0
    assert "10 points" in capsys.readouterr().out
    assert main(["sweep", str(small), "--dry-run", "--max-points", "0"]) == 2
    assert "--max-points must be a positive number" in capsys.readouterr().err


def test_output_is_byte_identical_whatever_jobs_or_executor_and_after_an_out_of_order_resume(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    p = small_sweep(tmp_path, contexts=(1024, 2048, 3072))
    s1 = run_sweep(load_sweep(p), tmp_path / "j1", jobs=1, quiet=True)
    s2 = run_sweep(load_sweep(p), tmp_path / "j2", jobs=2, force_jobs=True, quiet=True)
    assert s1.ran == s2.ran == 6 and s2.jobs == 2
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:
        s = run_sweep(load_sweep(p), tmp_path / "dask", jobs=None, executor="dask",
                      scheduler=cluster.scheduler_address, quiet=True)
    assert s.ran == 6 and s.jobs == 2  # default: the cluster's threads
    # A file left out of order (a kill after the fastest points), with a repeated line and a killed run's
    # temporary file: the resume puts it in point order, once each, and removes the temporary.
    lines = (tmp_path / "j1" / "results.jsonl").read_bytes().splitlines(keepends=True)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "results.jsonl").write_bytes(lines[4] + lines[1] + lines[4] + lines[2])
    (resumed / ".results.csv.4194303.abcd.tmp").write_text("half a csv")
    r = run_sweep(load_sweep(p), resumed, jobs=1, quiet=True)
    assert (r.skipped, r.ran, r.duplicates, r.reordered) == (3, 3, 1, True)
    assert not list(resumed.glob(".*.tmp"))
    for name in ("results.jsonl", "results.csv"):
        ref = (tmp_path / "j1" / name).read_bytes()
        for other in ("j2", "dask", "resumed"):
            assert (tmp_path / other / name).read_bytes() == ref, (other, name)
    header = (tmp_path / "j1" / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["index", "key", "factor.context", "factor.variant", "system"]
    flat = [c for c in header if "." in c and not c.startswith("factor.")]
    assert flat == sorted(flat)


def _abort_after(monkeypatch, n: int, action) -> None:
    """Call ``action`` once, right after the n-th record is written."""
    written = []
    orig = sweep_mod.append_line

    def hook(fd, record):
        orig(fd, record)
        written.append(record["index"])
        if len(written) == n:
            action()

    monkeypatch.setattr(sweep_mod, "append_line", hook)


@pytest.mark.parametrize("failure", ["scheduler", "workers"])
def test_dask_failures_end_with_one_line_and_the_finished_points_on_disk(tmp_path, capsys, monkeypatch, failure):
    distributed = pytest.importorskip("dask.distributed")
    p = small_sweep(tmp_path, steps=4, contexts=(1024, 2048, 3072, 4096, 5120))
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        _abort_after(monkeypatch, 2, cluster.close if failure == "scheduler" else lambda: cluster.scale(0))
        t0 = time.monotonic()
        rc = main(["sweep", str(p), "--out", str(out), "--executor", "dask", "--scheduler",
                   cluster.scheduler_address, "--dask-timeout", "1", "--quiet"])
        took = time.monotonic() - t0
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1, err
    expected = "lost the Dask scheduler" if failure == "scheduler" else "has had no worker for"
    assert expected in lines[0] and "rerun the same command to resume" in lines[0] and took < 20
    recs = list(iter_records(out / "results.jsonl"))
    assert 2 <= len(recs) < 10 and f"{len(recs)} of 10 points are in" in lines[0]
    assert [r["index"] for r in recs] == sorted(r["index"] for r in recs)
    assert len(list(csv.DictReader((out / "results.csv").open()))) == len(recs)
    s = run_sweep(load_sweep(p), out, jobs=1, quiet=True)  # the resume (here: locally) completes it
    assert s.skipped == len(recs) and s.ran == 10 - len(recs)
    assert len(by_key(out / "results.jsonl")) == 10


def test_non_utf8_results_on_resume_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_bytes(b'{"key": "a"}\n\xff\xfe\x00garbage\n')
    assert main(["sweep", str(small_sweep(tmp_path)), "--out", str(out), "--jobs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.jsonl: line 2" in err


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


def test_settings_added_later_leave_the_key_at_their_defaults():
    """A setting added after sweeps were first keyed is left out of the key at its default (so an older sweep's
    points keep their keys), and only there: the omitted value must be the declared default."""
    from sim.config import make_config
    from sim.sweep import KEY_OMITTED_AT_DEFAULT, config_key

    flat = {**make_config().to_dict(), **make_config(system="offload").to_dict()}
    assert all(flat[k] == v for k, v in KEY_OMITTED_AT_DEFAULT.items())
    base = make_config(system="offload", cpu_attention=True)
    assert config_key(base) != config_key(make_config(system="offload", cpu_attention=True, cpu_kernel="bandwidth"))
