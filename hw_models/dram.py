"""Host DRAM as a capacity and a streaming bandwidth (channels x per-channel peak x achievable fraction).

Detailed DRAM timing (row activations, refresh, per-bank streaming) belongs here too; the host side only needs
the aggregate figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw_models.params import fraction, non_negative, positive


@dataclass(frozen=True)
class HostDramParams:
    name: str
    channels: int
    channel_bw_bytes_per_s: float
    capacity_bytes: float
    bw_efficiency: float
    energy_per_byte_j: float

    def __post_init__(self):
        positive(f"host_dram '{self.name}'", channels=self.channels,
                 channel_bw_bytes_per_s=self.channel_bw_bytes_per_s, capacity_bytes=self.capacity_bytes)
        fraction(f"host_dram '{self.name}'", bw_efficiency=self.bw_efficiency)
        non_negative(f"host_dram '{self.name}'", energy_per_byte_j=self.energy_per_byte_j)

    @property
    def peak_bw_bytes_per_s(self) -> float:
        return self.channels * self.channel_bw_bytes_per_s

    @property
    def achievable_bw_bytes_per_s(self) -> float:
        return self.peak_bw_bytes_per_s * self.bw_efficiency
