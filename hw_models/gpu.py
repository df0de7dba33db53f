"""GPU: a roofline per kernel (achievable fractions of peak FLOP/s and memory bandwidth), scaled by how much of
the GPU the kernel's thread blocks keep busy, plus a fixed cost per kernel launch.

**Occupancy.** A kernel runs as thread blocks spread over the streaming multiprocessors (SMs) in waves; with
``B`` blocks on ``S`` slots (one per SM unless a kernel model says otherwise) the last wave leaves
``ceil(B / S) x S - B`` slots idle, so the kernel gets ``u = B / (ceil(B / S) x S)`` of the GPU's achievable
FLOP/s and bandwidth, as AttAcc's GPU model does (github scale-snu/attacc_simulator, ``src/devices.py``
``xPU._compute_time`` / ``_mem_time``: ``core_utilization``). Batch-1 decode attention of 12 heads is 12 blocks:
12 of 108 A100 SMs. The blocks come from the operator (``workloads.opgraph.Op.parallel``): its ``items``
(independent GEMV-like products: one per (sequence, query head) for decode attention, AttAcc's ``numOp``), or,
for a GEMM over weights, its ``gemm_shapes``. How kernels partition that work is the platform's kernel library,
``work_partition``:

* ``blocks`` (AttAcc's model): one thread block per attention item; a GEMM's output tiled by AttAcc's L1 tile
  search (``gemm_blocks``); every kernel wave-quantized.
* ``split`` (current kernel libraries): decode attention splits each sequence's KV tokens FlashDecoding-style,
  with the number of splits FlashAttention-2's heuristic picks (``kv_splits``), paying for the partial outputs and
  a combine kernel; GEMMs are Stream-K (an equal share of the MAC loop iterations per SM, Osama et al.,
  arXiv 2301.03598), so they fill the GPU.

**Launch.** Each kernel pays a fixed ``kernel_launch_s`` when launched one by one from the host (eager), or
``graph_kernel_launch_s`` when the step is replayed from a CUDA graph (``cuda_graphs``). The fixed cost adds
to the kernel's roofline time (the host does not run far ahead of a decode step's short kernels).

Everything is closed form: one evaluation per kernel per step, whatever the number of blocks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from hw_models.component import Work
from hw_models.errors import HardwareError
from hw_models.loading import did_you_mean
from hw_models.params import check_power, fraction, non_negative, positive

# AttAcc's L1 tile search (src/devices.py xPU._get_optimal_tile): candidate tile sizes (rows, columns), the
# reduction tile, and the cost it minimises, L2 traffic / SM utilisation^2.
ATTACC_TILE_SIZES = (8, 16, 32, 64, 128, 192, 256, 320, 384, 448, 512)
ATTACC_TILE_K = 32

# FlashAttention-2 split-KV (github Dao-AILab/flash-attention, csrc/flash_attn/flash_api.cpp, set_params_splitkv
# and num_splits_heuristic): KV tokens per block by head dimension, thread blocks per SM (128 threads), at most
# 128 splits, keep the fewest splits within 85% of the best wave efficiency, no split when the blocks already fill
# 80% of the slots.
FA_SPLIT_BLOCKS_PER_SM = 2
FA_MAX_SPLITS = 128
FA_SPLIT_EFFICIENCY = 0.85
FA_NO_SPLIT_FILL = 0.8
# Per split and query: the FP32 partial output (head_dim values) and its log-sum-exp, written by the split kernel
# and read back by the combine kernel (out_accum and softmax_lse_accum in set_params_splitkv).
FA_PARTIAL_BYTES_PER_ELEMENT = 4
FA_PARTIAL_LSE_BYTES = 4

WORK_PARTITIONS = ("blocks", "split")


@dataclass(frozen=True)
class GpuParams:
    name: str
    peak_flops_per_s: float
    mem_bw_bytes_per_s: float
    mem_capacity_bytes: float
    flops_efficiency: float
    bw_efficiency: float
    sm_count: int
    sm_l1_bytes: float
    kernel_launch_s: float
    graph_kernel_launch_s: float
    cuda_graphs: bool
    work_partition: str
    energy_per_flop_j: float
    energy_per_byte_j: float
    # Power (docs/metrics.md, "Energy"): drawn for the whole run / the board's limit (TDP). 0: not modelled.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = f"gpu '{self.name}'"
        positive(owner, peak_flops_per_s=self.peak_flops_per_s, mem_bw_bytes_per_s=self.mem_bw_bytes_per_s,
                 mem_capacity_bytes=self.mem_capacity_bytes, sm_count=self.sm_count, sm_l1_bytes=self.sm_l1_bytes)
        fraction(owner, flops_efficiency=self.flops_efficiency, bw_efficiency=self.bw_efficiency)
        non_negative(owner, kernel_launch_s=self.kernel_launch_s, graph_kernel_launch_s=self.graph_kernel_launch_s,
                     energy_per_flop_j=self.energy_per_flop_j, energy_per_byte_j=self.energy_per_byte_j)
        if isinstance(self.sm_count, bool) or not isinstance(self.sm_count, int):
            raise HardwareError(f"{owner}: sm_count must be a whole number, got {self.sm_count!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise HardwareError(f"{owner}: cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if self.work_partition not in WORK_PARTITIONS:
            raise HardwareError(f"{owner}: work_partition must be one of {', '.join(WORK_PARTITIONS)}, got "
                                f"{self.work_partition!r}{did_you_mean(str(self.work_partition), WORK_PARTITIONS)}")
        check_power(owner, self.idle_power_w, self.max_power_w)

    @property
    def achievable_flops_per_s(self) -> float:
        return self.peak_flops_per_s * self.flops_efficiency

    @property
    def achievable_bw_bytes_per_s(self) -> float:
        return self.mem_bw_bytes_per_s * self.bw_efficiency

    @property
    def launch_s(self) -> float:
        """The fixed cost of one kernel: from a CUDA graph replay, or launched alone from the host."""
        return self.graph_kernel_launch_s if self.cuda_graphs else self.kernel_launch_s


# ------------------------------------------------------------------ occupancy

def wave_occupancy(blocks: float, slots: float) -> float:
    """Share of ``slots`` the waves of ``blocks`` thread blocks keep busy: ``B / (ceil(B / S) x S)``, in (0, 1].

    Fractional blocks (an average over a batch) round up to whole ones for the wave count."""
    if blocks <= 0:
        return 1.0
    waves = math.ceil(blocks / slots - 1e-9)
    return min(1.0, blocks / (waves * slots))


@functools.lru_cache(maxsize=4096)
def gemm_blocks(sm_count: int, sm_l1_bytes: float, m: float, n: float, k: float, bytes_per_element: float) -> int:
    """Thread blocks of one (m x k) @ (k x n) GEMM as AttAcc tiles it (src/devices.py ``_get_optimal_tile``, L1
    level): over tile sizes ``ATTACC_TILE_SIZES`` for rows and columns (capped at m and n) whose operand and
    output tiles fit ``sm_l1_bytes``, the one minimising L2 traffic / utilisation^2, the first found on ties."""
    best, best_cost = 1, math.inf
    for tm0 in ATTACC_TILE_SIZES:
        for tn0 in ATTACC_TILE_SIZES:
            tm, tn = min(tm0, m), min(tn0, n)
            if ((tm + tn) * ATTACC_TILE_K + tm * tn) * bytes_per_element > sm_l1_bytes:
                continue
            traffic = math.ceil(n / tn) * m * k + math.ceil(m / tm) * n * k + m * n
            blocks = math.ceil(m / tm) * math.ceil(n / tn)
            cost = traffic / wave_occupancy(blocks, sm_count) ** 2
            if cost < best_cost:
                best, best_cost = blocks, cost
    return best


def gemm_occupancy(p: GpuParams, shapes, bytes_per_element: float) -> float:
    """Occupancy of a kernel made of weight GEMMs ``shapes`` ((m, n, k), ...): each tiled by ``gemm_blocks``,
    combined as the weighted harmonic mean over their weight sizes (the time each takes at its own occupancy)."""
    weights = [n * k for _, n, k in shapes]
    if not shapes or sum(weights) <= 0:
        return 1.0
    slow = sum(w / wave_occupancy(gemm_blocks(p.sm_count, p.sm_l1_bytes, m, n, k, bytes_per_element), p.sm_count)
               for w, (m, n, k) in zip(weights, shapes, strict=True))
    return sum(weights) / slow


@functools.lru_cache(maxsize=4096)
def kv_splits(items: int, slots: int, kv_blocks: int) -> int:
    """FlashAttention-2's ``num_splits_heuristic``: the split count for ``items`` (batch x heads x query blocks)
    over ``slots`` (2 x SMs) and ``kv_blocks`` blocks of KV tokens."""
    if items >= FA_NO_SPLIT_FILL * slots:
        return 1
    top = min(FA_MAX_SPLITS, slots, kv_blocks)

    def eligible(s):
        return s == 1 or math.ceil(kv_blocks / s) != math.ceil(kv_blocks / (s - 1))

    eff = {s: (items * s / slots) / math.ceil(items * s / slots) for s in range(1, top + 1) if eligible(s)}
    if not eff:
        return 1
    best = max(eff.values())
    return next(s for s in sorted(eff) if eff[s] >= FA_SPLIT_EFFICIENCY * best)


def kv_block_tokens(head_dim: int) -> int:
    """KV tokens per FlashAttention-2 split-KV block (block_n in set_params_splitkv)."""
    return 256 if head_dim <= 64 else (128 if head_dim <= 128 else 64)


@dataclass(frozen=True)
class KernelShape:
    """How one kernel divides into thread blocks, and what it costs beyond the roofline.

    ``occupancy`` in (0, 1]; ``extra_bytes`` of memory traffic and ``extra_launches`` (split-KV: partial outputs
    written and read back by a combine kernel); ``splits`` chosen (1 without split-KV)."""

    occupancy: float = 1.0
    extra_bytes: float = 0.0
    extra_launches: int = 0
    splits: int = 1


def op_shape(p: GpuParams, op) -> KernelShape:
    """The ``KernelShape`` of an operator (``workloads.opgraph.Op``; its ``parallel`` is read by attribute):
    GEMMs over weights by their ``gemm_shapes``, GEMV-like kernels (decode attention, softmax) by their ``items``;
    an operator with neither fills the GPU."""
    par = getattr(op, "parallel", None)
    if par is None:
        return KernelShape()
    split = p.work_partition == "split"
    if par.gemm_shapes:
        return KernelShape(1.0 if split else gemm_occupancy(p, par.gemm_shapes, par.bytes_per_element))
    if par.items <= 0:
        return KernelShape()
    if not (split and par.kv_tokens > 0):
        return KernelShape(wave_occupancy(par.items, p.sm_count))
    # Split-KV: FlashAttention-2 runs one block per (sequence, KV head) (a GQA group's query heads share it: its
    # seqlenq_ngroups_swapped layout), on 2 blocks per SM, and splits the tokens to fill the slots.
    blocks = max(1, math.ceil(par.kv_units - 1e-9))
    slots = FA_SPLIT_BLOCKS_PER_SM * p.sm_count
    splits = kv_splits(blocks, slots, max(1, math.ceil(par.kv_tokens / kv_block_tokens(par.head_dim) - 1e-9)))
    occupancy = wave_occupancy(blocks * splits, slots)
    if splits == 1 or not par.combine:
        return KernelShape(occupancy, splits=splits)
    partial = par.items * splits * (par.head_dim * FA_PARTIAL_BYTES_PER_ELEMENT + FA_PARTIAL_LSE_BYTES)
    return KernelShape(occupancy, 2.0 * partial, 1, splits)


# ------------------------------------------------------------------ time and energy

def kernel_time_s(p: GpuParams, flops: float, nbytes: float, occupancy: float = 1.0) -> float:
    """Launch cost plus the roofline time of one kernel that does ``flops`` and moves ``nbytes`` of memory with
    ``occupancy`` of the GPU busy."""
    if not 0 < occupancy <= 1:
        raise HardwareError(f"kernel occupancy must be in (0, 1], got {occupancy!r}")
    return p.launch_s + max(flops / p.achievable_flops_per_s, nbytes / p.achievable_bw_bytes_per_s) / occupancy


def kernel_energy_j(p: GpuParams, flops: float, nbytes: float) -> float:
    return flops * p.energy_per_flop_j + nbytes * p.energy_per_byte_j


def kernel(p: GpuParams, kind: str, flops: float, nbytes: float, occupancy: float = 1.0) -> Work:
    return Work(kind, kernel_time_s(p, flops, nbytes, occupancy), nbytes, flops, kernel_energy_j(p, flops, nbytes))


def items_kernel(p: GpuParams, kind: str, flops: float, nbytes: float, items: float) -> Work:
    """A GEMV-like kernel of ``items`` independent thread blocks (e.g. one per query to merge)."""
    return kernel(p, kind, flops, nbytes, wave_occupancy(items, p.sm_count))


def op_kernel(p: GpuParams, kind: str, op) -> Work:
    """The kernel of an operator graph node: its FLOPs and bytes at its occupancy (``op_shape``), plus split-KV's
    partial outputs and combine kernel when they apply."""
    s = op_shape(p, op)
    nbytes = op.nbytes + s.extra_bytes
    time_s = kernel_time_s(p, op.flops, nbytes, s.occupancy) + s.extra_launches * p.launch_s
    return Work(kind, time_s, nbytes, op.flops, kernel_energy_j(p, op.flops, nbytes))
