"""Memory flat in decode steps: the streamed versions of what used to be computed from per-step lists.

- the tracer's streaming fold of busy intervals equals the batch computation over merged interval lists that it
  replaced (kept here as the reference, itself checked against brute force);
- streamed percentiles equal the old computation over full lists while the values are kept exactly, and stay
  within the stated relative error beyond.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.engine import CATEGORIES, Occupancy, Tracer
from sim.stats import REL_ERROR, StepStats, WeightedQuantiles

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


# --- percentiles -------------------------------------------------------------------------------------------------

def old_percentile_weighted(values: list[float], weights: list[int], q: float) -> float:
    """The computation over full lists that the streamed percentiles replace (sim/run.py up to schema 1)."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values)[order]
    w = np.asarray(weights, dtype=float)[order]
    cum = np.cumsum(w)
    idx = int(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"))
    return float(v[min(idx, len(v) - 1)])


values_weights = st.lists(st.tuples(st.floats(1e-6, 1e3, allow_nan=False), st.integers(1, 300)), min_size=1,
                          max_size=300)
QS = (0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100)


@given(values_weights)
def test_exact_percentiles_equal_the_old_computation(vw):
    wq = WeightedQuantiles()
    for v, w in vw:
        wq.add(v, w)
    assert wq.exact
    vs, ws = [v for v, _ in vw], [w for _, w in vw]
    for q in QS:
        assert wq.percentile(q) == old_percentile_weighted(vs, ws, q)


@given(values_weights, st.integers(0, 50))
def test_binned_percentiles_within_the_stated_error(vw, limit):
    wq = WeightedQuantiles(exact_limit=limit)
    for v, w in vw:
        wq.add(v, w)
    vs, ws = [v for v, _ in vw], [w for _, w in vw]
    for q in QS:
        exact = old_percentile_weighted(vs, ws, q)
        assert abs(wq.percentile(q) - exact) <= REL_ERROR * (1 + 1e-9) * exact


def test_binned_percentiles_on_a_long_skewed_stream():
    rng = np.random.default_rng(7)
    vs = np.exp(rng.normal(-3.0, 1.5, 200_000))  # latencies over ~5 decades
    ws = rng.integers(1, 257, vs.size)
    wq = WeightedQuantiles()
    for v, w in zip(vs.tolist(), ws.tolist(), strict=True):
        wq.add(v, w)
    assert not wq.exact
    # memory: one float per bin between the smallest and the largest value
    assert len(wq.bins) <= math.log(vs.max() / vs.min()) / math.log((1 + REL_ERROR) / (1 - REL_ERROR)) + 2
    for q in (0.1, 1, 50, 90, 99, 99.99):
        exact = old_percentile_weighted(vs.tolist(), ws.tolist(), q)
        assert abs(wq.percentile(q) - exact) <= REL_ERROR * (1 + 1e-9) * exact


def test_zero_values_and_empty_streams():
    assert WeightedQuantiles().percentile(50) == 0.0
    wq = WeightedQuantiles(exact_limit=0)
    for v in (0.0, 0.0, 1.0):
        wq.add(v)
    assert wq.percentile(50) == 0.0 and abs(wq.percentile(100) - 1.0) <= REL_ERROR * (1 + 1e-9)
    with pytest.raises(ValueError):
        wq.add(-1.0)


def test_step_stats_running_aggregates():
    s = StepStats()
    for lat, ana, exact, n in ((2.0, 2.0, True, 3), (1.0, 1.1, True, 1), (4.0, 2.0, False, 2)):
        s.add(lat, ana, exact, n)
    assert (s.steps, s.tokens, s.peak_batch, s.analytic_exact) == (3, 6, 3, False)
    assert (s.latency_min_s, s.latency_max_s, s.latency_sum_s) == (1.0, 4.0, 7.0)
    assert s.token_latency_sum_s == 2.0 * 3 + 1.0 + 4.0 * 2
    assert s.max_rel_gap == 1.0 and s.max_rel_undershoot == pytest.approx(0.1 / 1.1)
