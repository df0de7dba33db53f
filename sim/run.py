"""One simulation: a RunConfig in, a Result out.

The driver process admits requests, forms each step's batch, asks the system for the step's plan (the pure cost
functions, evaluated once), runs the system's step process on it, and records the step's latency next to the
plan's closed-form estimate. The simulation's event count grows with steps x layers (x channels for PIM
systems), not with context length or bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from hw_models.machine import MachineParams, load_machine
from hw_models.pim import PimDeviceParams
from sim.config import DEFAULT_STEPS, RunConfig
from sim.engine import Span, Tracer
from sim.machine import Machine
from sim.results import Result
from sim.systems import SYSTEMS
from sim.systems.base import Capacity, StepBatch, System
from sim.topology import Topology
from workloads.models import ModelSpec, load_model
from workloads.traces import ContinuousBatcher, fixed_requests, load_requests, synthetic_requests


def build_requests(cfg: RunConfig, rng: np.random.Generator):
    if cfg.trace is not None:
        return load_requests(cfg.trace)
    if cfg.requests is not None:
        return synthetic_requests(cfg.requests, cfg.context, cfg.output_tokens, cfg.arrival_rate_per_s, rng)
    return fixed_requests(cfg.batch, cfg.context, cfg.steps or DEFAULT_STEPS)


def _percentile_weighted(values: list[float], weights: list[int], q: float) -> float:
    """Percentile of per-token latencies: each step's latency counts once per sequence in that step."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values)[order]
    w = np.asarray(weights, dtype=float)[order]
    cum = np.cumsum(w)
    idx = int(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"))
    return float(v[min(idx, len(v) - 1)])


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one decode step did: its simulated and closed-form latency and the batch it served."""

    latency_s: float
    analytic_s: float
    exact: bool
    n_seqs: int
    kv_tokens: int


@dataclass
class RunLog:
    """The steps of one run, and the largest batch (by KV tokens) for the capacity report."""

    steps: list[StepRecord] = field(default_factory=list)
    peak: StepBatch | None = None

    def add(self, batch: StepBatch, record: StepRecord) -> None:
        if self.peak is None or batch.kv_tokens > self.peak.kv_tokens:
            self.peak = batch
        self.steps.append(record)


@dataclass(frozen=True)
class Run:
    """A finished simulation: its Result, the traced spans, and what it ran on."""

    result: Result
    spans: list[Span]
    topology: Topology
    model: ModelSpec


def simulate(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
             pim: PimDeviceParams | None = None) -> Result:
    return run_simulation(cfg, params, model, pim).result


def simulate_traced(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
                    pim: PimDeviceParams | None = None) -> tuple[Result, list[Span]]:
    """Run one simulation; also return the spans of the first ``cfg.trace_steps`` steps."""
    run = run_simulation(cfg, params, model, pim)
    return run.result, run.spans


def run_simulation(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
                   pim: PimDeviceParams | None = None) -> Run:
    """Simulate ``cfg``. ``params``, ``model`` and ``pim`` replace what the configuration names (for studies
    that vary parameters no preset has)."""
    model = model or load_model(cfg.model)
    params = params or load_machine(cfg.hardware)
    system_cls = SYSTEMS[cfg.system]
    devices = system_cls.devices(cfg.options, pim)
    rng = np.random.default_rng(cfg.seed)
    requests = build_requests(cfg, rng)
    warnings = []
    longest = max(r.prompt_tokens + r.output_tokens for r in requests)
    if longest > model.max_context:
        warnings.append(f"context up to {longest} tokens exceeds {model.name}'s max_position_embeddings "
                        f"({model.max_context}); simulated anyway")

    env = simpy.Environment()
    tracer = Tracer(keep_steps=cfg.trace_steps)
    topology = Topology(params, devices.pim)
    machine = Machine(env, topology, tracer, pim_trace_lanes=devices.pim_trace_lanes)
    system = system_cls(machine, model, cfg.options)
    token_budget = system.token_budget(cfg.effective_max_batch)
    batcher = ContinuousBatcher(requests, cfg.effective_max_batch)
    step_cap = cfg.steps if cfg.uses_requests else None
    log = RunLog()

    def driver():
        step = 0
        while not batcher.done and (step_cap is None or step < step_cap):
            batcher.admit(env.now, token_budget)
            contexts = batcher.contexts()
            if contexts.size == 0:
                yield env.timeout(batcher.next_arrival_s() - env.now)
                continue
            batch = StepBatch.from_contexts(model, contexts)
            plan = system.plan(batch)
            tracer.step = step
            t0 = env.now
            yield env.process(system.step(plan))
            est = system.estimate(plan)
            log.add(batch, StepRecord(env.now - t0, est.latency_s, est.exact, batch.n_seqs, batch.kv_tokens))
            batcher.advance()
            step += 1

    env.process(driver())
    env.run()
    context = max(r.prompt_tokens for r in requests)
    result = _result(cfg, params, model, system, tracer, topology, env.now, log, warnings, context)
    return Run(result, tracer.spans, topology, model)


def _capacity(system: System, model: ModelSpec, peak: StepBatch | None) -> Capacity | None:
    if peak is None:
        return None
    # Peak KV: the whole cache of the largest step's batch, grown by the step's new token.
    return system.capacity(float((peak.kv_tokens + peak.n_seqs) * model.kv_bytes_per_token), peak)


def _result(cfg: RunConfig, params: MachineParams, model: ModelSpec, system: System, tracer: Tracer,
            topology: Topology, end_s: float, log: RunLog, warnings: list[str], context: int) -> Result:
    lat = [s.latency_s for s in log.steps]
    nseq = [s.n_seqs for s in log.steps]
    analytic = [s.analytic_s for s in log.steps]
    tokens = int(sum(nseq))
    decode_s = float(sum(lat))
    cap = _capacity(system, model, log.peak)
    if cap and not cap.fits:
        warnings.append("does not fit: " + "; ".join(cap.reasons))
    compute_s = tracer.compute_busy_s()
    exposed_comm_s = tracer.exposed_comm_s()
    exposed_link_s = tracer.exposed_link_s()
    energy = tracer.energy_j()
    busy = tracer.busy_s()
    link_names = {link.name for link in topology.links if link.resource}
    links = {c: b for c, b in tracer.bytes_by_component().items() if c in link_names}
    provenance = {"model": model.origin, "hardware": params.origin}
    if topology.pim is not None:
        provenance.update(pim=topology.pim.origin, dram_timing=topology.pim.channel.timing.origin)
    return Result(
        system=cfg.system, model=model.name, hardware=params.name, batch=cfg.effective_max_batch,
        context=context, steps=len(lat), seed=cfg.seed,
        step_latency_s=lat, step_batch=nseq, step_kv_tokens=[s.kv_tokens for s in log.steps],
        mean_step_latency_s=decode_s / len(lat) if lat else 0.0,
        total_time_s=end_s, tokens=tokens, tokens_per_s=tokens / decode_s if decode_s > 0 else 0.0,
        ttnt_p50_s=_percentile_weighted(lat, nseq, 50) if lat else 0.0,
        ttnt_p90_s=_percentile_weighted(lat, nseq, 90) if lat else 0.0,
        ttnt_p99_s=_percentile_weighted(lat, nseq, 99) if lat else 0.0,
        busy_s=busy, busy_by_kind_s=dict(sorted(tracer.kind_busy_s.items())),
        breakdown_s={"compute": compute_s, "exposed_comm": exposed_comm_s, "exposed_link": exposed_link_s,
                     "idle": max(0.0, decode_s - compute_s - exposed_comm_s - exposed_link_s)},
        comm_share=exposed_comm_s / decode_s if decode_s > 0 else 0.0,
        bytes_by_link=links, energy_j=energy,
        energy_per_token_j=sum(energy.values()) / tokens if tokens else 0.0,
        kv_bytes=cap.kv_bytes if cap else 0.0, kv_location=cap.kv_location if cap else "", fits=bool(cap and cap.fits),
        fit_reasons=list(cap.reasons) if cap else ["no decode step ran"],
        analytic_step_latency_s=analytic,
        analytic_mean_step_latency_s=float(np.mean(analytic)) if lat else 0.0,
        analytic_exact=all(s.exact for s in log.steps), warnings=warnings, config=cfg.to_dict(),
        details=dict(cap.details) if cap else {}, option_defaults=type(cfg.options).defaults(),
        provenance=provenance)
