"""GPU-only reference: the KV cache stays in GPU memory and nothing crosses a link during decoding.

The upper bound the other systems are measured against when the whole KV cache fits on the GPU (short contexts,
small batches), and AttAcc's "GPU-only" baseline for attention. Per layer, one GPU stream runs the QKV
projection, attention over the KV in HBM, the output projection and the FFN. Capacity: weights plus the whole
KV cache must fit GPU memory; when they do not, the run is still timed and reported as not fitting.
"""

from __future__ import annotations

from hw_models import gpu as gpu_model
from sim.systems.base import Capacity, Estimate, StepBatch, System, gib, total_s
from workloads.models import ModelSpec
from workloads.opgraph import head_op, layer_ops

LAYER_OPS = ("qkv_proj", "attn_score", "softmax", "attn_context", "o_proj", "ffn")


def gpu_costs(params, model: ModelSpec, batch: StepBatch):
    """(per-layer kernels, LM-head kernel) of one step."""
    ops = layer_ops(model, batch.n_seqs, batch.kv_tokens)
    layer = tuple(gpu_model.op_kernel(params.gpu, name, ops[name]) for name in LAYER_OPS)
    return layer, (gpu_model.op_kernel(params.gpu, "lm_head", head_op(model, batch.n_seqs)),)


class GpuSystem(System):
    """KV cache in GPU memory: the reference when everything fits."""

    name = "gpu"

    def plan(self, batch: StepBatch):
        return gpu_costs(self.machine.params, self.model, batch)

    def estimate(self, plan) -> Estimate:
        layer, head = plan
        return Estimate(self.model.n_layers * total_s(layer) + total_s(head), exact=True)

    def step(self, plan):
        layer, head = plan
        for _ in range(self.model.n_layers):
            yield self.machine.gpu.run(layer)
        yield self.machine.gpu.run(head)

    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        g, m = self.machine.params.gpu, self.model
        need = m.weight_bytes + kv_bytes
        reasons = () if need <= g.mem_capacity_bytes else (
            f"GPU memory: weights {gib(m.weight_bytes)} + KV cache {gib(kv_bytes)} exceed {gib(g.mem_capacity_bytes)}",)
        return Capacity("gpu", kv_bytes, not reasons, reasons, {"gpu_bytes_needed": need})
