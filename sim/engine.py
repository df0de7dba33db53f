"""The tracer: what happened, recorded as flat spans and folded into per-component totals as it happens.

Components call ``record`` once per piece of work (a span: component, kind, start, end, bytes, FLOP, joules) and
``occupy`` once per resource hold. Totals (busy time, bytes, FLOP, energy, per component and per kind) are always
kept; the spans themselves only for the first ``keep_steps`` steps, so that memory stays flat in long runs.
``occupy`` intervals are merged per category ("compute", "comm" for the GPU-host link, "link" for device links
such as GPU-PIM) on the fly: their starts are the simulation
clock at the time of the hold, which never decreases, so the merged list stays short and gives exposed
communication time (communication while no compute unit is busy) at the end.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    step: int
    component: str
    kind: str
    start_s: float
    end_s: float
    nbytes: float
    flops: float
    energy_j: float
    detail: bool = False  # trace-only: part of work whose totals another component carries


class IntervalUnion:
    """Union of intervals whose starts arrive in non-decreasing order."""

    __slots__ = ("starts", "ends")

    def __init__(self):
        self.starts: list[float] = []
        self.ends: list[float] = []

    def add(self, start: float, end: float) -> None:
        if end <= start:
            return
        if self.ends and start <= self.ends[-1]:
            if end > self.ends[-1]:
                self.ends[-1] = end
        else:
            self.starts.append(start)
            self.ends.append(end)

    def total(self) -> float:
        return sum(e - s for s, e in zip(self.starts, self.ends, strict=True))

    def minus_total(self, other: IntervalUnion) -> float:
        """Measure of self minus other (both sorted, disjoint)."""
        total, j = 0.0, 0
        os, oe = other.starts, other.ends
        for s, e in zip(self.starts, self.ends, strict=True):
            covered = 0.0
            while j < len(os) and oe[j] <= s:
                j += 1
            k = j
            while k < len(os) and os[k] < e:
                covered += min(e, oe[k]) - max(s, os[k])
                k += 1
            total += (e - s) - covered
        return total


def merged(a: IntervalUnion, b: IntervalUnion) -> IntervalUnion:
    out = IntervalUnion()
    for s, e in sorted(zip(a.starts + b.starts, a.ends + b.ends, strict=True)):
        out.add(s, e)
    return out


class Tracer:
    """Collects spans; components must be registered with a category before they record."""

    def __init__(self, keep_steps: int = 0):
        self.keep_steps = keep_steps
        self.step = 0
        self.spans: list[Span] = []
        self.category: dict[str, str] = {}
        # component -> [busy_s, nbytes, flops, energy_j, count]
        self.totals: dict[str, list[float]] = {}
        self.kind_busy_s: dict[str, float] = {}
        self.energy_only_j: dict[str, float] = {}
        self.unions = {"compute": IntervalUnion(), "comm": IntervalUnion(), "link": IntervalUnion()}

    def register(self, component: str, category: str) -> None:
        if category not in self.unions:
            raise ValueError(f"category must be one of {sorted(self.unions)}, got {category!r}")
        self.category[component] = category
        self.totals.setdefault(component, [0.0, 0.0, 0.0, 0.0, 0])

    def record(self, component: str, kind: str, start_s: float, end_s: float,
               nbytes: float = 0.0, flops: float = 0.0, energy_j: float = 0.0) -> None:
        t = self.totals[component]
        d = end_s - start_s
        t[0] += d
        t[1] += nbytes
        t[2] += flops
        t[3] += energy_j
        t[4] += 1
        self.kind_busy_s[kind] = self.kind_busy_s.get(kind, 0.0) + d
        if self.step < self.keep_steps:
            self.spans.append(Span(self.step, component, kind, start_s, end_s, nbytes, flops, energy_j))

    def detail(self, component: str, kind: str, start_s: float, end_s: float) -> None:
        """A span kept for traces only (one channel of a bank whose totals are recorded for the bank)."""
        if self.step < self.keep_steps:
            self.spans.append(Span(self.step, component, kind, start_s, end_s, 0.0, 0.0, 0.0, detail=True))

    @property
    def keeping(self) -> bool:
        """Whether spans of the current step are kept (callers skip building detail spans otherwise)."""
        return self.step < self.keep_steps

    def occupy(self, component: str, start_s: float, end_s: float) -> None:
        self.unions[self.category[component]].add(start_s, end_s)

    def add_energy(self, component: str, energy_j: float) -> None:
        """Energy of a part that does no timed work of its own (memory read by a DMA, for instance)."""
        self.energy_only_j[component] = self.energy_only_j.get(component, 0.0) + energy_j

    # --- summaries ------------------------------------------------------------------------------------------------
    def busy_s(self) -> dict[str, float]:
        return {c: t[0] for c, t in sorted(self.totals.items())}

    def bytes_by_component(self) -> dict[str, float]:
        return {c: t[1] for c, t in sorted(self.totals.items())}

    def energy_j(self) -> dict[str, float]:
        out = {c: t[3] for c, t in self.totals.items()}
        for c, e in self.energy_only_j.items():
            out[c] = out.get(c, 0.0) + e
        return dict(sorted(out.items()))

    def compute_busy_s(self) -> float:
        return self.unions["compute"].total()

    def exposed_comm_s(self) -> float:
        """Host-link (PCIe) time with no compute unit busy."""
        return self.unions["comm"].minus_total(self.unions["compute"])

    def exposed_link_s(self) -> float:
        """Device-link time (GPU-PIM) with neither compute nor host-link traffic under way."""
        return self.unions["link"].minus_total(merged(self.unions["compute"], self.unions["comm"]))
