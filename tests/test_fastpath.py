"""The step-level path (``sim.fastpath``) against full detail: a replayed step equals the layer-level simulation.

Every number of the Result and every step's latency must agree to 1e-9 relative between ``detail = "auto"`` and
``detail = "full"``, on random configurations of every system: single chains (replayed), and overlapping schedules
(offload prefetch, PIM sub-batches), which fall back to full detail. Quantities that are differences of nearly
equal numbers (the idle share of a step, the closed form's relative gap) are rounding noise at ~1e-14 in both
modes; they are compared with an absolute tolerance on their own scale.
"""

from __future__ import annotations

import math

import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import make_config
from sim.engine import Occupancy
from sim.errors import INPUT_ERRORS
from sim.fastpath import MAX_PERIOD, Stepper, periodic_runs
from sim.run import simulate
from workloads.models import ModelSpec, load_model

TINY = ModelSpec(name="tiny", family="llama", n_layers=12, hidden_size=256, n_heads=4, n_kv_heads=2, head_dim=64,
                 ffn_size=512, vocab_size=1000, max_context=1 << 20)
DEEP = ModelSpec(name="deep", family="llama", n_layers=32, hidden_size=256, n_heads=4, n_kv_heads=2, head_dim=64,
                 ffn_size=512, vocab_size=1000, max_context=1 << 20)
NOISE = {"analytic_max_rel_gap", "analytic_max_rel_undershoot"}  # ratios of rounding noise, ~1e-14


def close(a, b, path="") -> list[str]:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        return [d for k in a for d in close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list | tuple):
        assert len(a) == len(b), path
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in close(x, y, f"{path}[{i}]")]
    if isinstance(a, bool) or not isinstance(a, int | float):
        return [] if a == b else [f"{path}: {a!r} != {b!r}"]
    abs_tol = 1e-12 if path.lstrip(".") in NOISE else 1e-300
    if path.endswith("breakdown_s.idle"):
        abs_tol = 1e-12
    return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol) else [f"{path}: {a!r} != {b!r}"]


def both(model=TINY, **settings_):
    out = {}
    for detail in ("full", "auto"):
        rows = []
        r = simulate(make_config(**settings_, detail=detail), model=model, on_step=rows.append).to_dict()
        r["config"].pop("detail")
        out[detail] = (r, [(x.step, x.start_s, x.latency_s, x.analytic_s, x.exact, x.n_seqs) for x in rows])
    return out["full"], out["auto"]


SYSTEMS = st.sampled_from([
    {"system": "gpu"},
    {"system": "offload"},
    {"system": "offload", "kv_gpu_fraction": "0"},
    {"system": "offload", "kv_gpu_fraction": "0.5", "weights_gpu_fraction": "0.5"},
    {"system": "offload", "cpu_attention": True, "kv_gpu_fraction": "0.3"},
    {"system": "offload", "prefetch": True, "kv_gpu_fraction": "0"},
    {"system": "pim", "channels": 16},
    {"system": "pim", "channels": 16, "softmax": "host"},
    {"system": "pim", "channels": 16, "link_chunks": 3},
    {"system": "pim", "channels": 16, "sub_batches": 2},
    {"system": "pim", "channels": 8, "pim": "attacc-hbm3", "kv_format": "int4", "placement": "head"},
    {"system": "aqpim", "channels": 16},
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(system=SYSTEMS, batch=st.integers(1, 6), context=st.integers(1, 5000), steps=st.integers(1, 12),
       trace_steps=st.integers(0, 3), requests=st.none() | st.integers(1, 12), rate=st.sampled_from([0.0, 50.0]))
def test_replayed_steps_equal_full_detail(system, batch, context, steps, trace_steps, requests, rate):
    workload = dict(batch=batch, context=context, steps=steps, trace_steps=trace_steps)
    if requests is not None:
        workload.update(requests=requests, output_tokens=steps, arrival_rate_per_s=rate, max_batch=batch)
        workload.pop("steps")
    try:
        full, auto = both(**system, **workload)
    except INPUT_ERRORS as e:  # refused configurations (a sub-batch without a sequence) are refused in both modes
        with pytest.raises(type(e)):
            both(**system, **workload)
        return
    assert close(full[1], auto[1]) == []
    assert close(full[0], auto[0]) == []


@pytest.mark.parametrize("system", [{"system": "pim", "capacity_policy": "spill", "batch": 64, "context": 131072},
                                    {"system": "offload", "batch": 16, "context": 65536, "kv_gpu_fraction": "0"}])
def test_long_clock_and_spill(system):
    """A spilling PIM step lasts seconds while its link holds last microseconds: durations recorded at a clock of
    minutes are rounded to its binade's grid, and the replay rounds them the same way."""
    full, auto = both(model=load_model("llama-2-7b"), **system, steps=6, trace_steps=0)
    assert close(full[1], auto[1]) == []
    assert close(full[0], auto[0]) == []


def events(monkeypatch, **settings_) -> int:
    count = [0]
    original = simpy.Environment.schedule

    def schedule(self, event, priority=1, delay=0):
        count[0] += 1
        return original(self, event, priority, delay)

    monkeypatch.setattr(simpy.Environment, "schedule", schedule)
    simulate(make_config(**settings_), model=DEEP)
    monkeypatch.setattr(simpy.Environment, "schedule", original)
    return count[0]


@pytest.mark.parametrize("options, replayed", [
    ({"system": "gpu"}, True), ({"system": "offload", "kv_gpu_fraction": "0"}, True),
    ({"system": "pim", "channels": 8}, True), ({"system": "aqpim", "channels": 8}, True),
    ({"system": "offload", "prefetch": True, "kv_gpu_fraction": "0"}, False),
    ({"system": "pim", "channels": 8, "sub_batches": 2}, False)])
def test_events_per_step(monkeypatch, options, replayed):
    """Untraced steps of a chain simulate one layer and the head (a fixed batch: its plan never recurs), or nothing
    but one timeout once their plan is cached (requests whose batches recur); overlapping schedules keep every
    event."""
    # the marginal cost of steps 41-120 of a fixed batch (a step that crosses a doubling of the clock is simulated
    # in full, design note 24: the first steps cross many, these few)
    fixed = dict(batch=2, context=64, trace_steps=0, **options)
    full, auto = (events(monkeypatch, **fixed, steps=120, detail=d) - events(monkeypatch, **fixed, steps=40, detail=d)
                  for d in ("full", "auto"))
    assert (auto < 0.3 * full) if replayed else (auto == full), (auto, full)
    # the marginal cost of 200 more steps whose plans recur (batches of 4 identical requests, all at t=0)
    short, long = (dict(requests=n, max_batch=4, context=64, output_tokens=5, trace_steps=0, **options)
                   for n in (40, 200))
    full = events(monkeypatch, **long, detail="full") - events(monkeypatch, **short, detail="full")
    auto = events(monkeypatch, **long, detail="auto") - events(monkeypatch, **short, detail="auto")
    assert (auto < 0.05 * full) if replayed else (auto == full), (auto, full)


def test_occupancy_replay_adds_totals_and_closes():
    o = Occupancy()
    o.add(0, 0.0, 1.0)
    o.add(1, 0.5, 2.0)
    o.replay(2.0, 3.0, 0.5, 0.25)
    assert o.totals() == (4.0, 1.5, 0.25)
    o.add(0, 2.5, 3.0)  # starts after the replayed stretch: adds its own half second
    assert o.totals() == (4.5, 1.5, 0.25)


def test_cache_is_bounded_and_grows_only_with_hits():
    from sim.fastpath import MIN_ENTRIES  # noqa: PLC0415

    class FakeSystem:
        plan_cache_size = 100

        def plan_key(self, batch):
            return batch

        def plan(self, batch):
            return batch

        def segments(self, plan):
            return None

        def estimate(self, plan):
            return plan

    class FakeMachine:
        env = tracer = pim = None

    s = Stepper(FakeSystem(), FakeMachine())
    for k in range(1000):
        s.entry(k)
    assert len(s.cache) == MIN_ENTRIES and s.hits == 0
    for _ in range(3):
        for k in range(1000 - MIN_ENTRIES, 1000):
            s.entry(k)
    assert len(s.cache) <= 100


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(system=SYSTEMS, prefill=st.sampled_from(["first", "chunked"]), chunk=st.integers(16, 4096),
       requests=st.integers(1, 8), context=st.integers(1, 3000), output=st.integers(1, 10),
       rate=st.sampled_from([0.0, 50.0, 500.0]), batch=st.integers(1, 4), trace_steps=st.integers(0, 3))
def test_prefill_runs_replay_decode_steps_exactly(system, prefill, chunk, requests, context, output, rate, batch,
                                                  trace_steps):
    """With prefill in the timeline, decode steps that run alone are planned from the cache and replayed; steps
    with a prefill chunk beside them run in full: every output equals full detail to 1e-9."""
    workload = dict(requests=requests, context=context, output_tokens=output, arrival_rate_per_s=rate,
                    max_batch=batch, trace_steps=trace_steps, prefill=prefill, prefill_chunk_tokens=chunk)
    try:
        full, auto = both(**system, **workload)
    except INPUT_ERRORS as e:
        with pytest.raises(type(e)):
            both(**system, **workload)
        return
    assert close(full[1], auto[1]) == []
    assert close(full[0], auto[0]) == []


@pytest.mark.parametrize("prefill", ["first", "chunked"])
def test_prefill_steps_of_gpu_holds_run_without_events(monkeypatch, prefill):
    """A prefill step of the gpu system (alone, or with a decode step beside it) is nothing but GPU holds: made
    by alternating the two processes' holds without events (Stepper.prefill_step), it equals the simulation of
    both processes to 1e-9 and costs a fraction of its events."""
    workload = dict(system="gpu", requests=12, context=700, output_tokens=4, max_batch=4, prefill=prefill,
                    arrival_rate_per_s=200.0, trace_steps=0, **({"prefill_chunk_tokens": 256}
                                                                  if prefill == "chunked" else {}))
    full, auto = both(model=DEEP, **workload)
    assert close(full[1], auto[1]) == [] and close(full[0], auto[0]) == []
    assert full[0]["prefill_steps"] > 0
    n_full, n_auto = (events(monkeypatch, **workload, detail=d) for d in ("full", "auto"))
    assert n_auto < 0.1 * n_full, (n_auto, n_full)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, None]), st.sampled_from([0, 1, 2, None])), max_size=60))
def test_periodic_runs_cover_the_items_in_order(pairs):
    """The prefill step's holds are cut into repeated blocks; repeating each block gives back every item, in order,
    and a block is only ever repeated where the same objects come again."""
    objs = [object(), object(), object()]
    items = [tuple(None if x is None else objs[x] for x in pair) for pair in pairs]
    runs = periodic_runs(items)
    flat = [x for block, reps in runs for _ in range(reps) for x in block]
    assert len(flat) == len(items) and all(a[0] is b[0] and a[1] is b[1] for a, b in zip(flat, items, strict=True))
    assert all(1 <= len(block) <= MAX_PERIOD and reps >= 1 for block, reps in runs)
    # kept per pattern of equal items: the same cut for other objects in the same pattern
    memo: dict = {}
    others = [object(), object(), object()]
    again = [tuple(None if x is None else others[x] for x in pair) for pair in pairs]
    for got, want in ((periodic_runs(items, memo), runs), (periodic_runs(again, memo), periodic_runs(again))):
        assert [(len(b), r) for b, r in got] == [(len(b), r) for b, r in want]
        assert [x for b, _ in got for x in b] == [x for b, _ in want for x in b]


@pytest.mark.parametrize("options", [{"system": "pim", "channels": 16}, {"system": "aqpim", "channels": 16},
                                     {"system": "pim", "channels": 16, "softmax": "host"},
                                     {"system": "offload", "kv_gpu_fraction": "0"},
                                     {"system": "offload", "kv_gpu_fraction": "0", "weights_gpu_fraction": "0.5"},
                                     {"system": "offload", "kv_gpu_fraction": "1", "weights_gpu_fraction": "0.3"}])
def test_prefill_steps_with_stores_run_without_events(monkeypatch, options):
    """A prefill step that stores K/V over a link (or fetches its layers' weights over one, offload with weights
    on the host) beside a decode chain that uses links and PIM channels is made by the first-come-first-served
    rules without events (Stepper.contended_step): equal to the simulation of both processes to 1e-9, at a
    fraction of its events."""
    workload = dict(requests=12, context=700, output_tokens=4, max_batch=4, prefill="chunked",
                    prefill_chunk_tokens=256, arrival_rate_per_s=200.0, trace_steps=0, **options)
    full, auto = both(model=DEEP, **workload)
    assert close(full[1], auto[1]) == [] and close(full[0], auto[0]) == []
    assert full[0]["prefill_steps"] > 0
    n_full, n_auto = (events(monkeypatch, **workload, detail=d) for d in ("full", "auto"))
    assert n_auto < 0.3 * n_full, (n_auto, n_full)


@pytest.mark.parametrize("options", [{"system": "pim", "channels": 16}, {"system": "aqpim", "channels": 16},
                                     {"system": "offload", "kv_gpu_fraction": "0"},
                                     {"system": "offload", "kv_gpu_fraction": "0", "weights_gpu_fraction": "0.5"}])
@pytest.mark.parametrize("chunk", [64, 256, 2048])
def test_contended_steps_skip_whole_periods_exactly(monkeypatch, options, chunk):
    """A contended step skips the periods of its repeating layers (``_Fcfs``): both kinds of skip happen here
    (beside prefill layers, and in the decode's layers after the prefill ends), and every output is bit for bit
    what walking every hold gives."""
    import sim.fastpath as fastpath

    workload = dict(requests=10, context=900, output_tokens=5, max_batch=4, prefill="chunked",
                    prefill_chunk_tokens=chunk, arrival_rate_per_s=300.0, trace_steps=0, **options)
    recur = fastpath._Fcfs._recur
    skipped: list = []

    def counted(self, seen, t, who, *args):
        out = recur(self, seen, t, who, *args)
        if out is not None:
            skipped.append(who)
        return out

    def rows(**kw):
        out = []
        r = simulate(make_config(**kw), model=DEEP, on_step=out.append).to_dict()
        return r, [(x.start_s, x.latency_s) for x in out]

    monkeypatch.setattr(fastpath._Fcfs, "_recur", counted)
    skipping = rows(**workload)
    monkeypatch.setattr(fastpath._Fcfs, "_recur", lambda *args: None)
    assert skipping == rows(**workload)
    assert set(skipped) == {fastpath._P, fastpath._D}, skipped


def test_contended_steps_do_not_skip_over_ties(monkeypatch):
    """One 1-token prompt at t = 0 (offload, K/V to the host): the prefill's layers last ~2.2e-5 s while the clock
    is at ~1e-4 s, three binades above, so a duration can lie exactly half-way between two multiples of the
    clock's ulp, and it then rounds differently from layer to layer (to the even multiple). The walk must not
    skip periods there: the step is the full walk's, bit for bit (a skip made the prefill end 1 ulp late)."""
    import sim.fastpath as fastpath

    workload = dict(system="offload", kv_gpu_fraction="0", requests=1, context=1, output_tokens=1,
                    arrival_rate_per_s=0.0, max_batch=1, trace_steps=0, prefill="chunked", prefill_chunk_tokens=16)
    skipping = simulate(make_config(**workload), model=TINY).to_dict()
    monkeypatch.setattr(fastpath._Fcfs, "_recur", lambda *args: None)
    assert skipping == simulate(make_config(**workload), model=TINY).to_dict()


@pytest.mark.parametrize("options", [{"system": "gpu"}, {"system": "offload", "kv_gpu_fraction": "0"},
                                     {"system": "pim", "channels": 16}, {"system": "aqpim", "channels": 16},
                                     {"system": "pim", "channels": 16, "softmax": "host"}])
def test_scoped_marks_give_the_whole_delta(monkeypatch, options):
    """A mark limited to what a chain records into (``Machine.chain_scope``) gives the same delta as a mark of
    everything, for every chain the event-free paths measure (decode segments, prefill blocks, contended holds)."""
    from sim.engine import Tracer

    mark, delta_since = Tracer.mark, Tracer.delta_since
    whole: dict = {}
    checked = []

    def scoped_mark(self, scope=None):
        m = mark(self, scope)
        if scope is not None:
            whole[id(m)] = (m, mark(self))
        return m

    def checked_delta(self, m):
        d = delta_since(self, m)
        if id(m) in whole:
            w = delta_since(self, whole.pop(id(m))[1])
            assert (sorted(d.totals), sorted(d.kind_busy_s), sorted(d.energy_only_j), d.occupancy) == \
                (sorted(w.totals), sorted(w.kind_busy_s), sorted(w.energy_only_j), w.occupancy)
            checked.append(1)
        return d

    monkeypatch.setattr(Tracer, "mark", scoped_mark)
    monkeypatch.setattr(Tracer, "delta_since", checked_delta)
    simulate(make_config(requests=10, context=600, output_tokens=6, max_batch=4, prefill="chunked",
                         prefill_chunk_tokens=256, arrival_rate_per_s=100.0, trace_steps=0, **options), model=DEEP)
    assert len(checked) > 5


@given(st.lists(st.sampled_from(["gpu", "h2d", "down", "phase"]), min_size=1, max_size=12),
       st.floats(0.0, 1e3), st.integers(0, 2))
def test_repeated_holds_occupy_what_chain_end_occupies(kinds, t0, stretch):
    """A contended step's repeated holds are not recorded: their intervals (``Machine.hold_occupancy``, a PIM
    phase's its longest channel) go to ``Occupancy.add_many`` and their PIM phases to
    ``ChannelBank.repeat_idle``. Taken so, a chain leaves the clock, the occupancy and the channels' state
    exactly as ``Machine.chain_end`` recording it does, bit for bit."""
    import numpy as np

    from hw_models.component import Work
    from hw_models.machine import load_machine
    from hw_models.pim import load_pim
    from sim.engine import Tracer
    from sim.machine import Machine
    from sim.systems.pim import Phase
    from sim.topology import GPU, HOST_DRAM, PIM, Topology

    topology = Topology(load_machine("a100-pcie4-ddr5"), load_pim("attacc-hbm3"))
    n = topology.pim.channels
    durations = np.linspace(1e-6, 3e-6 * (1 + stretch), n)
    holds = {"h2d": (HOST_DRAM, GPU, 3e6, "kv_fetch"), "down": (GPU, PIM, 5e5, "q_down"),
             "phase": (Phase("pim.attention", durations, 1e6, 2e6, 1e-3),)}
    out = []
    for recorded in (True, False):
        tracer = Tracer()
        m = Machine(simpy.Environment(), topology, tracer)
        holds["gpu"] = (m.gpu, (Work("a", 2e-6, 1.0, 2.0, 3.0), Work("b", 1e-6 * (1 + stretch))))
        chain = tuple(holds[k] for k in kinds)
        if recorded:
            end = m.chain_end(chain, t0)
        else:
            end, cats, starts, ends, phases = t0, [], [], [], []
            for h in chain:
                occ = m.hold_occupancy(h)
                step = None if occ is None else occ[0]
                if occ is None:  # a PIM phase: done at its start plus its longest work, the clock moved by
                    occ = (float(h[0].durations_s.max()), (m.pim.name,))  # done - start, as chain_end moves it
                    phases.append((end, h[0].durations_s))
                    step = (end + occ[0]) - end
                for c in occ[1]:
                    cats.append(tracer.category_index[c])
                    starts.append(end)
                    ends.append(end + occ[0])
                end = end + step
            tracer.occupancy.add_many(np.array(cats), np.array(starts), np.array(ends))
            if phases:
                m.pim.repeat_idle(phases[-1][0], [d for _, d in phases])
        out.append((end, tracer.occupancy.totals(), m.pim.free_at_s.tolist(), m.pim.busy_s.tolist()))
    assert out[0] == out[1]
