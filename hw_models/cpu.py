"""Host CPU: roofline over its cores' FLOP/s and the host DRAM rate for the access pattern it reads, plus a dispatch
cost.

Used for attention on the host (FlexGen's ``cpu_cache_compute``): the KV stays in host DRAM and is read there, in
paged-KV blocks (``attention_pattern``), at the rate the DRAM timing model gives for that pattern
(``hw_models.dram.host_read_bw_bytes_per_s``). ``flops_efficiency`` is the fraction of peak FLOP/s an attention
kernel reaches; the shipped presets calibrate it to FlexGen's measured CPU attention (see their sources).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw_models.component import Work
from hw_models.dram import (
    SEQUENTIAL,
    AccessPattern,
    HostDramParams,
    host_read_bw_bytes_per_s,
    paged_kv_pattern,
)
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

    @property
    def achievable_flops_per_s(self) -> float:
        return self.peak_flops_per_s * self.flops_efficiency


def attention_pattern(mem: HostDramParams, head_dim: int, bytes_per_element: float) -> AccessPattern:
    """What CPU attention reads: each (sequence, KV head) walks its blocks, one head's block at a time."""
    return paged_kv_pattern(mem, head_dim, bytes_per_element, heads=1)


def op_time_s(p: CpuParams, mem: HostDramParams, flops: float, nbytes: float,
              pattern: AccessPattern = SEQUENTIAL) -> float:
    """Dispatch cost plus the roofline time of an operation reading ``nbytes`` from host DRAM in ``pattern``."""
    return p.op_overhead_s + max(flops / p.achievable_flops_per_s,
                                 nbytes / host_read_bw_bytes_per_s(mem, pattern))


def op(p: CpuParams, mem: HostDramParams, kind: str, flops: float, nbytes: float,
       pattern: AccessPattern = SEQUENTIAL) -> Work:
    # DRAM energy is booked on the memory, not here: the CPU pays for its arithmetic only.
    return Work(kind, op_time_s(p, mem, flops, nbytes, pattern), nbytes, flops, flops * p.energy_per_flop_j)
