"""Sweeps: many simulations from one file, run in parallel processes, streamed to disk, resumable.

A sweep file (TOML) has a ``[base]`` table (any ``RunConfig`` key) and a ``[factors]`` table whose lists are
crossed into a full grid. A factor whose name is a RunConfig key takes a list of values
(``context = [4096, 8192]``); any other name takes a list of tables whose settings vary together, a zipped factor
(``variant = [{system = "offload"}, {system = "offload", prefetch = true, name = "prefetch"}]``). Explicit
``[[points]]`` tables (settings over ``[base]``) are appended to the grid. An optional ``[sweep]`` table holds a
``description`` and plot hints (``x``, ``metric``).

Every point is resolved and validated before anything runs, and keyed by the sha256 of the canonical JSON of its
full ``RunConfig``. Results are appended to ``results.jsonl`` as they finish, one line per point, each written
with one ``write`` and made durable with ``fsync``; nothing is held in memory beyond the points in flight. A
rerun skips every key already in the file, so an interrupted sweep resumes without duplicating or losing a
finished point; a torn last line (the process was killed mid-write) is cut off first. ``results.csv`` (flat
scalar columns with a header, rows in point order) is rebuilt from the JSONL at the end, streaming. The file
names and the record schema, and reading them back, are in ``sim.results``.

Points run in worker processes: a local ``ProcessPoolExecutor``, or an existing Dask cluster through
``dask.distributed`` (an optional dependency, imported only when asked for).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import fcntl
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw_models.loading import did_you_mean
from sim.config import RunConfig, all_keys, from_mapping, read_config_file, resolve_paths
from sim.errors import INPUT_ERRORS, ConfigError
from sim.io import open_atomic, write_text_atomic
from sim.results import MANIFEST, RESULTS_CSV, RESULTS_JSONL, flat_row, scan_records

TOP_TABLES = ("sweep", "base", "factors", "points")
SWEEP_KEYS = ("description", "x", "metric")
EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class Point:
    index: int
    factors: dict          # factor name -> value (zipped factors: the tables' name)
    config: RunConfig
    key: str


@dataclass(frozen=True)
class Sweep:
    path: str
    description: str
    factor_names: tuple[str, ...]
    points: tuple[Point, ...]
    hints: dict


def config_key(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of the full resolved configuration."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_keys(table: dict, where: str) -> None:
    keys = all_keys()
    for key in table:
        if key not in keys:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, keys)}; "
                              f"valid keys: {', '.join(keys)}")


def _zipped_name(table: dict) -> str:
    if "name" in table:
        return str(table["name"])
    return ", ".join(f"{k}={v}" for k, v in table.items())


def _factor_levels(name: str, values, where: str) -> list[tuple[object, dict]]:
    """A factor's levels as (value shown in results, settings it applies)."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: '{name}' must be a non-empty list, e.g. {name} = [..., ...]")
    if name in all_keys():
        for v in values:
            if isinstance(v, dict | list):
                raise ConfigError(f"{where}: '{name}' is a run setting; its values must be plain values, got {v!r}")
        return [(v, {name: v}) for v in values]
    if not all(isinstance(v, dict) for v in values):
        raise ConfigError(f"{where}: unknown key '{name}'{did_you_mean(name, all_keys())}; a factor is a run "
                          f"setting with a list of values, or a name with a list of tables of settings")
    levels = []
    for i, table in enumerate(values):
        settings = {k: v for k, v in table.items() if k != "name"}
        _check_keys(settings, f"{where} {name}[{i}]")
        levels.append((_zipped_name(table), settings))
    return levels


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file; every point is resolved to a RunConfig (errors name file and key)."""
    p = Path(path)
    data = read_config_file(p)
    for key, value in data.items():
        if key not in TOP_TABLES:
            hint = " (run settings go in [base])" if key in all_keys() else did_you_mean(key, TOP_TABLES)
            raise ConfigError(f"{p}: unknown top-level key '{key}'{hint}; expected tables "
                              f"{', '.join('[' + t + ']' for t in TOP_TABLES)}")
        kind = list if key == "points" else dict
        if not isinstance(value, kind):
            shape = "[[points]] tables" if key == "points" else f"a [{key}] table"
            raise ConfigError(f"{p}: '{key}' must be {shape}")
    meta = data.get("sweep", {})
    for key in meta:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{p} [sweep]: unknown key '{key}'{did_you_mean(key, SWEEP_KEYS)}; "
                              f"valid keys: {', '.join(SWEEP_KEYS)}")
    base_dir = p.parent
    base = data.get("base", {})
    _check_keys(base, f"{p} [base]")
    from_mapping(resolve_paths(base, base_dir), where=f"{p} [base]")
    factors = data.get("factors", {})
    levels = {name: _factor_levels(name, values, f"{p} [factors]") for name, values in factors.items()}
    combos: list[tuple[dict, dict]] = []
    for choice in itertools.product(*levels.values()):
        shown, settings = {}, {}
        for name, (value, s) in zip(levels, choice, strict=True):
            shown[name] = value
            settings.update(s)
        combos.append((shown, settings))
    if not factors and data.get("points"):
        combos = []
    for i, table in enumerate(data.get("points", [])):
        if not isinstance(table, dict):
            raise ConfigError(f"{p} [[points]] #{i + 1}: expected a table of settings")
        settings = {k: v for k, v in table.items() if k != "name"}
        _check_keys(settings, f"{p} [[points]] #{i + 1}")
        combos.append(({"point": _zipped_name(table)}, settings))
    points, seen = [], set()
    for shown, settings in combos:
        desc = ", ".join(f"{k}={v}" for k, v in shown.items()) or "base"
        cfg = from_mapping(resolve_paths({**base, **settings}, base_dir), where=f"{p}: point ({desc})")
        key = config_key(cfg)
        if key not in seen:
            seen.add(key)
            points.append(Point(len(points), shown, cfg, key))
    _check_inputs(points, p)
    names = tuple(dict.fromkeys(list(levels) + (["point"] if data.get("points") else [])))
    return Sweep(str(p), str(meta.get("description", "")), names, tuple(points),
                 {k: meta[k] for k in ("x", "metric") if k in meta})


def _check_inputs(points: list[Point], where: Path) -> None:
    """Load every distinct model and machine once, so a bad name fails before any point runs."""
    from hw_models.machine import load_machine
    from workloads.models import load_model

    for loader, attr in ((load_model, "model"), (load_machine, "hardware")):
        for name in sorted({getattr(pt.config, attr) for pt in points}):
            try:
                loader(name)
            except INPUT_ERRORS as e:
                raise ConfigError(f"{where}: {attr}: {e}") from None


# --- the results file (its schema and reading: sim.results) ---------------------------------------------------

def repair_and_scan(path: Path) -> tuple[set[str], int]:
    """Cut a torn last line off the JSONL; return the keys it holds and how many bytes were cut."""
    keys: set[str] = set()
    if not path.exists():
        return keys, 0
    good = 0
    for _, offset, line, rec in scan_records(path):
        keys.add(rec["key"])
        good = offset + len(line)
    size = path.stat().st_size
    if size > good:
        os.truncate(path, good)
    return keys, size - good


def append_line(fd: int, record: dict) -> None:
    """Append one record as one line with a single write, then make it durable."""
    data = (json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    written = os.write(fd, data)
    while written < len(data):  # a short write on a regular file is rare; finish the line
        written += os.write(fd, data[written:])
    os.fsync(fd)


def write_csv(jsonl: Path, out: Path) -> int:
    """Rebuild the CSV from the JSONL in point order, two passes over the file, one row in memory at a time."""
    columns: dict[str, None] = {"index": None, "key": None}
    order: list[tuple[int, int]] = []  # (index, byte offset)
    for _, offset, _, rec in scan_records(jsonl):
        columns.update(dict.fromkeys(flat_row(rec)))
        idx = rec.get("index")
        order.append((idx if isinstance(idx, int) else sys.maxsize, offset))
    order.sort()
    with open_atomic(out, newline="") as fo, open(jsonl, "rb") as fi:
        writer = csv.DictWriter(fo, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for _, off in order:
            fi.seek(off)
            writer.writerow(flat_row(json.loads(fi.readline())))
    return len(order)


# --- running -----------------------------------------------------------------------------------------------------

def run_point(cfg: RunConfig) -> dict:
    """Worker: simulate one point. Input errors become an ``error`` entry; anything else propagates."""
    from sim.run import simulate

    try:
        return {"result": simulate(cfg).to_dict()}
    except INPUT_ERRORS as e:
        return {"error": str(e)}


class Progress:
    """A one-line progress bar on a stream: points done, rate, time left. Redrawn in place on a terminal."""

    def __init__(self, total: int, done: int, stream=None, width: int = 28, clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.start_done = total, done, done
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width, self.clock = width, clock
        self.t0 = self.last = clock()

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * round(frac * self.width)
        elapsed = self.clock() - self.t0
        ran = self.done - self.start_done
        rate = ran / elapsed if elapsed > 0 and ran else 0.0
        left = (self.total - self.done) / rate if rate else None
        eta = "--:--" if left is None else f"{int(left // 60):d}:{int(left % 60):02d}"
        return (f"sweep [{bar:<{self.width}}] {self.done}/{self.total} points  {rate * 60:6.1f} points/min  "
                f"left {eta}")

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        final = done >= self.total
        if self.tty and (final or now - self.last >= 0.1):
            self.stream.write("\r" + self.line())
        elif not self.tty and (final or now - self.last >= 10.0):
            self.stream.write(self.line() + "\n")
        else:
            return
        self.last = now
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int       # already in the file
    ran: int
    failed: int        # points whose input was rejected at run time (recorded with an error)
    foreign: int       # records in the file that are not points of this sweep
    repaired_bytes: int
    wall_s: float


def _executor(kind: str, jobs: int, scheduler: str | None):
    """(executor, closer) for ``local`` (a process pool) or ``dask`` (a client of an existing cluster)."""
    if kind == "local":
        ex = cf.ProcessPoolExecutor(max_workers=jobs)
        return ex, lambda: ex.shutdown(wait=True, cancel_futures=True)
    if kind != "dask":
        raise ConfigError(f"unknown executor '{kind}'; valid: {', '.join(EXECUTORS)}")
    if not scheduler:
        raise ConfigError("--executor dask needs --scheduler ADDRESS (for example tcp://127.0.0.1:8786)")
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("the dask executor needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as e:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    ex = client.get_executor(pure=False)

    def close():
        ex.shutdown(wait=True)
        client.close()

    return ex, close


def run_sweep(sweep: Sweep, out_dir: str | Path, jobs: int = 1, executor: str = "local",
              scheduler: str | None = None, progress_stream=None, quiet: bool = False) -> SweepSummary:
    """Run every point of ``sweep`` not yet in ``out_dir/results.jsonl``; append each result as it finishes."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / RESULTS_JSONL
    t_start = time.monotonic()
    fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another sweep is writing to this folder") from None
        done_keys, repaired = repair_and_scan(jsonl)
        mine = {pt.key for pt in sweep.points}
        todo = [pt for pt in sweep.points if pt.key not in done_keys]
        write_text_atomic(out / MANIFEST, json.dumps(
            {"description": sweep.description, "factors": list(sweep.factor_names), "hints": sweep.hints,
             "points": len(sweep.points), "sweep_file": Path(sweep.path).name}, indent=1, sort_keys=True) + "\n")
        bar = None if quiet else Progress(len(sweep.points), len(sweep.points) - len(todo), progress_stream)
        failed = 0
        if todo:
            failed = _run_points(todo, fd, jobs, executor, scheduler, bar, len(sweep.points) - len(todo))
        if bar:
            bar.close()
        write_csv(jsonl, out / RESULTS_CSV)
    finally:
        os.close(fd)
    return SweepSummary(len(sweep.points), len(sweep.points) - len(todo), len(todo), failed,
                        len(done_keys - mine), repaired, time.monotonic() - t_start)


def _run_points(todo: list[Point], fd: int, jobs: int, executor: str, scheduler: str | None,
                bar: Progress | None, done: int) -> int:
    """Keep up to ``2 * jobs`` points in flight; write each result as it lands.

    When a point raises (a crashed worker, a bug), no new point starts, the points already running are drained
    and written, and the first error is raised: every point that finished is on disk for the rerun.
    """
    ex, close = _executor(executor, jobs, scheduler)
    failed = 0
    error: BaseException | None = None
    pending = iter(todo)
    in_flight: dict[cf.Future, Point] = {}
    try:
        for pt in itertools.islice(pending, 2 * jobs):
            in_flight[ex.submit(run_point, pt.config)] = pt
        while in_flight:
            finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                pt = in_flight.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as e:  # re-raised once the running points are written
                    error = error or e
                    continue
                failed += "error" in outcome
                append_line(fd, {"key": pt.key, "index": pt.index, "factors": pt.factors, **outcome})
                done += 1
                if bar:
                    bar.update(done)
                nxt = None if error else next(pending, None)
                if nxt is not None:
                    in_flight[ex.submit(run_point, nxt.config)] = nxt
    finally:
        for fut in in_flight:
            fut.cancel()
        close()
    if error is not None:
        raise error
    return failed
