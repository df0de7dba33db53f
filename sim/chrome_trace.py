"""Chrome trace event JSON from spans: one process per device, one thread per lane (channel or direction).

Complete events (``"ph": "X"``) carry ``ts``/``dur`` in microseconds; metadata events (``"ph": "M"``) name
processes and threads. Perfetto and ``chrome://tracing`` read this format.
"""

from __future__ import annotations

import json

from sim.engine import Span


def _device_and_lane(component: str) -> tuple[str, str]:
    device, _, lane = component.partition(".")
    return device, lane or "compute"


SHARED_DEVICES = ("host",)  # one per machine, whatever the GPUs; every other device is one per GPU


def chrome_trace(spans: list[Span], metadata: dict | None = None, ranks: int = 1) -> dict:
    """``ranks`` > 1 (tensor parallelism): every per-GPU device (GPU, its PCIe link, its PIM device) is drawn once
    per GPU, as ``gpu[r]``; the ranks do identical work at the same times, so ranks 1.. repeat rank 0's simulated
    spans (their events say ``"replica_of": 0``). The host's devices are drawn once."""
    devices: dict[str, int] = {}
    lanes: dict[tuple[str, str], int] = {}
    events = []

    def names(device: str) -> list[tuple[str, int]]:
        if ranks == 1 or device in SHARED_DEVICES:
            return [(device, 0)]
        return [(f"{device}[{r}]", r) for r in range(ranks)]

    for comp in sorted({s.component for s in spans}):
        device, lane = _device_and_lane(comp)
        for name, _ in names(device):
            devices.setdefault(name, len(devices) + 1)
            if (name, lane) not in lanes:
                lanes[(name, lane)] = sum(1 for d, _ in lanes if d == name) + 1
    for device, pid in devices.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": device}})
    for (device, lane), tid in lanes.items():
        events.append({"ph": "M", "name": "thread_name", "pid": devices[device], "tid": tid,
                       "args": {"name": lane}})
    for s in spans:
        device, lane = _device_and_lane(s.component)
        args = {"step": s.step, "bytes": s.nbytes, "flops": s.flops, "energy_j": s.energy_j}
        if s.detail:
            args["detail"] = True  # one channel's view of work counted on the device lane
        for name, rank in names(device):
            events.append({"ph": "X", "name": s.kind, "cat": device, "pid": devices[name],
                           "tid": lanes[(name, lane)], "ts": s.start_s * 1e6, "dur": (s.end_s - s.start_s) * 1e6,
                           "args": {**args, "replica_of": 0} if rank else args})
    other = dict(metadata or {})
    if ranks > 1:
        other["ranks"] = ranks
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def chrome_trace_json(spans: list[Span], metadata: dict | None = None, ranks: int = 1) -> str:
    return json.dumps(chrome_trace(spans, metadata, ranks), sort_keys=True) + "\n"
