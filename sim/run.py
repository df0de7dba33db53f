"""One simulation: a RunConfig in, a Result out.

The driver process admits requests, forms each step's batch, asks the system for the step's plan (the pure cost
functions, evaluated once per distinct batch: ``sim.fastpath.Stepper``), runs the system's step on it (in full, or
its identical layers replayed from the first: ``detail``), and records the step's latency next to the plan's
closed-form estimate. The simulation's event count grows with steps x layers (x channels for PIM
systems), not with context length or bytes.

Memory does not grow with steps: each finished step is folded into streamed aggregates (``sim.stats.StepStats``),
the tracer folds its busy intervals as the clock advances and keeps spans of the first ``trace_steps`` steps
only, and the largest batch (for the capacity report) is one object. Per-step rows exist only on request: a step
log (``step_log=path``: CSV, one line per step, ``sim.results.STEP_LOG_COLUMNS``) is written through a buffered
temporary file that replaces ``path`` when the run ends, so a reader never sees a partial log; ``on_step`` (a
function) receives each step's ``StepRow`` as it ends, for callers that check steps in memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from hw_models.machine import MachineParams, load_machine
from hw_models.machine import preset_names as machine_preset_names
from hw_models.pim import PimDeviceParams
from sim.chrome_trace import chrome_trace
from sim.config import DEFAULT_STEPS, RunConfig
from sim.engine import Span, Tracer
from sim.errors import ConfigError
from sim.fastpath import Stepper
from sim.io import open_atomic
from sim.machine import Machine
from sim.pipeline import PipelineStepper, PipelineTrace
from sim.results import STEP_LOG_COLUMNS, Result, StepRow
from sim.serving import prefill_driver, request_fields, request_log_writer
from sim.stats import RequestStats, StepStats
from sim.systems import SYSTEMS
from sim.systems.base import Capacity, StepBatch, System
from sim.topology import GPU, HOST_CPU, HOST_DRAM, PIM, Topology
from workloads.arrivals import generate_requests
from workloads.models import ModelSpec, load_model
from workloads.trace_formats import read_trace
from workloads.traces import ContinuousBatcher, Request, fixed_requests


def build_requests(cfg: RunConfig, rng: np.random.Generator) -> tuple[Iterable[Request], list[str]]:
    """The run's requests (a list, or a lazy stream for synthetic requests) and notes for its warnings (rows a
    trace file skipped)."""
    if cfg.trace is not None:
        tf = read_trace(cfg.trace, cfg.trace_time_scale, cfg.trace_max_requests)
        return tf.requests, tf.notes()
    if cfg.requests is not None:
        prompt, output = cfg.length_dists()
        return generate_requests(cfg.requests, cfg.arrival_rate_per_s, prompt, output, rng, cfg.arrival_process,
                                 cfg.arrival_cv), []
    return fixed_requests(cfg.batch, cfg.context, cfg.steps or DEFAULT_STEPS), []


@dataclass
class RunLog:
    """What the run keeps about its steps: streamed aggregates, the largest batch (by KV tokens) for the capacity
    report, and the latencies of the traced steps (at most ``trace_steps``)."""

    trace_steps: int = 0
    stats: StepStats = field(default_factory=StepStats)
    peak: StepBatch | None = None
    traced_latency_s: list[float] = field(default_factory=list)

    def add(self, batch: StepBatch, latency_s: float, analytic_s: float, exact: bool) -> None:
        if self.peak is None or batch.kv_tokens > self.peak.kv_tokens:
            self.peak = batch
        if self.stats.steps < self.trace_steps:
            self.traced_latency_s.append(latency_s)
        self.stats.add(latency_s, analytic_s, exact, batch.n_seqs)


@contextlib.contextmanager
def step_log_writer(path: str | Path | None) -> Iterator[Callable[[StepRow], None] | None]:
    """A function that appends a step's row to the step log at ``path`` (None: no log, yields None).

    Rows go through a buffered temporary file beside ``path`` that replaces it when the block ends without error
    (``sim.io.open_atomic``); on an error the temporary file is removed and ``path`` is left as it was."""
    if path is None:
        yield None
        return
    with open_atomic(path, newline="") as f:
        f.write(",".join(STEP_LOG_COLUMNS) + "\n")
        write = f.write

        def row(r: StepRow) -> None:
            # repr of a float is its shortest round-trip form: the file holds the run's numbers exactly
            write(f"{r.step},{r.start_s!r},{r.latency_s!r},{r.analytic_s!r},{int(r.exact)},{r.n_seqs},"
                  f"{r.kv_tokens}\n")

        yield row


@dataclass(frozen=True)
class Run:
    """A finished simulation: its Result, the traced spans, and what it ran on."""

    result: Result
    spans: list[Span]
    topology: Topology
    model: ModelSpec
    pipeline: PipelineTrace | None = None  # pipeline parallelism: what traces need to draw every stage

    def chrome_trace(self, metadata: dict | None = None) -> dict:
        """The traced steps as a Chrome trace: one process per GPU and per device (``sim.chrome_trace``)."""
        return chrome_trace(self.spans, metadata, ranks=self.result.details.get("tp", 1), pipeline=self.pipeline)


def simulate(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
             pim: PimDeviceParams | None = None, step_log: str | Path | None = None,
             on_step: Callable[[StepRow], None] | None = None, request_log: str | Path | None = None,
             on_request: Callable | None = None) -> Result:
    """Run one simulation and return its Result; ``step_log``, ``on_step``, ``request_log``, ``on_request``: as
    ``run_simulation``."""
    return run_simulation(cfg, params, model, pim, step_log=step_log, on_step=on_step, request_log=request_log,
                          on_request=on_request).result


def simulate_traced(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
                    pim: PimDeviceParams | None = None, step_log: str | Path | None = None,
                    on_step: Callable[[StepRow], None] | None = None, request_log: str | Path | None = None,
                    on_request: Callable | None = None) -> tuple[Result, list[Span]]:
    """Run one simulation; also return the spans of the first ``cfg.trace_steps`` steps. ``step_log``,
    ``on_step``, ``request_log``, ``on_request``: as ``run_simulation``."""
    run = run_simulation(cfg, params, model, pim, step_log=step_log, on_step=on_step, request_log=request_log,
                         on_request=on_request)
    return run.result, run.spans


def run_simulation(cfg: RunConfig, params: MachineParams | None = None, model: ModelSpec | None = None,
                   pim: PimDeviceParams | None = None, step_log: str | Path | None = None,
                   on_step: Callable[[StepRow], None] | None = None, request_log: str | Path | None = None,
                   on_request: Callable | None = None) -> Run:
    """Simulate ``cfg``. ``params``, ``model`` and ``pim`` replace what the configuration names (for studies
    that vary parameters no preset has). ``step_log``: a CSV file that receives one line per decode step
    (``sim.results.STEP_LOG_COLUMNS``; read it back with ``sim.results.read_step_log``), written as the run goes
    and in place only when the run ends. ``on_step``: called with each step's ``StepRow`` as the step ends.
    Without either, no per-step record is kept. ``request_log``: a CSV or JSONL file (by its extension) that
    receives each finished request's record (``sim.serving``), written the same way; ``on_request``: called with
    each ``workloads.traces.RequestRecord``. With ``cfg.prefill`` other than none, prompts are prefilled in the
    timeline (``sim.serving.prefill_driver``)."""
    model = model or load_model(cfg.model)
    params = params or load_machine(cfg.hardware)
    params, model = parallel_view(cfg, params, model)
    system_cls = SYSTEMS[cfg.system]
    devices = system_cls.devices(cfg.options, pim)
    rng = np.random.default_rng(cfg.seed)
    requests, warnings = build_requests(cfg, rng)

    env = simpy.Environment()
    tracer = Tracer(keep_steps=cfg.trace_steps)
    topology = Topology(params, devices.pim)
    machine = Machine(env, topology, tracer, pim_trace_lanes=devices.pim_trace_lanes)
    system = system_cls(machine, model, cfg.options)
    token_budget = system.token_budget(cfg.effective_max_batch)
    reqs = RequestStats(cfg.slo_ttft_s, cfg.slo_tpot_s)
    request_sinks = [reqs.add] + ([on_request] if on_request is not None else [])

    def on_finish(record):
        for sink in request_sinks:
            sink(record)

    batcher = ContinuousBatcher(requests, cfg.effective_max_batch, prefill=cfg.prefill != "none",
                                on_finish=on_finish)
    step_cap = cfg.steps if cfg.uses_requests else None
    log = RunLog(trace_steps=cfg.trace_steps)
    stepper = Stepper(system, machine, cfg.detail)
    if cfg.pp > 1:
        stepper = PipelineStepper(stepper, system, cfg.pp, cfg.micro_batches or cfg.pp)

    def driver(sinks):
        step = 0
        while not batcher.done and (step_cap is None or step < step_cap):
            batcher.admit(env.now, token_budget)
            contexts = batcher.contexts()
            if contexts.size == 0:
                yield env.timeout(batcher.next_arrival_s() - env.now)
                continue
            batch = StepBatch.from_contexts(model, contexts)
            entry = stepper.entry(batch)  # the plan and its closed form, once per distinct batch
            tracer.step = step
            t0 = env.now
            yield from stepper.run(entry)
            est = entry.estimate
            latency, analytic = float(env.now - t0), float(est.latency_s)
            log.add(batch, latency, analytic, est.exact)
            if sinks:
                row = StepRow(step, float(t0), latency, analytic, bool(est.exact), batch.n_seqs, batch.kv_tokens)
                for sink in sinks:
                    sink(row)
            batcher.advance(env.now)
            step += 1

    with step_log_writer(step_log) as write_step, request_log_writer(request_log) as write_request:
        if write_request is not None:
            request_sinks.append(write_request)
        sinks = [f for f in (write_step, on_step) if f is not None]
        if cfg.prefill == "none":
            env.process(driver(sinks))
        else:
            env.process(prefill_driver(env, cfg, system, model, batcher, tracer, log, reqs, sinks, token_budget,
                                       stepper))
        env.run()
    # Over every request of a list; over the requests read (admitted, and the next) of a lazy stream.
    longest = batcher.max_request_tokens
    if longest > model.max_context:
        warnings.append(f"context up to {longest} tokens exceeds {model.name}'s max_position_embeddings "
                        f"({model.max_context}); simulated anyway")
    context = batcher.max_prompt_tokens
    first_arrival_s = batcher.first_arrival_s
    result = _result(cfg, params, model, system, tracer, topology, env.now - first_arrival_s, log, warnings,
                     context, reqs, stepper.head_energy_j if cfg.pp > 1 else 0.0)
    return Run(result, tracer.spans, topology, model, stepper.trace if cfg.pp > 1 else None)


def parallel_view(cfg: RunConfig, params: MachineParams, model: ModelSpec) -> tuple[MachineParams, ModelSpec]:
    """Under tensor and pipeline parallelism (``cfg.tp``, ``cfg.pp``), what the simulated GPU sees: the machine's
    rank view and the model's shard of the last stage (``MachineParams.rank_view``, ``ModelSpec.shard``,
    ``ModelSpec.stage``); every GPU does the same (the head aside, ``sim.pipeline``), so one is simulated and the
    totals (energy, capacity) count all of them."""
    ranks = cfg.tp * cfg.pp
    if ranks == 1:
        return params, model
    if params.gpus < ranks:
        what = f"tp {cfg.tp}" if cfg.pp == 1 else (f"pp {cfg.pp}" if cfg.tp == 1 else f"tp {cfg.tp} x pp {cfg.pp}")
        raise ConfigError(f"{what} needs {ranks} GPUs; machine '{params.name}' has {params.gpus} "
                          f"GPU{'s' if params.gpus > 1 else ''} (multi-GPU presets: "
                          f"{', '.join(multi_gpu_presets()) or 'none'})")
    return params.rank_view(cfg.tp, cfg.pp), model.shard(cfg.tp).stage(cfg.pp)


def multi_gpu_presets() -> list[str]:
    out = []
    for name in machine_preset_names():
        try:
            if load_machine(name).gpus > 1:
                out.append(name)
        except Exception:  # noqa: BLE001 - a broken preset is reported where it is used, not here
            continue
    return out


def _capacity(system: System, model: ModelSpec, peak: StepBatch | None) -> Capacity | None:
    if peak is None:
        return None
    # Peak KV: the whole cache of the largest step's batch, grown by the step's new token.
    return system.capacity(float((peak.kv_tokens + peak.n_seqs) * model.kv_bytes_per_token), peak)


def static_power_w(topology: Topology) -> dict[str, float]:
    """Idle power of every device powered during a run, by the component its energy is booked on: the GPU, the
    host CPU socket, host DRAM, the PCIe link (half per direction: each direction is its own lane pairs) and,
    when the system has one, the PIM device (channels x a channel's idle power)."""
    p = topology.params
    n = p.ranks  # parallel runs: that many GPUs, each with its link and PIM device; one host
    out = {GPU: n * p.gpu.idle_power_w, HOST_CPU: p.cpu.idle_power_w, HOST_DRAM: p.host_dram.idle_power_w,
           "pcie.h2d": n * p.pcie.idle_power_w / 2, "pcie.d2h": n * p.pcie.idle_power_w / 2}
    if topology.pim is not None:
        out[PIM] = n * topology.pim.channels * topology.pim.channel.idle_power_w
    if n > 1 and p.interconnect is not None and p.interconnect.idle_power_w:
        out["interconnect"] = p.interconnect.idle_power_w
    return out


def _energy(tracer: Tracer, topology: Topology, end_s: float, tokens: int, last_stage_only_j: float = 0.0) -> dict:
    """The Result's energy fields: static (idle power x the run's whole simulated time) and dynamic (work) per
    component, their sum per component, and the totals per generated token. ``last_stage_only_j``: GPU energy
    of the simulated GPU that a pipeline's other stages do not spend (the LM head's kernels, ``sim.pipeline``)."""
    for component, watts in static_power_w(topology).items():
        tracer.set_static_power(component, watts)
    # One GPU is simulated under tensor parallelism; all of them (and their share of the host) do the same work.
    ranks = topology.params.ranks
    static = tracer.energy_static_j(end_s)
    dynamic = {c: ranks * j for c, j in tracer.energy_dynamic_j().items()}
    if last_stage_only_j:
        dynamic[GPU] -= (ranks - topology.params.tp) * last_stage_only_j
    total = {c: static.get(c, 0.0) + dynamic.get(c, 0.0) for c in sorted(set(dynamic) | set(static))}

    def per_token(joules: dict) -> float:
        return sum(joules.values()) / tokens if tokens else 0.0

    return {"energy_j": total, "energy_static_j": static, "energy_dynamic_j": dynamic,
            "energy_per_token_j": per_token(total), "energy_static_per_token_j": per_token(static),
            "energy_dynamic_per_token_j": per_token(dynamic),
            "mean_power_w": sum(total.values()) / end_s if end_s > 0 else 0.0}


def _power_cap_warning(details: dict) -> list[str]:
    throttle = details.get("pim_power_throttle", 1.0)
    if throttle <= 1.0:
        return []
    return [f"PIM power cap binds: channel work stretched up to {throttle:.3f}x so that no channel draws more than "
            f"its max_power_w ({details['pim_power_cap_w']:.1f} W for the device)"]


def _result(cfg: RunConfig, params: MachineParams, model: ModelSpec, system: System, tracer: Tracer,
            topology: Topology, wall_s: float, log: RunLog, warnings: list[str], context: int,
            reqs: RequestStats, last_stage_only_j: float = 0.0) -> Result:
    """``wall_s``: from the first request's arrival to the last token."""
    st = log.stats
    tokens = st.tokens
    decode_s = st.latency_sum_s
    cap = _capacity(system, model, log.peak)
    ranks = params.ranks
    if cap and not cap.fits:
        where = f" (each of {ranks} GPUs)" if ranks > 1 else ""
        warnings.append(f"does not fit{where}: " + "; ".join(cap.reasons))
    compute_s = tracer.compute_busy_s()
    exposed_comm_s = tracer.exposed_comm_s()
    exposed_link_s = tracer.exposed_link_s()
    energy = _energy(tracer, topology, wall_s, tokens, last_stage_only_j)
    if cap:
        warnings.extend(_power_cap_warning(cap.details))
    busy = tracer.busy_s()
    link_names = {link.name for link in topology.links if link.resource}
    links = {c: b for c, b in tracer.bytes_by_component().items() if c in link_names}
    provenance = {"model": model.origin, "hardware": params.origin}
    if topology.pim is not None:
        provenance.update(pim=topology.pim.origin, dram_timing=topology.pim.channel.timing.origin)
    return _finite(Result(
        system=cfg.system, model=model.name, hardware=params.name, batch=cfg.effective_max_batch,
        context=context, steps=st.steps, seed=cfg.seed,
        mean_step_latency_s=decode_s / st.steps if st.steps else 0.0,
        total_time_s=wall_s, tokens=tokens, tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        busy_tokens_per_s=tokens / decode_s if decode_s > 0 else 0.0,
        ttnt_p50_s=st.ttnt.percentile(50), ttnt_p90_s=st.ttnt.percentile(90), ttnt_p99_s=st.ttnt.percentile(99),
        busy_s=busy, busy_by_kind_s=dict(sorted(tracer.kind_busy_s.items())),
        breakdown_s={"compute": compute_s, "exposed_comm": exposed_comm_s, "exposed_link": exposed_link_s,
                     "idle": max(0.0, decode_s - compute_s - exposed_comm_s - exposed_link_s)},
        comm_share=exposed_comm_s / decode_s if decode_s > 0 else 0.0,
        bytes_by_link=links, **energy,
        kv_bytes=ranks * cap.kv_bytes if cap else 0.0, kv_location=cap.kv_location if cap else "", fits=bool(cap and cap.fits),
        fit_reasons=list(cap.reasons) if cap else ["no decode step ran"],
        analytic_mean_step_latency_s=st.analytic_sum_s / st.steps if st.steps else 0.0,
        analytic_exact=st.analytic_exact, warnings=warnings, config=cfg.to_dict(),
        details=_parallel_details(_admission(dict(cap.details) if cap else {},
                                             system.token_budget(cfg.effective_max_batch), st.peak_batch),
                                  params, model, cap),
        option_defaults=type(cfg.options).defaults(),
        provenance=provenance,
        ttnt_mean_s=st.token_latency_sum_s / tokens if tokens else 0.0,
        step_latency_min_s=st.latency_min_s if st.steps else 0.0, step_latency_max_s=st.latency_max_s,
        peak_batch=st.peak_batch, peak_kv_tokens=log.peak.kv_tokens if log.peak else 0,
        analytic_max_rel_gap=st.max_rel_gap, analytic_max_rel_undershoot=st.max_rel_undershoot,
        traced_step_latency_s=list(log.traced_latency_s), **request_fields(reqs, wall_s)))


def _parallel_details(details: dict, params: MachineParams, model: ModelSpec, cap: Capacity | None) -> dict:
    """Under tensor or pipeline parallelism: the group sizes, the shard each GPU holds, and its KV bytes."""
    if params.ranks > 1:
        details.update(tp=params.tp, pp=params.ranks // params.tp, gpu_shard=model.name,
                       shard_weight_bytes=float(model.weight_bytes),
                       kv_bytes_per_gpu=cap.kv_bytes if cap else 0.0)
    return details


def _admission(details: dict, token_budget: int | None, peak_batch: int) -> dict:
    """With an admission budget (``capacity_policy = limit``): the most sequences admitted at once, and the budget."""
    if token_budget is not None:
        details.update(admitted_batch=peak_batch, admission_token_budget=token_budget)
    return details


def _non_finite(value, path: str) -> list[str]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}[{i}]")]
    return []


def _finite(result: Result) -> Result:
    """Every input is checked before a run, so a NaN or inf in a Result is a bug: say where, loudly."""
    bad = _non_finite(result.to_dict(), "result")
    if bad:
        raise RuntimeError(f"bug: non-finite values in {', '.join(bad[:5])} (config {result.config})")
    return result
