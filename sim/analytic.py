"""The closed-form twin of every system: one decode step's latency from the same cost functions, by sums.

Where a system's schedule is a single chain (no overlap), the sum is exact and the discrete-event result must
equal it. Where work overlaps (prefetch), the estimate is a lower bound: the busiest resource, or the longest
chain that cannot overlap, whichever is larger. ``Estimate.exact`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw_models.machine import MachineParams
from sim.systems.base import StepBatch
from sim.systems.offload import offload_costs
from sim.topology import Topology
from workloads.models import ModelSpec


@dataclass(frozen=True)
class Estimate:
    latency_s: float
    exact: bool


def _t(works) -> float:
    return sum(w.duration_s for w in works)


def offload_step(params: MachineParams, model: ModelSpec, batch: StepBatch, *, prefetch: bool,
                 cpu_attention: bool, topology: Topology | None = None) -> Estimate:
    topo = topology or Topology(params)
    c = offload_costs(params, model, batch, cpu_attention)
    n = model.n_layers
    h2d = topo.route("host.dram", "gpu").time_s(c.fetch_bytes)
    d2h = topo.route("gpu", "host.dram").time_s(c.store_bytes)
    pre, attn, post, head = _t(c.pre), _t(c.attn), _t(c.post), _t(c.head)
    if cpu_attention or not prefetch:
        return Estimate(n * (pre + h2d + attn + d2h + post) + head, exact=True)
    gpu_total = n * (pre + attn + post) + head
    half = params.pcie.duplex == "half"
    bound = max(
        gpu_total,
        n * h2d + attn + post + head,            # all loads, then the last layer's compute
        pre + n * d2h,                            # first store cannot start before the first projection
        n * (h2d + d2h) if half else 0.0,        # one shared resource carries both directions
    )
    return Estimate(bound, exact=False)


def _offload(params, model, batch, cfg, topology):
    return offload_step(params, model, batch, prefetch=cfg.prefetch, cpu_attention=cfg.cpu_attention,
                        topology=topology)


# One closed-form estimator per registered system: (params, model, batch, cfg, topology) -> Estimate.
ESTIMATORS = {"offload": _offload}
