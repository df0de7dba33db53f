"""The GPU-to-GPU interconnect of a multi-GPU server, and the cost of the collectives tensor and pipeline
parallelism need.

An all-reduce of ``S`` bytes over ``N`` GPUs as NCCL's ring runs it: each GPU sends and receives
``2 (N - 1) / N x S`` bytes (reduce-scatter, then all-gather), at the fabric's *bus bandwidth* ``B`` (what
nccl-tests reports as busbw, the per-GPU rate the ring's steps sustain), after a fixed start-up ``alpha``
(kernel launch, the ring's 2 (N - 1) hand-offs at small sizes):

    t(S) = alpha + 2 (N - 1) / N x S / B

nccl-tests defines busbw exactly so that this holds with one B for every N (doc/PERFORMANCE.md in
github NVIDIA/nccl-tests). ``alpha`` and ``B`` are fitted to published nccl-tests tables (the preset's sources).
A point-to-point send (pipeline stages) costs ``p2p_latency_s + S / p2p_bw_bytes_per_s``.

Every GPU of a symmetric collective moves the same bytes at the same time, so the collective is a fixed-duration
kernel on each GPU's stream (NCCL's kernels occupy the stream while they run); its bytes cost
``energy_per_byte_j`` each on the GPU's ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw_models.errors import HardwareError
from hw_models.params import check_power, non_negative, positive

# Fabrics that carry only the GPUs' collectives. Through the host (PCIe) a collective would contend with the
# offload path's transfers and must be timed as transfers on the links: not built yet, so not accepted.
KINDS = ("nvswitch", "nvlink")


@dataclass(frozen=True)
class InterconnectParams:
    name: str
    kind: str
    allreduce_alpha_s: float
    allreduce_bus_bw_bytes_per_s: float
    p2p_latency_s: float
    p2p_bw_bytes_per_s: float
    energy_per_byte_j: float
    # Power of the switch chips, for the whole run (docs/metrics.md, "Energy"). 0: not modelled.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = f"interconnect '{self.name}'"
        if self.kind not in KINDS:
            raise HardwareError(f"{owner}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        positive(owner, allreduce_bus_bw_bytes_per_s=self.allreduce_bus_bw_bytes_per_s,
                 p2p_bw_bytes_per_s=self.p2p_bw_bytes_per_s)
        non_negative(owner, allreduce_alpha_s=self.allreduce_alpha_s, p2p_latency_s=self.p2p_latency_s,
                     energy_per_byte_j=self.energy_per_byte_j)
        check_power(owner, self.idle_power_w, self.max_power_w)


def ring_bytes(nbytes: float, ranks: int) -> float:
    """Bytes each GPU sends (and receives) in a ring all-reduce of ``nbytes`` over ``ranks`` GPUs."""
    return 2.0 * (ranks - 1) / ranks * nbytes


def allreduce_time_s(p: InterconnectParams, nbytes: float, ranks: int) -> float:
    """``alpha + 2 (N - 1) / N x S / B``; 0 on one GPU (nothing to reduce)."""
    if ranks <= 1:
        return 0.0
    return p.allreduce_alpha_s + ring_bytes(nbytes, ranks) / p.allreduce_bus_bw_bytes_per_s


def p2p_time_s(p: InterconnectParams, nbytes: float) -> float:
    return p.p2p_latency_s + nbytes / p.p2p_bw_bytes_per_s
