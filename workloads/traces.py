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


def _parse_row(row: dict, where: str) -> Request:
    try:
        req = Request(float(row["arrival_s"]), int(row["prompt_tokens"]), int(row["output_tokens"]))
    except KeyError as e:
        raise WorkloadError(f"{where}: missing field {e.args[0]!r}; each request needs {', '.join(TRACE_COLUMNS)}") from None
    except (TypeError, ValueError) as e:
        raise WorkloadError(f"{where}: bad value ({e})") from None
    req.check(where)
    return req


def load_requests(path: str | Path) -> list[Request]:
    """Read requests from CSV (header row with the three columns) or JSONL (one object per line)."""
    p = Path(path)
    if not p.exists():
        raise WorkloadError(f"trace file not found: {p}")
    reqs: list[Request] = []
    try:
        with open(p, encoding="utf-8", newline="") as f:
            if p.suffix.lower() == ".jsonl":
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise WorkloadError(f"{p}:{lineno}: malformed JSON: {e.msg}") from None
                    if not isinstance(row, dict):
                        raise WorkloadError(f"{p}:{lineno}: expected a JSON object")
                    reqs.append(_parse_row(row, f"{p}:{lineno}"))
            elif p.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise WorkloadError(f"{p}:1: header lacks column(s) {', '.join(missing)}; "
                                        f"expected {', '.join(TRACE_COLUMNS)}")
                for row in reader:
                    reqs.append(_parse_row(row, f"{p}:{reader.line_num}"))
            else:
                raise WorkloadError(f"{p}: trace files must end in .csv or .jsonl")
    except UnicodeDecodeError:
        raise WorkloadError(f"{p}: not a text file") from None
    if not reqs:
        raise WorkloadError(f"{p}: no requests in the trace")
    return reqs


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
