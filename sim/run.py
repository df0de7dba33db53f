"""One simulation: a RunConfig in, a Result out.

The driver process admits requests, forms each step's batch, runs the system's step process, and records the
step's latency next to its closed-form estimate. The simulation's event count grows with steps x layers (x
channels for PIM systems), not with context length or bytes.
"""

from __future__ import annotations

import numpy as np
import simpy

from hw_models.machine import MachineParams, load_machine
from hw_models.params import override
from hw_models.pim import PimDeviceParams, load_pim
from sim.analytic import ESTIMATORS
from sim.config import DEFAULT_STEPS, RunConfig
from sim.engine import Tracer
from sim.machine import Machine
from sim.result import Result
from sim.systems import SYSTEMS
from sim.systems.base import StepBatch
from sim.topology import Topology
from workloads.models import ModelSpec, load_model
from workloads.traces import ContinuousBatcher, fixed_requests, load_requests, synthetic_requests

COMM_COMPONENT_PREFIXES = ("pcie", "pim.link")


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


def load_pim_for(cfg: RunConfig) -> PimDeviceParams:
    dev = load_pim(cfg.pim)
    return override(dev, channels=cfg.channels) if cfg.channels is not None else dev


def simulate(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
             pim: PimDeviceParams | None = None) -> Result:
    return simulate_traced(cfg, params, model, pim)[0]


def simulate_traced(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
                    pim: PimDeviceParams | None = None) -> tuple[Result, list]:
    """Run one simulation; also return the spans of the first ``cfg.trace_steps`` steps."""
    model = model or load_model(cfg.model)
    params = params or load_machine(cfg.hardware)
    system_cls = SYSTEMS[cfg.system]
    if getattr(system_cls, "needs_pim", False):
        pim = pim or load_pim_for(cfg)
    else:
        pim = None
    rng = np.random.default_rng(cfg.seed)
    requests = build_requests(cfg, rng)
    warnings = []
    longest = max(r.prompt_tokens + r.output_tokens for r in requests)
    if longest > model.max_context:
        warnings.append(f"context up to {longest} tokens exceeds {model.name}'s max_position_embeddings "
                        f"({model.max_context}); simulated anyway")

    env = simpy.Environment()
    tracer = Tracer(keep_steps=cfg.trace_steps)
    machine = Machine(env, params, tracer, pim, trace_channels=cfg.trace_channels)
    system = system_cls(machine, model, cfg)
    estimator = ESTIMATORS[cfg.system]
    topology = Topology(params, pim)
    token_budget = getattr(system, "token_budget", lambda: None)()
    batcher = ContinuousBatcher(requests, cfg.effective_max_batch)
    step_cap = cfg.steps if cfg.uses_requests else None
    log = {"latency": [], "batch": [], "kv_tokens": [], "analytic": [], "exact": True, "peak": None}

    def driver():
        step = 0
        while not batcher.done and (step_cap is None or step < step_cap):
            batcher.admit(env.now, token_budget)
            contexts = batcher.contexts()
            if contexts.size == 0:
                yield env.timeout(batcher.next_arrival_s() - env.now)
                continue
            batch = StepBatch.from_contexts(model, contexts)
            if log["peak"] is None or batch.kv_tokens > log["peak"].kv_tokens:
                log["peak"] = batch
            tracer.step = step
            t0 = env.now
            yield env.process(system.step(batch))
            est = estimator(system, batch, topology)
            log["latency"].append(env.now - t0)
            log["batch"].append(batch.n_seqs)
            log["kv_tokens"].append(batch.kv_tokens)
            log["analytic"].append(est.latency_s)
            log["exact"] &= est.exact
            batcher.advance()
            step += 1

    env.process(driver())
    env.run()
    context = max(r.prompt_tokens for r in requests)
    return _result(cfg, params, model, pim, system, tracer, env.now, log, warnings, context), tracer.spans


def _result(cfg, params, model, pim, system, tracer, end_s, log, warnings, context) -> Result:
    lat, nseq = log["latency"], log["batch"]
    tokens = int(sum(nseq))
    decode_s = float(sum(lat))
    # Peak KV: the whole cache of the largest step's batch, grown by the step's new token.
    peak = log["peak"]
    kv_bytes = float((peak.kv_tokens + peak.n_seqs) * model.kv_bytes_per_token) if peak else 0.0
    cap = system.capacity(kv_bytes, peak) if peak else None
    if cap and not cap.fits:
        warnings.append("does not fit: " + "; ".join(cap.reasons))
    compute_s = tracer.compute_busy_s()
    exposed_comm_s = tracer.exposed_comm_s()
    exposed_link_s = tracer.exposed_link_s()
    energy = tracer.energy_j()
    busy = tracer.busy_s()
    links = {c: b for c, b in tracer.bytes_by_component().items() if c.startswith(COMM_COMPONENT_PREFIXES)}
    provenance = {"model": model.origin, "hardware": params.origin}
    if pim is not None:
        provenance.update(pim=pim.origin, dram_timing=pim.channel.timing.origin)
    return Result(
        system=cfg.system, model=model.name, hardware=params.name, batch=cfg.effective_max_batch,
        context=context, steps=len(lat), seed=cfg.seed,
        step_latency_s=lat, step_batch=nseq, step_kv_tokens=log["kv_tokens"],
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
        analytic_step_latency_s=log["analytic"],
        analytic_mean_step_latency_s=float(np.mean(log["analytic"])) if lat else 0.0,
        analytic_exact=bool(log["exact"]), warnings=warnings, config=cfg.to_dict(),
        details=dict(cap.details) if cap else {}, provenance=provenance)
