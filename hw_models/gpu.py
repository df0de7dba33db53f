"""GPU: a roofline per kernel (achievable fractions of peak FLOP/s and memory bandwidth) plus a launch cost.

Batch-small decode kernels are memory- or launch-bound; the roofline picks the larger of compute and memory
time, so the same function serves GEMV-like projections and attention over a KV cache in HBM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw_models.component import Work
from hw_models.params import check_power, fraction, non_negative, positive


@dataclass(frozen=True)
class GpuParams:
    name: str
    peak_flops_per_s: float
    mem_bw_bytes_per_s: float
    mem_capacity_bytes: float
    flops_efficiency: float
    bw_efficiency: float
    kernel_launch_s: float
    energy_per_flop_j: float
    energy_per_byte_j: float
    # Power (docs/metrics.md, "Energy"): drawn for the whole run / the board's limit (TDP). 0: not modelled.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive(f"gpu '{self.name}'", peak_flops_per_s=self.peak_flops_per_s,
                 mem_bw_bytes_per_s=self.mem_bw_bytes_per_s, mem_capacity_bytes=self.mem_capacity_bytes)
        fraction(f"gpu '{self.name}'", flops_efficiency=self.flops_efficiency, bw_efficiency=self.bw_efficiency)
        non_negative(f"gpu '{self.name}'", kernel_launch_s=self.kernel_launch_s,
                     energy_per_flop_j=self.energy_per_flop_j, energy_per_byte_j=self.energy_per_byte_j)
        check_power(f"gpu '{self.name}'", self.idle_power_w, self.max_power_w)

    @property
    def achievable_flops_per_s(self) -> float:
        return self.peak_flops_per_s * self.flops_efficiency

    @property
    def achievable_bw_bytes_per_s(self) -> float:
        return self.mem_bw_bytes_per_s * self.bw_efficiency


def kernel_time_s(p: GpuParams, flops: float, nbytes: float) -> float:
    """Launch cost plus the roofline time of one kernel that does ``flops`` and moves ``nbytes`` of memory."""
    return p.kernel_launch_s + max(flops / p.achievable_flops_per_s, nbytes / p.achievable_bw_bytes_per_s)


def kernel_energy_j(p: GpuParams, flops: float, nbytes: float) -> float:
    return flops * p.energy_per_flop_j + nbytes * p.energy_per_byte_j


def kernel(p: GpuParams, kind: str, flops: float, nbytes: float) -> Work:
    return Work(kind, kernel_time_s(p, flops, nbytes), nbytes, flops, kernel_energy_j(p, flops, nbytes))
