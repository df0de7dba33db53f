"""The machine in simulation: SimPy components for the devices and the queueing links of a ``Topology``.

Compute devices are ``Component``s (GPU, host CPU). Each exclusive link resource (a PCIe direction, or the
whole link when half duplex) is one ``simpy.Resource``; a transfer holds every resource on its route for the
route's idle time. The two directions of a half-duplex link are two traced lanes over one shared resource.
"""

from __future__ import annotations

import simpy

from hw_models.channel_bank import ChannelBank
from hw_models.component import Component, hold_s
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
        self.compute = {GPU: self.gpu, HOST_CPU: self.cpu}  # the compute components by topology name
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
            yield self.env.timeout(self._account_transfer(route, nbytes, kind, setup, self.env.now))
        finally:
            for r, req in zip(route.resources, reqs, strict=True):
                self.link_resources[r].release(req)

    def _account_transfer(self, route: Route, nbytes: float, kind: str, setup: bool, t: float) -> float:
        """Record a transfer that holds its route from ``t``; return its duration (the hold's timeout)."""
        dur = route.time_s(nbytes, setup)
        for link in route.links:
            energy = nbytes * link.energy_per_byte_j
            if link.resource:
                self.tracer.record(link.name, kind, t, t + dur, nbytes, 0.0, energy)
                self.tracer.occupy(link.name, t, t + dur)
            elif energy:
                self.tracer.add_energy(link.name, energy)
        return dur

    def chain_scope(self, holds) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(components, kinds, energy parts) that ``chain_end`` of ``holds`` records into: a ``Tracer.mark``
        limited to them gives the same ``delta_since``."""
        comps: dict[str, None] = {}
        kinds: dict[str, None] = {}
        energy: dict[str, None] = {}
        for h in holds:
            n = len(h)
            if n == 2:
                comps[h[0].name] = None
                for w in h[1]:
                    kinds[w.kind] = None
            elif n == 4:
                for link in self.topology.route(h[0], h[1]).links:
                    if link.resource:
                        comps[link.name] = None
                        kinds[h[3]] = None
                    elif h[2] * link.energy_per_byte_j:
                        energy[link.name] = None
            else:
                comps[self.pim.name] = None
                for k in ([p.kind for p in h[0].parts] if h[0].parts else [h[0].kind]):
                    kinds[k] = None
        return tuple(comps), tuple(kinds), tuple(energy)

    def hold_occupancy(self, hold) -> tuple[float, tuple[str, ...]] | None:
        """A GPU, CPU or transfer hold of ``chain_end`` as its resource holds alone: (its seconds, the components
        it occupies for them), for a caller that repeats the hold many times without recording its work (a
        contended step's later layers). None for a PIM phase, whose channels' state ``issue`` keeps."""
        if len(hold) == 2:
            return hold_s(hold[1]), (hold[0].name,)
        if len(hold) == 4:
            route = self.topology.route(hold[0], hold[1])
            return route.time_s(hold[2], True), tuple(link.name for link in route.links if link.resource)
        return None

    def chain_end(self, holds, t: float) -> float:
        """Run ``holds`` one after another from clock ``t`` on idle resources without events, recording exactly
        what their processes would, and return the clock at which the last ends (``sim.fastpath``). A hold is
        ``(component, works)`` for the GPU or host CPU (``Component.execute``), ``(src, dst, nbytes, kind)`` for
        a transfer (``transfer``) or ``(phase,)`` for a PIM phase on every channel (``ChannelBank.run`` with the
        phase's kind, durations, totals and parts). Each hold starts when the previous ends, as a process that
        yields them in turn does; the clock moves as SimPy's does (the start plus the hold's timeout).
        """
        for h in holds:
            n = len(h)
            if n == 1:
                ph = h[0]
                t = t + (self.pim.issue(t, ph.kind, ph.durations_s, ph.nbytes, ph.flops, ph.energy_j,
                                        parts=ph.parts, part_table=ph.part_table) - t)
            elif n == 2:
                t = t + h[0].account(t, h[1])
            else:
                t = t + self._account_transfer(self.topology.route(h[0], h[1]), h[2], h[3], True, t)
        return t
