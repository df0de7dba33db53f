"""What survives a kill: sweeps killed with SIGKILL at several moments, then resumed; compare killed while writing.

Run: python3 benchmarks/kill_sweep.py [--at 0.5 1.5 3] [--only main,group,dask-worker,dask-scheduler,compare]
                                      [--root CHECKOUT] [--keep DIR]

For each scenario and moment (seconds after the command started) the script starts a ~40-point sweep of small
configurations (`aqpim-sim sweep`, 2 jobs), sends SIGKILL, resumes at once with the same command, and compares the
final results with an uninterrupted run of the same sweep:
  main            kill -9 of the sweep's main process only (as the OOM killer does); its workers are left alone
  group           kill -9 of the whole process group (main and workers)
  dask-worker     a Dask cluster (scheduler + 2 nanny-managed workers): kill -9 of one worker process
  dask-scheduler  the same cluster: kill -9 of the scheduler
Columns: rows written before the kill, workers still running 1 s after it, the killed command's exit and its
stderr lines (Dask), whether the resume needed a hand step (the resume refused and leftover processes had to be
killed, or the cluster restarted), and against the uninterrupted run: rows lost, duplicated, changed, and whether
results.jsonl and results.csv are byte-identical to it.
`compare` (every variant, with figures) rewriting an earlier comparison's folder is killed at several moments;
the folder is noted (complete or PARTIAL: missing or empty files; all old, all new or MIXED old and new files;
temporaries left beside it), then it is rerun (with --overwrite where the checkout has it): the folder must hold
every file, results.json must parse and be the new run's, the figures must be valid PNGs, and no temporary may
remain.

--root runs another checkout's code (e.g. an older commit exported with `git archive`), to measure before/after;
flags that checkout lacks (--force-jobs, --overwrite) are left out. Not a test: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

SWEEP = """
[base]
model = "llama-3.1-8b"
batch = 2
steps = 24

[factors]
context = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
variant = [{ name = "offload", system = "offload" }, { name = "prefetch", system = "offload", prefetch = true },
           { name = "pim", system = "pim" }, { name = "aqpim", system = "aqpim" }, { name = "gpu", system = "gpu" }]
"""
COMPARE_ARGS = ["--steps", "2", "--context", "8192", "--batch", "2", "--trace-steps", "1"]
COMPARE_FILES = ("breakdown.png", "report.md", "results.json", "timeline.png", "trace.json")


class Env:
    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work
        self.env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        MPLBACKEND="Agg")
        sweep_help = self.run(["sweep", "--help"]).stdout
        self.force = ["--force-jobs"] if "--force-jobs" in sweep_help else []
        self.dask_timeout = ["--dask-timeout", "10"] if "--dask-timeout" in sweep_help else []
        self.overwrite = ["--overwrite"] if "--overwrite" in self.run(["compare", "--help"]).stdout else []

    def cmd(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "sim.cli", *args]

    def run(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(args), cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(args), cwd=self.work, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# --- processes ---------------------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
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


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def killpg(pgid: int) -> None:
    """SIGKILL to a process group this script started (its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pythons_started_by(pid: int) -> list[int]:
    """Descendants of ``pid`` (workers of a sweep, worker processes of a dask nanny)."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


# --- results -----------------------------------------------------------------------------------------------------

def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            out.append(json.loads(line))
    return out


def diff(final: Path, ref: Path) -> tuple[int, int, int, bool]:
    """Rows lost, duplicated and changed against the reference; both files byte-identical to it."""
    got, want = records(final / "results.jsonl"), {r["key"]: r for r in records(ref / "results.jsonl")}
    keys = [r["key"] for r in got]
    lost = len(set(want) - set(keys))
    dup = len(keys) - len(set(keys))
    changed = sum(1 for r in got if r["key"] in want and r != want[r["key"]])
    same = all((final / n).exists() and (final / n).read_bytes() == (ref / n).read_bytes()
               for n in ("results.jsonl", "results.csv"))
    return lost, dup, changed, same


def wait_until(proc: subprocess.Popen, t0: float, at: float) -> None:
    while time.monotonic() - t0 < at and proc.poll() is None:
        time.sleep(0.005)


# --- Dask cluster ------------------------------------------------------------------------------------------------

class Cluster:
    """A scheduler and a `dask worker` process with two nanny-managed worker processes of one thread each."""

    def __init__(self, env: Env, name: str):
        self.env, self.file = env, env.work / f"{name}-scheduler.json"
        self.file.unlink(missing_ok=True)
        self.sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                                       "--no-dashboard", "--scheduler-file", str(self.file)], cwd=env.work,
                                      env=env.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                                         "--nworkers", "2", "--nthreads", "1", "--no-dashboard"], cwd=env.work,
                                        env=env.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        while len(self.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # let them register

    def worker_pids(self) -> list[int]:
        return [p for p in pythons_started_by(self.workers.pid) if running(p)]

    def stop(self) -> None:
        for proc in (self.workers, self.sched):
            killpg(proc.pid)  # the process groups this class started
            proc.wait()


# --- scenarios ---------------------------------------------------------------------------------------------------

def sweep_case(env: Env, sweep: Path, ref: Path, kind: str, at: float, n: int) -> dict:
    out = env.work / f"{kind}-{at:g}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cluster = Cluster(env, kind) if kind.startswith("dask") else None
    args = ["sweep", str(sweep), "--out", str(out), "--jobs", "2", *env.force, "--quiet"]
    if cluster:
        args += ["--executor", "dask", "--scheduler", cluster.address, *env.dask_timeout]
    row = {"scenario": kind, "at_s": at}
    t0 = time.monotonic()
    proc = env.start(args)
    wait_until(proc, t0, at)
    row["rows_before"] = len(records(out / "results.jsonl"))
    finished_early = proc.poll() is not None
    workers = pythons_started_by(proc.pid) if kind in ("main", "group") else []
    t_kill = time.monotonic()
    if kind == "main":
        kill(proc.pid)
    elif kind == "group":
        killpg(proc.pid)
    elif kind == "dask-worker":
        pids = cluster.worker_pids()
        if pids:
            kill(pids[0])
    elif kind == "dask-scheduler":
        kill(cluster.sched.pid)
    if kind.startswith("dask"):
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            killpg(proc.pid)
            proc.wait()
        row["exit"] = proc.returncode
        row["exit_after_s"] = round(time.monotonic() - t_kill, 1)
        err = [line for line in proc.stderr.read().splitlines() if line.strip()]
        row["stderr_lines"] = len(err)
        row["message"] = err[-1][:110] if err else ""
    else:
        proc.wait()
        proc.stderr.close()
        time.sleep(1.0)
        row["workers_left"] = sum(running(w) for w in workers)
    row["note"] = "finished before the kill" if finished_early else ""
    hand = []
    resume_args = args
    if kind == "dask-scheduler" and proc.returncode != 0:
        cluster.stop()
        cluster = Cluster(env, kind + "-again")
        resume_args = args[:args.index("--scheduler") + 1] + [cluster.address] + args[args.index("--scheduler") + 2:]
        hand.append("restart cluster")
    res = env.run(resume_args)
    if res.returncode != 0 and "another sweep" in res.stderr:
        hand.append("kill workers")
        for w in workers:
            kill(w)
        time.sleep(0.5)
        res = env.run(resume_args)
    row["resume_ok"] = res.returncode == 0
    row["hand_step"] = ", ".join(hand) or "no"
    row["lost"], row["dup"], row["changed"], row["identical"] = diff(out, ref)
    if cluster:
        cluster.stop()
    for w in workers:  # in case the checkout under test leaves them
        kill(w)
    return row


def png_ok(path: Path) -> bool:
    import matplotlib.image as mpimg

    try:
        mpimg.imread(path)
    except Exception:
        return False
    return path.read_bytes().endswith(b"IEND\xaeB`\x82")


def compare_state(out: Path, since: float | None = None) -> str:
    """complete / PARTIAL / absent, MIXED when files of the earlier run sit beside files of the killed one
    (modified before and after ``since``), and how many temporaries are left beside the folder."""
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    if not out.exists():
        state = "absent"
    else:
        files = sorted(out.iterdir())
        names = [p.name for p in files]
        empty = [p.name for p in files if p.stat().st_size == 0]
        state = "complete" if names == sorted(COMPARE_FILES) and not empty else (
            f"PARTIAL ({len(names)} files, {len(empty)} empty)")
        if since is not None:
            new = sum(p.stat().st_mtime >= since for p in files)
            if 0 < new < len(files):
                state += f", MIXED ({len(files) - new} old + {new} new files)"
            else:
                state += ", all new" if new else ", all old"
    return state + (f" + {len(leftovers)} temp" if leftovers else "")


def compare_case(env: Env, at: float) -> dict:
    base = env.work / f"compare-{at:g}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    out = base / "c"
    first = env.run(["compare", *COMPARE_ARGS, "--out", str(out)])  # an earlier comparison in the folder
    assert first.returncode == 0, first.stderr
    time.sleep(0.05)  # so that the killed run's files have later modification times than the first run's
    t0, since = time.monotonic(), time.time()
    proc = env.start(["compare", *COMPARE_ARGS, "--steps", "3", "--out", str(out), *env.overwrite])
    wait_until(proc, t0, at)
    finished = proc.poll() is not None
    killpg(proc.pid)
    proc.wait()
    proc.stderr.close()
    row = {"at_s": at, "after_kill": compare_state(out, since) + (" (run had ended)" if finished else "")}
    res = env.run(["compare", *COMPARE_ARGS, "--steps", "3", "--out", str(out), *env.overwrite])
    row["rerun_exit"] = res.returncode
    state = compare_state(out)
    try:
        results = json.loads((out / "results.json").read_text())
        json_ok = all(r["steps"] == 3 for r in results)
    except (OSError, ValueError, KeyError):
        json_ok = False
    pngs = all(png_ok(out / n) for n in COMPARE_FILES if n.endswith(".png"))
    row["after_rerun"] = state
    row["results_json_ok"] = json_ok
    row["pngs_ok"] = pngs
    row["stale_files"] = sorted(p.name for p in out.iterdir() if p.name not in COMPARE_FILES) if out.exists() else []
    return row


def table(rows: list[dict], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at", type=float, nargs="+", default=[0.5, 1.5, 3.0], help="kill moments, seconds")
    ap.add_argument("--compare-at", type=float, nargs="+", default=[1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0])
    ap.add_argument("--only", default="main,group,dask-worker,dask-scheduler,compare")
    ap.add_argument("--root", type=Path, default=HERE, help="checkout whose code runs (default: this one)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("needs Linux (/proc)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    env = Env(args.root.resolve(), work)
    only = args.only.split(",")
    try:
        sweep = work / "sweep.toml"
        sweep.write_text(SWEEP)
        ref = work / "ref"
        shutil.rmtree(ref, ignore_errors=True)
        t0 = time.monotonic()
        done = env.run(["sweep", str(sweep), "--out", str(ref), "--jobs", "2", *env.force, "--quiet"])
        assert done.returncode == 0, done.stderr
        print(f"code under test: {env.root}; uninterrupted sweep: {len(records(ref / 'results.jsonl'))} points, "
              f"{time.monotonic() - t0:.1f} s with 2 jobs (command start to exit)\n")
        rows = []
        for kind in ("main", "group", "dask-worker", "dask-scheduler"):
            if kind in only:
                for i, at in enumerate(args.at):
                    rows.append(sweep_case(env, sweep, ref, kind, at, i))
                    print(f"  {rows[-1]}", file=sys.stderr)
        if rows:
            print(table(rows, ["scenario", "at_s", "rows_before", "workers_left", "exit", "exit_after_s",
                               "stderr_lines", "resume_ok", "hand_step", "lost", "dup", "changed", "identical",
                               "note"]))
            msgs = {r["message"] for r in rows if r.get("message")}
            for m in sorted(msgs):
                print(f"  message: {m}")
            print()
        if "compare" in only:
            crow = [compare_case(env, at) for at in args.compare_at]
            print(table(crow, ["at_s", "after_kill", "rerun_exit", "after_rerun", "results_json_ok", "pngs_ok",
                               "stale_files"]))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
