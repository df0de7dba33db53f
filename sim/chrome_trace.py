"""Chrome trace event JSON from spans: one process per device, one thread per lane (channel or direction).

Complete events (``"ph": "X"``) carry ``ts``/``dur`` in microseconds; metadata events (``"ph": "M"``) name
processes and threads. Perfetto and ``chrome://tracing`` read this format.
"""

from __future__ import annotations

import json

from sim.engine import Span
from sim.pipeline import P2P_LANE


def _device_and_lane(component: str) -> tuple[str, str]:
    device, _, lane = component.partition(".")
    return device, lane or "compute"


SHARED_DEVICES = ("host",)  # one per machine, whatever the GPUs; every other device is one per GPU


def chrome_trace(spans: list[Span], metadata: dict | None = None, ranks: int = 1, pipeline=None) -> dict:
    """``ranks`` > 1 (tensor parallelism): every per-GPU device (GPU, its PCIe link, its PIM device) is drawn once
    per GPU, as ``gpu[r]``; the ranks do identical work at the same times, so ranks 1.. repeat rank 0's simulated
    spans (their events say ``"replica_of": 0``). ``pipeline`` (a ``sim.pipeline.PipelineTrace``): every stage is
    drawn, stage s's ranks as ``gpu[s x ranks + r]``; the last stage's first rank is the simulated GPU, the others'
    spans say ``"replica_of"`` it (earlier stages: ``PipelineTrace.staged_spans``). The host's devices are drawn
    once, with one lane per stage under pipeline parallelism."""
    staged = pipeline.staged_spans(spans) if pipeline is not None else [(0, s) for s in spans]
    stages = pipeline.pp if pipeline is not None else 1
    gpus = ranks * stages
    simulated = (stages - 1) * ranks
    devices: dict[str, int] = {}
    lanes: dict[tuple[str, str], int] = {}
    events = []

    def names(device: str, stage: int) -> list[tuple[str, int]]:
        if gpus == 1:
            return [(device, 0)]
        if device in SHARED_DEVICES:
            return [(device, simulated)]
        return [(f"{device}[{stage * ranks + r}]", stage * ranks + r) for r in range(ranks)]

    def lane_of(device: str, lane: str, stage: int) -> str:
        """A shared device serves every stage, at different times: one lane per stage (Chrome traces need the
        spans of one lane to nest)."""
        return f"{lane} (stage {stage})" if stages > 1 and device in SHARED_DEVICES else lane

    for comp in sorted({s.component for s in spans} | ({P2P_LANE} if pipeline is not None else set())):
        device, lane = _device_and_lane(comp)
        for stage in range(stages):
            for name, _ in names(device, stage):
                devices.setdefault(name, 0)
                key = (name, lane_of(device, lane, stage))
                if key not in lanes:
                    lanes[key] = sum(1 for d, _ in lanes if d == name) + 1
    devices = {name: pid for pid, name in enumerate(sorted(devices, key=_device_order), start=1)}
    for device, pid in devices.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": device}})
    for (device, lane), tid in lanes.items():
        events.append({"ph": "M", "name": "thread_name", "pid": devices[device], "tid": tid,
                       "args": {"name": lane}})
    for stage, s in staged:
        device, lane = _device_and_lane(s.component)
        args = {"step": s.step, "bytes": s.nbytes, "flops": s.flops, "energy_j": s.energy_j}
        if s.detail:
            args["detail"] = True  # one channel's view of work counted on the device lane
        if stages > 1:
            args["stage"] = stage
        tagged = {**args, "replica_of": simulated}
        for name, gpu in names(device, stage):
            events.append({"ph": "X", "name": s.kind, "cat": device, "pid": devices[name],
                           "tid": lanes[(name, lane_of(device, lane, stage))], "ts": s.start_s * 1e6,
                           "dur": (s.end_s - s.start_s) * 1e6,
                           "args": args if gpu == simulated and stage == stages - 1 else tagged})
    other = dict(metadata or {})
    if ranks > 1:
        other["ranks"] = ranks
    if stages > 1:
        other["stages"] = stages
        other["simulated_gpu"] = simulated
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def _device_order(name: str) -> tuple:
    """Devices by GPU index, then name: ``gpu[0]``, ``pim[0]``, ``gpu[1]``, ... (the host last)."""
    base, _, index = name.partition("[")
    return (int(index.rstrip("]")) if index else 1 << 30, base)


def chrome_trace_json(spans: list[Span], metadata: dict | None = None, ranks: int = 1, pipeline=None) -> str:
    return json.dumps(chrome_trace(spans, metadata, ranks, pipeline), sort_keys=True) + "\n"
