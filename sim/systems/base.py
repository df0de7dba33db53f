"""What every system shares: the batch of one decode step, the capacity report, and the ``System`` base class.

A system is one file in this package and one line in the registry (``sim/systems/__init__.py``). Its class owns
everything about it:

* ``name``, ``Options`` (a frozen dataclass of ``sim.options.option`` fields: CLI flags, TOML keys and sweep
  factors are generated from it), ``variants`` (the option sets ``compare`` runs) and ``baseline`` (whether
  ``compare`` measures speedups against it);
* ``devices(options)``: what the machine must have beyond the GPU, host and PCIe (a PIM device);
* ``plan(batch)``: the step's work from the pure cost functions, computed once and used by both views;
* ``step(plan)``: the discrete-event step, a SimPy process generator on a ``Machine``;
* ``estimate(plan)``: the closed-form twin, exact for a single chain, else a lower bound;
* ``plan_key(batch)`` and ``plan_cache_size``: what of the batch the plan reads (plans and closed forms are cached
  on it, ``sim.fastpath``), and how many plans to keep;
* ``segments(plan)`` (optional): the step as runs of identical layers, each starting and ending with every resource
  idle, so that all but the first run of each are replayed (``sim.fastpath``); None (the default): the step is
  always simulated in full;
* ``capacity(kv_bytes, peak)`` and ``token_budget(max_batch)``: where the KV cache lives, whether it fits, and
  how many KV tokens admission may allow; ``fit(kv_bytes, peak)`` (optional): the same report where its
  ``details`` may be left out, for a closed-form table that reads only the fit (``sim.analytic_sweep``);
* prefill (run setting ``prefill`` = first or chunked; docs/design-notes.md, "Prefill"): ``prefill_plan(chunks,
  resident)`` the prompt chunks' work, ``prefill(plan)`` its process and ``prefill_estimate(plan)`` its closed
  form. The base class runs every layer's prefill kernels on the GPU (``workloads.opgraph.prefill_layer_ops``)
  and sends the new K/V of each layer, as the layer ends, to where the system keeps them (``PrefillPlan``:
  bytes and route per layer; none here, where the cache is in GPU memory). A system changes what goes where by
  overriding ``prefill_plan``, and adds energy of untimed parts (host DRAM behind a transfer) in
  ``prefill_energy(plan)``, which the event-free prefill steps (``sim.fastpath``) call too.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from hw_models import gpu as gpu_model
from hw_models import interconnect as ic_model
from hw_models.component import Work
from hw_models.pim import PimDeviceParams
from sim.options import NoOptions, Options
from workloads.models import ModelSpec
from workloads.opgraph import (
    DENSE_POST,
    DENSE_PRE,
    PREFILL_OPS,
    final_norm_op,
    head_op,
    layer_ops,
    prefill_layer_ops,
)


@dataclass(frozen=True)
class StepBatch:
    """The sequences decoded in one step: how many, the KV tokens they attend in total (window applied), and
    each sequence's attended tokens (``kept``) for systems that place sequences on channels."""

    n_seqs: int
    kv_tokens: int
    max_context: int
    kept: np.ndarray = field(compare=False, repr=False, default=None)

    @classmethod
    def from_contexts(cls, model: ModelSpec, contexts: np.ndarray) -> StepBatch:
        kept = contexts if model.sliding_window is None else np.minimum(contexts, model.sliding_window)
        return cls(int(contexts.size), int(kept.sum()), int(contexts.max()), np.asarray(kept, dtype=np.int64))

    def split(self, parts: int) -> list[StepBatch]:
        """Consecutive sub-batches of near-equal size (fewer when there are fewer sequences than parts)."""
        if parts == 1:
            return [self]
        chunks = [c for c in np.array_split(self.kept, min(parts, self.n_seqs)) if c.size]
        return [StepBatch(int(c.size), int(c.sum()), int(c.max()), c) for c in chunks]


@dataclass(frozen=True)
class Capacity:
    """Where the KV cache lives and whether the peak working set fits every memory that holds part of it."""

    kv_location: str
    kv_bytes: float
    fits: bool
    reasons: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    """A step's closed-form latency: exact when the schedule is one chain, else a lower bound."""

    latency_s: float
    exact: bool


@dataclass(frozen=True)
class Devices:
    """What a system needs the machine to have beyond GPU, host and PCIe."""

    pim: PimDeviceParams | None = None
    pim_trace_lanes: int = 0  # PIM channels drawn one per lane in traces


@dataclass(frozen=True)
class DenseWorks:
    """The GPU kernels of one decode step that read no KV, which every system runs the same way and which depend on
    the batch size alone: per layer ``pre`` (norm, QKV projection, rotary embedding) before attention and ``post``
    (output projection, norm, FFN, activation) after it, each projection's partial sums all-reduced over the
    tensor-parallel GPUs; once per step ``head`` (final norm, LM head, and under tensor parallelism the logits
    gathered from the GPUs' vocabulary shares)."""

    pre: tuple[Work, ...]
    post: tuple[Work, ...]
    head: tuple[Work, ...]


def collective_work(params, kind: str, nbytes: float, gather: bool = False) -> Work:
    """A collective over the ``params.tp`` GPUs of a rank view as a kernel on the GPU's stream: an all-reduce of
    ``nbytes`` (``gather``: an all-gather, half the ring's traffic); its bytes cost the interconnect's energy. The
    reduction's additions (one per element per hop) are not counted as FLOPs: they are hidden in the transfers."""
    ic, tp = params.interconnect, params.tp
    moved = ic_model.ring_bytes(nbytes, tp) / (2.0 if gather else 1.0)
    time_s = ic.allreduce_alpha_s + moved / ic.allreduce_bus_bw_bytes_per_s
    return Work(kind, time_s, moved, 0.0, moved * ic.energy_per_byte_j)


def dense_works(params, model: ModelSpec, n_seqs: int) -> DenseWorks:
    """``DenseWorks`` for ``n_seqs`` sequences on a machine (a rank view under tensor parallelism) and ``model``
    (the rank's shard)."""
    g = params.gpu
    ops = layer_ops(model, n_seqs, 0)
    pre = tuple(gpu_model.op_kernel(g, name, ops[name]) for name in DENSE_PRE)
    post = [gpu_model.op_kernel(g, name, ops[name]) for name in DENSE_POST]
    head = [gpu_model.op_kernel(g, "final_norm", final_norm_op(model, n_seqs)),
            gpu_model.op_kernel(g, "lm_head", head_op(model, n_seqs))]
    if params.tp > 1:
        x_bytes = n_seqs * model.hidden_size * model.bytes_per_element
        post.insert(DENSE_POST.index("o_proj") + 1, collective_work(params, "allreduce", x_bytes))
        post.append(collective_work(params, "allreduce", x_bytes))
        logits = n_seqs * model.vocab_size * params.tp * model.bytes_per_element
        head.append(collective_work(params, "logits_gather", logits, gather=True))
    return DenseWorks(pre, tuple(post), tuple(head))


PREFILL = "prefill"  # span kinds of prefill work start with this ("prefill.attention", "prefill.kv_store")


@dataclass(frozen=True)
class PrefillPlan:
    """One prefill step's work, the same in every layer: optional weight bytes to fetch before the layer
    (``fetch_bytes`` from ``fetch_src``, synchronously), the layer's GPU kernels, then ``store_bytes`` of K/V
    (or codes) sent from ``store_src`` to ``store_dst`` without waiting, while the next layer computes; after the
    last layer the LM head for the sequences whose prompt completes. The step ends when the GPU is done and every
    store has landed."""

    layer: tuple[Work, ...]
    head: tuple[Work, ...]
    tokens: int
    store_bytes: float = 0.0
    store_src: str = "gpu"
    store_dst: str = "gpu"
    fetch_bytes: float = 0.0
    fetch_src: str = "gpu"


def prefill_gpu_works(gpu, model: ModelSpec, chunks) -> tuple[tuple[Work, ...], tuple[Work, ...]]:
    """(per-layer kernels, LM-head kernel) of prefilling ``chunks`` on the GPU; span kinds ``prefill.<op>``."""
    ops = prefill_layer_ops(model, chunks)
    layer = tuple(gpu_model.op_kernel(gpu, f"{PREFILL}.{name}", ops[name]) for name in PREFILL_OPS)
    done = sum(1 for c in chunks if c.completes)
    head = (gpu_model.op_kernel(gpu, f"{PREFILL}.lm_head", head_op(model, done)),) if done else ()
    return layer, head


def prefill_pipeline_s(n_layers: int, compute_s: float, store_s: float, head_s: float) -> float:
    """Closed form of a ``PrefillPlan`` alone on the machine: L layers of ``compute_s`` on the GPU, each followed
    by a store of ``store_s`` on one link (a FIFO queue: store k starts when layer k ends and store k-1 has
    landed), then the head (``head_s``) after the last layer. Store k lands at c + x + (k - 1) max(c, x); the GPU
    ends at L c + h."""
    gpu_end = n_layers * compute_s + head_s
    if store_s <= 0:
        return gpu_end
    return max(gpu_end, compute_s + store_s + (n_layers - 1) * max(compute_s, store_s))


class System:
    """Base class; see the module docstring for what a subclass declares and implements."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = NoOptions
    variants: ClassVar[tuple[Mapping, ...]] = ({},)
    baseline: ClassVar[bool] = False
    # Option changes ``explain`` tries (each simulated) before it suggests one: only a confirmed gain is printed.
    what_ifs: ClassVar[tuple[Mapping, ...]] = ()

    def __init__(self, machine, model: ModelSpec, options: Options):
        self.machine = machine
        self.model = model
        self.options = options

    @classmethod
    def devices(cls, options: Options, pim: PimDeviceParams | None = None, load=None) -> Devices:
        """The devices to build the machine with; ``pim`` replaces the PIM device the options name; ``load``: a
        preset name -> ``PimDeviceParams`` to read it with (default ``hw_models.pim.load_pim``), for a caller that
        keeps the presets it has read (the closed-form evaluator builds a system per variant)."""
        return Devices()

    # Plans (and their closed forms and replayed segments) kept by ``sim.fastpath.Stepper``, least recently used out.
    plan_cache_size: ClassVar[int] = 256

    def plan_key(self, batch: StepBatch) -> Hashable:
        """What of ``batch`` the plan reads: plans and closed forms are cached on it. The default is all of it
        (every sequence's attended tokens and the longest context); a system whose plan reads less says so."""
        kept = None if batch.kept is None else batch.kept.tobytes()
        return batch.n_seqs, batch.kv_tokens, batch.max_context, kept

    def plan(self, batch: StepBatch):
        raise NotImplementedError

    def segments(self, plan) -> tuple[tuple[Callable[[], Generator], int], ...] | None:
        """The step as (generator function, count) pairs run in order, each run ``count`` times in a row; every run
        must start and end with every resource idle and nothing else in flight, and ``step`` must do exactly this.
        None: not such a chain (overlapping layers, concurrent sub-batches); the step is always simulated in full."""
        return None

    def chains(self, plan) -> tuple | None:
        """Optional, beside ``segments``: per segment, the holds its generator yields one after another when it is a
        plain chain (``sim.machine.Machine.chain_end`` gives the hold shapes), or None for a segment that forks;
        ``sim.fastpath`` then measures a run of the segment without events. None (the default): every segment
        runs with events. A chain must record exactly what its segment's generator records."""
        return None

    def step(self, plan):
        raise NotImplementedError

    def estimate(self, plan) -> Estimate:
        raise NotImplementedError

    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        raise NotImplementedError

    def fit(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        """``capacity`` whose ``details`` may be partial: a system whose details cost more than the fit (plans
        under other options) leaves them out here. Location, bytes, fit and reasons are ``capacity``'s."""
        return self.capacity(kv_bytes, peak)

    def token_budget(self, max_batch: int) -> int | None:
        return None

    # ---- prefill ---------------------------------------------------------------------------------------------
    def prefill_plan(self, chunks, resident: StepBatch) -> PrefillPlan:
        """The work of prefilling ``chunks`` (``workloads.traces.PrefillChunk``); ``resident``: every active
        sequence at the context it will have, for systems whose placement depends on the whole batch. Here: the
        K/V stay in GPU memory."""
        layer, head = prefill_gpu_works(self.machine.params.gpu, self.model, chunks)
        return PrefillPlan(layer, head, sum(c.new for c in chunks))

    def prefill_key(self, chunks, resident: StepBatch):
        """Everything ``prefill_plan`` reads, as a key under which its plan may be kept: each chunk's tokens before,
        now and in all (not which sequence it is). A system whose prefill plan reads ``resident`` adds what of it
        it reads."""
        return tuple((c.past, c.new, c.prompt) for c in chunks)

    def prefill_energy(self, plan: PrefillPlan) -> None:
        """Energy of a prefill step's parts that do no timed work (none here); added once per prefill step, by
        ``prefill`` and by the event-free paths (``sim.fastpath.Stepper.prefill_step``, ``contended_step``)
        alike."""

    def prefill(self, plan: PrefillPlan):
        """Process: the prefill step of ``plan`` (see ``PrefillPlan``)."""
        m = self.machine
        self.prefill_energy(plan)
        stores = []
        for _ in range(self.model.n_layers):
            if plan.fetch_bytes > 0:
                yield m.transfer(plan.fetch_src, "gpu", plan.fetch_bytes, f"{PREFILL}.weight_fetch")
            yield m.gpu.run(plan.layer)
            if plan.store_bytes > 0:
                stores.append(m.transfer(plan.store_src, plan.store_dst, plan.store_bytes, f"{PREFILL}.kv_store"))
        if plan.head:
            yield m.gpu.run(plan.head)
        if stores:
            yield m.env.all_of(stores)

    def prefill_estimate(self, plan: PrefillPlan) -> Estimate:
        """``prefill_pipeline_s``: exact alone on the machine when the weight fetches and the stores use
        different link resources (or one of them is absent), else a lower bound."""
        topo = self.machine.topology
        fetch = topo.route(plan.fetch_src, "gpu") if plan.fetch_bytes > 0 else None
        store = topo.route(plan.store_src, plan.store_dst) if plan.store_bytes > 0 else None
        compute = total_s(plan.layer) + (fetch.time_s(plan.fetch_bytes) if fetch else 0.0)
        x = store.time_s(plan.store_bytes) if store else 0.0
        shared = bool(fetch and store and set(fetch.resources) & set(store.resources))
        return Estimate(prefill_pipeline_s(self.model.n_layers, compute, x, total_s(plan.head)), exact=not shared)


class SeqsCache(dict):
    """Values that depend on the batch size alone (weight GEMM kernels, the LM head), kept per batch size: at most
    one entry per size up to the largest batch, so it never grows with steps."""

    def get_or(self, n_seqs: int, make):
        v = self.get(n_seqs)
        if v is None:
            v = self[n_seqs] = make(n_seqs)
        return v


class GrowingMemo(dict):
    """A memo that grows only as it pays: it holds ``start`` entries, plus one per hit so far, up to ``limit``
    (oldest out). Values that never recur (the loads of a fixed batch, whose contexts only grow) keep it small."""

    def __init__(self, start: int = 64, limit: int = 4096):
        super().__init__()
        self.start, self.limit, self.hits = start, limit, 0

    def get_or(self, key, make):
        v = self.get(key)
        if v is not None:
            self.hits += 1
            return v
        v = self[key] = make()
        while len(self) > min(self.limit, self.start + self.hits):
            del self[next(iter(self))]
        return v


def total_s(works: tuple[Work, ...]) -> float:
    return sum(w.duration_s for w in works)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def excess(need: float, capacity: float) -> str:
    """``need`` against ``capacity`` with enough digits that the two never print equal when need exceeds it."""
    digits = 1
    while digits < 6 and f"{need / 2**30:.{digits}f}" == f"{capacity / 2**30:.{digits}f}":
        digits += 1
    return f"{need / 2**30:.{digits}f} GiB, capacity {capacity / 2**30:.{digits}f} GiB"


def share(fraction: float) -> str:
    """A share as a percentage that is never printed as 0 when it is not."""
    return f"{100 * fraction:.1f}%" if fraction >= 1e-3 else f"{100 * fraction:.2g}%"
