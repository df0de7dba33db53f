"""PCIe link between host and GPU: per-direction bandwidth, a fixed cost per DMA, and duplex behaviour.

A full-duplex link has one SimPy resource per direction (host-to-device and device-to-host traffic do not
delay each other); a half-duplex one shares a single resource, which is how a link whose two directions
contend (measured H2D drops when D2H is busy) can be bracketed from the other side. A transfer costs
``latency_s + nbytes / bandwidth`` per link of its route (``sim.topology``), which is where these parameters
become times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw_models.errors import HardwareError
from hw_models.params import check_power, non_negative, positive

DUPLEX_MODES = ("full", "half")


@dataclass(frozen=True)
class PcieLinkParams:
    name: str
    generation: int
    lanes: int
    h2d_bw_bytes_per_s: float
    d2h_bw_bytes_per_s: float
    latency_s: float
    duplex: str
    energy_per_byte_j: float
    # Power of the link's PHYs at both ends, all lanes, both directions (docs/metrics.md, "Energy"): in L0 with no
    # traffic for the whole run / with both directions at full rate. 0: not modelled.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive(f"pcie '{self.name}'", generation=self.generation, lanes=self.lanes,
                 h2d_bw_bytes_per_s=self.h2d_bw_bytes_per_s, d2h_bw_bytes_per_s=self.d2h_bw_bytes_per_s)
        non_negative(f"pcie '{self.name}'", latency_s=self.latency_s, energy_per_byte_j=self.energy_per_byte_j)
        check_power(f"pcie '{self.name}'", self.idle_power_w, self.max_power_w)
        if self.duplex not in DUPLEX_MODES:
            raise HardwareError(f"pcie '{self.name}': duplex must be one of {DUPLEX_MODES}, got {self.duplex!r}")
