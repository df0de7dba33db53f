import simpy
from hypothesis import given
from hypothesis import strategies as st

from hw_models.component import Component, Work
from sim.engine import IntervalUnion, Tracer


def test_component_exact_timeline_under_contention():
    env = simpy.Environment()
    tr = Tracer(keep_steps=1)
    tr.register("gpu", "compute")
    gpu = Component(env, "gpu", tr)

    def user(delay, works):
        yield env.timeout(delay)
        yield gpu.run(works)

    env.process(user(0.0, (Work("a", 2.0), Work("b", 1.0))))
    env.process(user(1.0, (Work("c", 0.5),)))
    env.run()
    assert [(s.kind, s.start_s, s.end_s) for s in tr.spans] == [("a", 0.0, 2.0), ("b", 2.0, 3.0), ("c", 3.0, 3.5)]
    assert env.now == 3.5
    assert tr.busy_s() == {"gpu": 3.5}
    assert tr.compute_busy_s() == 3.5


def test_spans_kept_only_for_first_steps_but_totals_always():
    tr = Tracer(keep_steps=1)
    tr.register("x", "comm")
    tr.record("x", "k", 0, 1, nbytes=10)
    tr.step = 1
    tr.record("x", "k", 1, 3, nbytes=5)
    assert len(tr.spans) == 1 and tr.busy_s() == {"x": 3} and tr.bytes_by_component() == {"x": 15}


intervals = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)), max_size=20).map(
    lambda xs: sorted((s, s + d) for s, d in xs))


def covered(ivs, t):
    return any(s <= t < e for s, e in ivs)


@given(intervals, intervals)
def test_interval_union_and_difference_match_brute_force(a, b):
    ua, ub = IntervalUnion(), IntervalUnion()
    for s, e in a:
        ua.add(s, e)
    for s, e in b:
        ub.add(s, e)
    # integer endpoints: measure by unit cells
    assert ua.total() == sum(1 for t in range(70) if covered(a, t))
    assert ua.minus_total(ub) == sum(1 for t in range(70) if covered(a, t) and not covered(b, t))
