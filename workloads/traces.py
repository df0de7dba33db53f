"""Decode traces: which sequences are in the batch at every decode step, and their context lengths.

Everything is a request list run through a continuous batcher: a request (arrival time, prompt tokens, output
tokens) joins the batch when it has arrived and a slot is free, decodes one token per step, and leaves after its
output tokens. A fixed "batch x context x steps" workload is the special case of ``batch`` requests arriving at
time 0 with ``context`` prompt tokens and ``steps`` output tokens. The batcher advances in simulated time (the
simulator asks it for the next batch at each step start), so arrivals interact with step latency as they would
in a serving system. Cost per step is O(batch), never O(tokens).

Without prefill (``prefill=False``) an admitted request's prompt K/V are taken to be in place and it decodes from
its first step; its first output token comes at the end of that step. With prefill, an admitted request first
has ``pending`` prompt tokens to prefill (``prefill_chunks`` hands them out, whole or by a token budget); the step
that prefills its last prompt tokens also yields its first output token (as vLLM and Sarathi-Serve count it), and
it decodes its other ``output_tokens - 1`` tokens in later steps. Each finished request becomes a
``RequestRecord`` (arrival, start of its first step, first token, finish), handed to ``on_finish``.

Requests come from ``workloads.trace_formats`` (files: the project's CSV/JSONL, the Azure LLM inference trace,
BurstGPT) or ``workloads.arrivals`` (a lazy synthetic stream); the batcher takes a list or such a stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

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


def fixed_waves(batch: int, context: int, steps: int, max_batch: int,
                token_budget: int | None = None) -> Iterator[tuple[int, int]]:
    """What ``ContinuousBatcher`` does with ``fixed_requests(batch, context, steps)``, in closed form: per decode
    step, (sequences, context of each). Identical requests, all there at t=0, are admitted in waves of
    ``min(max_batch, token_budget // (context + steps))`` (at least one) that finish together after ``steps``
    steps, when the next wave is admitted."""
    if max_batch <= 0:
        raise WorkloadError(f"max_batch must be positive, got {max_batch}")
    per_wave = max_batch if token_budget is None else max(1, min(max_batch, token_budget // (context + steps)))
    left = batch
    while left > 0:
        n = min(per_wave, left)
        for s in range(steps):
            yield n, context + s
        left -= n


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


class RequestRecord(NamedTuple):
    """One finished request (seconds of simulated time; docs/metrics.md, "Requests"). ``start_s``: the start of
    the first step that worked on it (its prefill, or without prefill its first decode step)."""

    request: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    start_s: float
    first_token_s: float
    finish_s: float

    @property
    def queue_s(self) -> float:
        return self.start_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time between output tokens after the first; None for a one-token request."""
        if self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


REQUEST_LOG_COLUMNS = RequestRecord._fields + ("queue_s", "ttft_s", "tpot_s", "e2e_s")


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """Prompt tokens of one active sequence prefilled in a step: ``past`` already prefilled, ``new`` now, of a
    ``prompt`` of that many tokens (``past + new == prompt``: the chunk completes the prompt)."""

    index: int
    past: int
    new: int
    prompt: int

    @property
    def completes(self) -> bool:
        return self.past + self.new == self.prompt


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class ContinuousBatcher:
    """Admits arrived requests up to ``max_batch`` and advances every active sequence by one token per step.

    ``requests``: a list (or tuple), sorted here by arrival (stable: file order breaks ties), or any other
    iterable, read lazily one request ahead, which must then come in arrival order (a generator from
    ``workloads.arrivals``): memory then does not grow with the number of requests. ``max_prompt_tokens``,
    ``max_request_tokens`` (prompt + output) and ``first_arrival_s`` describe the requests read so far: all of a
    list, the admitted ones and the next of a lazy stream."""

    def __init__(self, requests: Iterable[Request], max_batch: int, prefill: bool = False,
                 on_finish: Callable[[RequestRecord], None] | None = None):
        if max_batch <= 0:
            raise WorkloadError(f"max_batch must be positive, got {max_batch}")
        self.max_batch = max_batch
        self.max_prompt_tokens = 0
        self.max_request_tokens = 0
        self.first_arrival_s: float | None = None
        self.requests_read = 0
        if isinstance(requests, list | tuple):
            ordered = sorted(requests, key=lambda r: r.arrival_s)
            for r in ordered:
                self._note(r)
            self._source: Iterator[Request] = iter(ordered)
            self._lazy = False
        else:
            self._source = iter(requests)
            self._lazy = True
        self._head: Request | None = None
        self._pull()
        self._context = np.zeros(0, dtype=np.int64)
        self._left = np.zeros(0, dtype=np.int64)
        self._reserved = np.zeros(0, dtype=np.int64)  # prompt + output tokens: the KV a sequence will reach
        # Per active sequence, for request records: id, arrival, output tokens, start, first token (nan: not yet),
        # prompt tokens still to prefill, and whether it decodes in the current step.
        self.prefill = prefill
        self.on_finish = on_finish
        self.admitted = 0
        self._id = np.zeros(0, dtype=np.int64)
        self._arrival = np.zeros(0)
        self._output = np.zeros(0, dtype=np.int64)
        self._start = np.zeros(0)
        self._first = np.zeros(0)
        self._awaiting_first = False
        self._pending = np.zeros(0, dtype=np.int64)
        self._decoding = np.zeros(0, dtype=bool)
        self._decoding_all = False
        # With prefill, per active sequence whether it decodes when a step decodes (its prompt prefilled), and the
        # sequences with prompt tokens left: both change only when a sequence comes, leaves or completes a prompt.
        self._ready: np.ndarray | None = None
        self._ready_all = False
        self._pending_idx: np.ndarray | None = None

    def _note(self, r: Request) -> None:
        self.requests_read += 1
        self.max_prompt_tokens = max(self.max_prompt_tokens, r.prompt_tokens)
        self.max_request_tokens = max(self.max_request_tokens, r.prompt_tokens + r.output_tokens)
        if self.first_arrival_s is None or r.arrival_s < self.first_arrival_s:
            self.first_arrival_s = r.arrival_s

    def _pull(self) -> None:
        """The next request into ``_head`` (None when the source is exhausted)."""
        prev = self._head
        self._head = next(self._source, None)
        if self._lazy and self._head is not None:
            if prev is not None and self._head.arrival_s < prev.arrival_s:
                raise WorkloadError(f"request stream out of arrival order: {self._head.arrival_s} s after "
                                    f"{prev.arrival_s} s")
            self._note(self._head)

    @property
    def done(self) -> bool:
        return self._head is None and self._context.size == 0

    def next_arrival_s(self) -> float | None:
        return self._head.arrival_s if self._head is not None else None

    def admit(self, now_s: float, token_budget: int | None = None) -> None:
        """Admit arrived requests in order while a slot is free.

        With ``token_budget``, a request is admitted only if the KV tokens every active sequence will reach
        (prompt + output) stay within it; when nothing is active one request is admitted regardless, so that a
        single oversized request still runs (its caller reports that it does not fit).
        """
        free = self.max_batch - self._context.size
        if free <= 0 or self._head is None or self._head.arrival_s > now_s:  # the common case: nothing to admit
            return
        reserved = int(self._reserved.sum())
        new_ctx, new_left, new_arrival = [], [], []
        while free > 0 and self._head is not None and self._head.arrival_s <= now_s:
            r = self._head
            need = r.prompt_tokens + r.output_tokens
            if token_budget is not None and reserved + need > token_budget and (reserved or new_ctx):
                break
            new_ctx.append(r.prompt_tokens)
            new_left.append(r.output_tokens)
            new_arrival.append(r.arrival_s)
            reserved += need
            self._pull()
            free -= 1
        if new_ctx:
            self._context = np.concatenate([self._context, np.asarray(new_ctx, dtype=np.int64)])
            self._left = np.concatenate([self._left, np.asarray(new_left, dtype=np.int64)])
            self._reserved = np.concatenate([self._reserved, np.asarray(new_ctx, dtype=np.int64)
                                             + np.asarray(new_left, dtype=np.int64)])
            n = len(new_ctx)
            self._id = np.concatenate([self._id, np.arange(self.admitted, self.admitted + n, dtype=np.int64)])
            self.admitted += n
            self._arrival = np.concatenate([self._arrival, np.asarray(new_arrival, dtype=float)])
            self._output = np.concatenate([self._output, np.asarray(new_left, dtype=np.int64)])
            # without prefill, a request admitted now decodes in the step that starts now
            self._start = np.concatenate([self._start, np.full(n, np.nan if self.prefill else now_s)])
            self._first = np.concatenate([self._first, np.full(n, np.nan)])
            self._awaiting_first = True
            self._pending = np.concatenate([self._pending, np.asarray(new_ctx, dtype=np.int64) if self.prefill
                                            else np.zeros(n, dtype=np.int64)])
            self._decoding = np.concatenate([self._decoding, np.zeros(n, dtype=bool)])
            self._ready = self._pending_idx = None

    def contexts(self) -> np.ndarray:
        """Context length (tokens of KV attended) of each active sequence at this step."""
        return self._context.copy()

    def advance(self, now_s: float = 0.0) -> int:
        """Finish one decode step at ``now_s`` (without prefill): every active sequence gains a token; finished
        ones leave. Returns how many left."""
        self._context += 1
        self._left -= 1
        if self._awaiting_first:  # some sequence has no first token yet (admitted since the last step)
            self._first = np.where(np.isnan(self._first), now_s, self._first)
            self._awaiting_first = False
            self._ready = None
        return self._retire(now_s)

    def _retire(self, now_s: float) -> int:
        left = self._left
        if not left.size or left.min() > 0:  # the common case: nobody leaves
            return 0
        keep = left > 0
        finished = int((~keep).sum())
        if finished and self.on_finish is not None:
            for k in np.flatnonzero(~keep):
                self.on_finish(RequestRecord(int(self._id[k]), float(self._arrival[k]),
                                             int(self._reserved[k] - self._output[k]), int(self._output[k]),
                                             float(self._start[k]), float(self._first[k]), float(now_s)))
        if finished:
            self._context, self._left, self._reserved = self._context[keep], self._left[keep], self._reserved[keep]
            self._id, self._arrival, self._output = self._id[keep], self._arrival[keep], self._output[keep]
            self._start, self._first = self._start[keep], self._first[keep]
            self._pending, self._decoding = self._pending[keep], self._decoding[keep]
            self._ready = self._pending_idx = None
        return finished

    # ---- with prefill ------------------------------------------------------------------------------------------
    def prefill_chunks(self, token_budget: int | None) -> list[PrefillChunk]:
        """The prompt tokens to prefill in the next step, in admission order: every pending prompt whole
        (``token_budget`` None), or up to ``token_budget`` tokens, the last sequence's chunk cut to fit."""
        out = []
        left = token_budget
        if self._pending_idx is None:
            self._pending_idx = np.flatnonzero(self._pending > 0)
        for k in self._pending_idx:
            pending = int(self._pending[k])
            new = pending if left is None else min(pending, left)
            if new <= 0:
                break
            prompt = int(self._context[k])
            out.append(PrefillChunk(int(k), prompt - pending, new, prompt))
            if left is not None:
                left -= new
        return out

    def decode_contexts(self, decode: bool = True) -> np.ndarray:
        """Contexts of the sequences whose prompt is prefilled (they decode in the step about to start; the step
        is the one ``end_step`` finishes); ``decode=False``: none decode in it (a prefill-first step)."""
        if self._ready is None:
            self._ready = (self._pending == 0) & ~np.isnan(self._first)
            self._ready_all = bool(self._ready.all())
        if not decode:
            self._decoding, self._decoding_all = np.zeros(self._context.size, dtype=bool), False
            return self._context[self._decoding]
        self._decoding, self._decoding_all = self._ready, self._ready_all
        return self._context.copy() if self._ready_all else self._context[self._ready]

    def begin_step(self, now_s: float, chunks: list[PrefillChunk]) -> None:
        """A step starts at ``now_s`` with ``chunks``: the first step of a sequence is its start."""
        for c in chunks:
            if np.isnan(self._start[c.index]):
                self._start[c.index] = now_s

    def end_step(self, now_s: float, chunks: list[PrefillChunk]) -> int:
        """Finish a step at ``now_s``: the sequences that decoded in it (``decode_contexts``) gain a token; the
        chunks are prefilled, and a completed prompt gives its first token. Finished requests leave; returns how
        many."""
        d = self._decoding
        if self._decoding_all:  # every sequence decoded (the common step)
            self._context += 1
            self._left -= 1
        else:
            self._context[d] += 1
            self._left[d] -= 1
        if chunks:
            self._ready = self._pending_idx = None
        for c in chunks:
            self._pending[c.index] -= c.new
            if self._pending[c.index] == 0:
                self._first[c.index] = now_s
                self._left[c.index] -= 1
        self._decoding, self._decoding_all = np.zeros(self._context.size, dtype=bool), False
        return self._retire(now_s)
