"""Serving in the timeline: prefill steps beside the decode steps, and request-level records and metrics.

``run_simulation`` (``sim.run``) uses the decode-only driver when ``prefill = "none"`` and ``prefill_driver``
here otherwise. Each step of ``prefill_driver``:

* admits arrived requests (as the decode-only driver does); an admitted request has its whole prompt pending;
* ``first`` (prefill-first, vLLM's default scheduler): when prompts are pending, the step prefills all of them,
  whole, and nothing decodes in it; else it is a decode step;
* ``chunked`` (Sarathi-Serve, vLLM chunked prefill): the step carries up to ``prefill_chunk_tokens`` pending
  prompt tokens (admission order; the last chunk cut to fit) beside the decode batch of every prefilled sequence.
  The two run as two processes started together, contending for the GPU kernel by kernel and for the links; the
  step ends when both have. Its closed form is the larger of the two closed forms: a lower bound (the two are not
  fused into one batch of GEMMs here, so each reads the layer's weights: a cost chunked prefill avoids on a real
  engine; docs/design-notes.md, "Prefill").

The prefill of a chunk is the system's ``prefill_plan``/``prefill``/``prefill_estimate`` (``sim.systems.base``).
The step that completes a prompt gives the request its first token; a request of n output tokens then decodes
n - 1 steps. Decode steps go to the run's step statistics and step log as before; prefill steps to
``RequestStats.add_prefill``. Finished requests become ``RequestRecord``s: folded into ``RequestStats`` (streamed
percentiles) and, on request, written to a request log (CSV or JSONL by the file's extension, through a temporary
file that replaces the path when the run ends, as the step log).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from sim.errors import ConfigError
from sim.io import open_atomic
from sim.results import StepRow
from sim.stats import RequestStats
from sim.systems.base import StepBatch
from workloads.traces import REQUEST_LOG_COLUMNS, RequestRecord

REQUEST_LOG_SUFFIXES = (".csv", ".jsonl")


def request_log_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in REQUEST_LOG_SUFFIXES:
        raise ConfigError(f"request log {path}: the file name must end in .csv or .jsonl (the format), "
                          f"got '{suffix or 'no extension'}'")
    return suffix[1:]


def _values(r: RequestRecord) -> tuple:
    return (*r, r.queue_s, r.ttft_s, r.tpot_s, r.e2e_s)


@contextlib.contextmanager
def request_log_writer(path: str | Path | None) -> Iterator[Callable[[RequestRecord], None] | None]:
    """A function that appends a finished request's record to the request log at ``path`` (None: yields None).
    Columns ``workloads.traces.REQUEST_LOG_COLUMNS``; floats as their shortest round-trip repr; a one-token
    request's TPOT is empty (CSV) or null (JSONL)."""
    if path is None:
        yield None
        return
    fmt = request_log_format(path)
    with open_atomic(path, newline="") as f:
        write = f.write
        if fmt == "csv":
            write(",".join(REQUEST_LOG_COLUMNS) + "\n")

            def row(r: RequestRecord) -> None:
                write(",".join("" if v is None else repr(v) for v in _values(r)) + "\n")
        else:
            def row(r: RequestRecord) -> None:
                write(json.dumps(dict(zip(REQUEST_LOG_COLUMNS, _values(r), strict=True)), allow_nan=False) + "\n")
        yield row


def request_fields(reqs: RequestStats, wall_s: float) -> dict:
    """The Result's request-level fields (schema 4) from the run's ``RequestStats``."""
    out = {"requests_completed": reqs.requests, "request_output_tokens": reqs.output_tokens,
           "request_tokens_per_s": reqs.output_tokens / wall_s if wall_s > 0 else 0.0,
           "slo_attainment": reqs.met_slo / reqs.requests if reqs.requests else 0.0,
           "goodput_tokens_per_s": reqs.goodput_tokens / wall_s if wall_s > 0 else 0.0,
           "prefill_steps": reqs.prefill_steps, "prefill_tokens": reqs.prefill_tokens,
           "prefill_time_s": reqs.prefill_s, "prefill_analytic_time_s": reqs.prefill_analytic_s,
           "prefill_analytic_exact": reqs.prefill_exact,
           "prefill_analytic_max_rel_undershoot": reqs.prefill_max_rel_undershoot}
    for name, q in reqs.q.items():
        out[f"{name}_mean_s"] = reqs.mean(name)
        for p in (50, 90, 99):
            out[f"{name}_p{p}_s"] = q.percentile(p)
    return out


def prefill_driver(env, cfg, system, model, batcher, tracer, log, reqs: RequestStats, sinks, token_budget,
                   stepper=None):
    """The driver process with prefill in the timeline (module docstring); ``log``: the run's ``RunLog`` of
    decode steps, ``sinks``: functions taking each decode step's ``StepRow``; ``stepper``: the run's
    ``sim.fastpath.Stepper``, which plans decode batches once per distinct batch and replays the identical layers
    of a decode step that runs alone; a step with a prefill chunk is made without events where the stepper can
    (``Stepper.prefill_step``, ``Stepper.contended_step``), else both processes run. None: every step is planned
    and simulated in full."""
    chunk_budget = cfg.prefill_chunk_tokens if cfg.prefill == "chunked" else None
    step_cap = cfg.steps if cfg.uses_requests else None
    step = traced = 0
    ends: dict[str, float] = {}

    def timed(name, gen):
        yield from gen
        ends[name] = env.now

    while not batcher.done and (step_cap is None or step < step_cap):
        batcher.admit(env.now, token_budget)
        chunks = batcher.prefill_chunks(chunk_budget)
        contexts = batcher.decode_contexts(decode=not (cfg.prefill == "first" and chunks))
        if contexts.size == 0 and not chunks:
            yield env.timeout(batcher.next_arrival_s() - env.now)
            continue
        tracer.step = traced
        t0 = env.now
        batcher.begin_step(t0, chunks)
        procs = []
        entry = None
        if contexts.size:
            batch = StepBatch.from_contexts(model, contexts)
            entry = stepper.entry(batch) if stepper is not None else None
            plan = entry.plan if entry is not None else system.plan(batch)
        if chunks:
            resident = StepBatch.from_contexts(model, batcher.contexts())
            pplan = (stepper.prefill_plan(chunks, resident) if stepper is not None
                     else system.prefill_plan(chunks, resident))
            made = None
            if stepper is not None:
                made = stepper.prefill_step(pplan, entry) or stepper.contended_step(pplan, entry)
            if made is not None:  # made without events, as the two processes would run
                ends["prefill"], end = made
                yield env.timeout(end - env.now)
            else:
                procs.append(env.process(timed("prefill", system.prefill(pplan))))
                if contexts.size:
                    procs.append(env.process(system.step(plan)))
                yield env.all_of(procs)
        elif entry is not None:  # a decode step alone: cached plan, identical layers replayed
            yield from stepper.run(entry)
        else:
            yield env.process(system.step(plan))
        latency = float(env.now - t0)
        pest = None
        if chunks:
            pest = system.prefill_estimate(pplan)
            reqs.add_prefill(pplan.tokens, float(ends["prefill"] - t0), float(pest.latency_s), pest.exact)
        if contexts.size:
            est = entry.estimate if entry is not None else system.estimate(plan)
            analytic, exact = float(est.latency_s), bool(est.exact)
            if pest is not None:  # two processes side by side: each closed form bounds the step
                analytic, exact = max(analytic, float(pest.latency_s)), False
            log.add(batch, latency, analytic, exact)
            if sinks:
                row = StepRow(step, float(t0), latency, analytic, exact, batch.n_seqs, batch.kv_tokens)
                for sink in sinks:
                    sink(row)
            step += 1
        batcher.end_step(env.now, chunks)
        traced += 1

