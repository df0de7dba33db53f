"""The machine as a graph: devices and memories are nodes, links are directed edges; routes are looked up.

``Topology`` is pure (no SimPy): it builds a networkx DiGraph from ``MachineParams`` and answers what a transfer
from one node to another costs on idle links: the sum of the links' fixed latencies plus the bytes over the
slowest link (DMA engines stream through the path). The analytic model uses it directly; ``Machine`` wraps it
with SimPy components. An edge is *exclusive* when it is a resource that transfers queue for (a PCIe direction);
non-exclusive edges (the host memory bus behind a DMA) bound the bandwidth and take energy but do not queue: the
host DRAM's bandwidth is many times that of one PCIe link.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from hw_models.dram import SEQUENTIAL, AccessPattern, host_read_bw_bytes_per_s
from hw_models.links import DEVICE_LINK, HOST_LINK, Link, path_bw_bytes_per_s, path_latency_s, path_time_s
from hw_models.machine import MachineParams
from hw_models.pim import PimDeviceParams

# Node names. Transfers and routes name their ends with these.
GPU, PIM = "gpu", "pim"
HOST_CPU, HOST_DRAM, HOST_RC = "host.cpu", "host.dram", "host.rc"


@dataclass(frozen=True)
class Route:
    src: str
    dst: str
    links: tuple[Link, ...]

    @cached_property  # routes are cached by the topology: these are computed once, not per transfer
    def latency_s(self) -> float:
        return path_latency_s(self.links)

    @cached_property
    def bw_bytes_per_s(self) -> float:
        return path_bw_bytes_per_s(self.links)

    def time_s(self, nbytes: float, setup: bool = True) -> float:
        """Transfer time of ``nbytes`` along the route when all its links are idle. ``setup=False``: a piece of a
        burst already under way (the links' fixed latencies were paid by the burst's first piece)."""
        if not self.links:
            return 0.0
        return path_time_s(self.latency_s if setup else 0.0, self.bw_bytes_per_s, nbytes)

    @cached_property
    def resources(self) -> tuple[str, ...]:
        # Sorted so that two transfers needing the same resources never wait for each other in a cycle.
        return tuple(sorted({link.resource for link in self.links if link.resource}))


INF = float("inf")


class Topology:
    """Nodes: ``gpu``, ``host.cpu``, ``host.dram``, ``host.rc`` (root complex), and ``pim`` when the machine has a
    PIM device: beside the GPU (``accelerator`` placement, a device link to the GPU) or in the host (``host``
    placement, on the host memory side, so GPU traffic to it also crosses PCIe). Edges: links with parameters.

    The host memory bus (``host.dram``) and the CPU's memory read at the host DRAM rate the timing model gives for
    ``host_read_pattern`` (``hw_models.dram.host_read_bw_bytes_per_s``): a system that knows the layout of what
    it reads (the offload system's paged KV blocks, ``hw_models.dram.paged_kv_pattern``) passes it; the default
    is a sequential stream."""

    def __init__(self, params: MachineParams, pim: PimDeviceParams | None = None,
                 host_read_pattern: AccessPattern = SEQUENTIAL):
        self.params = params
        self.pim = pim
        self.host_read_pattern = host_read_pattern
        g = nx.DiGraph()
        dram, pcie = params.host_dram, params.pcie
        host_read_bw = host_read_bw_bytes_per_s(dram, host_read_pattern)
        # Compute nodes carry what their parameters allow: the memory they read at what rate, and FLOP/s.
        g.add_node(GPU, memory="GPU memory", mem_bw_bytes_per_s=params.gpu.achievable_bw_bytes_per_s,
                   flops_per_s=params.gpu.achievable_flops_per_s)
        g.add_node(HOST_CPU, memory="host DRAM", mem_bw_bytes_per_s=host_read_bw,
                   flops_per_s=params.cpu.achievable_flops_per_s)
        if pim is not None:
            g.add_node(PIM, memory=f"PIM arrays ({pim.channels} channels' internal bandwidth)",
                       mem_bw_bytes_per_s=pim.internal_bw_bytes_per_s, flops_per_s=pim.peak_flops_per_s)
        membus = Link(HOST_DRAM, 0.0, host_read_bw, dram.energy_per_byte_j, None)
        g.add_edge(HOST_DRAM, HOST_RC, link=membus)
        g.add_edge(HOST_RC, HOST_DRAM, link=membus)
        g.add_edge(HOST_CPU, HOST_RC, link=Link("host.fabric", 0.0, INF, 0.0, None))
        g.add_edge(HOST_RC, HOST_CPU, link=Link("host.fabric", 0.0, INF, 0.0, None))
        h2d_res, d2h_res = ("pcie.h2d", "pcie.d2h") if pcie.duplex == "full" else ("pcie", "pcie")
        g.add_edge(HOST_RC, GPU, link=Link("pcie.h2d", pcie.latency_s, pcie.h2d_bw_bytes_per_s,
                                           pcie.energy_per_byte_j, h2d_res, HOST_LINK))
        g.add_edge(GPU, HOST_RC, link=Link("pcie.d2h", pcie.latency_s, pcie.d2h_bw_bytes_per_s,
                                           pcie.energy_per_byte_j, d2h_res, HOST_LINK))
        if pim is not None:
            end = GPU if pim.placement == "accelerator" else HOST_RC
            g.add_edge(end, PIM, link=Link("pim.link.down", pim.link_latency_s, pim.link_bw_bytes_per_s,
                                           pim.link_energy_per_byte_j, "pim.link.down", DEVICE_LINK))
            g.add_edge(PIM, end, link=Link("pim.link.up", pim.link_latency_s, pim.link_bw_bytes_per_s,
                                           pim.link_energy_per_byte_j, "pim.link.up", DEVICE_LINK))
        self.graph = g
        self._routes: dict[tuple[str, str], Route] = {}

    def compute_nodes(self) -> dict[str, dict]:
        """Node -> {memory, mem_bw_bytes_per_s, flops_per_s} for every node that computes."""
        return {n: d for n, d in self.graph.nodes(data=True) if "flops_per_s" in d}

    @cached_property
    def links(self) -> tuple[Link, ...]:
        """Every link, by name (the graph is built once, in ``__init__``; an analytic sweep asks per point)."""
        return tuple(sorted({d["link"] for _, _, d in self.graph.edges(data=True)}, key=lambda link: link.name))

    @property
    def resources(self) -> list[str]:
        return sorted({d["link"].resource for _, _, d in self.graph.edges(data=True) if d["link"].resource})

    def route(self, src: str, dst: str) -> Route:
        key = (src, dst)
        if key not in self._routes:
            if src == dst:
                self._routes[key] = Route(src, dst, ())
            else:
                try:
                    path = nx.shortest_path(self.graph, src, dst)
                except (nx.NetworkXNoPath, nx.NodeNotFound):
                    raise ValueError(f"no route from {src} to {dst} in machine '{self.params.name}'") from None
                links = tuple(self.graph.edges[u, v]["link"] for u, v in zip(path, path[1:], strict=False))
                self._routes[key] = Route(src, dst, links)
        return self._routes[key]
