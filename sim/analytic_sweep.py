"""The closed-form sweep path: every point of a sweep from the systems' closed forms, without the SimPy engine.

A decode run without arrivals is deterministic before it starts: every request is there at t=0, the batcher
admits them in order (up to ``max_batch`` and, with ``capacity_policy = limit``, the token budget), and every
active sequence gains one token per step. None of that depends on time, so the batch of every step is known
without simulating, and each step's latency is the system's closed form on that step's plan,
``System.estimate(System.plan(batch))``: the same plan the simulation runs, so an exact closed form (a single
chain) gives the simulated step latency to floating-point rounding, and a lower bound (overlapping schedules:
prefetch, sub-batches, a spill path sharing a resource) never exceeds it. ``estimate_point`` folds the steps into
a ``Result`` with ``sim.stats.StepStats``, as the driver in ``sim.run`` does; the capacity report comes from
``System.capacity`` on the largest step, as in a run.

What needs the engine is refused with one line naming the reason (``unsupported_reason``): a trace file, or
Poisson arrivals (``arrival_rate_per_s > 0``), whose admission depends on simulated time.

A table (``sweep --analytic --table``, ``Evaluator.row``) keeps ``TABLE_FIELDS`` of each point instead of its
Result, for sweeps of millions of points: the same values, without request statistics, capacity details
(``System.fit``) or the batcher (a fixed batch's steps from ``workloads.traces.fixed_waves``).

Fields of the Result:

* exact from the closed form (exact points; bounds at bound points: ``analytic_exact`` says which): step latency
  (mean, min, max, the traced steps), ``total_time_s``, ``tokens_per_s``, the time-to-next-token percentiles;
* independent of the schedule, so always exact: tokens, batch sizes, capacity, fit, ``details`` (PIM channel busy
  time is the sum of the channels' work), ``bytes_by_link`` and dynamic energy (the plan's ``Work`` energies, the
  transfers' bytes times their links' energy per byte, and the host DRAM read by CPU attention);
* static energy is idle power x the run's wall time, so static energy and the totals are given for exact points
  only (dynamic energy at every point);
* not computed (left empty or 0, listed in ``details.analytic_omitted``): ``busy_s``, ``busy_by_kind_s``,
  ``breakdown_s`` and ``comm_share``, which need the overlap of resource holds that only the simulation records.

Energy and link bytes are walked from the plans of the built-in systems (``_dynamic``); a system registered
elsewhere gets latencies and capacity, and its energy is omitted.

Speed: a ``Evaluator`` loads each model and machine once, builds each system once per (system, model, hardware,
options) on a ``PlanMachine`` (the parameters and topology the plans read, no SimPy environment), and memoises a
step's closed form per distinct batch shape (the sequences' attended tokens) within a point. Systems whose plans
keep state (the PIM baseline's power-throttle high-water mark) are reset per point, and so are the memos that
could change a point's last digits (step closed forms and PIM row costs, ``Evaluator._start_point``): a point's
numbers are its own, whatever other points the evaluator saw, in whatever order, and so the same bytes whatever
``--jobs`` or a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hw_models.machine import MachineParams, load_machine
from hw_models.pim import load_pim
from sim.config import DEFAULT_STEPS, RunConfig
from sim.errors import ConfigError
from sim.options import specs
from sim.results import RESULT_SCHEMA_VERSION, Result
from sim.run import (
    _admission,
    _capacity,
    _non_finite,
    _parallel_details,
    _power_cap_warning,
    build_requests,
    parallel_view,
    static_power_w,
)
from sim.serving import request_fields
from sim.stats import RequestStats, StepStats
from sim.systems import SYSTEMS
from sim.systems.aqpim import AqpimSystem
from sim.systems.base import StepBatch, System
from sim.systems.gpu import GpuSystem
from sim.systems.offload import OffloadSystem
from sim.systems.pim import PimSystem
from sim.topology import GPU, HOST_CPU, HOST_DRAM, PIM, Topology
from workloads.models import ModelSpec, load_model
from workloads.traces import ContinuousBatcher, fixed_waves

OMITTED = ("busy_s", "busy_by_kind_s", "breakdown_s", "comm_share")
# A table row's columns (``Evaluator.row``), each the Result field of that name; fit_reasons joined with "; ".
TABLE_FIELDS = ("system", "model", "hardware", "batch", "context", "steps", "mean_step_latency_s", "total_time_s",
                "tokens", "tokens_per_s", "ttnt_p50_s", "ttnt_p99_s", "ttnt_mean_s", "step_latency_min_s",
                "step_latency_max_s", "peak_batch", "peak_kv_tokens", "analytic_exact", "fits", "fit_reasons",
                "kv_bytes", "kv_location", "energy_per_token_j", "energy_static_per_token_j",
                "energy_dynamic_per_token_j", "mean_power_w")
MEMO_LIMIT = 200_000  # step closed forms kept per point (a few hundred bytes each, more with PIM channels)


def unsupported_reason(cfg: RunConfig) -> str | None:
    """Why ``cfg`` needs the discrete-event engine, or None when its closed form is well defined."""
    if cfg.trace is not None:
        return "a trace file's arrivals make admission depend on simulated time"
    if cfg.requests is not None and cfg.arrival_rate_per_s > 0:
        return "Poisson arrivals (arrival_rate_per_s > 0) make admission depend on simulated time"
    if cfg.prefill != "none":
        return f"prefill = {cfg.prefill!r} is simulated in the timeline, and its closed form is not folded here"
    if cfg.pp > 1:
        return "pipeline parallelism (pp > 1) carries each micro-batch's return time across steps (sim.pipeline)"
    return None


def check_supported(cfg: RunConfig, where: str = "configuration") -> None:
    reason = unsupported_reason(cfg)
    if reason is not None:
        raise ConfigError(f"{where}: --analytic cannot evaluate this point: {reason}; run it without --analytic")


class PlanMachine:
    """What a system's ``plan``, ``estimate`` and ``capacity`` read of a machine: parameters, topology, the PIM
    device, and the PIM channels' busy time (set per point). No environment, no resources, no tracer."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.params = topology.params
        self.pim_params = topology.pim
        self.pim = _Busy(np.zeros(topology.pim.channels)) if topology.pim is not None else None


class _LastPlan:
    """A system's ``plan`` that hands back the last plan when asked for the same batch again (``capacity`` plans
    the peak step, which is the last one evaluated in a closed batch). Plans are pure in the batch."""

    def __init__(self, plan):
        self.plan, self.key, self.last = plan, None, None

    def __call__(self, batch: StepBatch):
        key = (batch.n_seqs, batch.kv_tokens, batch.max_context, batch.kept.tobytes())
        if key != self.key:
            self.key, self.last = None, None
            self.last = self.plan(batch)
            self.key = key
        return self.last


@dataclass
class _Busy:
    busy_s: np.ndarray


@dataclass(frozen=True)
class StepCost:
    """One step's closed form and its schedule-independent totals (one layer walked, times the layers)."""

    latency_s: float
    exact: bool
    throttle: float = 1.0
    energy_j: dict | None = None           # dynamic energy per component (None: not derivable for this system)
    link_bytes: dict | None = None
    channel_busy_s: np.ndarray | None = None


@dataclass
class _Setup:
    system: System
    model: ModelSpec
    params: MachineParams
    topology: Topology
    static_w: dict  # idle power per component (sim.run.static_power_w), for static energy
    memo: dict = field(default_factory=dict)


@dataclass
class _Walked:
    """A point's steps folded (``Evaluator.walk``): step statistics, the largest step, dynamic energy and link
    bytes (``energy`` None: not derivable for this system), PIM channel busy time, the largest power-cap stretch."""

    setup: _Setup
    warnings: list
    budget: int | None
    reqs: RequestStats | None
    batcher: ContinuousBatcher | None = None
    stats: StepStats = field(default_factory=StepStats)
    traced: list = field(default_factory=list)
    peak: StepBatch | None = None
    throttle: float = 1.0
    energy: dict | None = field(default_factory=dict)
    link_bytes: dict = field(default_factory=dict)
    busy: np.ndarray | None = None
    prompt_tokens: int = 0


class Evaluator:
    """Evaluates points in closed form with caches shared by every point it is given (see the module docstring).
    One per process (a pool worker keeps one for all its chunks); not thread-safe."""

    def __init__(self, memo_limit: int = MEMO_LIMIT):
        self.models: dict[str, ModelSpec] = {}
        self.machines: dict[str, MachineParams] = {}
        self.topologies: dict = {}
        self.setups: dict = {}
        self.memo_limit = memo_limit
        self.names: dict = {}
        self.option_defaults: dict = {}
        self.pims: dict = {}

    def load_pim(self, name: str):
        """A PIM preset read once (``hw_models.pim.load_pim``; a sweep's variants name a few presets, each
        with many channel counts)."""
        pim = self.pims.get(name)
        if pim is None:
            pim = self.pims[name] = load_pim(name)
        return pim

    def setup(self, cfg: RunConfig) -> _Setup:
        key = (cfg.system, cfg.model, cfg.hardware, cfg.tp, cfg.options)
        s = self.setups.get(key)
        if s is None:
            model = self.models.get(cfg.model) or self.models.setdefault(cfg.model, load_model(cfg.model))
            params = self.machines.get(cfg.hardware) or self.machines.setdefault(cfg.hardware,
                                                                                  load_machine(cfg.hardware))
            params, model = parallel_view(cfg, params, model)
            cls = SYSTEMS[cfg.system]
            devices = cls.devices(cfg.options, load=self.load_pim)
            tkey = (cfg.hardware, cfg.tp, devices.pim)
            topology = self.topologies.get(tkey) or self.topologies.setdefault(tkey, Topology(params, devices.pim))
            system = cls(PlanMachine(topology), model, cfg.options)
            s = self.setups[key] = _Setup(system, model, params, topology, static_power_w(topology))
            system.plan = _LastPlan(system.plan)  # this instance only: capacity() re-plans the peak step
        return s

    def step(self, s: _Setup, batch: StepBatch) -> StepCost:
        kept = batch.kept
        uniform = kept.size and kept[0] == kept[-1] and (kept == kept[0]).all()
        key = (batch.n_seqs, batch.max_context, int(kept[0]) if uniform else kept.tobytes())
        cost = s.memo.get(key)
        if cost is None:
            cost = self._evaluate(s, batch)
            if len(s.memo) < self.memo_limit:
                s.memo[key] = cost
        return cost

    def _start_point(self, s: _Setup) -> None:
        """Memos that make a point's last digits depend on the points before it start afresh: the step closed
        forms (a PIM step's may have been interpolated from rows of other points) and the PIM systems' row
        costs. What a point shares with others is only what it cannot change: the system, its plan caches per
        batch size, models and machines. (Within a point, repeated shapes, such as the waves of a fixed batch
        larger than max_batch, still hit the step memo.)"""
        s.memo.clear()
        if isinstance(s.system, PimSystem):
            s.system.forget_rows()

    def _evaluate(self, s: _Setup, batch: StepBatch) -> StepCost:
        system = s.system
        plan = system.plan(batch)
        est = system.estimate(plan)
        # the PIM systems keep the run's largest power-cap stretch as state; it is set per point from the steps'
        throttle = max([1.0] + [ph.throttle for p in plan.plans for ph in p.phases]) \
            if isinstance(system, PimSystem) else 1.0
        dyn = _dynamic(system, plan, s.topology)
        if dyn is None:
            return StepCost(float(est.latency_s), bool(est.exact), throttle)
        return StepCost(float(est.latency_s), bool(est.exact), throttle, *dyn)

    def point(self, cfg: RunConfig) -> Result:
        """The Result of ``cfg`` from closed forms (see the module docstring for which fields)."""
        return Result(**self.fields(cfg))

    def point_dict(self, cfg: RunConfig, check: bool = True) -> dict:
        """``point(cfg).to_dict()``, built without copying: what the sweep writes. ``check=False``: the caller
        checks the values are finite itself (the sweep's JSON encoder refuses NaN and infinity)."""
        return {**self.fields(cfg, check), "schema_version": RESULT_SCHEMA_VERSION}

    def config_dict(self, cfg: RunConfig) -> dict:
        """``cfg.to_dict()`` with the option names looked up once per class."""
        names = self.names.get(type(cfg.options))
        if names is None:
            names = self.names[type(cfg.options)] = (tuple(specs(RunConfig)), tuple(specs(type(cfg.options))))
        return {**{n: getattr(cfg, n) for n in names[0]}, **{n: getattr(cfg.options, n) for n in names[1]}}

    def defaults(self, cls) -> dict:
        d = self.option_defaults.get(cls)
        if d is None:
            d = self.option_defaults[cls] = cls.defaults()
        return dict(d)

    def walk(self, cfg: RunConfig, requests: bool = True) -> _Walked:
        """Every decode step of ``cfg`` in closed form, folded as the run folds them; ``requests=False``: no
        per-request statistics (a table does not report them), and a fixed batch's steps from
        ``workloads.traces.fixed_waves`` instead of the batcher (the same steps, property-tested)."""
        check_supported(cfg)
        s = self.setup(cfg)
        self._start_point(s)
        model, topology = s.model, s.topology
        reqs, warnings = build_requests(cfg, np.random.default_rng(cfg.seed)) if requests or cfg.uses_requests \
            else (None, [])
        max_batch = cfg.effective_max_batch
        budget = s.system.token_budget(max_batch)
        w = _Walked(s, warnings, budget, RequestStats(cfg.slo_ttft_s, cfg.slo_tpot_s) if requests else None)
        stats, traced, link_bytes = w.stats, w.traced, w.link_bytes
        busy = w.busy = np.zeros(topology.pim.channels) if topology.pim is not None else None

        def fold(batch: StepBatch) -> float:
            c = self.step(s, batch)
            if w.peak is None or batch.kv_tokens > w.peak.kv_tokens:
                w.peak = batch
            if stats.steps < cfg.trace_steps:
                traced.append(c.latency_s)
            stats.add(c.latency_s, c.latency_s, c.exact, batch.n_seqs)
            w.throttle = max(w.throttle, c.throttle)
            if c.energy_j is None:
                w.energy = None
            elif w.energy is not None:
                energy = w.energy
                for k, v in c.energy_j.items():
                    energy[k] = energy.get(k, 0.0) + v
                for k, v in c.link_bytes.items():
                    link_bytes[k] = link_bytes.get(k, 0.0) + v
            if busy is not None and c.channel_busy_s is not None:
                np.add(busy, c.channel_busy_s, out=busy)
            return c.latency_s

        if reqs is None:
            w.prompt_tokens = cfg.context
            for n, context in fixed_waves(cfg.batch, cfg.context, cfg.steps or DEFAULT_STEPS, max_batch, budget):
                fold(StepBatch.from_contexts(model, np.full(n, context, dtype=np.int64)))
        else:
            batcher = w.batcher = ContinuousBatcher(reqs, max_batch, on_finish=w.reqs.add if requests else None)
            now = 0.0
            step_cap = cfg.steps if cfg.uses_requests else None
            while not batcher.done and (step_cap is None or stats.steps < step_cap):
                batcher.admit(now, budget)
                now += fold(StepBatch.from_contexts(model, batcher.contexts()))
                batcher.advance(now)
            w.prompt_tokens = batcher.max_prompt_tokens
        if isinstance(s.system, PimSystem):
            s.system.power_throttle = w.throttle
            s.system.machine.pim.busy_s = busy
        return w

    def fields(self, cfg: RunConfig, check: bool = True) -> dict:
        """The Result's fields as a dict of fresh values (see the module docstring for which are computed);
        ``check``: raise on a non-finite value (a bug: every input is checked before)."""
        w = self.walk(cfg)
        s = w.setup
        system, model, params, topology = s.system, s.model, s.params, s.topology
        batcher, stats, peak, warnings, reqs = w.batcher, w.stats, w.peak, w.warnings, w.reqs
        energy, link_bytes, traced, budget = w.energy, w.link_bytes, w.traced, w.budget
        max_batch = cfg.effective_max_batch

        longest = batcher.max_request_tokens
        if longest > model.max_context:
            warnings.append(f"context up to {longest} tokens exceeds {model.name}'s max_position_embeddings "
                            f"({model.max_context}); simulated anyway")
        wall_s = stats.latency_sum_s  # every request arrives at t=0 and no step waits: the wall is the steps' sum
        cap = _capacity(system, model, peak)
        if cap and not cap.fits:
            warnings.append("does not fit: " + "; ".join(cap.reasons))
        if cap:
            warnings.extend(_power_cap_warning(cap.details))
        tokens, decode_s, steps = stats.tokens, stats.latency_sum_s, stats.steps
        exact = stats.analytic_exact
        omitted = list(OMITTED)
        energy_fields = _point_energy(w, exact)
        if energy is None or not exact:
            omitted.append("energy" if energy is None else "energy_static")
        links = {link.name: 0.0 for link in topology.links if link.resource}
        if energy is not None:
            links.update({k: v for k, v in link_bytes.items() if k in links})
        else:
            omitted.append("bytes_by_link")
            links = {}
        details = _parallel_details(_admission(dict(cap.details) if cap else {}, budget, stats.peak_batch),
                                    params, model, cap)
        details.update(method="analytic", analytic_omitted=",".join(omitted))
        provenance = {"model": model.origin, "hardware": params.origin}
        if topology.pim is not None:
            provenance.update(pim=topology.pim.origin, dram_timing=topology.pim.channel.timing.origin)
        out = dict(
            system=cfg.system, model=model.name, hardware=params.name, batch=max_batch,
            context=batcher.max_prompt_tokens, steps=steps, seed=cfg.seed,
            mean_step_latency_s=decode_s / steps if steps else 0.0,
            total_time_s=wall_s, tokens=tokens, tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
            busy_tokens_per_s=tokens / decode_s if decode_s > 0 else 0.0,
            ttnt_p50_s=stats.ttnt.percentile(50), ttnt_p90_s=stats.ttnt.percentile(90),
            ttnt_p99_s=stats.ttnt.percentile(99),
            busy_s={}, busy_by_kind_s={}, breakdown_s={}, comm_share=0.0, bytes_by_link=links, **energy_fields,
            kv_bytes=params.ranks * cap.kv_bytes if cap else 0.0, kv_location=cap.kv_location if cap else "",
            fits=bool(cap and cap.fits), fit_reasons=list(cap.reasons) if cap else ["no decode step ran"],
            analytic_mean_step_latency_s=decode_s / steps if steps else 0.0, analytic_exact=exact,
            warnings=warnings, config=self.config_dict(cfg), details=details,
            option_defaults=self.defaults(type(cfg.options)), provenance=provenance,
            ttnt_mean_s=stats.token_latency_sum_s / tokens if tokens else 0.0,
            step_latency_min_s=stats.latency_min_s if steps else 0.0, step_latency_max_s=stats.latency_max_s,
            peak_batch=stats.peak_batch, peak_kv_tokens=peak.kv_tokens if peak else 0,
            analytic_max_rel_gap=0.0, analytic_max_rel_undershoot=0.0, traced_step_latency_s=traced,
            **request_fields(reqs, wall_s))
        if check:
            _check_finite(out)
        return out

    def row(self, cfg: RunConfig) -> dict:
        """The headline numbers of ``cfg`` in closed form (``TABLE_FIELDS``, named as the Result's fields and equal
        to them): what a table of millions of points keeps. Without per-request statistics, capacity details,
        link bytes and per-component energy, which ``point`` gives."""
        w = self.walk(cfg, requests=False)
        s, stats, peak = w.setup, w.stats, w.peak
        tokens, wall_s, steps = stats.tokens, stats.latency_sum_s, stats.steps
        exact = stats.analytic_exact
        cap = s.system.fit(float((peak.kv_tokens + peak.n_seqs) * s.model.kv_bytes_per_token), peak) \
            if peak is not None else None
        e = _point_energy(w, exact)
        out = dict(
            system=cfg.system, model=s.model.name, hardware=s.params.name, batch=cfg.effective_max_batch,
            context=w.prompt_tokens, steps=steps,
            mean_step_latency_s=wall_s / steps if steps else 0.0, total_time_s=wall_s, tokens=tokens,
            tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
            ttnt_p50_s=stats.ttnt.percentile(50), ttnt_p99_s=stats.ttnt.percentile(99),
            ttnt_mean_s=stats.token_latency_sum_s / tokens if tokens else 0.0,
            step_latency_min_s=stats.latency_min_s if steps else 0.0, step_latency_max_s=stats.latency_max_s,
            peak_batch=stats.peak_batch, peak_kv_tokens=peak.kv_tokens if peak else 0, analytic_exact=exact,
            fits=bool(cap and cap.fits), fit_reasons="; ".join(cap.reasons) if cap else "no decode step ran",
            kv_bytes=s.params.ranks * cap.kv_bytes if cap else 0.0, kv_location=cap.kv_location if cap else "",
            energy_per_token_j=e["energy_per_token_j"], energy_static_per_token_j=e["energy_static_per_token_j"],
            energy_dynamic_per_token_j=e["energy_dynamic_per_token_j"], mean_power_w=e["mean_power_w"])
        if not all(math.isfinite(v) for v in out.values() if type(v) is float):  # a flat row: its floats
            _check_finite(out, cfg)
        return out


def _check_finite(out: dict, cfg: RunConfig | None = None) -> None:
    bad = _non_finite(out, "result")
    if bad:
        raise RuntimeError(f"bug: non-finite values in {', '.join(bad[:5])} (config "
                           f"{out['config'] if cfg is None else cfg})")


def estimate_point(cfg: RunConfig, evaluator: Evaluator | None = None) -> Result:
    """One configuration's Result from the closed forms (``Evaluator.point``); pass an ``evaluator`` to share its
    caches over many calls."""
    return (evaluator or Evaluator()).point(cfg)


def _point_energy(w: _Walked, exact: bool) -> dict:
    """The Result's energy fields of a point's steps: ``_energy_fields`` at an exact point; at a bound point (or
    for a system whose energy is not derivable) the dynamic energy alone, since static energy needs the wall
    time, which a bound only bounds."""
    s, tokens = w.setup, w.stats.tokens
    if w.energy is not None and exact:
        return _energy_fields(w.energy, s.static_w, w.stats.latency_sum_s, tokens, s.params.ranks)
    dynamic = {k: s.params.ranks * v for k, v in sorted(w.energy.items())} if w.energy is not None else {}
    return {"energy_j": {}, "energy_per_token_j": 0.0, "energy_static_j": {}, "energy_dynamic_j": dynamic,
            "energy_static_per_token_j": 0.0,
            "energy_dynamic_per_token_j": sum(dynamic.values()) / tokens if tokens else 0.0, "mean_power_w": 0.0}


def _energy_fields(dynamic: dict, static_w: dict, wall_s: float, tokens: int, ranks: int = 1) -> dict:
    """As ``sim.run._energy``: static (idle power x wall time) and dynamic energy per component (one GPU's times
    the ``ranks`` of tensor parallelism), their sum."""
    dynamic = {c: ranks * j for c, j in sorted(dynamic.items())}
    static = {c: w * wall_s for c, w in sorted(static_w.items())}
    total = {c: static.get(c, 0.0) + dynamic.get(c, 0.0) for c in sorted(set(dynamic) | set(static))}

    def per_token(joules: dict) -> float:
        return sum(joules.values()) / tokens if tokens else 0.0

    return {"energy_j": total, "energy_static_j": static, "energy_dynamic_j": dynamic,
            "energy_per_token_j": per_token(total), "energy_static_per_token_j": per_token(static),
            "energy_dynamic_per_token_j": per_token(dynamic),
            "mean_power_w": sum(total.values()) / wall_s if wall_s > 0 else 0.0}


# --- schedule-independent totals of one step, walked from the built-in systems' plans ----------------------------

class _Walk:
    """Dynamic energy per component and bytes per queueing link, as ``sim.engine.Tracer`` totals them."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.energy: dict[str, float] = {GPU: 0.0, HOST_CPU: 0.0}
        self.nbytes: dict[str, float] = {}
        for link in topology.links:
            if link.resource:
                self.energy[link.name] = 0.0
                self.nbytes[link.name] = 0.0
        if topology.pim is not None:
            self.energy[PIM] = 0.0

    def works(self, component: str, works, times: int = 1) -> None:
        self.energy[component] += times * sum(w.energy_j for w in works)

    def transfer(self, src: str, dst: str, nbytes: float, times: int = 1) -> None:
        for link in self.topology.route(src, dst).links:
            e = times * nbytes * link.energy_per_byte_j
            if link.resource:
                self.energy[link.name] += e
                self.nbytes[link.name] += times * nbytes
            elif e:
                self.energy[link.name] = self.energy.get(link.name, 0.0) + e

    def extra(self, component: str, joules: float) -> None:
        self.energy[component] = self.energy.get(component, 0.0) + joules


def _dynamic(system: System, plan, topology: Topology):
    """(dynamic energy per component, bytes per link, PIM channel busy seconds) of one step's plan, or None for a
    system this module does not know."""
    n = system.model.n_layers
    w = _Walk(topology)
    busy = None
    if type(system) is GpuSystem:
        layer, head = plan
        w.works(GPU, layer, n)
        w.works(GPU, head)
    elif type(system) is OffloadSystem:
        c = plan
        w.transfer(HOST_DRAM, GPU, c.weight_fetch_bytes, n)
        w.works(GPU, c.pre, n)
        if c.cpu_attn:
            w.transfer(GPU, HOST_DRAM, c.store_bytes, n)
            w.works(HOST_CPU, c.cpu_attn, n)
            w.extra(HOST_DRAM, n * c.dram_read_bytes * topology.params.host_dram.energy_per_byte_j)
            w.transfer(HOST_DRAM, GPU, c.out_fetch_bytes, n)
            w.works(GPU, c.attn, n)
            w.works(GPU, c.merge, n)
        else:
            w.transfer(HOST_DRAM, GPU, c.kv_fetch_bytes, n)
            w.works(GPU, c.attn, n)
            w.transfer(GPU, HOST_DRAM, c.store_bytes, n)
        w.works(GPU, c.post, n)
        w.transfer(HOST_DRAM, GPU, c.head_fetch_bytes)
        w.works(GPU, c.head)
    elif type(system) in (PimSystem, AqpimSystem):
        busy = np.zeros(topology.pim.channels)
        for p in plan.plans:
            w.works(GPU, p.pre, n)
            if p.chunks:
                for ch in p.chunks:
                    w.transfer(GPU, PIM, ch.down_bytes, n)
                    w.extra(PIM, n * ch.phase.energy_j)
                    w.transfer(PIM, GPU, ch.up_bytes, n)
                    idx = slice(None) if ch.phase.channels is None else ch.phase.channels
                    busy[idx] += n * ch.phase.durations_s
            else:
                w.transfer(GPU, PIM, p.down_bytes, n)
                for i, ph in enumerate(p.phases):
                    w.extra(PIM, n * ph.energy_j)
                    busy += n * np.broadcast_to(ph.durations_s, busy.shape)
                    if i + 1 < len(p.phases):
                        for h in p.between:
                            if len(h) == 4:
                                w.transfer(h[0], h[1], h[2], n)
                            else:
                                w.works(h[0], h[1], n)
                w.transfer(PIM, GPU, p.up_bytes, n)
            if p.spill_fetch_bytes > 0:
                if p.spill_store_bytes:
                    w.transfer(GPU, HOST_DRAM, p.spill_store_bytes, n)
                w.transfer(HOST_DRAM, GPU, p.spill_fetch_bytes, n)
                w.works(GPU, p.spill_attn, n)
            w.works(GPU, p.merge_post, n)
        w.works(GPU, plan.head)
    else:
        return None
    return w.energy, w.nbytes, busy


def rel_error(a: float, b: float) -> float:
    """|a - b| relative to the larger magnitude (0 when both are 0)."""
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0



# --- the sweep ---------------------------------------------------------------------------------------------------

CHUNK = 256            # points per fsynced write (and at least per task of a process pool)
MAX_CHUNK = 4096       # points per task at most (a kill loses the chunks in flight)
CHECK_TOLERANCE = 1e-9  # largest relative error an exact point may show against the simulation
BOUND_SLACK = 1e-12     # a bound may exceed the simulated latency by this much (rounding of equal schedules)
CHECK_FILE = "analytic_check.json"
METHOD = "analytic"
TABLE_METHOD = "analytic-table"  # records with a ``row`` of TABLE_FIELDS instead of a whole ``result``


def _describe(pt) -> str:
    return ", ".join(f"{k}={v}" for k, v in pt.factors.items()) or "base"


def check_sweep(sweep) -> None:
    """Refuse (one line) a sweep with a point whose closed form needs the engine."""
    for pt in sweep.points:
        check_supported(pt.config, f"{sweep.path}: point {pt.index} ({_describe(pt)})")


_WORKER: dict = {}  # a pool worker's own state (``_worker_init``): its evaluator, kept for all its tasks


def _worker_init(parent_pid: int, inherited: tuple) -> None:
    """Start of a pool worker (``sim.sweep.worker_init``), with one evaluator for every chunk it is given: its
    systems, models and machines are built once per worker, not once per chunk; a point's numbers do not depend
    on the points evaluated before it (``Evaluator._start_point``)."""
    from sim.sweep import worker_init

    worker_init(parent_pid, inherited)
    _WORKER["ev"] = Evaluator()


def _evaluate_chunk(items: list, ev: Evaluator | None = None, table: bool = False) -> tuple[bytes, set[str]]:
    """Worker: the JSONL lines of a chunk of points (key, index, factors, config), and the CSV columns of its
    records (``sim.results.flat_row``'s keys); ``ev``: an evaluator whose caches the chunk may share (default:
    the worker's, else a fresh one); ``table``: each record's ``row`` (``Evaluator.row``) instead of its
    ``result``."""
    import json

    from sim.errors import INPUT_ERRORS
    from sim.results import flat_row

    ev = ev or _WORKER.get("ev") or Evaluator()
    out = []
    columns: set[str] = set()
    method = TABLE_METHOD if table else METHOD
    for key, index, factors, cfg in items:
        rec = {"key": key, "index": index, "factors": factors, "method": method}
        try:
            if table:
                rec["row"] = ev.row(cfg)
            else:
                rec["result"] = ev.point_dict(cfg, check=False)
        except INPUT_ERRORS as e:
            rec["error"] = str(e)
        try:
            line = json.dumps(rec, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except ValueError:  # a NaN or an infinity: name it (the check the point skipped)
            _check_finite(rec["result"])
            raise
        out.append(line + "\n")
        columns.update(flat_row(rec))
    return "".join(out).encode("utf-8"), columns


def _write_all(fd: int, data: bytes) -> None:
    import os

    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])
    os.fsync(fd)


def _scan_analytic(jsonl, mine: set[str], method: str = METHOD) -> tuple[set[str], int]:
    """Keys of the records in the file (a torn last line cut off first); a record of one of this sweep's points
    made another way (simulated, or whole Results where a table is asked, or the reverse) is an error: methods
    never share a folder."""
    import os

    from sim.results import scan_records

    keys: set[str] = set()
    if not jsonl.exists():
        return keys, 0
    good = 0
    for number, offset, line, rec in scan_records(jsonl):
        if rec.get("method") != method and rec["key"] in mine:
            what = {METHOD: "an analytic Result", TABLE_METHOD: "an analytic table row"}.get(rec.get("method"),
                                                                                          "a simulated result")
            raise ConfigError(f"{jsonl}: line {number} is {what} of this sweep; --analytic"
                              f"{' --table' if method == TABLE_METHOD else ''} writes its own folder: give "
                              f"another --out")
        keys.add(rec["key"])
        good = offset + len(line)
    size = jsonl.stat().st_size
    if size > good:
        os.truncate(jsonl, good)
    return keys, size - good


@dataclass(frozen=True)
class AnalyticSummary:
    total: int
    skipped: int
    ran: int
    failed: int
    repaired_bytes: int
    wall_s: float
    jobs: int
    check: dict | None = None

    @property
    def points_per_s(self) -> float:
        return self.ran / self.wall_s if self.wall_s > 0 else 0.0


def run_analytic_sweep(sweep, out_dir, jobs: int | None = 1, force_jobs: bool = False, check_sample: int = 0,
                       check_seed: int = 0, chunk: int = CHUNK, table: bool = False) -> AnalyticSummary:
    """Evaluate every point of ``sweep`` not yet in ``out_dir/results.jsonl`` in closed form (``method`` =
    ``analytic`` in each record), in chunks of ``chunk`` points or more over ``jobs`` processes; each chunk is
    one fsynced append, in point order, so a kill loses at most the chunks in flight (or waiting for an earlier
    one) and a rerun resumes. The file ends in point
    order and the CSV is rebuilt, as ``sim.sweep.run_sweep`` leaves them. ``check_sample``: then re-run that
    many points (chosen with ``check_seed``) through the simulation (``check_points``). ``table``: a row of
    headline numbers per point (``Evaluator.row``, ``method`` = ``analytic-table``) instead of a whole Result."""
    import concurrent.futures as cf
    import json
    import os
    import sys
    import time
    from pathlib import Path

    from sim.errors import output_error
    from sim.io import remove_stale, write_text_atomic
    from sim.results import MANIFEST, RESULTS_CSV, RESULTS_JSONL
    from sim.sweep import FolderLock, check_jobs, order_records, write_csv

    jobs = check_jobs(jobs, "local", force_jobs)
    if isinstance(check_sample, bool) or not isinstance(check_sample, int) or check_sample < 0:
        raise ConfigError(f"--check-sample must be a number of points (0 or more), got {check_sample}")
    check_sweep(sweep)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    jsonl = out / RESULTS_JSONL
    t0 = time.monotonic()
    with FolderLock(out) as lock:
        for name in (RESULTS_JSONL, RESULTS_CSV, MANIFEST, CHECK_FILE):
            remove_stale(out, name, only_dead=False)
        mine = {pt.key for pt in sweep.points}
        method = TABLE_METHOD if table else METHOD
        done, repaired = _scan_analytic(jsonl, mine, method)
        todo = [pt for pt in sweep.points if pt.key not in done]
        write_text_atomic(out / MANIFEST, json.dumps(
            {"description": sweep.description, "factors": list(sweep.factor_names), "hints": sweep.hints,
             "points": len(sweep.points), "sweep_file": Path(sweep.path).name, "method": method},
            indent=1, sort_keys=True) + "\n")
        if (jobs or 1) > 1:  # tasks no smaller than ``chunk`` (pickling, fsync), about four per worker
            chunk = max(chunk, min(MAX_CHUNK, -(-len(todo) // (4 * jobs))))
        chunks = [[(pt.key, pt.index, pt.factors, pt.config) for pt in todo[i:i + chunk]]
                  for i in range(0, len(todo), chunk)]
        used = min(jobs or 1, len(chunks))
        failed = 0
        columns: set[str] = set()
        fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if used <= 1:
                ev = Evaluator()
                for items in chunks:
                    data, cols = _evaluate_chunk(items, ev, table)
                    failed += data.count(b'"error":')
                    columns |= cols
                    _write_all(fd, data)
            elif chunks:
                import multiprocessing

                inherited = tuple((f, os.fstat(f).st_dev, os.fstat(f).st_ino) for f in (lock.fd, fd))
                ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
                with cf.ProcessPoolExecutor(max_workers=used, mp_context=ctx, initializer=_worker_init,
                                            initargs=(os.getpid(), inherited)) as pool:
                    # chunks are appended in point order (those done early wait, 2 per worker at most), so a
                    # fresh folder's file needs no reordering
                    pending = enumerate(chunks)
                    in_flight = {pool.submit(_evaluate_chunk, c, None, table): i for i, c in _take(pending, 2 * used)}
                    ready: dict[int, tuple[bytes, set[str]]] = {}
                    written = 0
                    while in_flight:
                        finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                        for fut in finished:
                            ready[in_flight.pop(fut)] = fut.result()
                            in_flight.update({pool.submit(_evaluate_chunk, c, None, table): i
                                              for i, c in _take(pending, 1)})
                        while written in ready:
                            data, cols = ready.pop(written)
                            failed += data.count(b'"error":')
                            columns |= cols
                            _write_all(fd, data)
                            written += 1
        finally:
            os.close(fd)
        if done or repaired:  # records from an earlier run: put them in point order, columns from the file
            order_records(jsonl, {pt.key: pt.index for pt in sweep.points})
            write_csv(jsonl, out / RESULTS_CSV, sweep.factor_names)
        else:  # this run wrote the whole file, in point order
            write_csv(jsonl, out / RESULTS_CSV, sweep.factor_names, columns)
        wall = time.monotonic() - t0
        check = None
        if check_sample:
            check = check_points(sweep, jsonl, check_sample, check_seed, jobs=jobs or 1)
            write_text_atomic(out / CHECK_FILE, json.dumps(check, indent=1, sort_keys=True) + "\n")
    return AnalyticSummary(len(sweep.points), len(sweep.points) - len(todo), len(todo), failed, repaired, wall,
                           used, check)


def _take(it, n: int) -> list:
    out = []
    for _ in range(n):
        nxt = next(it, None)
        if nxt is None:
            break
        out.append(nxt)
    return out


# Fields compared by ``check_points``: latency and throughput (bounds at bound points), then the ones that are
# exact whatever the schedule.
TIMED_FIELDS = ("mean_step_latency_s", "total_time_s", "step_latency_min_s", "step_latency_max_s", "ttnt_p50_s",
                "ttnt_p90_s", "ttnt_p99_s", "ttnt_mean_s", "tokens_per_s", "ttft_mean_s", "ttft_p99_s", "tpot_mean_s",
                "tpot_p99_s", "e2e_mean_s", "e2e_p99_s", "request_tokens_per_s", "goodput_tokens_per_s")
EXACT_FIELDS = ("tokens", "steps", "peak_batch", "peak_kv_tokens", "kv_bytes", "requests_completed",
                "request_output_tokens")


def compare_result(analytic: dict, simulated: dict) -> dict:
    """How an analytic Result dict stands against the simulated one: for an exact point the largest relative error
    over the timed fields, energy and link bytes (and which field); for a bound point the smallest ratio of
    simulated to closed-form mean step latency (must be >= 1) and the error of the schedule-independent fields."""
    worst, where = 0.0, ""

    def see(name: str, a: float, s: float) -> None:
        nonlocal worst, where
        e = rel_error(a, s)
        if e > worst:
            worst, where = e, name

    exact = bool(analytic["analytic_exact"])
    for k in EXACT_FIELDS:
        if k in analytic:  # a table row has a subset of the fields
            see(k, analytic[k], simulated[k])
    for k, v in analytic.get("bytes_by_link", {}).items():
        see(f"bytes_by_link.{k}", v, simulated["bytes_by_link"].get(k, 0.0))
    for k, v in analytic.get("energy_dynamic_j", {}).items():
        see(f"energy_dynamic_j.{k}", v, simulated["energy_dynamic_j"].get(k, 0.0))
    if "energy_dynamic_j" not in analytic and analytic.get("energy_dynamic_per_token_j"):  # a table row's
        see("energy_dynamic_per_token_j", analytic["energy_dynamic_per_token_j"],
            simulated["energy_dynamic_per_token_j"])
    out = {"exact": exact, "analytic_mean_step_latency_s": analytic["mean_step_latency_s"],
           "simulated_mean_step_latency_s": simulated["mean_step_latency_s"]}
    if exact:
        for k in TIMED_FIELDS:
            if k in analytic:
                see(k, analytic[k], simulated[k])
        for k, v in analytic.get("energy_j", {}).items():
            see(f"energy_j.{k}", v, simulated["energy_j"].get(k, 0.0))
        if analytic.get("energy_j") or analytic.get("energy_per_token_j"):
            see("energy_per_token_j", analytic["energy_per_token_j"], simulated["energy_per_token_j"])
    bound = analytic["mean_step_latency_s"]
    ratio = simulated["mean_step_latency_s"] / bound if bound > 0 else 1.0
    out.update(max_rel_error=worst, field=where, sim_over_analytic=ratio,
               ok=worst <= CHECK_TOLERANCE and (exact or ratio >= 1.0 - BOUND_SLACK))
    return out


def check_points(sweep, jsonl, n: int, seed: int = 0, jobs: int = 1) -> dict:
    """Re-run ``n`` of the sweep's points, chosen by a generator seeded with ``seed``, through the simulation and
    compare each with its analytic record (``compare_result``). Returns the report written to
    ``analytic_check.json``: per point, and overall the largest relative error of exact points, the smallest
    simulated/bound ratio of bound points, and whether every point passed."""
    from sim.results import iter_records
    from sim.sweep import run_point

    records = {rec["key"]: rec.get("result") or rec["row"] for rec in iter_records(jsonl)
               if rec.get("method") in (METHOD, TABLE_METHOD) and ("result" in rec or "row" in rec)}
    candidates = [pt for pt in sweep.points if pt.key in records]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False).tolist()) \
        if candidates else []
    pts = [candidates[i] for i in chosen]
    if jobs > 1 and len(pts) > 1:
        import concurrent.futures as cf
        import multiprocessing
        import os
        import sys

        from sim.sweep import worker_init

        ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
        with cf.ProcessPoolExecutor(max_workers=min(jobs, len(pts)), mp_context=ctx, initializer=worker_init,
                                    initargs=(os.getpid(), ())) as pool:
            outcomes = list(pool.map(run_point, [pt.config for pt in pts]))
    else:
        outcomes = [run_point(pt.config) for pt in pts]
    rows = []
    for pt, outcome in zip(pts, outcomes, strict=True):
        row = {"index": pt.index, "key": pt.key, "factors": pt.factors}
        if "error" in outcome:
            row.update(ok=False, error=outcome["error"])
        else:
            row.update(compare_result(records[pt.key], outcome["result"]))
        rows.append(row)
    exact = [r for r in rows if r.get("exact") is True]
    bounds = [r for r in rows if r.get("exact") is False]
    return {"seed": seed, "sampled": len(rows), "exact_points": len(exact), "bound_points": len(bounds),
            "tolerance": CHECK_TOLERANCE,
            "max_rel_error_exact": max((r["max_rel_error"] for r in exact), default=0.0),
            "max_rel_error_schedule_free": max((r["max_rel_error"] for r in rows if "max_rel_error" in r),
                                               default=0.0),
            "min_sim_over_bound": min((r["sim_over_analytic"] for r in bounds), default=None),
            "ok": all(r["ok"] for r in rows), "points": rows}
