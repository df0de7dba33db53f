"""The vectorised channel bank behaves exactly like one SimPy Resource per channel."""

import numpy as np
import simpy
from hypothesis import given
from hypothesis import strategies as st

from hw_models.channel_bank import ChannelBank
from sim.engine import Tracer

phases = st.lists(st.tuples(st.floats(0, 5), st.lists(st.floats(0, 3), min_size=4, max_size=4)),
                  min_size=1, max_size=12)


def per_channel_resources(schedule, n):
    env = simpy.Environment()
    res = [simpy.Resource(env, 1) for _ in range(n)]
    done = []

    def job(c, d):
        with res[c].request() as r:
            yield r
            yield env.timeout(d)

    def phase(at, durs):
        yield env.timeout(at)
        procs = [env.process(job(c, d)) for c, d in enumerate(durs)]
        yield env.all_of(procs)
        done.append(env.now)

    for at, durs in schedule:
        env.process(phase(at, durs))
    env.run()
    return sorted(done)


def bank(schedule, n):
    env = simpy.Environment()
    tr = Tracer()
    tr.register("pim", "compute")
    b = ChannelBank(env, "pim", n, tr)
    done = []

    def phase(at, durs):
        yield env.timeout(at)
        yield b.run("x", np.array(durs))
        done.append(env.now)

    # submit in time order, as SimPy would (ties keep submission order)
    for at, durs in sorted(schedule, key=lambda p: p[0]):
        env.process(phase(at, durs))
    env.run()
    return sorted(done), b


@given(phases)
def test_bank_matches_one_resource_per_channel(schedule):
    expected = per_channel_resources(sorted(schedule, key=lambda p: p[0]), 4)
    got, b = bank(schedule, 4)
    assert np.allclose(got, expected, rtol=0, atol=1e-9)
    assert np.allclose(b.busy_s, np.sum([d for _, d in schedule], axis=0))


@given(phases)
def test_idle_end_s_is_what_issue_returns_on_idle_channels(schedule):
    """``idle_end_s`` (now + the longest work) equals ``issue``'s return, bit for bit, for every phase issued once
    the channels are all free (the event-free prefill path's case; rounding is monotone)."""
    tracer = Tracer()
    tracer.register("pim", "compute")
    bank = ChannelBank(simpy.Environment(), "pim", 4, tracer)
    now = 0.0
    for at, durs in schedule:
        now = max(now + at, float(bank.free_at_s.max()))  # every channel free by now
        assert bank.issue(now, "phase", durs) == ChannelBank.idle_end_s(now, max(durs))
