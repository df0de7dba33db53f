"""Links between devices as parameters, and the cost of moving bytes along a path of them.

A ``Link`` is one direction of a wire between two nodes of a machine (a PCIe direction, a GPU-PIM link, the host
memory bus behind a DMA): a fixed latency per transfer, a bandwidth, an energy per byte, the name of the queueing
resource it occupies (None: it bounds bandwidth but does not queue), and its category, which says what its busy
time counts as (GPU-host traffic, the offload path; device-link traffic such as GPU-PIM; or internal paths).
A transfer streams through every link of its path at once (DMA engines pipeline), so its idle-path time is the
links' latencies plus the bytes over the slowest link.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST_LINK, DEVICE_LINK, INTERNAL = "host_link", "device_link", "internal"
CATEGORIES = (HOST_LINK, DEVICE_LINK, INTERNAL)


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    latency_s: float
    bw_bytes_per_s: float
    energy_per_byte_j: float
    resource: str | None  # name of the queueing resource, or None for a non-exclusive path
    category: str = INTERNAL


def path_latency_s(links: tuple[Link, ...]) -> float:
    return sum(link.latency_s for link in links)


def path_bw_bytes_per_s(links: tuple[Link, ...]) -> float:
    return min((link.bw_bytes_per_s for link in links), default=float("inf"))


def path_time_s(latency_s: float, bw_bytes_per_s: float, nbytes: float) -> float:
    """Time of one transfer of ``nbytes`` along an idle path with that total latency and narrowest bandwidth."""
    return latency_s + nbytes / bw_bytes_per_s
