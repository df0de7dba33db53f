"""Decode-step timeline: a Gantt chart of a Chrome trace, one lane per resource, coloured by operation kind.

Input is the Chrome trace JSON that ``aqpim-sim run --trace-out`` and ``aqpim-sim compare`` write: complete events
(``ph: X``, ``ts``/``dur`` in µs, the decode step in ``args.step``) and metadata events naming processes (devices)
and threads (lanes). Lanes run GPU, PCIe H2D, PCIe D2H, host CPU, the PIM device as a whole, other components
(PIM links), then numbered channel lanes (``pim.ch17``; the simulator traces a few channels of a bank in detail). Up to ``max_channel_lanes`` channels get a lane each; more are grouped into that many lanes of
consecutive channels drawn as a density view: the share of the group's channels busy in each time bin, stacked
by kind. Dashed lines mark where each decode step starts. A trace holding several runs (``compare``) lists them
in ``otherData.runs``; each run gets its own panel and its own time axis.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch, Rectangle

from plots.style import kind_colours, new_figure, rc, save, time_unit
from sim.results import ResultsError, read_json

FIXED_LANES = {("gpu", "compute"): (0, "GPU"), ("pcie", "h2d"): (1, "PCIe H2D"),
               ("pcie", "d2h"): (2, "PCIe D2H"), ("host", "cpu"): (3, "host CPU"),
               ("pim", "compute"): (4, "PIM, all channels"), ("pim", "link.down"): (5, "PIM link down"),
               ("pim", "link.up"): (5, "PIM link up")}
CHANNEL = re.compile(r"^(\D*?)(\d+)$")
DENSITY_BINS = 600


@dataclass
class Lane:
    label: str
    order: tuple
    members: int = 1                      # channels drawn in this lane (> 1: density view)
    events: list = field(default_factory=list)  # (start_s, end_s, kind)


@dataclass
class Run:
    label: str
    lanes: list[Lane]
    step_starts: dict[int, float]
    end_s: float


def _lane_plan(threads: dict[tuple[str, str], list], max_channel_lanes: int) -> dict[tuple[str, str], Lane]:
    """Map each (device, thread) to its lane; channel threads of a device are grouped when there are many."""
    plan: dict[tuple[str, str], Lane] = {}
    channels: dict[str, list[tuple[int, str]]] = {}
    for device, thread in threads:
        m = CHANNEL.match(thread)
        if (device, thread) in FIXED_LANES:
            rank, label = FIXED_LANES[(device, thread)]
            plan[(device, thread)] = Lane(label, (rank, ""))
        elif m:
            channels.setdefault(device, []).append((int(m.group(2)), thread))
        else:
            plan[(device, thread)] = Lane(device if thread == "compute" else f"{device} {thread}", (5, device, thread))
    for device, chans in sorted(channels.items()):
        chans.sort()
        if len(chans) <= max_channel_lanes:
            for n, thread in chans:
                plan[(device, thread)] = Lane(f"{device} {thread}", (6, device, n))
            continue
        size = math.ceil(len(chans) / max_channel_lanes)
        for g in range(0, len(chans), size):
            group = chans[g:g + size]
            prefix = CHANNEL.match(group[0][1]).group(1)
            lane = Lane(f"{device} {prefix}{group[0][0]}-{group[-1][0]}\n({len(group)} ch, share busy)",
                        (6, device, group[0][0]), members=len(group))
            for _, thread in group:
                plan[(device, thread)] = lane
    return plan


def check_options(steps: int | None, max_channel_lanes: int) -> None:
    """The figure's options: a positive number of steps (or None for all) and at least one channel lane."""
    if steps is not None and steps < 1:
        raise ResultsError(f"steps (--steps) must be at least 1, got {steps}")
    if max_channel_lanes < 1:
        raise ResultsError(f"max_channel_lanes (--max-lanes) must be at least 1, got {max_channel_lanes}")


def read_runs(trace: dict, steps: int | None = None, max_channel_lanes: int = 8) -> list[Run]:
    """The runs of a Chrome trace, with events in seconds, limited to the first ``steps`` decode steps."""
    check_options(steps, max_channel_lanes)
    events = trace.get("traceEvents")
    if not isinstance(events, list):
        raise ResultsError("not a Chrome trace: no traceEvents list")
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
                    if e.get("ph") == "M" and e.get("name") == "thread_name"}
    meta = trace.get("otherData") or {}
    if "runs" in meta:
        layout = [(r["label"], {int(pid): dev for pid, dev in r["processes"].items()}) for r in meta["runs"]]
    else:
        layout = [(str(meta.get("system", "")), procs)]
    complete = [e for e in events if e.get("ph") == "X"]
    all_steps = sorted({e.get("args", {}).get("step", 0) for e in complete})
    shown = set(all_steps if steps is None else all_steps[:steps])
    runs = []
    for label, devices in layout:
        mine = [e for e in complete if e["pid"] in devices and e.get("args", {}).get("step", 0) in shown]
        threads = {}
        for e in mine:
            threads.setdefault((devices[e["pid"]], thread_names.get((e["pid"], e["tid"]), str(e["tid"]))), [])
        plan = _lane_plan(threads, max_channel_lanes)
        starts: dict[int, float] = {}
        end = 0.0
        for e in mine:
            key = (devices[e["pid"]], thread_names.get((e["pid"], e["tid"]), str(e["tid"])))
            s, d = e["ts"] * 1e-6, e["dur"] * 1e-6
            plan[key].events.append((s, s + d, e["name"]))
            step = e.get("args", {}).get("step", 0)
            starts[step] = min(starts.get(step, s), s)
            end = max(end, s + d)
        lanes = sorted({id(lane): lane for lane in plan.values()}.values(), key=lambda lane: lane.order)
        runs.append(Run(label, lanes, dict(sorted(starts.items())), end))
    return [r for r in runs if r.lanes]


def _busy_integral(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Total busy time of the intervals [starts, ends) before each time in ``t``."""
    s, e = np.sort(starts), np.sort(ends)
    cs, ce = np.concatenate([[0.0], np.cumsum(s)]), np.concatenate([[0.0], np.cumsum(e)])
    ns, ne = np.searchsorted(s, t, side="left"), np.searchsorted(e, t, side="left")
    return (ns * t - cs[ns]) - (ne * t - ce[ne])


def _draw_density(ax, y: float, lane: Lane, t0: float, t1: float, scale: float, colours: dict) -> None:
    edges = np.linspace(t0, t1, DENSITY_BINS + 1)
    width = (t1 - t0) / DENSITY_BINS
    bottom = np.zeros(DENSITY_BINS)
    by_kind: dict[str, list] = {}
    for s, e, kind in lane.events:
        by_kind.setdefault(kind, []).append((s, e))
    for kind in sorted(by_kind):
        arr = np.asarray(by_kind[kind])
        busy = np.diff(_busy_integral(arr[:, 0], arr[:, 1], edges))
        share = np.clip(busy / (width * lane.members), 0.0, 1.0)
        top = np.minimum(bottom + share, 1.0)
        x = (edges - t0) * scale
        ax.fill_between(x, y + 0.4 - 0.8 * np.append(bottom, bottom[-1]), y + 0.4 - 0.8 * np.append(top, top[-1]),
                        step="post", color=colours[kind], linewidth=0)
        bottom = top
    ax.add_patch(Rectangle((0, y - 0.4), (t1 - t0) * scale, 0.8, fill=False, edgecolor="#999999", linewidth=0.5))


SHARED_AXIS_SPAN = 4.0  # panels share one time axis when their runs' lengths are within this factor


def shares_time_axis(spans_s: list[float]) -> bool:
    """Whether the panels of one timeline figure share a time axis: several runs of comparable length (within
    ``SHARED_AXIS_SPAN``), so their bars compare at a glance; a 3 s offload step beside a 15 ms PIM step would
    leave the PIM panel empty, so those keep their own axes."""
    positive = [s for s in spans_s if s > 0]
    return len(positive) > 1 and max(positive) / min(positive) <= SHARED_AXIS_SPAN


def plot_timeline(trace_path: str | Path, out: str | Path, steps: int | None = None,
                  max_channel_lanes: int = 8, title: str | None = None) -> Path:
    """Gantt chart of the first ``steps`` decode steps of a Chrome trace (all traced steps when None)."""
    check_options(steps, max_channel_lanes)
    trace = read_json(trace_path)
    if not isinstance(trace, dict):
        raise ResultsError(f"{trace_path}: not a Chrome trace (expected a JSON object with traceEvents)")
    try:
        runs = read_runs(trace, steps, max_channel_lanes)
    except ResultsError as e:
        raise ResultsError(f"{trace_path}: {e}") from None
    except KeyError as e:
        raise ResultsError(f"{trace_path}: malformed Chrome trace: missing {e}") from None
    except (AttributeError, TypeError, ValueError) as e:
        raise ResultsError(f"{trace_path}: malformed Chrome trace: {e}") from None
    if not runs:
        raise ResultsError(f"{trace_path}: the trace holds no spans (was it written with --trace-steps 0?)")
    colours = kind_colours(k for r in runs for lane in r.lanes for _, _, k in lane.events)
    heights = [0.9 + 0.42 * len(r.lanes) for r in runs]
    spans = [r.end_s - min(r.step_starts.values()) for r in runs]
    common = shares_time_axis(spans)
    with rc():
        fig = new_figure(11.0, sum(heights) + 0.9)
        axes = fig.subplots(len(runs), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, run in zip(axes, runs, strict=True):
            t0 = min(run.step_starts.values())
            unit, scale = time_unit(max(spans) if common else run.end_s - t0)
            for y, lane in enumerate(run.lanes):
                if lane.members > 1:
                    _draw_density(ax, y, lane, t0, run.end_s, scale, colours)
                    continue
                by_kind: dict[str, list] = {}
                for s, e, kind in lane.events:
                    by_kind.setdefault(kind, []).append(((s - t0) * scale, (e - s) * scale))
                for kind in sorted(by_kind):
                    ax.broken_barh(by_kind[kind], (y - 0.38, 0.76), facecolors=colours[kind],
                                   edgecolors=colours[kind], linewidth=0.4)
            for step, start in run.step_starts.items():
                x = (start - t0) * scale
                ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
                ax.text(x, 1.0, f" step {step}", transform=ax.get_xaxis_transform(), va="bottom", ha="left",
                        fontsize=8)
            ax.axvline((run.end_s - t0) * scale, color="black", linestyle=":", linewidth=0.8)
            ax.set_yticks(range(len(run.lanes)), [lane.label for lane in run.lanes])
            ax.set_ylim(len(run.lanes) - 0.5, -0.5)
            ax.set_xlim(0, (max(spans) if common else run.end_s - t0) * scale * 1.01)
            ax.set_xlabel(f"time since the first shown step started ({unit}"
                          + ("; the same axis in every panel)" if common else ")"))
            ax.set_title(run.label, loc="left", fontweight="bold", pad=12)
            ax.grid(axis="x", color="#dddddd", linewidth=0.5)
            ax.set_axisbelow(True)
        handles = [Patch(color=c, label=k) for k, c in colours.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), frameon=False,
                   title="operation kind (dashed: step start, dotted: end of the last shown step)")
        if title:
            fig.suptitle(title)
        return save(fig, out)
