"""Memory flat in decode steps: the streamed versions of what used to be computed from per-step lists.

- the tracer's streaming fold of busy intervals equals the batch computation over merged interval lists that it
  replaced (kept here as the reference, itself checked against brute force).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.engine import CATEGORIES, Occupancy, Tracer

# --- the reference: the batch computation the tracer used before (sim/engine.py up to schema 1) -----------------

class IntervalUnion:
    """Union of intervals whose starts arrive in non-decreasing order."""

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


def batch_exposed(stream) -> tuple[float, float, float]:
    """(compute, exposed comm, exposed link) of a stream of (category, start, end), as the old Tracer computed."""
    u = {c: IntervalUnion() for c in CATEGORIES}
    for cat, s, e in stream:
        u[cat].add(s, e)
    return (u["compute"].total(), u["comm"].minus_total(u["compute"]),
            u["link"].minus_total(merged(u["compute"], u["comm"])))


def covered(ivs, t):
    return any(s <= t < e for s, e in ivs)


intervals = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)), max_size=20).map(
    lambda xs: sorted((s, s + d) for s, d in xs))


@given(intervals, intervals)
def test_reference_union_and_difference_match_brute_force(a, b):
    ua, ub = IntervalUnion(), IntervalUnion()
    for s, e in a:
        ua.add(s, e)
    for s, e in b:
        ub.add(s, e)
    # integer endpoints: measure by unit cells
    assert ua.total() == sum(1 for t in range(70) if covered(a, t))
    assert ua.minus_total(ub) == sum(1 for t in range(70) if covered(a, t) and not covered(b, t))


def to_stream(items, scale):
    """(category, gap, duration) items -> (category, start, end) with non-decreasing starts (the clock)."""
    t, out = 0.0, []
    for cat, gap, dur in items:
        t += gap * scale
        out.append((cat, t, t + dur * scale))
    return out


steps_ = st.tuples(st.sampled_from(CATEGORIES), st.one_of(st.just(0), st.integers(0, 20)), st.integers(0, 30))
float_steps = st.tuples(st.sampled_from(CATEGORIES),
                        st.one_of(st.just(0.0), st.floats(0, 5, allow_nan=False, allow_infinity=False)),
                        st.floats(0, 40, allow_nan=False, allow_infinity=False))


@given(st.lists(steps_, max_size=60))
def test_streaming_exposed_time_equals_the_batch_computation_integers(items):
    stream = to_stream(items, 1.0)
    occ = Occupancy()
    for cat, s, e in stream:
        occ.add(CATEGORIES.index(cat), s, e)
    assert occ.totals() == batch_exposed(stream)  # integer endpoints: every sum is exact


@given(st.lists(float_steps, max_size=80), st.sampled_from([1e-6, 1e-3, 1.0]))
def test_streaming_exposed_time_equals_the_batch_computation_floats(items, scale):
    stream = to_stream(items, scale)
    tracer = Tracer()
    for cat in CATEGORIES:
        tracer.register(f"unit.{cat}", cat)
    for k, (cat, s, e) in enumerate(stream):
        tracer.occupy(f"unit.{cat}", s, e)
        if k % 7 == 3:  # reading the totals mid-stream changes nothing
            tracer.exposed_comm_s()
    want = batch_exposed(stream)
    got = (tracer.compute_busy_s(), tracer.exposed_comm_s(), tracer.exposed_link_s())
    span = max((e for _, _, e in stream), default=0.0)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-12 * span)


def test_occupancy_rejects_a_start_before_the_clock():
    occ = Occupancy()
    occ.add(0, 1.0, 2.0)
    occ.add(1, 1.5, 3.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        occ.add(2, 1.0, 4.0)
