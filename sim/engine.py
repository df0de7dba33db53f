"""The tracer: what happened, recorded as flat spans and folded into per-component totals as it happens.

Components call ``record`` once per piece of work (a span: component, kind, start, end, bytes, FLOP, joules) and
``occupy`` once per resource hold. Totals (busy time, bytes, FLOP, energy, per component and per kind) are always
kept; the spans themselves only for the first ``keep_steps`` steps, so that memory stays flat in long runs.

``occupy`` intervals belong to a category ("compute", "comm" for the GPU-host link, "link" for device links such as
GPU-PIM) and feed the breakdown of a step: compute time (the union of compute intervals), exposed communication
(host-link time with no compute unit busy) and exposed link time (device-link time covered by neither). Every hold
starts at the simulation clock of the moment it is taken, which never decreases, so nothing before the start of the
newest interval can change any more: ``Occupancy`` folds that past into three running totals as the clock moves and
keeps only, per category, the latest end seen. Memory is constant in the number of steps (a list of merged
intervals per category grew with every gap between holds). ``tests/test_streaming.py`` checks the fold against the
batch computation over merged interval lists on random interval streams.

Energy has two parts (docs/metrics.md, "Energy"). *Dynamic* energy is what the work itself costs (bytes and FLOP
at their energies), recorded with each span or, for parts that do no timed work of their own (DRAM behind a DMA),
with ``add_energy``. *Static* energy is a device's idle power for as long as it is powered, the whole simulated run:
``set_static_power`` declares it, ``energy_static_j(duration_s)`` multiplies it out.

Replay (``sim.fastpath``): a stretch of simulation that starts and ends with nothing busy changes the tracer by a
``TracerDelta`` (``mark`` before, ``delta_since`` after: per-component and per-kind totals, energy of parts without
timed work, and the three occupancy totals). ``replay(delta, times, start_s)`` adds that change ``times``
times, as if the stretch had been simulated again back to back from ``start_s`` on: nothing is open before
or after it, so its occupancy adds to the totals whatever the time it happens at. Spans are never replayed: steps
whose spans are kept are simulated in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = ("compute", "comm", "link")


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


class Occupancy:
    """Compute time, exposed host-link time and exposed device-link time of intervals whose starts arrive in
    non-decreasing order (over all categories together), folded as they arrive.

    At any moment the intervals seen so far all start at or before ``now_s`` (the newest start), so on
    [``now_s``, inf) the union of one category's intervals is the single interval [``now_s``, latest end of that
    category). When a later start T arrives, the window [``now_s``, T) is final: within it compute covers
    c = min(compute end - now, T - now) from the window's start, host-link time m and device-link time l likewise,
    so the window adds c to compute, max(0, m - c) to exposed communication and max(0, l - max(c, m)) to exposed
    link time. Three floats per category; constant time per interval.
    """

    __slots__ = ("now_s", "ends_s", "compute_s", "exposed_comm_s", "exposed_link_s")

    def __init__(self):
        self.now_s: float | None = None
        self.ends_s = [0.0, 0.0, 0.0]  # latest end per category (indices of CATEGORIES)
        self.compute_s = 0.0
        self.exposed_comm_s = 0.0
        self.exposed_link_s = 0.0

    def add(self, category: int, start_s: float, end_s: float) -> None:
        """An interval of category ``category`` (an index of ``CATEGORIES``); ``start_s`` never decreases."""
        if start_s != self.now_s:
            self._advance(start_s)
        ends = self.ends_s
        if end_s > ends[category]:
            ends[category] = end_s

    def _advance(self, t_s: float) -> None:
        """Move the clock to ``t_s``, folding [now, t_s) into the totals."""
        now = self.now_s
        if now is None:
            self.now_s = t_s
            self.ends_s = [t_s, t_s, t_s]
            return
        if t_s < now:
            raise ValueError(f"occupancy intervals must arrive in non-decreasing start order: {t_s} after {now}")
        self.now_s = t_s
        ec, em, el = self.ends_s
        if ec <= now and em <= now and el <= now:  # nothing was busy: the window adds nothing
            return
        # _window, inlined: this runs for most resource holds
        w = t_s - now
        c, m, lk = ec - now, em - now, el - now
        c = 0.0 if c < 0.0 else (w if c > w else c)
        m = 0.0 if m < 0.0 else (w if m > w else m)
        lk = 0.0 if lk < 0.0 else (w if lk > w else lk)
        self.compute_s += c
        if m > c:
            self.exposed_comm_s += m - c
        if lk > c and lk > m:
            self.exposed_link_s += lk - (c if c > m else m)

    def add_many(self, categories: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray) -> None:
        """``add`` of each interval in turn (``starts_s`` non-decreasing), in a few array operations: the same
        floats, bit for bit. The latest end per category is a running maximum; each window between two distinct
        starts adds what ``_advance`` adds (the same comparisons, element by element, a zero where ``_advance``
        adds nothing), summed in order by ``np.add.accumulate``, which adds one element at a time as the loop
        does (a reduction would sum pairwise)."""
        n = len(starts_s)
        if n == 0:
            return
        if self.now_s is None:
            self.add(int(categories[0]), float(starts_s[0]), float(ends_s[0]))
            categories, starts_s, ends_s = categories[1:], starts_s[1:], ends_s[1:]
            n -= 1
            if n == 0:
                return
        now = self.now_s
        if starts_s[0] < now:
            raise ValueError(f"occupancy intervals must arrive in non-decreasing start order: {starts_s[0]} "
                             f"after {now}")
        # the latest end per category after each interval: (category, interval)
        ends = np.where(categories[None, :] == np.arange(3)[:, None], ends_s[None, :], -np.inf)
        np.maximum(ends, np.asarray(self.ends_s)[:, None], out=ends)
        np.maximum.accumulate(ends, axis=1, out=ends)
        prev = np.empty(n)
        prev[0] = now
        prev[1:] = starts_s[:-1]
        opens = np.flatnonzero(starts_s != prev)  # intervals that move the clock: a window closes before each
        if opens.size:
            # state before each such interval: the ends after the one before it (the initial ends for the first)
            before = np.empty((3, opens.size))
            at = opens - 1
            first = at < 0
            before[:, ~first] = ends[:, at[~first]]
            before[:, first] = np.asarray(self.ends_s)[:, None]
            lo = prev[opens]
            w = starts_s[opens] - lo
            c, m, lk = before - lo
            c = np.where(c < 0.0, 0.0, np.where(c > w, w, c))
            m = np.where(m < 0.0, 0.0, np.where(m > w, w, m))
            lk = np.where(lk < 0.0, 0.0, np.where(lk > w, w, lk))
            comm = np.where(m > c, m - c, 0.0)
            link = np.where((lk > c) & (lk > m), lk - np.where(c > m, c, m), 0.0)
            self.compute_s = float(np.add.accumulate(np.concatenate(([self.compute_s], c)))[-1])
            self.exposed_comm_s = float(np.add.accumulate(np.concatenate(([self.exposed_comm_s], comm)))[-1])
            self.exposed_link_s = float(np.add.accumulate(np.concatenate(([self.exposed_link_s], link)))[-1])
        self.now_s = float(starts_s[-1])
        self.ends_s = ends[:, -1].tolist()

    def replay(self, start_s: float, compute_s: float, comm_s: float, link_s: float) -> None:
        """Intervals from ``start_s`` on that add these amounts to the three totals, with nothing open at
        ``start_s`` and nothing of theirs open when the next interval arrives (a stretch replayed by
        ``Tracer.replay``). Their amounts go to the totals at once; the state then says that nothing is busy from
        ``start_s`` on, which is true of every interval that can come after them."""
        self._advance(start_s)
        self.compute_s += compute_s
        self.exposed_comm_s += comm_s
        self.exposed_link_s += link_s
        self.ends_s = [start_s, start_s, start_s]

    def _window(self, width_s: float) -> tuple[float, float, float]:
        """(compute, exposed comm, exposed link) in [now, now + width): min(max(0, end - now), width) per
        category, written out as the comparisons ``max`` and ``min`` make (the same floats, signed zeros too),
        since every mark of a replayed stretch asks for it."""
        now = self.now_s
        ec, em, el = self.ends_s
        c, m, lk = ec - now, em - now, el - now
        c = c if c > 0.0 else 0.0
        c = width_s if width_s < c else c
        m = m if m > 0.0 else 0.0
        m = width_s if width_s < m else m
        lk = lk if lk > 0.0 else 0.0
        lk = width_s if width_s < lk else lk
        exposed = m - c
        busy = m if m > c else c
        link = lk - busy
        return c, (exposed if exposed > 0.0 else 0.0), (link if link > 0.0 else 0.0)

    def totals(self) -> tuple[float, float, float]:
        """(compute, exposed comm, exposed link) over everything added so far (the open window included)."""
        if self.now_s is None:
            return 0.0, 0.0, 0.0
        c, m, lk = self._window(float("inf"))
        return self.compute_s + c, self.exposed_comm_s + m, self.exposed_link_s + lk


@dataclass(frozen=True, slots=True)
class TracerMark:
    """The tracer's totals at one moment (``Tracer.mark``)."""

    totals: dict
    kind_busy_s: dict
    energy_only_j: dict
    occupancy: tuple[float, float, float]
    scope: tuple | None = None  # (components, kinds, energy parts) the mark is limited to; None: everything


@dataclass(frozen=True, slots=True)
class TracerDelta:
    """What a stretch of simulation added to the tracer (``Tracer.delta_since``): per component (busy, bytes, FLOP,
    energy, count), per kind busy time, energy of parts without timed work, and the occupancy totals."""

    totals: tuple[tuple[str, tuple[float, float, float, float, int]], ...]
    kind_busy_s: tuple[tuple[str, float], ...]
    energy_only_j: tuple[tuple[str, float], ...]
    occupancy: tuple[float, float, float]


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
        self.static_power_w: dict[str, float] = {}
        self.category_index: dict[str, int] = {}
        self.occupancy = Occupancy()

    def register(self, component: str, category: str) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {sorted(CATEGORIES)}, got {category!r}")
        self.category[component] = category
        self.category_index[component] = CATEGORIES.index(category)
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
        self.occupancy.add(self.category_index[component], start_s, end_s)

    def add_energy(self, component: str, energy_j: float) -> None:
        """Energy of a part that does no timed work of its own (memory read by a DMA, for instance)."""
        self.energy_only_j[component] = self.energy_only_j.get(component, 0.0) + energy_j

    def set_static_power(self, component: str, power_w: float) -> None:
        """``component`` draws ``power_w`` for the whole run, busy or not (its idle power)."""
        self.static_power_w[component] = self.static_power_w.get(component, 0.0) + power_w

    # --- replay (sim.fastpath) ---------------------------------------------------------------------------------------
    def mark(self, scope: tuple | None = None) -> TracerMark:
        """The totals now. ``scope`` = (components, kinds, energy parts): only those, for a stretch that records
        nothing else (``sim.machine.Machine.chain_scope``): its ``delta_since`` is the same, at a cost that does
        not grow with everything the run has recorded."""
        if scope is None:
            return TracerMark({c: tuple(t) for c, t in self.totals.items()}, dict(self.kind_busy_s),
                              dict(self.energy_only_j), self.occupancy.totals())
        comps, kinds, energy = scope
        return TracerMark({c: tuple(self.totals[c]) for c in comps},
                          {k: self.kind_busy_s[k] for k in kinds if k in self.kind_busy_s},
                          {c: self.energy_only_j[c] for c in energy if c in self.energy_only_j},
                          self.occupancy.totals(), scope)

    def delta_since(self, mark: TracerMark) -> TracerDelta:
        """What was added since ``mark`` (components, kinds and parts whose totals did not change are left out)."""
        zero = (0.0, 0.0, 0.0, 0.0, 0)
        if mark.scope is None:
            totals_now, kinds_now, energy_now = self.totals, self.kind_busy_s, self.energy_only_j
        else:
            comps, kinds, energy = mark.scope
            totals_now = {c: self.totals[c] for c in comps}
            kinds_now = {k: self.kind_busy_s[k] for k in kinds if k in self.kind_busy_s}
            energy_now = {c: self.energy_only_j[c] for c in energy if c in self.energy_only_j}
        totals = []
        for c, t in totals_now.items():
            b = mark.totals.get(c, zero)
            if tuple(t) != b:
                totals.append((c, (t[0] - b[0], t[1] - b[1], t[2] - b[2], t[3] - b[3], t[4] - b[4])))
        totals = tuple(totals)
        kinds = tuple((k, v - mark.kind_busy_s.get(k, 0.0)) for k, v in kinds_now.items()
                      if v != mark.kind_busy_s.get(k, 0.0))
        energy = tuple((c, v - mark.energy_only_j.get(c, 0.0)) for c, v in energy_now.items()
                       if v != mark.energy_only_j.get(c, 0.0))
        occ = tuple(a - b for a, b in zip(self.occupancy.totals(), mark.occupancy, strict=True))
        return TracerDelta(totals, kinds, energy, occ)

    def replay(self, delta: TracerDelta, times: int, start_s: float) -> None:
        """Add ``delta`` ``times`` times: the stretch it was measured on, repeated back to back from ``start_s``
        (see the module docstring)."""
        self.add(delta, times)
        c, m, lk = delta.occupancy
        self.occupancy.replay(start_s, times * c, times * m, times * lk)

    def add(self, delta: TracerDelta, times: int) -> None:
        """Add ``delta``'s totals ``times`` times, not its occupancy: for holds whose occupancy was given to
        ``occupy`` one by one (``sim.fastpath.Stepper.contended_step``)."""
        for c, d in delta.totals:
            t = self.totals[c]
            for i in range(5):
                t[i] += times * d[i]
        kinds = self.kind_busy_s
        for k, v in delta.kind_busy_s:
            kinds[k] = kinds.get(k, 0.0) + times * v
        energy = self.energy_only_j
        for c, v in delta.energy_only_j:
            energy[c] = energy.get(c, 0.0) + times * v

    # --- summaries ------------------------------------------------------------------------------------------------
    def busy_s(self) -> dict[str, float]:
        return {c: t[0] for c, t in sorted(self.totals.items())}

    def bytes_by_component(self) -> dict[str, float]:
        return {c: t[1] for c, t in sorted(self.totals.items())}

    def energy_dynamic_j(self) -> dict[str, float]:
        """Per component: the energy of its work (recorded spans plus ``add_energy``)."""
        out = {c: t[3] for c, t in self.totals.items()}
        for c, e in self.energy_only_j.items():
            out[c] = out.get(c, 0.0) + e
        return dict(sorted(out.items()))

    def energy_static_j(self, duration_s: float) -> dict[str, float]:
        """Per component with a static power: that power for ``duration_s`` (the run's simulated time)."""
        return {c: w * duration_s for c, w in sorted(self.static_power_w.items())}

    def energy_j(self, duration_s: float = 0.0) -> dict[str, float]:
        """Per component: static energy over ``duration_s`` plus dynamic energy (every component of either)."""
        dynamic, static = self.energy_dynamic_j(), self.energy_static_j(duration_s)
        return {c: static.get(c, 0.0) + dynamic.get(c, 0.0) for c in sorted(set(dynamic) | set(static))}

    def compute_busy_s(self) -> float:
        """Time in which any compute unit is busy (the measure of the union of their holds)."""
        return self.occupancy.totals()[0]

    def exposed_comm_s(self) -> float:
        """Host-link (PCIe) time with no compute unit busy."""
        return self.occupancy.totals()[1]

    def exposed_link_s(self) -> float:
        """Device-link time (GPU-PIM) with neither compute nor host-link traffic under way."""
        return self.occupancy.totals()[2]
