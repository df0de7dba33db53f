"""Host CPU: roofline over its cores' FLOP/s and the host DRAM bandwidth it reads from, plus a dispatch cost.

Used for attention on the host (FlexGen's ``cpu_cache_compute``): the KV stays in host DRAM and is read there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw_models.component import Work
from hw_models.dram import HostDramParams
from hw_models.params import check_power, fraction, non_negative, positive


@dataclass(frozen=True)
class CpuParams:
    name: str
    cores: int
    peak_flops_per_s: float
    flops_efficiency: float
    op_overhead_s: float
    energy_per_flop_j: float
    # Power of the socket (docs/metrics.md, "Energy"): drawn for the whole run / its limit (TDP). 0: not modelled.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive(f"cpu '{self.name}'", cores=self.cores, peak_flops_per_s=self.peak_flops_per_s)
        fraction(f"cpu '{self.name}'", flops_efficiency=self.flops_efficiency)
        non_negative(f"cpu '{self.name}'", op_overhead_s=self.op_overhead_s,
                     energy_per_flop_j=self.energy_per_flop_j)
        check_power(f"cpu '{self.name}'", self.idle_power_w, self.max_power_w)


def op_time_s(p: CpuParams, mem: HostDramParams, flops: float, nbytes: float) -> float:
    """Dispatch cost plus the roofline time of an operation reading ``nbytes`` from host DRAM."""
    return p.op_overhead_s + max(flops / (p.peak_flops_per_s * p.flops_efficiency),
                                 nbytes / mem.achievable_bw_bytes_per_s)


def op(p: CpuParams, mem: HostDramParams, kind: str, flops: float, nbytes: float) -> Work:
    # DRAM energy is booked on the memory, not here: the CPU pays for its arithmetic only.
    return Work(kind, op_time_s(p, mem, flops, nbytes), nbytes, flops, flops * p.energy_per_flop_j)
