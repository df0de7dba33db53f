"""The machine in simulation: SimPy components for the devices and the queueing links of a ``Topology``.

Compute devices are ``Component``s (GPU, host CPU). Each exclusive link resource (a PCIe direction, or the
whole link when half duplex) is one ``simpy.Resource``; a transfer holds every resource on its route for the
route's idle time. The two directions of a half-duplex link are two traced lanes over one shared resource.
"""

from __future__ import annotations

import simpy

from hw_models.channel_bank import ChannelBank
from hw_models.component import Component
from hw_models.machine import MachineParams
from hw_models.pim import PimDeviceParams
from sim.engine import Tracer
from sim.topology import Route, Topology


class Machine:
    def __init__(self, env: simpy.Environment, params: MachineParams, tracer: Tracer,
                 pim: PimDeviceParams | None = None, trace_channels: int = 8):
        self.env = env
        self.params = params
        self.pim_params = pim
        self.tracer = tracer
        self.topology = Topology(params, pim)
        self.gpu = Component(env, "gpu", tracer)
        self.cpu = Component(env, "host.cpu", tracer)
        tracer.register("gpu", "compute")
        tracer.register("host.cpu", "compute")
        self.link_resources = {name: simpy.Resource(env, capacity=1) for name in self.topology.resources}
        for link in self.topology.links:
            if link.resource:
                # GPU-host traffic is what the offload path pays for; device links to PIM are counted apart.
                tracer.register(link.name, "comm" if link.name.startswith("pcie") else "link")
        self.pim = None
        if pim is not None:
            self.pim = ChannelBank(env, "pim", pim.channels, tracer, trace_lanes=trace_channels)
            tracer.register("pim", "compute")

    def transfer(self, src: str, dst: str, nbytes: float, kind: str) -> simpy.Process:
        """Start a transfer along the route from ``src`` to ``dst``; the returned process ends when it lands."""
        return self.env.process(self._transfer(self.topology.route(src, dst), nbytes, kind))

    def _transfer(self, route: Route, nbytes: float, kind: str):
        reqs = [self.link_resources[r].request() for r in route.resources]
        try:
            for req in reqs:
                yield req
            t = self.env.now
            dur = route.time_s(nbytes)
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
