"""GPU-only reference: the KV cache stays in GPU memory and nothing crosses a link during decoding.

The upper bound the other systems are measured against when the whole KV cache fits on the GPU (short contexts,
small batches), and AttAcc's "GPU-only" baseline for attention. Per layer, one GPU stream runs the QKV
projection, attention over the KV in HBM, the output projection and the FFN. Capacity: weights plus the whole
KV cache must fit GPU memory; when they do not, the run is still timed and reported as not fitting.
"""

from __future__ import annotations

from hw_models import gpu as gpu_model
from sim.systems.base import Capacity, Estimate, SeqsCache, StepBatch, System, dense_works, gib, total_s
from workloads.models import ModelSpec
from workloads.opgraph import kv_ops

ATTENTION_OPS = ("attn_score", "softmax", "attn_context")


class GpuSystem(System):
    """KV cache in GPU memory: the reference when everything fits."""

    name = "gpu"
    plan_cache_size = 8192  # a plan is about a dozen kernels, mostly shared per batch size: a few MB

    def __init__(self, machine, model: ModelSpec, options):
        super().__init__(machine, model, options)
        self._fixed = SeqsCache()

    def plan_key(self, batch: StepBatch):
        return batch.n_seqs, batch.kv_tokens

    def plan(self, batch: StepBatch):
        """(per-layer kernels, once-per-step kernels) of one step; the kernels that read no KV computed once per
        batch size."""
        dense = self._fixed.get_or(batch.n_seqs, lambda n: dense_works(self.machine.params, self.model, n))
        ops = kv_ops(self.model, batch.n_seqs, batch.kv_tokens)
        g = self.machine.params.gpu
        attention = tuple(gpu_model.op_kernel(g, name, ops[name]) for name in ATTENTION_OPS)
        return dense.pre + attention + dense.post, dense.head

    def estimate(self, plan) -> Estimate:
        layer, head = plan
        return Estimate(self.model.n_layers * total_s(layer) + total_s(head), exact=True)

    def segments(self, plan):
        layer, head = plan
        gpu = self.machine.gpu

        def one_layer():
            yield gpu.run(layer)

        def lm_head():
            yield gpu.run(head)

        return (one_layer, self.model.n_layers), (lm_head, 1)

    def chains(self, plan):
        layer, head = plan
        gpu = self.machine.gpu
        return ((gpu, layer),), ((gpu, head),)

    def step(self, plan):
        for segment, count in self.segments(plan):
            for _ in range(count):
                yield from segment()

    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        g, m = self.machine.params.gpu, self.model
        need = m.weight_bytes + kv_bytes
        reasons = () if need <= g.mem_capacity_bytes else (
            f"GPU memory: weights {gib(m.weight_bytes)} + KV cache {gib(kv_bytes)} exceed {gib(g.mem_capacity_bytes)}",)
        return Capacity("gpu", kv_bytes, not reasons, reasons, {"gpu_bytes_needed": need})
