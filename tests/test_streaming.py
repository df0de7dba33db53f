"""Memory flat in decode steps: the streamed versions of what used to be computed from per-step lists.

- the tracer's streaming fold of busy intervals equals the batch computation over merged interval lists that it
  replaced (kept here as the reference, itself checked against brute force);
- streamed percentiles equal the old computation over full lists while the values are kept exactly, and stay
  within the stated relative error beyond;
- the step log holds one line per step with exactly the numbers the old per-step lists held, and appears only
  when the run ends;
- a run's retained memory does not grow with its number of steps;
- Result files of schema 1 (written before the per-step lists were removed) still load and plot.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.config import from_mapping, make_config
from sim.engine import CATEGORIES, Occupancy, Tracer
from sim.errors import OutputError
from sim.results import (
    RESULT_SCHEMA_VERSION,
    STEP_LOG_COLUMNS,
    Result,
    ResultsError,
    load_results,
    read_step_log,
)
from sim.run import simulate, simulate_traced
from sim.stats import EXACT_STEPS, REL_ERROR, StepStats, WeightedQuantiles
from workloads.models import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = json.loads((ROOT / "tests" / "golden" / "golden.json").read_text())


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


@given(st.lists(float_steps, max_size=60), st.sampled_from([1e-6, 1e-3, 1.0]), st.integers(0, 60),
       st.floats(0, 1e3, allow_nan=False))
def test_add_many_is_add_one_at_a_time_bit_for_bit(items, scale, cut, offset):
    """``Occupancy.add_many`` (a contended step's repeated holds) leaves the same totals and state as ``add`` of
    each interval in turn, bit for bit, from an empty occupancy or after earlier intervals."""
    stream = [(CATEGORIES.index(c), s + offset, e + offset) for c, s, e in to_stream(items, scale)]
    one, many = Occupancy(), Occupancy()
    for cat, s, e in stream[:cut]:
        one.add(cat, s, e)
        many.add(cat, s, e)
    for cat, s, e in stream[cut:]:
        one.add(cat, s, e)
    rest = np.array(stream[cut:], dtype=float).reshape(-1, 3)
    many.add_many(rest[:, 0].astype(int), rest[:, 1], rest[:, 2])
    state = [(o.now_s, o.ends_s, o.compute_s, o.exposed_comm_s, o.exposed_link_s) for o in (one, many)]
    assert state[0] == state[1] and one.totals() == many.totals()


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


# --- the step log ------------------------------------------------------------------------------------------------

def golden_entry(**match) -> dict:
    return next(e for e in GOLDEN if all(e["config"].get(k) == v for k, v in match.items()))


@pytest.mark.parametrize("match", [
    {"system": "offload", "requests": 6},            # continuous batching with arrivals: idle gaps, batches vary
    {"system": "pim", "requests": 6},                # PIM with capacity_policy limit
    {"system": "offload", "prefetch": True, "context": 65536, "steps": 4},  # closed form only a bound
    {"model": "opt-30b", "system": "aqpim"},
])
def test_step_log_holds_exactly_the_old_per_step_lists(tmp_path, match):
    """The golden file holds the per-step lists the old Result carried: the log must hold the same numbers."""
    entry = golden_entry(**match)
    path = tmp_path / "steps.csv"
    rows = []
    r = simulate(from_mapping(entry["config"]), step_log=path, on_step=rows.append)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(STEP_LOG_COLUMNS) and len(lines) == r.steps + 1
    log = read_step_log(path)
    old = entry["measured"]
    assert log["latency_s"] == old["step_latency_s"]
    assert log["analytic_s"] == old["analytic_step_latency_s"]
    assert log["n_seqs"] == old["step_batch"]
    assert log["step"] == list(range(r.steps))
    assert [tuple(row) for row in rows] == list(zip(*(log[c] for c in STEP_LOG_COLUMNS), strict=True))
    # the Result's streamed aggregates are what the old lists gave
    lat, n = old["step_latency_s"], old["step_batch"]
    assert r.mean_step_latency_s == sum(lat) / len(lat) and r.tokens == sum(n)
    assert (r.step_latency_min_s, r.step_latency_max_s, r.peak_batch) == (min(lat), max(lat), max(n))
    assert r.peak_kv_tokens == max(log["kv_tokens"])
    assert r.analytic_exact == all(log["exact"])
    assert r.ttnt_mean_s == pytest.approx(sum(a * b for a, b in zip(lat, n, strict=True)) / sum(n), rel=1e-12)
    for q, got in ((50, r.ttnt_p50_s), (90, r.ttnt_p90_s), (99, r.ttnt_p99_s)):
        assert got == old_percentile_weighted(lat, n, q)
    gaps = [abs(s - a) / a for s, a in zip(lat, old["analytic_step_latency_s"], strict=True)]
    assert r.analytic_max_rel_gap == max(gaps)
    assert r.traced_step_latency_s == lat[:entry["config"].get("trace_steps", 4)]
    # starts: each step starts at or after the previous one ended
    for k in range(1, r.steps):
        assert log["start_s"][k] >= log["start_s"][k - 1] + log["latency_s"][k - 1] * (1 - 1e-12)


def test_step_log_appears_only_when_the_run_ends(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("old\n")

    seen = []

    def fail_at_step_2(row):
        seen.append((sorted(p.name for p in tmp_path.iterdir()), path.read_text()))
        if row.step == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        simulate(make_config(batch=1, context=1024, steps=5), step_log=path, on_step=fail_at_step_2)
    # during the run the rows go to a temporary file beside the log; the log itself is untouched
    assert all(len(names) == 2 and names[0].startswith(".steps.csv.") and text == "old\n" for names, text in seen)
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]  # temporary file removed


def test_step_log_through_simulate_traced_and_an_unwritable_path(tmp_path):
    cfg = make_config(batch=1, context=1024, steps=3, trace_steps=2)
    result, spans = simulate_traced(cfg, step_log=tmp_path / "out" / "steps.csv")  # folders are created
    log = read_step_log(tmp_path / "out" / "steps.csv")
    assert log["step"] == [0, 1, 2] and log["latency_s"][:2] == result.traced_step_latency_s
    assert {s.step for s in spans} == {0, 1}
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):  # before the run starts: one line at the CLI
        simulate(cfg, step_log=tmp_path / "file" / "steps.csv")


def test_read_step_log_rejects_other_files(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ResultsError, match="not a step log"):
        read_step_log(p)
    p.write_text(",".join(STEP_LOG_COLUMNS) + "\n0,0.0,x,1.0,1,1,1\n")
    with pytest.raises(ResultsError, match="line 2"):
        read_step_log(p)


# --- memory ------------------------------------------------------------------------------------------------------

TINY = ModelSpec(name="tiny", family="llama", n_layers=1, hidden_size=256, n_heads=4, n_kv_heads=4, head_dim=64,
                 ffn_size=512, vocab_size=1000, max_context=1 << 20)


def retained(steps: int, measure: str, **options) -> int:
    """What was allocated after step 100 of a run and is still alive at its last step, garbage collected first:
    bytes (``tracemalloc``) or memory blocks of small objects (``sys.getallocatedblocks``, free of tracing cost)."""
    out = {}

    def on_step(row):
        if row.step == 100:
            gc.collect()
            if measure == "bytes":
                tracemalloc.start()
            out["start"] = 0 if measure == "bytes" else sys.getallocatedblocks()
        elif row.step == steps - 1:
            gc.collect()
            if measure == "bytes":
                out["end"] = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
            else:
                out["end"] = sys.getallocatedblocks()

    simulate(make_config(batch=2, context=256, steps=steps, trace_steps=1, **options), model=TINY, on_step=on_step)
    return out["end"] - out["start"]


def test_memory_does_not_grow_with_steps():
    # Both runs past the fold of exact percentiles into the histogram (EXACT_STEPS) and past the plan cache's fill.
    # Counted as allocated blocks (sys.getallocatedblocks: every small object, no tracing artifact) the run is flat:
    # -102 blocks after 1,224, 3,072 and 8,192 steps (this model, batch 2, context 256). Before: every step kept a
    # record, four list entries and its busy intervals (> 300 bytes per step). tracemalloc's bytes are not the
    # measure here: tuples reused from CPython's free list are not traced when allocated, so as the 64 cached
    # plans' deltas are replaced more of them become traced ones (199.0 kB, 223.4 kB, 233.3 kB at those steps:
    # bounded by the cache, and shifted by how many other objects a step frees, which any change to the step moves).
    short, long = retained(EXACT_STEPS + 200, "blocks"), retained(3 * EXACT_STEPS, "blocks")
    assert long - short < 100, (short, long)


@pytest.mark.parametrize("options", [{"prefetch": True}, {"system": "pim", "channels": 8},
                                     {"system": "aqpim", "channels": 8}])
def test_retained_objects_do_not_grow_with_steps(options):
    short, long = retained(200, "blocks", **options), retained(800, "blocks", **options)
    # Before: at least four small objects per step (a record, its floats and ints), 2,400 more blocks here.
    assert long - short < 200, (short, long)


# --- schema 1 ----------------------------------------------------------------------------------------------------

def test_schema1_result_loads_with_aggregates_from_its_lists():
    path = FIXTURES / "result_schema1.json"  # written by the simulator before the per-step lists were removed
    old = json.loads(path.read_text())
    assert old["schema_version"] == 1 and "step_latency_s" in old
    [(label, r)] = load_results(path)
    assert label == "offload" and r.schema_version == 1 and not hasattr(r, "step_latency_s")
    assert r.peak_batch == max(old["step_batch"]) == 2 and r.peak_kv_tokens == max(old["step_kv_tokens"])
    assert (r.step_latency_min_s, r.step_latency_max_s) == (min(old["step_latency_s"]), max(old["step_latency_s"]))
    assert r.traced_step_latency_s == old["step_latency_s"][:2]
    assert r.ttnt_p50_s == old["ttnt_p50_s"] and r.mean_step_latency_s == old["mean_step_latency_s"]
    # schema 1's energy was dynamic energy alone: it is read as the dynamic part
    assert r.energy_dynamic_j == old["energy_j"] and r.energy_static_j == {}
    # its configuration still runs, now as schema 3 (the numbers have moved with the models since: the golden set
    # tracks those; test_step_log_holds_exactly_the_old_per_step_lists checks the aggregates against the lists)
    new = simulate(from_mapping(old["config"]))
    assert new.schema_version == RESULT_SCHEMA_VERSION == 4 and new.tokens == r.tokens
    assert Result.from_json(new.to_json()) == new


def test_schema1_without_lists_or_with_damaged_lists_gets_defaults():
    old = json.loads((FIXTURES / "result_schema1.json").read_text())
    for change in ({"step_latency_s": None}, {"step_batch": ["x"] * len(old["step_batch"])}):
        r = Result.from_dict({**old, **change})
        assert r.peak_batch == 0 and r.traced_step_latency_s == []


def test_schema1_results_still_plot(tmp_path):
    import plots

    shutil.copytree(FIXTURES / "sweep_schema1", tmp_path / "sweep")
    out = [plots.plot_breakdown(FIXTURES / "result_schema1.json", tmp_path / "breakdown.png"),
           plots.plot_breakdown(tmp_path / "sweep" / "results.jsonl", tmp_path / "breakdown-sweep.png"),
           plots.plot_sweep(tmp_path / "sweep" / "results.jsonl", tmp_path / "sweep.png", x="context"),
           plots.plot_capacity(tmp_path / "sweep" / "results.jsonl", tmp_path / "capacity.png")]
    assert all(p.exists() and p.stat().st_size > 1000 for p in out)
    labelled = load_results(tmp_path / "sweep" / "results.jsonl")
    assert len(labelled) == 8 and all(r.peak_batch == r.batch for _, r in labelled)
