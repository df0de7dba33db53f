"""Sweeps: many simulations from one file, run in parallel processes, streamed to disk, resumable after any kill.

A sweep file (TOML) has a ``[base]`` table (any ``RunConfig`` key) and a ``[factors]`` table whose lists are
crossed into a full grid. A factor whose name is a RunConfig key takes a list of values
(``context = [4096, 8192]``); any other name takes a list of tables whose settings vary together, a zipped factor
(``variant = [{system = "offload"}, {system = "offload", prefetch = true, name = "prefetch"}]``). Explicit
``[[points]]`` tables (settings over ``[base]``) are appended to the grid. An optional ``[sweep]`` table holds a
``description`` and plot hints (``x``, ``metric``). The number of points is the product of the factors' lengths
plus the explicit points; it is checked against a limit (``MAX_POINTS``, ``--max-points``) before the grid is
built.

Every point is resolved and validated before anything runs, and keyed by the sha256 of the canonical JSON of its
full ``RunConfig``. Results are appended to ``results.jsonl`` as they finish, one line per point, each written
with one ``write`` and made durable with ``fsync``; nothing is held in memory beyond the points in flight. A
rerun skips every key already in the file, so an interrupted sweep resumes without duplicating or losing a
finished point; a torn last line (the process was killed mid-write) is cut off first. When the run ends the file
is put in point order (rewritten atomically, only if it is not already), so the same sweep gives the same bytes
whatever ``--jobs``, executor or interruptions; ``results.csv`` is rebuilt from it with a fixed column order
(``index``, ``key``, the factors, ``error``, the Result's scalar fields in schema order, then the flattened dict
entries sorted). The file names and the record schema, and reading them back, are in ``sim.results``.

One sweep at a time writes a folder: it holds an ``flock`` on ``.sweep.lock`` (which records its pid, for the
message another sweep gets). Points run in worker processes: a local ``ProcessPoolExecutor`` whose workers
close their copy of the lock and results descriptors on start and are killed by the kernel when the sweep's
process dies (``PR_SET_PDEATHSIG``), so even ``kill -9`` of the sweep alone leaves nothing holding the folder;
or an existing Dask cluster through ``dask.distributed`` (an optional dependency, imported only when asked for).
A lost Dask scheduler, a cluster without workers for longer than ``--dask-timeout``, or a local worker killed
(out of memory, say) ends the sweep with ``SweepAborted``: one line, with every finished point on disk.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import ctypes
import fcntl
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from hw_models.loading import did_you_mean
from sim.config import RunConfig, all_keys, from_mapping, read_config_file, resolve_paths
from sim.errors import INPUT_ERRORS, ConfigError, output_error
from sim.io import open_atomic, pid_alive, remove_stale, write_text_atomic
from sim.results import (
    MANIFEST,
    RESULTS_CSV,
    RESULTS_JSONL,
    SCALAR_FIELDS,
    flat_row,
    iter_records,
    scan_records,
)

TOP_TABLES = ("sweep", "base", "factors", "points")
SWEEP_KEYS = ("description", "x", "metric")
EXECUTORS = ("local", "dask")
MAX_POINTS = 100_000        # a sweep with more points is refused unless the limit is raised (--max-points)
DASK_TIMEOUT_S = 60.0       # how long a Dask cluster may have no worker (and the first connection may take)
LOCK_FILE = ".sweep.lock"   # flock'ed by the sweep writing the folder; holds its pid
POLL_S = 1.0                # how often a running sweep checks its executor's health


class NotReady(Exception):
    """A pool's future is done but its result cannot be had yet (Dask: its worker was lost); try again later."""


class SweepAborted(RuntimeError):
    """The executor failed under a running sweep (a lost Dask scheduler or workers, a killed local worker).
    The message is one line; every point that finished is in the results file, and a rerun resumes."""


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


# Shared settings added after sweeps were first keyed: left out of the key at their defaults, so the points of
# an existing sweep keep their keys (and a resumed sweep does not run them again).
KEY_OMITTED_AT_DEFAULT = {"prefill": "none", "prefill_chunk_tokens": 512, "slo_ttft_s": None, "slo_tpot_s": None,
                          "trace_time_scale": 1.0, "trace_max_requests": None, "arrival_process": "poisson",
                          "arrival_cv": None, "prompt_dist": None, "output_dist": None, "detail": "auto",
                          "cpu_kernel": "flexgen"}


def config_key(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of the full resolved configuration (``KEY_OMITTED_AT_DEFAULT`` left out at
    their defaults)."""
    d = {k: v for k, v in cfg.to_dict().items()
         if not (k in KEY_OMITTED_AT_DEFAULT and v == KEY_OMITTED_AT_DEFAULT[k])}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
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


def load_sweep(path: str | Path, max_points: int = MAX_POINTS) -> Sweep:
    """Parse and validate a sweep file; every point is resolved to a RunConfig (errors name file and key).

    The number of points is counted from the factors' lengths before the grid is built; beyond ``max_points``
    the file is refused (one line with the count)."""
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
    _check_count(p, [len(v) for v in levels.values()], len(data.get("points", [])), max_points)
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
    options_memo: dict = {}  # the points' distinct system options, each checked once
    for shown, settings in combos:
        desc = ", ".join(f"{k}={v}" for k, v in shown.items()) or "base"
        cfg = from_mapping(resolve_paths({**base, **settings}, base_dir), where=f"{p}: point ({desc})",
                           options_memo=options_memo)
        key = config_key(cfg)
        if key not in seen:
            seen.add(key)
            points.append(Point(len(points), shown, cfg, key))
    _check_inputs(points, p)
    names = tuple(dict.fromkeys(list(levels) + (["point"] if data.get("points") else [])))
    return Sweep(str(p), str(meta.get("description", "")), names, tuple(points),
                 {k: meta[k] for k in ("x", "metric") if k in meta})


def _check_count(where: Path, lengths: list[int], explicit: int, max_points: int) -> None:
    """Refuse a sweep of more than ``max_points`` points, counted without building it."""
    grid = math.prod(lengths) if lengths else (0 if explicit else 1)
    total = grid + explicit
    if total > max_points:
        shape = " x ".join(str(n) for n in lengths) + " grid" if lengths else ""
        parts = " + ".join(s for s in (shape, f"{explicit} [[points]]" if explicit else "") if s)
        raise ConfigError(f"{where}: {total:,} points{f' ({parts})' if parts else ''}, more than the limit of "
                          f"{max_points:,}; raise it with --max-points {total} if that is meant")


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


@dataclass(frozen=True)
class Ordering:
    records: int       # records of this sweep's points in the file
    duplicates: int    # repeated keys dropped (only the first copy is kept)
    rewritten: bool    # the file was not in point order and was rewritten


def order_records(path: Path, order: dict[str, int]) -> Ordering:
    """Put the JSONL in point order (``order``: key -> point index; other keys last, in file order), one record
    per key, rewriting it atomically only when needed; one line in memory at a time, plus an offset per line."""
    entries: list[tuple[tuple[int, int], int, int]] = []  # (rank, byte offset, length)
    seen: set[str] = set()
    duplicates = 0
    for number, offset, line, rec in scan_records(path):
        if rec["key"] in seen:
            duplicates += 1
            continue
        seen.add(rec["key"])
        idx = order.get(rec["key"])
        entries.append(((0, idx) if idx is not None else (1, number), offset, len(line)))
    mine = sum(1 for rank, _, _ in entries if rank[0] == 0)
    if not duplicates and all(a[0] < b[0] for a, b in itertools.pairwise(entries)):
        return Ordering(mine, 0, False)
    entries.sort()
    with open_atomic(path, newline="") as fo, open(path, "rb") as fi:
        for _, offset, length in entries:
            fi.seek(offset)
            fo.write(fi.read(length).decode("utf-8"))
    return Ordering(mine, duplicates, True)


def csv_columns(present: Iterable[str], factor_names: Iterable[str] = ()) -> list[str]:
    """The CSV's fixed column order: index, key, the factors (the sweep's order, others sorted), error, the
    Result's scalar fields in schema order, then every flattened ``dict.key`` column sorted."""
    present = set(present)
    factors = [c for c in dict.fromkeys(f"factor.{n}" for n in factor_names) if c in present]
    factors += sorted(c for c in present if c.startswith("factor.") and c not in factors)
    head = [c for c in ("index", "key") if c in present] + factors + [c for c in ("error",) if c in present]
    scalars = [c for c in SCALAR_FIELDS if c in present and c not in head]
    rest = sorted(present - set(head) - set(scalars))
    return head + scalars + rest


def write_csv(jsonl: Path, out: Path, factor_names: Iterable[str] = (), present: set[str] | None = None) -> int:
    """Rebuild the CSV from the JSONL, rows in file order (point order after ``order_records``), columns in
    ``csv_columns`` order; two passes over the file, one row in memory at a time. ``present``: the columns of
    every row of the file (``flat_row``'s keys), when the caller collected them as the records were made: then
    one pass."""
    if present is None:
        present = set()
        for rec in iter_records(jsonl):
            present.update(flat_row(rec))
    columns = csv_columns(present | {"index", "key"}, factor_names)
    rows = 0
    with open_atomic(out, newline="") as fo:
        writer = csv.writer(fo, lineterminator="\n")  # as csv.DictWriter writes, with restval ""
        writer.writerow(columns)
        for rec in iter_records(jsonl):
            row = flat_row(rec)
            writer.writerow([row.get(c, "") for c in columns])
            rows += 1
    return rows


# --- the folder lock ---------------------------------------------------------------------------------------------

def lock_holders(path: Path) -> list[int]:
    """Pids of the processes that have ``path`` open (Linux /proc; empty elsewhere or when unreadable)."""
    try:
        st = os.stat(path)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    holders = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                s = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                holders.append(pid)
                break
    return sorted(holders)


class FolderLock:
    """The exclusive right to write a sweep folder: an ``flock`` on ``<folder>/.sweep.lock``, which records the
    holder's pid. The kernel drops the lock when the last descriptor of it closes, so a killed sweep leaves no
    stale lock: its workers close their inherited copy on start (``worker_init``) and die with it anyway."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise output_error(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise ConfigError(self._held(owner)) from None
        except OSError as e:
            os.close(fd)
            raise output_error(self.path, e) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _held(self, owner: int | None) -> str:
        holders = [p for p in lock_holders(self.path) if p != os.getpid()]
        if owner is not None and pid_alive(owner) and (owner in holders or not holders):
            return (f"{self.folder}: another sweep (pid {owner}) is writing to this folder; wait for it to end, "
                    f"or stop it (kill {owner}) and rerun to resume")
        if holders:
            who = " ".join(map(str, holders))
            return (f"{self.folder}: the sweep that locked this folder (pid {owner or '?'}) has exited, but "
                    f"process(es) {who} still hold its lock; stop them (kill {who}) and rerun to resume")
        return f"{self.folder}: another sweep is writing to this folder (lock {self.path})"


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).split()[0])
    return None


# --- workers -----------------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when ``parent_pid`` dies (Linux); elsewhere a thread watches for it."""
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                               ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_init(parent_pid: int, inherited: tuple[tuple[int, int, int], ...] = ()) -> None:
    """Start of each local worker: die with the sweep, and close the copies of the sweep's lock and results
    descriptors a forked worker inherits (``inherited``: fd, device, inode; an fd is closed only if it is still
    that file), so a worker never holds the folder's lock nor writes the results."""
    _die_with_parent(parent_pid)
    for fd, dev, ino in inherited:
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.close(fd)


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


# --- executors ---------------------------------------------------------------------------------------------------
# A pool runs points: submit(cfg) -> future, wait(futures, timeout) -> the finished ones, outcome(future) -> the
# point's dict (NotReady: ask again later; SweepAborted: the executor itself failed), check() -> SweepAborted
# when it is unhealthy, close(in_flight). ``jobs`` is how many points it runs at once. Every call returns within
# about POLL_S or the Dask timeout: a sweep never waits forever on a cluster.

class FuturesPool:
    """Points on a ``concurrent.futures`` executor: the local process pool (tests also use threads)."""

    def __init__(self, executor: cf.Executor, jobs: int):
        self.executor, self.jobs = executor, jobs

    def submit(self, cfg: RunConfig):
        return self.executor.submit(run_point, cfg)

    def wait(self, futures, timeout: float) -> set:
        return cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)[0]

    def outcome(self, fut) -> dict:
        try:
            return fut.result()
        except BrokenProcessPool:
            raise SweepAborted("a worker process died (killed by a signal, or out of memory)") from None

    def check(self) -> None:
        pass

    def close(self, in_flight) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def local_pool(jobs: int, inherited: tuple[tuple[int, int, int], ...]) -> FuturesPool:
    """A process pool of ``jobs`` workers (forked on Linux: they start with the simulator imported)."""
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    ex = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=worker_init,
                                initargs=(os.getpid(), inherited))
    return FuturesPool(ex, jobs)


@contextlib.contextmanager
def _quiet(prefix: str):
    """Silence a library's loggers (a lost connection is reported once, by the sweep, in one line). Each logger
    is disabled, not only the parent: the library gives its child loggers levels of their own."""
    loggers = [logging.getLogger(prefix)] + [lg for name, lg in list(logging.root.manager.loggerDict.items())
                                             if name.startswith(prefix + ".") and isinstance(lg, logging.Logger)]
    was = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, disabled in zip(loggers, was, strict=True):
            lg.disabled = disabled


class DaskPool:
    """Points on an existing Dask cluster. The scheduler lost (futures cancelled, client no longer running) or
    no worker for ``timeout_s`` seconds ends the sweep with ``SweepAborted``."""

    def __init__(self, scheduler: str, jobs: int | None, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        try:
            import dask.distributed as dd
        except ImportError:
            raise ConfigError("the dask executor needs dask.distributed: pip install 'dask[distributed]'") from None
        self.dd, self.address, self.timeout_s, self.clock = dd, scheduler, timeout_s, clock
        self._logs = _quiet("distributed")
        self._logs.__enter__()
        try:
            self.client = dd.Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            self._logs.__exit__(None, None, None)
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        self.no_workers_since: float | None = None
        self.fetching_since: dict = {}
        try:
            self.jobs = jobs or max(1, sum(self._nthreads().values()))
        except BaseException:
            self.close({})
            raise
        self.last_check = -math.inf

    def submit(self, cfg: RunConfig):
        return self.client.submit(run_point, cfg, pure=False)

    def wait(self, futures, timeout: float) -> set:
        with contextlib.suppress(Exception):  # a timeout, cancelled futures, a closed client: statuses tell
            self.dd.wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        return {f for f in futures if f.done()}

    def lost(self, detail: str) -> SweepAborted:
        return SweepAborted(f"lost the Dask scheduler at {self.address} ({detail})")

    def outcome(self, fut) -> dict:
        if fut.status == "finished":
            try:  # the result lives on a worker; if that worker is gone it is recomputed, or never comes
                return fut.result(timeout=POLL_S)
            except TimeoutError:
                since = self.fetching_since.setdefault(fut.key, self.clock())
                if self.clock() - since >= self.timeout_s:
                    raise SweepAborted(f"a finished point's result could not be fetched from the Dask cluster at "
                                       f"{self.address} for {self.timeout_s:g} s (--dask-timeout)") from None
                raise NotReady from None
        if fut.status == "cancelled":
            raise self.lost("the point's task was cancelled")
        if fut.status not in ("error",):
            raise NotReady
        exc = fut.exception()
        if isinstance(exc, self.dd.KilledWorker):
            raise SweepAborted(f"a point's task killed the Dask workers that ran it (out of memory?): "
                               f"{str(exc).splitlines()[0]}")
        raise exc

    def check(self) -> None:
        if self.client.status != "running":
            raise self.lost(f"connection {self.client.status}")
        now = self.clock()
        if now - self.last_check < POLL_S:
            return
        self.last_check = now
        workers = self._nthreads()
        if workers:
            self.no_workers_since = None
        elif self.no_workers_since is None:
            self.no_workers_since = now
        elif now - self.no_workers_since >= self.timeout_s:
            raise SweepAborted(f"the Dask cluster at {self.address} has had no worker for "
                               f"{now - self.no_workers_since:.0f} s (--dask-timeout {self.timeout_s:g})")

    def _nthreads(self) -> dict:
        """Worker -> threads, asked of the scheduler (an unresponsive one counts as lost)."""
        try:
            return self.client.nthreads(callback_timeout=self.timeout_s)
        except Exception as e:  # the scheduler went away, or does not answer
            raise self.lost(type(e).__name__) from None

    def close(self, in_flight) -> None:
        with contextlib.suppress(Exception):
            if in_flight and self.client.status == "running":
                self.client.cancel(list(in_flight))
        with contextlib.suppress(Exception):
            self.client.close(timeout=min(self.timeout_s, 10))
        self._logs.__exit__(None, None, None)


def _make_pool(executor: str, jobs: int | None, scheduler: str | None, dask_timeout_s: float,
               inherited: tuple[tuple[int, int, int], ...]):
    if executor == "local":
        return local_pool(jobs or 1, inherited)
    return DaskPool(scheduler or "", jobs, dask_timeout_s)


# --- running -----------------------------------------------------------------------------------------------------

def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_jobs(jobs: int | None, executor: str = "local", force: bool = False) -> int | None:
    """``jobs`` checked: a positive number, at most the usable cores for the local executor unless ``force``.
    None: the usable cores (local), or the cluster's threads (dask, decided once connected)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
    if jobs is None:
        return usable_cores() if executor == "local" else None
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a positive number of points run at once, got {jobs}")
    cores = usable_cores()
    if executor == "local" and jobs > cores and not force:
        raise ConfigError(f"--jobs {jobs} is more than the {cores} core{'s' if cores > 1 else ''} this process may "
                          f"use; give --jobs {cores} or fewer, or add --force-jobs to oversubscribe")
    return jobs


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int       # already in the file
    ran: int
    failed: int        # points whose input was rejected at run time (recorded with an error)
    foreign: int       # records in the file that are not points of this sweep
    repaired_bytes: int
    wall_s: float
    jobs: int = 0      # points run at once (0: nothing ran)
    duplicates: int = 0     # repeated records dropped when the file was put in point order
    reordered: bool = False  # the file was rewritten in point order


def run_sweep(sweep: Sweep, out_dir: str | Path, jobs: int | None = 1, executor: str = "local",
              scheduler: str | None = None, progress_stream=None, quiet: bool = False, force_jobs: bool = False,
              dask_timeout_s: float = DASK_TIMEOUT_S) -> SweepSummary:
    """Run every point of ``sweep`` not yet in ``out_dir/results.jsonl``; append each result as it finishes,
    then put the file in point order and rebuild the CSV.

    ``jobs`` points run at once (None: the usable cores, or the Dask cluster's threads), never more than the
    points left to run; more than the usable cores is refused unless ``force_jobs``. A failing executor raises
    ``SweepAborted`` once every finished point is written (file in point order, CSV rebuilt)."""
    jobs = check_jobs(jobs, executor, force_jobs)
    if not dask_timeout_s > 0:
        raise ConfigError(f"--dask-timeout must be a positive number of seconds, got {dask_timeout_s}")
    if executor == "dask" and not scheduler:
        raise ConfigError("--executor dask needs --scheduler ADDRESS (for example tcp://127.0.0.1:8786)")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    jsonl = out / RESULTS_JSONL
    t_start = time.monotonic()
    with FolderLock(out) as lock:
        for name in (RESULTS_JSONL, RESULTS_CSV, MANIFEST):
            remove_stale(out, name, only_dead=False)  # a killed run's temporaries; the lock is ours
        _refuse_analytic_folder(out)
        done_keys, repaired = repair_and_scan(jsonl)
        mine = {pt.key for pt in sweep.points}
        todo = [pt for pt in sweep.points if pt.key not in done_keys]
        write_text_atomic(out / MANIFEST, json.dumps(
            {"description": sweep.description, "factors": list(sweep.factor_names), "hints": sweep.hints,
             "points": len(sweep.points), "sweep_file": Path(sweep.path).name}, indent=1, sort_keys=True) + "\n")
        bar = None if quiet else Progress(len(sweep.points), len(sweep.points) - len(todo), progress_stream)
        failed, used, aborted = 0, 0, None
        fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if todo:
                inherited = tuple((f, os.fstat(f).st_dev, os.fstat(f).st_ino) for f in (lock.fd, fd))
                pool = _make_pool(executor, min(jobs, len(todo)) if jobs else None, scheduler, dask_timeout_s,
                                  inherited)
                used = min(pool.jobs, len(todo))
                try:
                    failed = _run_points(todo, fd, pool, used, bar, len(sweep.points) - len(todo))
                except SweepAborted as e:
                    aborted = e
        finally:
            os.close(fd)
            if bar:
                bar.close()
        ordering = order_records(jsonl, {pt.key: pt.index for pt in sweep.points})
        write_csv(jsonl, out / RESULTS_CSV, sweep.factor_names)
    if aborted is not None:
        raise SweepAborted(f"{aborted}; {ordering.records} of {len(sweep.points)} points are in {jsonl}: "
                           f"rerun the same command to resume") from None
    return SweepSummary(len(sweep.points), len(sweep.points) - len(todo), len(todo), failed,
                        len(done_keys - mine), repaired, time.monotonic() - t_start, used, ordering.duplicates,
                        ordering.rewritten)


def _refuse_analytic_folder(out: Path) -> None:
    """A folder written by ``--analytic`` (its manifest says so) is never resumed by the simulation: its keys
    would count as done."""
    manifest = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    if isinstance(manifest, dict) and manifest.get("method") == "analytic":
        raise ConfigError(f"{out}: holds an --analytic sweep; simulated results go to another --out "
                              f"(or add --analytic to resume it)")


def _run_points(todo: list[Point], fd: int, pool, jobs: int, bar: Progress | None, done: int) -> int:
    """Keep up to ``2 * jobs`` points in flight; write each result as it lands.

    When a point raises (a crashed worker, a bug) or the executor fails, no new point starts, the points already
    running are drained and written, and the first error is raised: every point that finished is on disk for the
    rerun.
    """
    failed = 0
    error: BaseException | None = None
    pending = iter(todo)
    in_flight: dict = {}
    try:
        for pt in itertools.islice(pending, 2 * jobs):
            in_flight[pool.submit(pt.config)] = pt
        while in_flight:
            for fut in pool.wait(in_flight, POLL_S):
                pt = in_flight.pop(fut)
                try:
                    outcome = pool.outcome(fut)
                except NotReady:
                    in_flight[fut] = pt
                    continue
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
                    in_flight[pool.submit(nxt.config)] = nxt
            try:
                pool.check()
            except SweepAborted as e:
                error = error or e
                break
    finally:
        pool.close(in_flight)
    if error is not None:
        raise error
    return failed
