"""The one component shape every hardware model shares.

A component keeps its environment, a hierarchical name (``gpu``, ``pcie.h2d``, ``pim.ch17``) and a tracer: any
object with ``record(component, kind, start_s, end_s, nbytes, flops, energy_j)`` (one call per piece of work)
and ``occupy(component, start_s, end_s)`` (one call per resource hold). Work is handed to a
component as a tuple of precomputed ``Work`` items: durations come from the pure cost functions, so the process
only pays one resource request and one timeout per call, however many kernels the call holds. That keeps the
event count independent of bytes and tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import simpy


class Work(NamedTuple):
    """One piece of work with its cost already computed (seconds, bytes, FLOP, joules). Immutable; a named tuple
    rather than a frozen dataclass because the cost functions make several per load row of every step, and a
    tuple is built several times faster."""

    kind: str
    duration_s: float
    nbytes: float = 0.0
    flops: float = 0.0
    energy_j: float = 0.0


class Component:
    """A named SimPy resource of capacity one that executes ``Work`` back to back."""

    def __init__(self, env: simpy.Environment, name: str, tracer, resource: simpy.Resource | None = None):
        self.env = env
        self.name = name
        self.tracer = tracer
        # Two logical components may share one physical resource (a half-duplex link's two directions).
        self.resource = resource if resource is not None else simpy.Resource(env, capacity=1)

    def execute(self, works: tuple[Work, ...]):
        """Process: wait for the resource, then run ``works`` in order while holding it."""
        with self.resource.request() as req:
            yield req
            yield self.env.timeout(self.account(self.env.now, works))

    def account(self, t: float, works: tuple[Work, ...]) -> float:
        """Record ``works`` run back to back from ``t`` and the hold behind them; return their total seconds (the
        hold's timeout). ``execute`` calls it at the moment it holds the resource; a chain replayed without
        events (``sim.machine.Machine.chain_end``) at the moment the hold would start."""
        total = 0.0
        record = self.tracer.record
        for w in works:
            record(self.name, w.kind, t + total, t + total + w.duration_s, w.nbytes, w.flops, w.energy_j)
            total += w.duration_s
        self.tracer.occupy(self.name, t, t + total)
        return total

    def run(self, works: tuple[Work, ...]) -> simpy.Process:
        """Start ``execute`` as a process and return it for the caller to ``yield``."""
        return self.env.process(self.execute(works))


def hold_s(works: tuple[Work, ...]) -> float:
    """What ``Component.account`` returns for ``works`` (their durations added in order), without recording them.
    Not ``sum()``: from Python 3.12 it adds floats with compensation, which would round differently."""
    total = 0.0
    for w in works:
        total += w.duration_s
    return total
