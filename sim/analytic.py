"""The closed-form twin of every system: one decode step's latency from the same cost functions, by sums.

Where a system's schedule is a single chain (no overlap), the sum is exact and the discrete-event result must
equal it. Where work overlaps (prefetch), the estimate is a lower bound: the busiest resource, or the longest
chain that cannot overlap, whichever is larger. ``Estimate.exact`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw_models.machine import MachineParams
from sim.systems.base import StepBatch
from sim.systems.gpu import gpu_costs
from sim.systems.offload import offload_costs
from sim.systems.pim import PimSystem
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


def _offload(system, batch: StepBatch, topology: Topology) -> Estimate:
    return offload_step(system.machine.params, system.model, batch, prefetch=system.prefetch,
                        cpu_attention=system.cpu_attention, topology=topology)


def pim_step(system: PimSystem, batch: StepBatch, topology: Topology) -> Estimate:
    """Closed form of a PIM system's step: per layer, projection + max(PIM path, spill path) + merge and FFN.

    Exact when one process runs and nothing else competes for its resources; with sub-batches, or when the spill
    path shares the GPU (host softmax) or PCIe (host-side PIM) with the PIM path, it is a lower bound: the longest
    sub-batch chain, the GPU's total work, or the busiest channel's total work, whichever is largest.
    """
    plans, head = system.plans(batch)
    down, up = topology.route("gpu", "pim"), topology.route("pim", "gpu")
    n = system.model.n_layers
    chains, gpu_total = [], _t(head)
    for plan in plans:
        if plan.chunks > 1:  # identical chunks through three FIFO stages: first chunk, then the bottleneck
            stages = (down.time_s(plan.down_bytes / plan.chunks), plan.phases[0].makespan_s,
                      up.time_s(plan.up_bytes / plan.chunks))
            pim_path = sum(stages) + (plan.chunks - 1) * max(stages)
        else:
            pim_path = (down.time_s(plan.down_bytes) + sum(ph.makespan_s for ph in plan.phases)
                        + up.time_s(plan.up_bytes))
        if len(plan.phases) > 1:
            pim_path += up.time_s(plan.mid_up_bytes) + _t(plan.mid_gpu) + down.time_s(plan.mid_down_bytes)
        spill_path = 0.0
        if plan.spill_fetch_bytes > 0:
            store = topology.route("gpu", "host.dram").time_s(plan.spill_store_bytes) if plan.spill_store_bytes else 0.0
            spill_path = (store + topology.route("host.dram", "gpu").time_s(plan.spill_fetch_bytes) + _t(plan.spill_attn))
        chains.append(n * (_t(plan.pre) + max(pim_path, spill_path) + _t(plan.merge_post)))
        gpu_total += n * (_t(plan.pre) + _t(plan.merge_post) + _t(plan.spill_attn) + _t(plan.mid_gpu))
    shared = any(p.spill_fetch_bytes > 0 for p in plans) and (
        system.cfg.softmax == "host" or system.dev.placement == "host")
    if len(plans) == 1 and not shared:
        return Estimate(chains[0] + _t(head), exact=True)
    channel_busy = sum(plan.chunks * np.sum([ph.durations_s for ph in plan.phases], axis=0) for plan in plans)
    return Estimate(max(max(chains) + _t(head), gpu_total, n * float(np.max(channel_busy))), exact=False)


def gpu_step(system, batch: StepBatch, topology: Topology) -> Estimate:
    layer, head = gpu_costs(system.machine.params, system.model, batch)
    return Estimate(system.model.n_layers * _t(layer) + _t(head), exact=True)


# One closed-form estimator per registered system: (system, batch, topology) -> Estimate.
ESTIMATORS = {"offload": _offload, "pim": pim_step, "aqpim": pim_step, "gpu": gpu_step}
