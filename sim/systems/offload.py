"""Offload system (FlexGen-style): weights and KV cache placed by fraction on GPU memory and host DRAM.

**Placement** (FlexGen's policy, GPU and CPU tiers; see docs/offload.md). ``weights_gpu_fraction`` of every
layer's weights (and of the embeddings) stays in GPU memory and the rest streams host-to-device each step, layer
by layer, into a buffer; ``kv_gpu_fraction`` of every sequence's tokens, in every layer, stays in GPU memory and
is attended there, while the rest crosses PCIe each step (or, with ``cpu_attention``, is attended on the host
CPU where it lives). The new token's K/V follow the same split: the host share goes device-to-host. ``auto``
(the default of both) is the most that fits: the weights first, all of them if they fit beside the working
buffers, then the KV cache in what is left; with ``cpu_attention`` the KV-first corner is also evaluated and the
faster of the two (by the closed form) is kept. The KV share at ``auto`` is computed per step from that step's cache,
so it falls as contexts grow (``place`` gives the formulas).

Per layer, on one GPU stream (sync schedule): the layer's streamed weights host-to-device; QKV projection; the
streamed KV host-to-device; attention on the GPU over all the layer's tokens; the host share of the new K/V
device-to-host; output projection and FFN. Then the LM head (its streamed weights first). Options:

* ``prefetch``: loads run on a copy stream with two buffers, so layer L+1's weights and KV cross the link while
  layer L computes (a KV buffer is free once its layer's attention is done, a weight buffer once its FFN is
  done); new K/V are stored asynchronously on the other direction. The step ends when the GPU is done and every
  store has landed. Prefetch does not cross step boundaries: layer 0's loads are exposed each step.
* ``cpu_attention`` (FlexGen's ``cpu_cache_compute``): the host share of the cache is attended on the host CPU
  where it lives (q and the host share of the new K/V go device-to-host, the partial output and its softmax
  statistics return), the resident share on the GPU at the same time; the GPU merges the two partial softmaxes.
  ``cpu_kernel`` says how fast the host attends: ``flexgen`` (FlexGen's own kernel, FP16 converted to FP32 and
  ``torch.bmm``: the CPU preset's ``flops_efficiency``, calibrated to FlexGen's measured throughput) or
  ``bandwidth`` (a vectorised kernel such as NEO's ISPC ``PACPU``, whose time is the host DRAM read of the KV at
  the rate of its access pattern: the arithmetic, about 2 FLOP per byte, never binds on an AVX-512 socket).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hw_models import cpu as cpu_model
from hw_models import gpu as gpu_model
from hw_models.component import Work
from hw_models.machine import MachineParams
from hw_models.params import override
from sim.errors import ConfigError
from sim.options import Options, option
from sim.systems.base import (
    Capacity,
    DenseWorks,
    Estimate,
    GrowingMemo,
    PrefillPlan,
    SeqsCache,
    StepBatch,
    System,
    dense_works,
    gib,
    total_s,
)
from sim.topology import GPU, HOST_DRAM, Topology
from workloads.models import ModelSpec
from workloads.opgraph import kv_ops

ATTENTION_OPS = ("attn_score", "softmax", "attn_context")
AUTO = "auto"

# GPU memory kept free of placement: the CUDA context takes about 0.4 GB with lazy module loading (CUDA >= 11.7,
# PyTorch's default) and over 1 GB without (R: pytorch/pytorch issues #107667 and #109888, maintainers'
# measurements); the rest of the 2 GiB is left for library workspaces (cuBLAS) and the caching allocator's
# rounding (I). A property of the GPU and its software stack, not of the offload policy.
GPU_RESERVED_BYTES = 2 * 2**30
# Partial softmax statistics returned with a partial attention output: running max and sum, FP32, per query head.
SOFTMAX_STATS_BYTES = 8


def parse_fraction(name: str, text: str) -> float | None:
    """``auto`` -> None; a number in [0, 1] -> that number; anything else is a ConfigError."""
    if text == AUTO:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1] or {AUTO}, got {text!r}")
    return value


def activation_bytes(model: ModelSpec, n_seqs: int, tokens: float) -> float:
    """GPU activations of one step (I): one layer's live tensors as the kernels here read and write them (hidden
    state in and out, q, the new K/V, the FFN intermediates, scores and their softmax) plus FP32 logits."""
    m, e = model, model.bytes_per_element
    per_seq = 2 * m.hidden_size + m.q_dim + 2 * m.kv_dim + (2 if m.ffn_gated else 1) * m.ffn_size
    return n_seqs * per_seq * e + 2.0 * tokens * m.n_heads * e + 4.0 * n_seqs * m.vocab_size


@dataclass(frozen=True)
class Placement:
    """Where one step's weights and KV cache live, and what that takes of GPU memory (bytes)."""

    kv_fraction: float            # resident share of every sequence's tokens, in every layer
    weights_fraction: float       # resident share of every layer's weights and of the embeddings
    kv_bytes: float               # the whole cache at this step (its new token included)
    weight_bytes: float
    kv_buffer_bytes: float        # streamed KV of one layer, two with prefetch (none with cpu_attention)
    weight_buffer_bytes: float    # streamed weights of the largest unit (a layer or the LM head), two with prefetch
    activation_bytes: float
    reserved_bytes: float
    gpu_capacity_bytes: float

    @property
    def kv_gpu_bytes(self) -> float:
        return self.kv_fraction * self.kv_bytes

    @property
    def weights_gpu_bytes(self) -> float:
        return self.weights_fraction * self.weight_bytes

    @property
    def buffer_bytes(self) -> float:
        return self.kv_buffer_bytes + self.weight_buffer_bytes

    @property
    def gpu_used_bytes(self) -> float:
        return (self.reserved_bytes + self.activation_bytes + self.buffer_bytes + self.weights_gpu_bytes
                + self.kv_gpu_bytes)

    @property
    def host_bytes(self) -> float:
        return (1.0 - self.kv_fraction) * self.kv_bytes + (1.0 - self.weights_fraction) * self.weight_bytes

    @property
    def fits_gpu(self) -> bool:
        return self.gpu_used_bytes <= self.gpu_capacity_bytes * (1 + 1e-12)

    def gpu_text(self) -> str:
        return (f"weights {100 * self.weights_fraction:.1f}% {gib(self.weights_gpu_bytes)} + KV "
                f"{100 * self.kv_fraction:.1f}% {gib(self.kv_gpu_bytes)} + buffers {gib(self.buffer_bytes)} + "
                f"activations {gib(self.activation_bytes)} + reserve {gib(self.reserved_bytes)} = "
                f"{gib(self.gpu_used_bytes)}")


def head_weight_bytes(model: ModelSpec) -> float:
    return float(model.vocab_size * model.hidden_size * model.bytes_per_element)


def place(model: ModelSpec, gpu_capacity_bytes: float, n_seqs: int, cache_tokens: float, kv: float | None,
          weights: float | None, prefetch: bool, cpu_attention: bool,
          reserved_bytes: float = GPU_RESERVED_BYTES) -> Placement:
    """The placement of one step: given fractions are kept; ``None`` (auto) is the most that fits.

    GPU memory used, with w and f the resident shares of weights and KV, L layers, k buffers (1, or 2 with
    prefetch), W and KV the whole weights and cache, W_u the largest streamed unit (a layer's weights or the LM
    head) and KV_l one layer's cache:

        used(w, f) = reserve + activations + w W + k (1-w) W_u [w < 1] + f KV + k (1-f) KV_l [not cpu_attention]

    Weights first: w = 1 when used(1, 0) fits, else the largest w with used(w, 0) <= capacity (then f = 0). Then
    f = min(1, (capacity - used(w, 0)) / (KV - k KV_l)): each resident KV byte takes one byte and frees k/L of a
    byte of buffer. With an explicit fraction the other one fills what is left (down to 0; the step is then
    reported as not fitting). When neither is given and even w = 0, f = 0 does not fit, it is a ConfigError.
    """
    m = model
    k = 2 if prefetch else 1
    kv_total = float(cache_tokens) * m.kv_bytes_per_token
    kv_layer = kv_total / m.n_layers
    w_total = float(m.weight_bytes)
    w_unit = max(float(m.layer_weight_bytes), head_weight_bytes(m))
    kv_buf_per_host = 0.0 if cpu_attention else min(k, m.n_layers) * kv_layer   # times (1 - f)
    w_buf = k * w_unit                                                             # times (1 - w), when w < 1
    fixed = reserved_bytes + activation_bytes(m, n_seqs, cache_tokens)

    def used(w: float, f: float) -> float:
        return (fixed + w * w_total + (w_buf * (1 - w) if w < 1 else 0.0) + f * kv_total
                + kv_buf_per_host * (1 - f))

    cap = gpu_capacity_bytes
    weights_auto = weights is None
    if weights is None:
        f_min = 0.0 if kv is None else kv
        if used(1.0, f_min) <= cap:
            weights = 1.0
        else:
            slope = w_total - w_buf
            room = cap - used(0.0, f_min)
            if room < 0 or slope <= 0:
                if kv is None:
                    raise ConfigError(
                        f"offload: {m.name} does not fit {gib(cap)} of GPU memory even with every weight and KV "
                        f"byte streamed: one layer's buffers ({gib(w_buf + kv_buf_per_host)}) + activations "
                        f"({gib(fixed - reserved_bytes)}) + reserve ({gib(reserved_bytes)}) = "
                        f"{gib(used(0.0, 0.0))}")
                weights = 0.0
            else:
                weights = min(1.0, room / slope)
    if kv is None:
        slope = kv_total - kv_buf_per_host
        room = cap - used(weights, 0.0)
        if room <= 0 or (weights_auto and weights < 1):  # weights first: auto weights < 1 left no room
            kv = 0.0
        elif slope <= 0:       # as few layers as buffers: streaming frees no memory
            kv = 1.0 if used(weights, 1.0) <= cap else 0.0
        else:
            kv = min(1.0, room / slope)
    return Placement(kv, weights, kv_total, w_total, kv_buf_per_host * (1 - kv),
                     w_buf * (1 - weights) if weights < 1 else 0.0, fixed - reserved_bytes, reserved_bytes, cap)


@dataclass(frozen=True)
class OffloadCosts:
    """Per-layer work of one decode step (every layer is the same), plus the once-per-step LM head."""

    pre: tuple[Work, ...]
    attn: tuple[Work, ...]        # attention on the GPU (all tokens; the resident share with cpu_attention)
    post: tuple[Work, ...]
    head: tuple[Work, ...]
    cpu_attn: tuple[Work, ...]    # cpu_attention: attention on the host CPU over the host share
    merge: tuple[Work, ...]       # cpu_attention with both shares: the GPU merges the two partial softmaxes
    weight_fetch_bytes: float     # host -> GPU per layer: the streamed share of the layer's weights
    head_fetch_bytes: float       # host -> GPU per step: the streamed share of the LM head
    kv_fetch_bytes: float         # host -> GPU per layer: the host share of the KV (GPU attention)
    store_bytes: float            # GPU -> host per layer: the host share of the new K/V (plus q with cpu_attention)
    out_fetch_bytes: float        # host -> GPU per layer: the CPU's partial attention output (cpu_attention)
    dram_read_bytes: float        # host DRAM bytes the CPU reads per layer (cpu_attention)
    placement: Placement


def offload_costs(params: MachineParams, model: ModelSpec, batch: StepBatch, kv: float | None,
                  weights: float | None, prefetch: bool, cpu_attention: bool,
                  cpu_kernel: str = "flexgen", dense: DenseWorks | None = None) -> OffloadCosts:
    """``dense``: the step's ``dense_works`` when the caller keeps them per batch size."""
    m, g = model, params.gpu
    host_cpu = params.cpu if cpu_kernel == "flexgen" else override(params.cpu, flops_efficiency=1.0)
    pl = place(m, g.mem_capacity_bytes, batch.n_seqs, batch.kv_tokens + batch.n_seqs, kv, weights, prefetch,
               cpu_attention)
    f, w = pl.kv_fraction, pl.weights_fraction
    ops = kv_ops(m, batch.n_seqs, batch.kv_tokens)
    new_kv = ops["kv_append"].kv_bytes

    def on_gpu(name, op=None):
        return gpu_model.op_kernel(g, name, op or ops[name])

    cpu_attn: tuple[Work, ...] = ()
    merge: tuple[Work, ...] = ()
    out_fetch = dram_read = kv_fetch = 0.0
    if cpu_attention:
        host_tokens = (1.0 - f) * batch.kv_tokens
        gpu_tokens = f * batch.kv_tokens
        attn: tuple[Work, ...] = ()
        store = (1.0 - f) * new_kv
        if f > 0:
            gops = kv_ops(m, batch.n_seqs, gpu_tokens)
            attn = tuple(on_gpu(name, gops[name]) for name in ATTENTION_OPS)
        if f < 1:
            hops = kv_ops(m, batch.n_seqs, host_tokens)
            cpu_attn = tuple(cpu_model.op(host_cpu, params.host_dram, name, hops[name].flops, hops[name].nbytes)
                             for name in ATTENTION_OPS)
            q_bytes = batch.n_seqs * m.q_dim * m.bytes_per_element
            stats = batch.n_seqs * m.n_heads * SOFTMAX_STATS_BYTES if f > 0 else 0.0
            store += q_bytes
            out_fetch = q_bytes + stats
            dram_read = hops["kv_fetch"].kv_bytes
            if f > 0:
                partials = 2 * (q_bytes + stats)
                merge = (gpu_model.items_kernel(g, "attn_merge", 4.0 * partials / m.bytes_per_element,
                                                 partials + q_bytes, batch.n_seqs * m.n_heads),)
    else:
        attn = tuple(on_gpu(name) for name in ATTENTION_OPS)
        kv_fetch = (1.0 - f) * ops["kv_fetch"].kv_bytes
        store = (1.0 - f) * new_kv
    dense = dense or dense_works(params, m, batch.n_seqs)
    return OffloadCosts(
        pre=dense.pre, attn=attn, post=dense.post, head=dense.head, cpu_attn=cpu_attn, merge=merge,
        weight_fetch_bytes=(1.0 - w) * m.layer_weight_bytes, head_fetch_bytes=(1.0 - w) * head_weight_bytes(m),
        kv_fetch_bytes=kv_fetch, store_bytes=store, out_fetch_bytes=out_fetch, dram_read_bytes=dram_read,
        placement=pl)


def offload_estimate(c: OffloadCosts, topology: Topology, n_layers: int, prefetch: bool) -> Estimate:
    """Closed form: the sync and cpu_attention schedules are one chain per layer (the CPU's share and the GPU's
    share of attention a fork whose branches share no resource), so exact. With prefetch, a lower bound: the
    largest of the GPU's total work; all loads on the link plus what must follow the last one; all stores after
    the first projection; the first layer's loads before its attention; (half duplex) both directions on one
    resource."""
    n = n_layers
    h2d, d2h = topology.route(HOST_DRAM, GPU), topology.route(GPU, HOST_DRAM)

    def load(nbytes):
        return h2d.time_s(nbytes) if nbytes > 0 else 0.0

    wl, hw, kv, out = load(c.weight_fetch_bytes), load(c.head_fetch_bytes), load(c.kv_fetch_bytes), \
        load(c.out_fetch_bytes)
    st = d2h.time_s(c.store_bytes) if c.store_bytes > 0 else 0.0
    pre, attn, post, head = total_s(c.pre), total_s(c.attn), total_s(c.post), total_s(c.head)
    if not prefetch:
        host_path = st + total_s(c.cpu_attn) + out if c.cpu_attn else 0.0
        gpu_path = attn if c.cpu_attn else kv + attn + st
        per_layer = wl + pre + max(host_path, gpu_path) + total_s(c.merge) + post
        return Estimate(n * per_layer + hw + head, exact=True)
    gpu_total = n * (pre + attn + post) + head
    if hw > 0:
        after_loads = head
    elif kv > 0:
        after_loads = attn + post + head
    elif wl > 0:
        after_loads = pre + attn + post + head
    else:
        after_loads = 0.0
    half = topology.params.pcie.duplex == "half"
    bound = max(
        gpu_total,
        n * (wl + kv) + hw + after_loads,
        wl + max(pre, kv) - pre + gpu_total,           # layer 0: its weights, then its KV, before its attention
        wl + pre + n * st,                             # the first store cannot start before the first projection
        n * (wl + kv + st) + hw if half else 0.0,      # one shared resource carries both directions
    )
    return Estimate(bound, exact=False)


CPU_KERNELS = ("flexgen", "bandwidth")


@dataclass(frozen=True)
class OffloadOptions(Options):
    prefetch: bool = option(False, "load the next layer's weights and KV while this layer computes (two buffers)")
    cpu_attention: bool = option(False, "attend the host share of the KV cache on the host CPU (only q, the new "
                                 "K/V and outputs cross PCIe); the GPU attends its resident share")
    cpu_kernel: str = option("flexgen", "with cpu_attention, the host's attention kernel: flexgen (FlexGen's FP32 "
                             "torch.bmm, at the CPU preset's calibrated flops_efficiency) or bandwidth (a vectorised "
                             "kernel bound by the host DRAM read, as NEO's PACPU)", choices=CPU_KERNELS)
    kv_gpu_fraction: str = option(AUTO, "share of every sequence's KV tokens kept in GPU memory: a number in "
                                  "[0, 1], or auto (the most that fits beside the weights and buffers)")
    weights_gpu_fraction: str = option(AUTO, "share of every layer's weights kept in GPU memory (the rest streams "
                                       "over PCIe each step): a number in [0, 1], or auto (all, if they fit)")

    def check(self) -> None:
        parse_fraction("kv_gpu_fraction", self.kv_gpu_fraction)
        parse_fraction("weights_gpu_fraction", self.weights_gpu_fraction)
        if self.cpu_kernel != "flexgen" and not self.cpu_attention:
            raise ConfigError(f"cpu_kernel = {self.cpu_kernel!r} applies only with cpu_attention = true (without it "
                              "the host does no attention)")
        if self.prefetch and self.cpu_attention:
            raise ConfigError("prefetch and cpu_attention cannot be combined: the overlap of weight loads with "
                              "attention on the host is not modelled (with weights resident no KV crosses the "
                              "link to prefetch)")

    @property
    def kv_fraction(self) -> float | None:
        return parse_fraction("kv_gpu_fraction", self.kv_gpu_fraction)

    @property
    def weights_fraction(self) -> float | None:
        return parse_fraction("weights_gpu_fraction", self.weights_gpu_fraction)


class OffloadSystem(System):
    """Weights and KV cache by fraction in GPU memory and host DRAM; the host share over PCIe each step."""

    name = "offload"
    Options = OffloadOptions
    # Auto placement (the most that fits), and the whole KV cache in host DRAM for reference.
    variants = ({}, {"prefetch": True}, {"cpu_attention": True}, {"cpu_attention": True, "cpu_kernel": "bandwidth"},
                {"kv_gpu_fraction": "0"})
    baseline = True
    what_ifs = ({"prefetch": True}, {"cpu_attention": True, "cpu_kernel": "bandwidth"},
                {"kv_gpu_fraction": "auto", "weights_gpu_fraction": "auto"})
    plan_cache_size = 8192  # a plan is a dozen kernels and numbers: the cache stays a few MB

    def __init__(self, machine, model: ModelSpec, options: OffloadOptions):
        super().__init__(machine, model, options)
        self.prefetch = options.prefetch
        self.cpu_attention = options.cpu_attention
        self.kv_fraction = options.kv_fraction
        self.weights_fraction = options.weights_fraction
        self._dense = SeqsCache()  # the kernels that read no KV, per batch size
        self._resident = GrowingMemo()  # placement of a prefill step's resident batch, per plan_key

    def plan_key(self, batch: StepBatch):
        return batch.n_seqs, batch.kv_tokens

    def plan(self, batch: StepBatch) -> OffloadCosts:
        costs = self._costs(batch, self.kv_fraction, self.weights_fraction)
        if self.cpu_attention and self.kv_fraction is None and self.weights_fraction is None:
            # Weights first or KV first? With cpu_attention a host KV byte costs CPU time and a host weight byte
            # PCIe time, so the better corner depends on the CPU kernel: keep the faster by the closed form.
            kv_first = place(self.model, self.machine.params.gpu.mem_capacity_bytes, batch.n_seqs,
                             batch.kv_tokens + batch.n_seqs, None, 0.0, False, True).kv_fraction
            if kv_first > costs.placement.kv_fraction:
                other = self._costs(batch, kv_first, None)
                if other.placement.fits_gpu and self.estimate(other).latency_s < self.estimate(costs).latency_s:
                    return other
        return costs

    def _costs(self, batch: StepBatch, kv: float | None, weights: float | None) -> OffloadCosts:
        dense = self._dense.get_or(batch.n_seqs, lambda n: dense_works(self.machine.params, self.model, n))
        return offload_costs(self.machine.params, self.model, batch, kv, weights, self.prefetch, self.cpu_attention,
                             self.options.cpu_kernel, dense)

    def estimate(self, plan: OffloadCosts) -> Estimate:
        return offload_estimate(plan, self.machine.topology, self.model.n_layers, self.prefetch)

    def step(self, c: OffloadCosts):
        if self.prefetch:
            yield from self._step_prefetch(c)
        else:
            yield from self._step_sync(c)

    # ---- prefill ---------------------------------------------------------------------------------------------
    def prefill_plan(self, chunks, resident: StepBatch) -> PrefillPlan:
        """The GPU prefills; per layer the host share (1 - kv_gpu_fraction, the placement of the ``resident``
        batch) of the new K/V goes to host DRAM over PCIe device-to-host, and the streamed share of the layer's
        weights comes first host-to-device, as in a decode step."""
        base = super().prefill_plan(chunks, resident)
        pl = self._resident_placement(resident)
        new_kv = sum(c.new for c in chunks) * self.model.kv_bytes_per_token_per_layer
        return PrefillPlan(base.layer, base.head, base.tokens, store_bytes=(1.0 - pl.kv_fraction) * new_kv,
                           store_src=GPU, store_dst=HOST_DRAM,
                           fetch_bytes=(1.0 - pl.weights_fraction) * self.model.layer_weight_bytes,
                           fetch_src=HOST_DRAM)

    def prefill_key(self, chunks, resident: StepBatch):
        """Of ``resident``, its placement's two fractions decide the stores and weight fetches: they are the key
        (not the batch, which is new every step while the fractions rarely change)."""
        pl = self._resident_placement(resident)
        return super().prefill_key(chunks, resident), pl.kv_fraction, pl.weights_fraction

    def _resident_placement(self, resident: StepBatch):
        return self._resident.get_or(self.plan_key(resident), lambda: self.plan(resident).placement)

    def prefill_energy(self, plan: PrefillPlan) -> None:
        """Host DRAM reads and writes behind the weight fetches and the K/V stores."""
        self._dram_energy(self.model.n_layers * (plan.store_bytes + plan.fetch_bytes))

    def _dram_energy(self, nbytes: float) -> None:
        self.machine.tracer.add_energy(HOST_DRAM, nbytes * self.machine.params.host_dram.energy_per_byte_j)

    def _host_attention(self, c: OffloadCosts):
        m = self.machine
        yield m.transfer(GPU, HOST_DRAM, c.store_bytes, "q_and_kv_append")
        yield m.cpu.run(c.cpu_attn)
        self._dram_energy(c.dram_read_bytes)
        yield m.transfer(HOST_DRAM, GPU, c.out_fetch_bytes, "attn_out")

    def segments(self, c: OffloadCosts):
        """Without prefetch every layer is the same chain (a fork to the host CPU joined before the merge), then the
        LM head: replayable. With prefetch layers overlap: None."""
        if self.prefetch:
            return None
        return (lambda: self._layer_sync(c), self.model.n_layers), (lambda: self._head_sync(c), 1)

    def chains(self, c: OffloadCosts):
        """The holds of ``_layer_sync`` (not with CPU attention, which forks) and ``_head_sync``."""
        if self.prefetch:
            return None
        gpu = self.machine.gpu
        layer = None
        if not c.cpu_attn:
            layer = ((((HOST_DRAM, GPU, c.weight_fetch_bytes, "weight_fetch"),) if c.weight_fetch_bytes > 0 else ())
                     + ((gpu, c.pre),)
                     + (((HOST_DRAM, GPU, c.kv_fetch_bytes, "kv_fetch"),) if c.kv_fetch_bytes > 0 else ())
                     + ((gpu, c.attn),)
                     + (((GPU, HOST_DRAM, c.store_bytes, "kv_append"),) if c.store_bytes > 0 else ())
                     + ((gpu, c.post),))
        head = (((HOST_DRAM, GPU, c.head_fetch_bytes, "weight_fetch"),) if c.head_fetch_bytes > 0 else ()) \
            + ((gpu, c.head),)
        return layer, head

    def _step_sync(self, c: OffloadCosts):
        for segment, count in self.segments(c):
            for _ in range(count):
                yield from segment()

    def _layer_sync(self, c: OffloadCosts):
        m, env = self.machine, self.machine.env
        if c.weight_fetch_bytes > 0:
            yield m.transfer(HOST_DRAM, GPU, c.weight_fetch_bytes, "weight_fetch")
        yield m.gpu.run(c.pre)
        if c.cpu_attn:
            paths = [env.process(self._host_attention(c))]
            if c.attn:
                paths.append(m.gpu.run(c.attn))
            yield env.all_of(paths)
            if c.merge:
                yield m.gpu.run(c.merge)
        else:
            if c.kv_fetch_bytes > 0:
                yield m.transfer(HOST_DRAM, GPU, c.kv_fetch_bytes, "kv_fetch")
            yield m.gpu.run(c.attn)
            if c.store_bytes > 0:
                yield m.transfer(GPU, HOST_DRAM, c.store_bytes, "kv_append")
        yield m.gpu.run(c.post)

    def _head_sync(self, c: OffloadCosts):
        m = self.machine
        if c.head_fetch_bytes > 0:
            yield m.transfer(HOST_DRAM, GPU, c.head_fetch_bytes, "weight_fetch")
        yield m.gpu.run(c.head)

    def _step_prefetch(self, c: OffloadCosts):
        m, env, n = self.machine, self.machine.env, self.model.n_layers
        weights_ready = [env.event() for _ in range(n)]
        kv_ready = [env.event() for _ in range(n)]
        attn_done = [env.event() for _ in range(n)]
        layer_done = [env.event() for _ in range(n)]
        head_ready = env.event()

        def loader():
            # Two buffers of each kind: layer L reuses layer L-2's, free once that layer no longer reads it.
            for layer in range(n):
                if c.weight_fetch_bytes > 0:
                    if layer >= 2:
                        yield layer_done[layer - 2]
                    yield m.transfer(HOST_DRAM, GPU, c.weight_fetch_bytes, "weight_fetch")
                    weights_ready[layer].succeed()
                if c.kv_fetch_bytes > 0:
                    if layer >= 2:
                        yield attn_done[layer - 2]
                    yield m.transfer(HOST_DRAM, GPU, c.kv_fetch_bytes, "kv_fetch")
                    kv_ready[layer].succeed()
            if c.head_fetch_bytes > 0:
                if n >= 2:
                    yield layer_done[n - 2]
                yield m.transfer(HOST_DRAM, GPU, c.head_fetch_bytes, "weight_fetch")
                head_ready.succeed()

        env.process(loader())
        stores = []
        for layer in range(n):
            if c.weight_fetch_bytes > 0:
                yield weights_ready[layer]
            yield m.gpu.run(c.pre)
            if c.store_bytes > 0:
                stores.append(m.transfer(GPU, HOST_DRAM, c.store_bytes, "kv_append"))
            if c.kv_fetch_bytes > 0:
                yield kv_ready[layer]
            yield m.gpu.run(c.attn)
            attn_done[layer].succeed()
            yield m.gpu.run(c.post)
            layer_done[layer].succeed()
        if c.head_fetch_bytes > 0:
            yield head_ready
        yield m.gpu.run(c.head)
        yield env.all_of(stores)

    def capacity(self, kv_bytes: float, peak_batch: StepBatch) -> Capacity:
        p, model = self.machine.params, self.model
        c = self.plan(peak_batch)
        pl = c.placement
        reasons = []
        if pl.host_bytes > p.host_dram.capacity_bytes:
            host_kv, host_w = (1 - pl.kv_fraction) * pl.kv_bytes, (1 - pl.weights_fraction) * pl.weight_bytes
            what = f"KV cache {gib(host_kv)}" + (f" + weights {gib(host_w)}" if host_w else "")
            reasons.append(f"{what} {'exceed' if host_w else 'exceeds'} host DRAM {gib(p.host_dram.capacity_bytes)}")
        if not pl.fits_gpu:
            reasons.append(f"GPU memory: {pl.gpu_text()} exceed {gib(pl.gpu_capacity_bytes)}")
        f = pl.kv_fraction
        where = "gpu" if f >= 1 else HOST_DRAM if f <= 0 else f"gpu+{HOST_DRAM}"
        n = model.n_layers
        details = {
            "kv_gpu_fraction": f, "kv_gpu_bytes": pl.kv_gpu_bytes, "kv_host_bytes": (1 - f) * pl.kv_bytes,
            "kv_streamed_bytes_per_step": n * c.kv_fetch_bytes,
            "weights_gpu_fraction": pl.weights_fraction, "weights_gpu_bytes": pl.weights_gpu_bytes,
            "weights_host_bytes": (1 - pl.weights_fraction) * pl.weight_bytes,
            "weights_streamed_bytes_per_step": n * c.weight_fetch_bytes + c.head_fetch_bytes,
            "gpu_kv_buffer_bytes": pl.kv_buffer_bytes, "gpu_weight_buffer_bytes": pl.weight_buffer_bytes,
            "gpu_activation_bytes": pl.activation_bytes, "gpu_reserved_bytes": pl.reserved_bytes,
            "gpu_used_bytes": pl.gpu_used_bytes, "gpu_free_bytes": pl.gpu_capacity_bytes - pl.gpu_used_bytes,
            "gpu_capacity_bytes": pl.gpu_capacity_bytes, "gpu_bytes_needed": pl.gpu_used_bytes,
            "host_dram_used_bytes": pl.host_bytes, "host_dram_capacity_bytes": p.host_dram.capacity_bytes,
        }
        return Capacity(where, kv_bytes, not reasons, tuple(reasons), details)
