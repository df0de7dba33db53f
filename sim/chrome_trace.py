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


def chrome_trace(spans: list[Span], metadata: dict | None = None) -> dict:
    devices: dict[str, int] = {}
    lanes: dict[tuple[str, str], int] = {}
    events = []
    for comp in sorted({s.component for s in spans}):
        device, lane = _device_and_lane(comp)
        pid = devices.setdefault(device, len(devices) + 1)
        if (device, lane) not in lanes:
            lanes[(device, lane)] = sum(1 for d, _ in lanes if d == device) + 1
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
        events.append({"ph": "X", "name": s.kind, "cat": device, "pid": devices[device],
                       "tid": lanes[(device, lane)], "ts": s.start_s * 1e6, "dur": (s.end_s - s.start_s) * 1e6,
                       "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": metadata or {}}


def chrome_trace_json(spans: list[Span], metadata: dict | None = None) -> str:
    return json.dumps(chrome_trace(spans, metadata), sort_keys=True) + "\n"
