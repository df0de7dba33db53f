"""KV-offload system: the KV cache lives in host DRAM and crosses PCIe every decode step (FlexGen-style).

Per layer, on one GPU stream: QKV projection; the batch's K/V for this layer host-to-device; attention on the
GPU; the new token's K/V device-to-host; output projection and FFN. Options:

* ``prefetch``: loads run on a copy stream with two KV buffers, so layer L+1's K/V cross the link while layer L
  computes; new K/V are stored asynchronously on the other direction. The step ends when the GPU is done and
  every store has landed. (Prefetch does not cross step boundaries: layer 0's load is exposed each step.)
* ``cpu_attention``: attention runs on the host CPU where the KV lives; q and the new K/V go device-to-host in
  one DMA and the attention output returns host-to-device.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw_models import cpu as cpu_model
from hw_models import gpu as gpu_model
from hw_models.component import Work
from hw_models.machine import MachineParams
from sim.errors import ConfigError
from sim.options import Options, option
from sim.systems.base import Capacity, Estimate, StepBatch, System, gib, total_s
from sim.topology import GPU, HOST_DRAM, Topology
from workloads.models import ModelSpec
from workloads.opgraph import head_op, layer_ops

ATTENTION_OPS = ("attn_score", "softmax", "attn_context")


@dataclass(frozen=True)
class OffloadCosts:
    """Per-layer work of one decode step (every layer is the same), plus the once-per-step LM head."""

    pre: tuple[Work, ...]
    attn: tuple[Work, ...]
    post: tuple[Work, ...]
    head: tuple[Work, ...]
    fetch_bytes: float    # host -> GPU per layer (KV, or the attention output with cpu_attention)
    store_bytes: float    # GPU -> host per layer (new K/V, plus q with cpu_attention)
    dram_read_bytes: float  # host DRAM bytes read per layer (by the DMA or by the CPU)


def offload_costs(params: MachineParams, model: ModelSpec, batch: StepBatch, cpu_attention: bool) -> OffloadCosts:
    ops = layer_ops(model, batch.n_seqs, batch.kv_tokens)
    g = params.gpu

    def on_gpu(name):
        op = ops[name]
        return gpu_model.kernel(g, name, op.flops, op.nbytes)

    if cpu_attention:
        attn = tuple(cpu_model.op(params.cpu, params.host_dram, name, ops[name].flops, ops[name].nbytes)
                     for name in ATTENTION_OPS)
        q_bytes = batch.n_seqs * model.q_dim * model.bytes_per_element
        fetch, store = q_bytes, ops["kv_append"].kv_bytes + q_bytes
        dram_read = ops["kv_fetch"].kv_bytes
    else:
        attn = tuple(on_gpu(name) for name in ATTENTION_OPS)
        fetch, store = ops["kv_fetch"].kv_bytes, ops["kv_append"].kv_bytes
        dram_read = fetch
    head = head_op(model, batch.n_seqs)
    return OffloadCosts(
        pre=(on_gpu("qkv_proj"),), attn=attn, post=(on_gpu("o_proj"), on_gpu("ffn")),
        head=(gpu_model.kernel(g, "lm_head", head.flops, head.nbytes),),
        fetch_bytes=fetch, store_bytes=store, dram_read_bytes=dram_read)


def offload_estimate(c: OffloadCosts, topology: Topology, n_layers: int, prefetch: bool,
                     cpu_attention: bool) -> Estimate:
    """Closed form: a single chain per layer (exact), or with prefetch the largest of the GPU's total work, all
    loads plus the last layer's compute, all stores, and (half duplex) both directions on one resource."""
    n = n_layers
    h2d = topology.route(HOST_DRAM, GPU).time_s(c.fetch_bytes)
    d2h = topology.route(GPU, HOST_DRAM).time_s(c.store_bytes)
    pre, attn, post, head = total_s(c.pre), total_s(c.attn), total_s(c.post), total_s(c.head)
    if cpu_attention or not prefetch:
        return Estimate(n * (pre + h2d + attn + d2h + post) + head, exact=True)
    half = topology.params.pcie.duplex == "half"
    bound = max(
        n * (pre + attn + post) + head,
        n * h2d + attn + post + head,            # all loads, then the last layer's compute
        pre + n * d2h,                            # first store cannot start before the first projection
        n * (h2d + d2h) if half else 0.0,        # one shared resource carries both directions
    )
    return Estimate(bound, exact=False)


@dataclass(frozen=True)
class OffloadOptions(Options):
    prefetch: bool = option(False, "load the next layer's KV while this layer computes (two KV buffers)")
    cpu_attention: bool = option(False, "compute attention on the host CPU; only q and outputs cross PCIe")

    def check(self) -> None:
        if self.prefetch and self.cpu_attention:
            raise ConfigError("prefetch and cpu_attention cannot be combined: with attention on the host no KV "
                              "crosses the link to prefetch")


class OffloadSystem(System):
    """KV cache in host DRAM, over PCIe to the GPU each step (FlexGen-style)."""

    name = "offload"
    Options = OffloadOptions
    variants = ({}, {"prefetch": True}, {"cpu_attention": True})
    baseline = True

    def __init__(self, machine, model: ModelSpec, options: OffloadOptions):
        super().__init__(machine, model, options)
        self.prefetch = options.prefetch
        self.cpu_attention = options.cpu_attention

    def plan(self, batch: StepBatch) -> OffloadCosts:
        return offload_costs(self.machine.params, self.model, batch, self.cpu_attention)

    def estimate(self, plan: OffloadCosts) -> Estimate:
        return offload_estimate(plan, self.machine.topology, self.model.n_layers, self.prefetch, self.cpu_attention)

    def step(self, c: OffloadCosts):
        if self.cpu_attention:
            yield from self._step_cpu_attention(c)
        elif self.prefetch:
            yield from self._step_prefetch(c)
        else:
            yield from self._step_sync(c)

    def _dram_energy(self, nbytes: float) -> None:
        self.machine.tracer.add_energy(HOST_DRAM, nbytes * self.machine.params.host_dram.energy_per_byte_j)

    def _step_sync(self, c: OffloadCosts):
        m = self.machine
        for _ in range(self.model.n_layers):
            yield m.gpu.run(c.pre)
            yield m.transfer(HOST_DRAM, GPU, c.fetch_bytes, "kv_fetch")
            yield m.gpu.run(c.attn)
            yield m.transfer(GPU, HOST_DRAM, c.store_bytes, "kv_append")
            yield m.gpu.run(c.post)
        yield m.gpu.run(c.head)

    def _step_cpu_attention(self, c: OffloadCosts):
        m = self.machine
        for _ in range(self.model.n_layers):
            yield m.gpu.run(c.pre)
            yield m.transfer(GPU, HOST_DRAM, c.store_bytes, "q_and_kv_append")
            yield m.cpu.run(c.attn)
            self._dram_energy(c.dram_read_bytes)
            yield m.transfer(HOST_DRAM, GPU, c.fetch_bytes, "attn_out")
            yield m.gpu.run(c.post)
        yield m.gpu.run(c.head)

    def _step_prefetch(self, c: OffloadCosts):
        m, env, n = self.machine, self.machine.env, self.model.n_layers
        fetched = [env.event() for _ in range(n)]
        attn_done = [env.event() for _ in range(n)]

        def loader():
            for layer in range(n):
                if layer >= 2:  # two KV buffers: wait until layer-2's buffer is free
                    yield attn_done[layer - 2]
                yield m.transfer(HOST_DRAM, GPU, c.fetch_bytes, "kv_fetch")
                fetched[layer].succeed()

        env.process(loader())
        stores = []
        for layer in range(n):
            yield m.gpu.run(c.pre)
            stores.append(m.transfer(GPU, HOST_DRAM, c.store_bytes, "kv_append"))
            yield fetched[layer]
            yield m.gpu.run(c.attn)
            attn_done[layer].succeed()
            yield m.gpu.run(c.post)
        yield m.gpu.run(c.head)
        yield env.all_of(stores)

    def capacity(self, kv_bytes: float, peak_batch: StepBatch) -> Capacity:
        p, model = self.machine.params, self.model
        reasons = []
        if kv_bytes > p.host_dram.capacity_bytes:
            reasons.append(f"KV cache {gib(kv_bytes)} exceeds host DRAM {gib(p.host_dram.capacity_bytes)}")
        layer_kv = peak_batch.kv_tokens * model.kv_bytes_per_token_per_layer
        buffers = 0 if self.cpu_attention else (2 if self.prefetch else 1) * layer_kv
        gpu_need = model.weight_bytes + buffers
        if gpu_need > p.gpu.mem_capacity_bytes:
            what = f"weights {gib(model.weight_bytes)}" + (f" + KV buffers {gib(buffers)}" if buffers else "")
            reasons.append(f"GPU memory: {what} exceed {gib(p.gpu.mem_capacity_bytes)}")
        return Capacity(HOST_DRAM, kv_bytes, not reasons, tuple(reasons),
                        {"gpu_bytes_needed": gpu_need, "host_dram_capacity_bytes": p.host_dram.capacity_bytes})
