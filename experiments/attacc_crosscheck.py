"""Issue 3's last measurement: the attention speedup of PIM over GPU-only, cross-checked against AttAcc (ASPLOS'24).

Run: python3 experiments/attacc_crosscheck.py [--softmax pim|near]

AttAcc's setting (github scale-snu/attacc_simulator, README.md, main.py, src/config.py): a DGX of 8 "A100a" GPUs
(A100 with HBM3, 3352 GB/s, 312 TFLOP/s) with tensor parallelism over heads, and beside each GPU one AttAcc device
of 5 HBM3-PIM stacks (670.4 GB/s external each, bank-level units, power-capped), linked by NVLink3 (600 GB/s both
directions). GPT-3 175B has 96 heads, so each GPU and its AttAcc serve 12 of them. This simulator has one GPU, so
the comparison is per GPU share: one A100a (experiments/machines/dgx-a100a-hbm3-per-gpu.toml) with one
`attacc-hbm3` device (160 pseudo-channels = 5 stacks) runs a tensor-parallel 1/8 shard of GPT-3 175B
(experiments/models/gpt3-175b.json, 12 heads). Attention is split by heads with no communication inside it, so
per-layer attention time of the whole DGX equals that of one share; an aggregate run (8x the GPU's bandwidth and
FLOP/s, 8 x 160 channels, 8 links) is printed as a check.

AttAcc's side of each row is taken from its published artifact, not re-simulated: the PIM time is a row of the
repository's `ramulator.out` (its Ramulator 2 HBM3-PIM runs: attention of `nhead` heads of length `L` on one
HBM3 stack, in cycles of tCK = 0.769 ns, `src/ramulator_wrapper.py`); the GPU time is AttAcc's own GPU model
(`src/devices.py` xPU, `src/model.py` layers) written here in closed form for a decode step (m = 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw_models import pim as pim_model  # noqa: E402
from hw_models.machine import load_machine  # noqa: E402
from hw_models.params import override  # noqa: E402
from sim.config import make_config  # noqa: E402
from sim.run import simulate  # noqa: E402
from workloads.models import ModelSpec, load_model  # noqa: E402

MACHINE = ROOT / "experiments" / "machines" / "dgx-a100a-hbm3-per-gpu.toml"
MODEL = ROOT / "experiments" / "models" / "gpt3-175b.json"
PIM = "attacc-hbm3"
ATTENTION_KINDS = ("attn_score", "softmax", "attn_context")

# AttAcc's setting (AT = scale-snu/attacc_simulator).
TP = 8                    # AT config make_xpu_config: NUM_DEVICE = 8 (DGX); make_pim_config: NUM_ATTACC = 8
HBM_PER_ATTACC = 5        # AT config make_pim_config: NUM_HBM = 5
CHANNELS_PER_HBM = 16     # AT gen_trace_attacc_bank.py: n_channel = 16; one head per channel per round
TCK_S = 0.769e-9          # AT ramulator_wrapper.py: self.tCK = 0.769 ns
GPU_CORES = 108           # AT config A100a NUM_CORE = 108 (SMs)
GPU_BW = 3352e9           # AT config A100a OFF_MEM_BW_PER_DEVICE
GPU_FLOPS = 312e12        # AT config A100a FLOPS_PER_DEVICE
BW_UTIL, FLOPS_UTIL = 0.85, 0.8   # AT config SCALING_FACTOR
NVLINK_PER_DIRECTION = 300e9      # AT config NVLINK3 INTERFACE_BW = 600 GB/s; devices.py PIM uses half of it

# Rows of AT `ramulator.out` (columns L, nhead, dhead, dbyte, pim_type, power_constraint, cycle, ...), all
# dhead 128, dbyte 2, pim_type BA (bank-level). nhead is heads per HBM stack: ceil(heads per AttAcc / 5).
# (L, nhead, power_constraint, memory_system_cycles)
RAMULATOR_ROWS = (
    (541, 228, True, 17731),
    (1021, 228, True, 31246),
    (1501, 228, True, 46289),
    (2101, 228, True, 65466),
    (256, 101, True, 3301),
    (256, 461, True, 14498),
    (256, 2050, True, 65518),
    (1021, 243, False, 23967),
    (2101, 243, False, 50533),
)

# AttAcc ASPLOS'24 abstract (ACM DOI 10.1145/3620665.3640422; closed access): "improving performance and energy
# efficiency of running a 175B TbGM by up to 2.81x and 2.67x, respectively" (end to end, GPU-PIM system vs the
# conventional system with the same memory capacity).
PAPER_E2E_SPEEDUP = 2.81


def shard(model: ModelSpec, tp: int) -> ModelSpec:
    """One GPU's tensor-parallel share: heads, FFN columns and vocabulary split ``tp`` ways (Megatron-style);
    the hidden size (the width of every activation) stays."""
    if model.n_heads % tp or model.ffn_size % tp:
        raise ValueError(f"{model.name}: heads {model.n_heads} and FFN {model.ffn_size} must divide by tp={tp}")
    return dataclasses.replace(model, name=f"{model.name}-tp{tp}", n_heads=model.n_heads // tp,
                               n_kv_heads=model.n_kv_heads // tp, ffn_size=model.ffn_size // tp,
                               vocab_size=-(-model.vocab_size // tp))


def batch_for(nhead_per_hbm: int, heads_per_gpu: int) -> int:
    """The batch whose heads fill one HBM stack with ``nhead_per_hbm`` (AT ramulator_wrapper: ceil(numOp / 5))."""
    found = [b for b in range(1, 4096) if math.ceil(heads_per_gpu * b / HBM_PER_ATTACC) == nhead_per_hbm]
    if len(found) != 1:
        raise ValueError(f"nhead {nhead_per_hbm} matches batches {found}")
    return found[0]


def attacc_gpu_attention_s(model: ModelSpec, batch: int, tokens: int) -> float:
    """AttAcc's GPU model for one decode layer's score, softmax and context on one GPU (AT devices.py xPU):
    each kernel takes max(FLOPs / (0.8 peak x u), off-chip bytes / (0.85 peak x u)), where u = numOp /
    (ceil(numOp / 108) x 108) is the share of SMs busy when each of the numOp = heads x batch GEMVs is one thread
    block. Off-chip bytes for m = 1 with whole-row L2 tiles: score q + K + scores out, softmax scores in and out,
    context scores + V + output."""
    e, d, n, h = model.bytes_per_element, model.head_dim, tokens, model.n_heads
    ops = h * batch
    util = ops / (math.ceil(ops / GPU_CORES) * GPU_CORES)
    kernels = (  # (FLOPs, bytes) per kernel, all ops together
        (2.0 * n * d * ops, (d + n * d + n) * e * ops),
        (5.0 * n * ops, 2 * n * e * ops),
        (2.0 * n * d * ops, (n + n * d + d) * e * ops),
    )
    return sum(max(f / (GPU_FLOPS * FLOPS_UTIL * util), b / (GPU_BW * BW_UTIL * util)) for f, b in kernels)


def attacc_link_s(model: ModelSpec, batch: int, attention_s: float) -> tuple[float, float]:
    """AttAcc's GPU<->AttAcc traffic of one layer (AT model.py comm_x2g layers, devices.py PIM._io_time_energy):
    q, k, v in (batch x 3 x hidden/TP) and outputs back (heads x batch x dhead), at half the NVLink3 rate. Returns
    (unpipelined, pipelined): with --pipeopt (AT system.py _pipeline) the link overlaps head-by-head attention and
    only 1 / heads-per-GPU of it stays exposed when attention (or the FC layers, whose time is not computed here;
    in every row below attention or FC outlasts the link) is the longer."""
    e = model.bytes_per_element
    nbytes = batch * 3 * model.q_dim * e + model.n_heads * batch * model.head_dim * e
    t = nbytes / NVLINK_PER_DIRECTION
    exposed = t / model.n_heads if attention_s > t else t - attention_s * (1 - 1 / model.n_heads)
    return t, exposed


def ours(model: ModelSpec, params, dev, batch: int, tokens: int, steps: int = 1, softmax: str = "pim",
         link_chunks: int = 1) -> dict:
    """This simulator from ``tokens`` of context: per-layer GPU-only attention kernels, PIM array phase (the
    busiest channel's work) and the exposed rest of the PIM path (link transfers and their set-up; means over
    ``steps`` x layers), each system's mean step latency, and the PIM path exposed per step."""
    common = dict(model=model.name, hardware=str(MACHINE), batch=batch, context=tokens, steps=steps, trace_steps=0)
    g = simulate(make_config(system="gpu", **common), params=params, model=model)
    p = simulate(make_config(system="pim", pim=PIM, softmax=softmax, link_chunks=link_chunks, **common),
                 params=params, model=model, pim=dev)
    if p.details.get("spilled_share", 0.0) > 0:
        raise RuntimeError(f"batch {batch} x {tokens} tokens spills out of PIM; lift the capacity first")
    n = model.n_layers * steps
    pim_s = max(p.details["pim_channel_busy_s"]) / n
    # The GPU waits for the whole PIM path (links and array) in this schedule: step minus GPU work.
    path_step_s = p.mean_step_latency_s - p.busy_s["gpu"] / steps
    return {"gpu": sum(g.busy_by_kind_s[k] for k in ATTENTION_KINDS) / n,
            "pim": pim_s, "link": max(0.0, path_step_s / model.n_layers - pim_s),
            "path_step": path_step_s, "gpu_step": g.mean_step_latency_s, "pim_step": p.mean_step_latency_s}


def device_for(model: ModelSpec, batch: int, tokens: int, power_capped: bool):
    """The attacc-hbm3 preset; uncapped rows use nCCDAB = 4 (AT HBM3_5.2Gbps_NPC, as the preset's source notes).
    Rows whose KV exceeds the 80 GiB device (AttAcc's Ramulator runs do not check capacity) get the channel
    capacity lifted, which changes no timing: the flag says so."""
    dev = pim_model.load_pim(PIM)
    if not power_capped:
        dev = pim_model.with_channel(dev, bank_column_interval_cycles=4)
    need = batch * (tokens + 1) * model.kv_bytes_per_token
    lifted = need > dev.capacity_bytes
    if lifted:
        dev = pim_model.with_channel(dev, capacity_bytes=math.ceil(need / dev.channels * 1.01))
    return dev, lifted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--softmax", default="pim", choices=("pim", "near"),
                    help="softmax on the bank units (default) or on the buffer-die unit per channel (AttAcc's SFM)")
    ap.add_argument("--link-chunks", type=int, default=1,
                    help="pipeline the PIM link in this many chunks (AttAcc's --pipeopt is head by head: try 12); "
                         "'link' is always the part of the PIM path the array work does not cover")
    ap.add_argument("--chunks-table", action="store_true",
                    help="only print the exposed PIM path per step for --link-chunks 1, 2, 4, 8, 12 at batch 1 and 16")
    args = ap.parse_args()
    if args.chunks_table:
        chunks_table(args.softmax)
        return
    full = load_model(str(MODEL))
    model = shard(full, TP)
    params = load_machine(str(MACHINE))
    e, d = model.bytes_per_element, model.head_dim
    print(f"AttAcc setting, per GPU share: {full.name} over TP={TP} -> {model.n_heads} heads per GPU and per AttAcc; "
          f"GPU {params.gpu.name} ({params.gpu.mem_bw_bytes_per_s / 1e9:.0f} GB/s x {params.gpu.bw_efficiency}); "
          f"PIM {PIM} ({HBM_PER_ATTACC} HBM3 stacks, 160 pseudo-channels), softmax '{args.softmax}'. "
          "Times are per decoder layer, one step.\n")
    print("Speedup = GPU-only attention (score + softmax + context) / PIM attention (array + link). "
          "AttAcc: GPU by its model, PIM = ramulator.out row + pipelined link. Gap = ours / AttAcc - 1.\n")
    print("| batch | L | heads/HBM | power cap | ours GPU us | ours PIM us (array + link) | ours speedup "
          "(array only) | AttAcc GPU us | AttAcc PIM us (Ramulator + link) | AttAcc speedup (array only) | gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    decomp = []
    for tokens, nhead, capped, cycles in RAMULATOR_ROWS:
        batch = batch_for(nhead, model.n_heads)
        dev, lifted = device_for(model, batch, tokens, capped)
        o = ours(model, params, dev, batch, tokens, softmax=args.softmax, link_chunks=args.link_chunks)
        a_gpu = attacc_gpu_attention_s(model, batch, tokens)
        a_pim = cycles * TCK_S
        _, a_link = attacc_link_s(model, batch, a_pim)
        s_ours, s_ours_arr = o["gpu"] / (o["pim"] + o["link"]), o["gpu"] / o["pim"]
        s_at, s_at_arr = a_gpu / (a_pim + a_link), a_gpu / a_pim
        flag = " (over capacity, timing only)" if lifted else ""
        print(f"| {batch} | {tokens}{flag} | {nhead} | {'on' if capped else 'off'} | {o['gpu'] * 1e6:.1f} | "
              f"{o['pim'] * 1e6:.1f} + {o['link'] * 1e6:.1f} | {s_ours:.2f}x ({s_ours_arr:.2f}x) | "
              f"{a_gpu * 1e6:.1f} | {a_pim * 1e6:.1f} + {a_link * 1e6:.2f} | {s_at:.2f}x ({s_at_arr:.2f}x) | "
              f"{100 * (s_ours / s_at - 1):+.0f}% ({100 * (s_ours_arr / s_at_arr - 1):+.0f}%) |")
        per_hbm_bytes = nhead * tokens * d * e * 2
        heads = model.n_heads * batch
        decomp.append((batch, tokens, nhead, capped, a_gpu / o["gpu"], a_pim / o["pim"],
                       per_hbm_bytes / a_pim / 1e12,
                       heads * tokens * d * e * 2 / o["pim"] / HBM_PER_ATTACC / 1e12,
                       dev.internal_bw_bytes_per_s / HBM_PER_ATTACC / 1e12,
                       nhead / CHANNELS_PER_HBM / math.ceil(nhead / CHANNELS_PER_HBM),
                       o["link"] / a_link if a_link else float("inf")))

    print("\nWhere the gap comes from (ratios > 1: AttAcc slower than ours).\n")
    print("| batch | L | heads/HBM | power cap | GPU: AttAcc / ours (= 1 / SM use) | PIM array: AttAcc / ours | "
          "AttAcc TB/s per stack | ours TB/s per stack (peak) | AttAcc head rounds used | link: ours / AttAcc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch, tokens, nhead, capped, g, p, a_bw, o_bw, o_peak, rounds, link in decomp:
        print(f"| {batch} | {tokens} | {nhead} | {'on' if capped else 'off'} | {g:.3f} | {p:.3f} | {a_bw:.2f} | "
              f"{o_bw:.2f} ({o_peak:.2f}) | {100 * rounds:.0f}% | {link:.1f}x |")

    # Aggregate check: the whole DGX as one GPU with 8x bandwidth, FLOP/s and SMs, and 8 AttAcc devices as one.
    batch, tokens = 95, 1021
    g = params.gpu
    agg_params = dataclasses.replace(params, gpu=override(
        g, peak_flops_per_s=TP * g.peak_flops_per_s, mem_bw_bytes_per_s=TP * g.mem_bw_bytes_per_s,
        mem_capacity_bytes=TP * g.mem_capacity_bytes, sm_count=TP * g.sm_count))
    dev = pim_model.load_pim(PIM)
    agg_dev = override(dev, channels=TP * dev.channels, link_bw_bytes_per_s=TP * dev.link_bw_bytes_per_s)
    a = ours(full, agg_params, agg_dev, batch, tokens, softmax=args.softmax, link_chunks=args.link_chunks)
    s = ours(model, params, dev, batch, tokens, softmax=args.softmax, link_chunks=args.link_chunks)
    print(f"\nAggregate check (batch {batch}, L {tokens}): whole model on 8x GPU + {agg_dev.channels} channels: "
          f"GPU {a['gpu'] * 1e6:.1f} us, PIM {a['pim'] * 1e6:.1f} + {a['link'] * 1e6:.1f} us, speedup "
          f"{a['gpu'] / (a['pim'] + a['link']):.2f}x; per GPU share: {s['gpu'] / (s['pim'] + s['link']):.2f}x.")

    # End to end, for the paper's only public number: "vs the conventional system with the same memory capacity".
    # Read here (I) as AttAcc's --gmemcap option: the same DGX with GPUs of 160 GB instead of 80 (same bandwidth),
    # so the baseline runs the same batch; two DGXs (16 GPUs, TP 16) are the other reading. AttAcc's README run:
    # Lin 2048, Lout 128, so 127 decode steps from 2048 tokens. Per GPU share on both sides, no all-reduce.
    print(f"\nEnd to end (paper, public abstract: up to {PAPER_E2E_SPEEDUP}x on a 175B model vs the conventional "
          "system with the same memory capacity). Ours: mean step latency over 127 steps from 2048 tokens:\n")
    print("| batch | DGX GPU-only, 160 GB GPUs (TP8) ms | 2 x DGX GPU-only (TP16) ms | DGX + AttAcc (TP8) ms | "
          "ours e2e speedup vs TP8 / vs TP16 | paper (up to) |")
    print("|---|---|---|---|---|---|")
    model16 = shard(full, 2 * TP)
    for batch in (16, 32, 64):
        dev, _ = device_for(model, batch, 2048 + 127, True)
        r = ours(model, params, dev, batch, 2048, steps=127, softmax=args.softmax, link_chunks=args.link_chunks)
        pim_step, gpu8 = r["pim_step"], r["gpu_step"]
        gpu16 = ours(model16, params, dev, batch, 2048, steps=127)["gpu_step"]
        print(f"| {batch} | {gpu8 * 1e3:.2f} | {gpu16 * 1e3:.2f} | {pim_step * 1e3:.2f} | "
              f"{gpu8 / pim_step:.2f}x / {gpu16 / pim_step:.2f}x | {PAPER_E2E_SPEEDUP}x |")

def chunks_table(softmax: str = "pim", batches=(1, 16), chunks=(1, 2, 4, 8, 12), tokens: int = 2048) -> dict:
    """The PIM path exposed per decode step (step minus GPU work) for each ``--link-chunks``, GPT-3 175B TP-8 share
    at ``tokens`` of context (the cross-check's setting)."""
    model = shard(load_model(str(MODEL)), TP)
    params = load_machine(str(MACHINE))
    print(f"Exposed PIM path per decode step (ms), {model.name}, {tokens} tokens, softmax '{softmax}':\n")
    print("| batch | " + " | ".join(f"--link-chunks {k}" for k in chunks) + " |")
    print("|---|" + "---|" * len(chunks))
    out = {}
    for batch in batches:
        dev, _ = device_for(model, batch, tokens, True)
        out[batch] = [ours(model, params, dev, batch, tokens, softmax=softmax, link_chunks=k)["path_step"]
                      for k in chunks]
        print(f"| {batch} | " + " | ".join(f"{t * 1e3:.3f}" for t in out[batch]) + " |")
    return out


if __name__ == "__main__":
    main()
