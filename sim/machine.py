"""The machine in simulation: SimPy components for the devices and the queueing links of a ``Topology``.

Compute devices are ``Component``s (GPU, host CPU). Each exclusive link resource (a PCIe direction, or the
whole link when half duplex) is one ``simpy.Resource``; a transfer holds every resource on its route for the
route's idle time. The two directions of a half-duplex link are two traced lanes over one shared resource.
"""

from __future__ import annotations

import simpy

from hw_models.channel_bank import ChannelBank
from hw_models.component import Component
from hw_models.links import DEVICE_LINK, HOST_LINK
from sim.engine import Tracer
from sim.topology import GPU, HOST_CPU, PIM, Route, Topology

# GPU-host traffic is what the offload path pays for ("comm"); device links to PIM are counted apart ("link").
TRACER_CATEGORY = {HOST_LINK: "comm", DEVICE_LINK: "link"}


class Machine:
    def __init__(self, env: simpy.Environment, topology: Topology, tracer: Tracer, pim_trace_lanes: int = 8):
        self.env = env
        self.topology = topology
        self.params = topology.params
        self.pim_params = topology.pim
        self.tracer = tracer
        self.gpu = Component(env, GPU, tracer)
        self.cpu = Component(env, HOST_CPU, tracer)
        tracer.register(GPU, "compute")
        tracer.register(HOST_CPU, "compute")
        self.link_resources = {name: simpy.Resource(env, capacity=1) for name in topology.resources}
        for link in topology.links:
            if link.resource:
                tracer.register(link.name, TRACER_CATEGORY[link.category])
        self.pim = None
        if topology.pim is not None:
            self.pim = ChannelBank(env, PIM, topology.pim.channels, tracer, trace_lanes=pim_trace_lanes)
            tracer.register(PIM, "compute")

    def transfer(self, src: str, dst: str, nbytes: float, kind: str, setup: bool = True) -> simpy.Process:
        """Start a transfer along the route from ``src`` to ``dst``; the returned process ends when it lands.
        ``setup=False``: a later piece of a burst, which does not pay the route's latencies again."""
        return self.env.process(self._transfer(self.topology.route(src, dst), nbytes, kind, setup))

    def _transfer(self, route: Route, nbytes: float, kind: str, setup: bool = True):
        reqs = [self.link_resources[r].request() for r in route.resources]
        try:
            for req in reqs:
                yield req
            t = self.env.now
            dur = route.time_s(nbytes, setup)
            for link in route.links:
                energy = nbytes * link.energy_per_byte_j
                if link.resource:
                    self.tracer.record(link.name, kind, t, t + dur, nbytes, 0.0, energy)
                    self.tracer.occupy(link.name, t, t + dur)
                elif energy:
                    self.tracer.add_energy(link.name, energy)
            yield self.env.timeout(dur)
        finally:
            for r, req in zip(route.resources, reqs, strict=True):
                self.link_resources[r].release(req)
