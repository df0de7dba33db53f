import simpy

from hw_models.component import Component, Work
from sim.engine import Tracer


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
