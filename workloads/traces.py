"""Decode traces: which sequences are in the batch at every decode step, and their context lengths.

Everything is a request list run through a continuous batcher: a request (arrival time, prompt tokens, output
tokens) joins the batch when it has arrived and a slot is free, decodes one token per step, and leaves after its
output tokens. A fixed "batch x context x steps" workload is the special case of ``batch`` requests arriving at
time 0 with ``context`` prompt tokens and ``steps`` output tokens. The batcher advances in simulated time (the
simulator asks it for the next batch at each step start), so arrivals interact with step latency as they would
in a serving system. Cost per step is O(batch), never O(tokens). Prefill is not modelled: an admitted request's
prompt K/V are taken to be in place.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.errors import WorkloadError

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class Request:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    def check(self, where: str) -> None:
        if not (self.arrival_s >= 0):
            raise WorkloadError(f"{where}: arrival_s must be >= 0, got {self.arrival_s}")
        if self.prompt_tokens <= 0:
            raise WorkloadError(f"{where}: prompt_tokens must be positive, got {self.prompt_tokens}")
        if self.output_tokens <= 0:
            raise WorkloadError(f"{where}: output_tokens must be positive, got {self.output_tokens}")


def fixed_requests(batch: int, context: int, steps: int) -> list[Request]:
    """``batch`` sequences that all start decoding at t=0 with ``context`` tokens of KV and run ``steps`` steps."""
    for name, v in (("batch", batch), ("context", context), ("steps", steps)):
        if not isinstance(v, int) or v <= 0:
            raise WorkloadError(f"{name} must be a positive integer, got {v!r}")
    return [Request(0.0, context, steps) for _ in range(batch)]


def synthetic_requests(n: int, prompt_tokens: int, output_tokens: int, arrival_rate_per_s: float,
                       rng: np.random.Generator) -> list[Request]:
    """``n`` requests with Poisson arrivals at ``arrival_rate_per_s`` (0: all at t=0) and fixed lengths."""
    if n <= 0:
        raise WorkloadError(f"requests must be a positive integer, got {n}")
    if arrival_rate_per_s < 0:
        raise WorkloadError(f"arrival_rate_per_s must be >= 0, got {arrival_rate_per_s}")
    arrivals = (np.cumsum(rng.exponential(1.0 / arrival_rate_per_s, size=n)) if arrival_rate_per_s > 0
                else np.zeros(n))
    reqs = [Request(float(a), prompt_tokens, output_tokens) for a in arrivals]
    for i, r in enumerate(reqs):
        r.check(f"synthetic request {i}")
    return reqs


MAX_TOKENS = 2**30          # prompt or output tokens of one request
MAX_ARRIVAL_S = 1e9         # about 32 years of trace
MAX_REQUESTS = 10**7        # rows of a trace file


def _count(v, name: str, where: str) -> int:
    """A token count: a whole number from 1 to MAX_TOKENS (CSV text or a JSON integer; not 1024.9 or true)."""
    if isinstance(v, str):
        text = v.strip()
        if not text.lstrip("+").isdigit():
            raise WorkloadError(f"{where}: {name} must be a whole number, got {v!r}")
        v = int(text)
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TOKENS:
        raise WorkloadError(f"{where}: {name} must be a whole number from 1 to {MAX_TOKENS}, got {v!r}")
    return v


def _seconds(v, name: str, where: str) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise WorkloadError(f"{where}: {name} must be a number of seconds, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= MAX_ARRIVAL_S:
        raise WorkloadError(f"{where}: {name} must be a number of seconds from 0 to {MAX_ARRIVAL_S:g}, got {v!r}")
    return float(v)


def _parse_row(row: dict, where: str) -> Request:
    missing = [c for c in TRACE_COLUMNS if row.get(c) is None]
    if missing:
        raise WorkloadError(f"{where}: missing {', '.join(missing)}; each request needs {', '.join(TRACE_COLUMNS)}")
    return Request(_seconds(row["arrival_s"], "arrival_s", where), _count(row["prompt_tokens"], "prompt_tokens", where),
                   _count(row["output_tokens"], "output_tokens", where))


def load_requests(path: str | Path) -> list[Request]:
    """Read requests from CSV (header row with the three columns) or JSONL (one object per line)."""
    p = Path(path)
    if not p.exists():
        raise WorkloadError(f"trace file not found: {p}")
    if p.suffix.lower() not in (".csv", ".jsonl"):
        raise WorkloadError(f"{p}: trace files must end in .csv or .jsonl")
    reqs: list[Request] = []
    try:
        with open(p, encoding="utf-8", newline="") as f:
            if p.suffix.lower() == ".jsonl":
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line, parse_constant=_no_constant)
                    except json.JSONDecodeError as e:
                        raise WorkloadError(f"{p}:{lineno}: malformed JSON: {e.msg}") from None
                    except ValueError as e:
                        raise WorkloadError(f"{p}:{lineno}: malformed JSON: {e}") from None
                    if not isinstance(row, dict):
                        raise WorkloadError(f"{p}:{lineno}: expected a JSON object")
                    reqs.append(_parse_row(row, f"{p}:{lineno}"))
                    if len(reqs) > MAX_REQUESTS:
                        raise WorkloadError(f"{p}: more than {MAX_REQUESTS} requests")
            else:
                reader = csv.DictReader(f)
                missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise WorkloadError(f"{p}:1: header lacks column(s) {', '.join(missing)}; "
                                        f"expected {', '.join(TRACE_COLUMNS)}")
                for row in reader:
                    where = f"{p}:{reader.line_num}"
                    if None in row:
                        raise WorkloadError(f"{where}: more fields than the header's {len(reader.fieldnames)}")
                    if any(v is None for v in row.values()):
                        raise WorkloadError(f"{where}: fewer fields than the header's {len(reader.fieldnames)}")
                    reqs.append(_parse_row(row, where))
                    if len(reqs) > MAX_REQUESTS:
                        raise WorkloadError(f"{p}: more than {MAX_REQUESTS} requests")
    except UnicodeDecodeError:
        raise WorkloadError(f"{p}: not a text file (not UTF-8)") from None
    except csv.Error as e:
        raise WorkloadError(f"{p}: malformed CSV: {e}") from None
    except OSError as e:
        raise WorkloadError(f"{p}: cannot read: {e.strerror or e}") from None
    if not reqs:
        raise WorkloadError(f"{p}: no requests in the trace")
    return reqs


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class ContinuousBatcher:
    """Admits arrived requests up to ``max_batch`` and advances every active sequence by one token per step."""

    def __init__(self, requests: list[Request], max_batch: int):
        if max_batch <= 0:
            raise WorkloadError(f"max_batch must be positive, got {max_batch}")
        self._pending = sorted(requests, key=lambda r: r.arrival_s)  # stable: file order breaks ties
        self._next = 0
        self.max_batch = max_batch
        self._context = np.zeros(0, dtype=np.int64)
        self._left = np.zeros(0, dtype=np.int64)
        self._reserved = np.zeros(0, dtype=np.int64)  # prompt + output tokens: the KV a sequence will reach

    @property
    def done(self) -> bool:
        return self._next >= len(self._pending) and self._context.size == 0

    def next_arrival_s(self) -> float | None:
        return self._pending[self._next].arrival_s if self._next < len(self._pending) else None

    def admit(self, now_s: float, token_budget: int | None = None) -> None:
        """Admit arrived requests in order while a slot is free.

        With ``token_budget``, a request is admitted only if the KV tokens every active sequence will reach
        (prompt + output) stay within it; when nothing is active one request is admitted regardless, so that a
        single oversized request still runs (its caller reports that it does not fit).
        """
        free = self.max_batch - self._context.size
        reserved = int(self._reserved.sum())
        new_ctx, new_left = [], []
        while free > 0 and self._next < len(self._pending) and self._pending[self._next].arrival_s <= now_s:
            r = self._pending[self._next]
            need = r.prompt_tokens + r.output_tokens
            if token_budget is not None and reserved + need > token_budget and (reserved or new_ctx):
                break
            new_ctx.append(r.prompt_tokens)
            new_left.append(r.output_tokens)
            reserved += need
            self._next += 1
            free -= 1
        if new_ctx:
            self._context = np.concatenate([self._context, np.asarray(new_ctx, dtype=np.int64)])
            self._left = np.concatenate([self._left, np.asarray(new_left, dtype=np.int64)])
            self._reserved = np.concatenate([self._reserved, np.asarray(new_ctx, dtype=np.int64)
                                             + np.asarray(new_left, dtype=np.int64)])

    def contexts(self) -> np.ndarray:
        """Context length (tokens of KV attended) of each active sequence at this step."""
        return self._context.copy()

    def advance(self) -> int:
        """Finish one decode step: every active sequence gains a token; finished ones leave. Returns how many left."""
        self._context += 1
        self._left -= 1
        keep = self._left > 0
        finished = int((~keep).sum())
        self._context, self._left, self._reserved = self._context[keep], self._left[keep], self._reserved[keep]
        return finished
