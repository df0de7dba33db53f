"""GPU occupancy, launch costs and split-KV: hand checks, AttAcc's GPU model re-derived, FlashAttention's heuristic."""

import dataclasses
import importlib.util
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_models import gpu
from hw_models.errors import HardwareError
from hw_models.machine import load_machine
from hw_models.params import override
from sim.config import make_config
from sim.run import simulate
from workloads.models import load_model
from workloads.opgraph import head_op, layer_ops

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("attacc_crosscheck", ROOT / "experiments" / "attacc_crosscheck.py")
crosscheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(crosscheck)

A100A = ROOT / "experiments" / "machines" / "dgx-a100a-hbm3-per-gpu.toml"
ATTENTION = ("attn_score", "softmax", "attn_context")


def attacc_reference_s(model, batch: int, tokens: int) -> float:
    """AttAcc's GPU model (github scale-snu/attacc_simulator src/devices.py xPU, src/model.py gen layers) for one
    decode layer's score, softmax and context on one A100a (src/config.py: 108 SMs, 312 TFLOP/s, 3352 GB/s, 0.8 and
    0.85 of peak), copied here as the reference: each kernel takes max(FLOPs / (0.8 peak x u), bytes / (0.85 peak x
    u)), u = numOp / (ceil(numOp / 108) x 108), numOp = heads x batch GEMVs, one thread block each."""
    cores, flops_peak, bw_peak = 108, 312e12, 3352e9
    e, d, n, h = model.bytes_per_element, model.head_dim, tokens, model.n_heads
    ops = h * batch
    util = ops / (math.ceil(ops / cores) * cores)
    kernels = (
        (2.0 * n * d * ops, (d + n * d + n) * e * ops),   # score: q, K, scores out
        (5.0 * n * ops, 2 * n * e * ops),                   # softmax: scores in and out
        (2.0 * n * d * ops, (n + n * d + d) * e * ops),   # context: scores, V, output
    )
    return sum(max(f / (flops_peak * 0.8 * util), b / (bw_peak * 0.85 * util)) for f, b in kernels)


GPT3_SHARD = crosscheck.shard(load_model(str(crosscheck.MODEL)), crosscheck.TP)


@pytest.mark.parametrize("batch", [1, 16, 64])
def test_gpu_attention_matches_attaccs_gpu_model_within_10_percent(batch):
    """12 heads (GPT-3 175B over TP 8) x batch at 2048 tokens on AttAcc's A100a, through the gpu system."""
    model = GPT3_SHARD
    assert model.n_heads == 12
    r = simulate(make_config(system="gpu", model=model.name, hardware=str(A100A), batch=batch, context=2048,
                             steps=1, trace_steps=0), model=model)
    ours = sum(r.busy_by_kind_s[k] for k in ATTENTION) / model.n_layers
    ref = attacc_reference_s(model, batch, 2048)
    assert ours == pytest.approx(ref, rel=0.10)
    assert ours == pytest.approx(crosscheck.attacc_gpu_attention_s(model, batch, 2048), rel=1e-9)


def test_batch_1_attention_is_wave_bound():
    """12 thread blocks on 108 SMs: 1/9 of the GPU, 9x the full-occupancy roofline."""
    p = load_machine(str(A100A)).gpu
    op = layer_ops(GPT3_SHARD, 1, 2048)["attn_score"]
    assert gpu.op_shape(p, op).occupancy == pytest.approx(12 / 108)
    full = max(op.flops / p.achievable_flops_per_s, op.nbytes / p.achievable_bw_bytes_per_s)
    assert gpu.op_kernel(p, "s", op).duration_s == pytest.approx(9 * full, rel=1e-12)


def test_wave_occupancy_by_hand():
    assert gpu.wave_occupancy(12, 108) == pytest.approx(12 / 108)
    assert gpu.wave_occupancy(108, 108) == 1.0
    assert gpu.wave_occupancy(109, 108) == pytest.approx(109 / 216)
    assert gpu.wave_occupancy(192, 108) == pytest.approx(192 / 216)
    assert gpu.wave_occupancy(0, 108) == 1.0


@given(st.floats(0.01, 1e6), st.integers(1, 256))
def test_wave_occupancy_is_a_fraction(blocks, slots):
    u = gpu.wave_occupancy(blocks, slots)
    assert 0 < u <= 1
    if blocks >= 1:  # a whole number of slots is never more than one wave's worth idle
        assert blocks / u - blocks < slots + 1e-6


def test_gemm_tiles_follow_attaccs_search():
    """m = 1 (batch-1 decode): the weights are read once whatever the tile, so AttAcc's cost picks the widest tile
    among those with the best wave use: 6144 columns / 64 = 96 blocks, 96 / 108 of the SMs."""
    assert gpu.gemm_blocks(108, 196608, 1, 6144, 4096, 2) == 96
    p = load_machine("a100-pcie4-ddr5").gpu
    ops = layer_ops(load_model("llama-3.1-8b"), 1, 4096)
    assert gpu.op_shape(p, ops["qkv_proj"]).occupancy == pytest.approx(96 / 108)
    # an operator of several GEMMs: the weighted harmonic mean of their occupancies
    ffn = ops["ffn"].parallel.gemm_shapes
    us = [gpu.wave_occupancy(gpu.gemm_blocks(108, 196608, *s, 2), 108) for s in ffn]
    w = [n * k for _, n, k in ffn]
    assert gpu.op_shape(p, ops["ffn"]).occupancy == pytest.approx(sum(w) / sum(a / b for a, b in zip(w, us, strict=True)))


def test_flashattention_split_heuristic():
    """FlashAttention-2's own comment: batch x heads = 48 on 108 SMs: 2 splits (efficiency 0.89) beat 3 (0.67)."""
    assert gpu.kv_splits(48, 108, 64) == 2
    assert gpu.kv_splits(100, 108, 64) == 1          # already fills 80% of the slots
    assert gpu.kv_splits(1, 216, 16) == 16           # capped by the KV blocks
    assert gpu.kv_block_tokens(128) == 128 and gpu.kv_block_tokens(64) == 256


def test_split_partition_fills_the_gpu_at_batch_1():
    base = load_machine("a100-pcie4-ddr5").gpu
    split = override(base, work_partition="split")
    m = load_model("llama-3.1-8b")
    ops = layer_ops(m, 1, 32768)
    blocks = gpu.op_shape(base, ops["attn_context"])
    s = gpu.op_shape(split, ops["attn_context"])
    assert blocks.occupancy == pytest.approx(32 / 108) and blocks.splits == 1
    # 8 (sequence, KV head) blocks on 216 slots, 256 KV blocks of 128 tokens: 27 splits would fill every slot;
    # FlashAttention takes the fewest eligible splits within 85% of that: 23 gives the same 12 blocks per split
    # as 22 (not eligible), so 24 (192 of 216 slots)
    assert s.splits == gpu.kv_splits(8, 216, 256) == 24 and s.occupancy == pytest.approx(192 / 216)
    assert s.extra_launches == 1 and s.extra_bytes == pytest.approx(2 * 32 * 24 * (128 * 4 + 4))
    assert gpu.op_kernel(split, "c", ops["attn_context"]).duration_s < gpu.op_kernel(base, "c",
                                                                                      ops["attn_context"]).duration_s
    # GEMMs are Stream-K: they fill the GPU
    assert gpu.op_shape(split, head_op(m, 64)).occupancy == 1.0


def test_cuda_graphs_switch_the_per_kernel_cost():
    p = load_machine("a100-pcie4-ddr5").gpu
    g = override(p, cuda_graphs=True)
    assert p.launch_s == p.kernel_launch_s == 5e-6 and g.launch_s == g.graph_kernel_launch_s == 0.58e-6
    assert gpu.kernel_time_s(p, 0, 0) - gpu.kernel_time_s(g, 0, 0) == pytest.approx(5e-6 - 0.58e-6)
    model = load_model("llama-3.1-8b")
    eager = simulate(make_config(system="gpu", batch=1, context=1024, steps=1), params=load_machine())
    graph_params = dataclasses.replace(load_machine(), gpu=g)
    graph = simulate(make_config(system="gpu", batch=1, context=1024, steps=1), params=graph_params)
    kernels = 10 * model.n_layers + 2  # per layer: 2 norms, QKV, rotary, 3 attention, O, FFN, activation; + norm, head
    assert eager.mean_step_latency_s - graph.mean_step_latency_s == pytest.approx(kernels * (5e-6 - 0.58e-6))


def test_bad_gpu_values_rejected():
    p = load_machine().gpu
    with pytest.raises(HardwareError, match="sm_count must be a whole number"):
        dataclasses.replace(p, sm_count=10.5)
    with pytest.raises(HardwareError, match="work_partition must be one of blocks, split"):
        dataclasses.replace(p, work_partition="splitt")
    with pytest.raises(HardwareError, match="cuda_graphs must be true or false"):
        dataclasses.replace(p, cuda_graphs=1)
    with pytest.raises(HardwareError, match="occupancy must be in"):
        gpu.kernel_time_s(p, 1.0, 1.0, occupancy=0.0)
