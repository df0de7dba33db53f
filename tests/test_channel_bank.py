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


def _bank() -> tuple[Tracer, ChannelBank]:
    tracer = Tracer()
    tracer.register("pim", "compute")
    return tracer, ChannelBank(simpy.Environment(), "pim", 4, tracer)


def _phases_on_idle_channels(schedule, which):
    """(issue time, per-channel work) of phases each issued once every channel is free (the last phase's end is
    its issue plus its longest work: ``idle_end_s``); the work repeats, ``which`` picking one of the first three
    phases' each time, as layers repeat theirs."""
    pool = [np.asarray(d, dtype=float) for _, d in schedule[:3]]
    now = free = 0.0
    for (at, _), k in zip(schedule, which, strict=False):
        durs = pool[k % len(pool)]
        now = max(now + at, free)
        yield now, durs
        free = now + float(durs.max())


def test_add_and_replay_split_a_delta():
    """``Tracer.replay`` is ``Tracer.add`` (totals, kinds, energy of parts without timed work) plus the
    occupancy; ``add`` leaves the occupancy alone."""
    def stretch(tracer, t):
        tracer.record("gpu", "k", t, t + 2.0, 10.0, 20.0, 3.0)
        tracer.occupy("gpu", t, t + 2.0)
        tracer.add_energy("host.dram", 0.5)

    tracer = Tracer()
    tracer.register("gpu", "compute")
    mark = tracer.mark()
    stretch(tracer, 0.0)
    delta = tracer.delta_since(mark)
    before = tracer.occupancy.totals()
    tracer.add(delta, 3)
    assert tracer.occupancy.totals() == before
    assert tracer.totals["gpu"] == [8.0, 40.0, 80.0, 12.0, 4] and tracer.kind_busy_s == {"k": 8.0}
    assert tracer.energy_only_j == {"host.dram": 2.0}
    tracer.replay(delta, 1, 2.0)
    assert tracer.totals["gpu"][0] == 10.0 and tracer.occupancy.totals()[0] == 4.0


@given(phases, st.lists(st.integers(0, 2), min_size=12, max_size=12))
def test_repeat_idle_is_issue_in_turn(schedule, which):
    """``repeat_idle`` (a contended step's repeated PIM phases, their records and occupancy added apart) leaves
    the busy and next-free times of ``issue`` of each phase in turn on idle channels, bit for bit; ``issue`` ends
    such a phase at its issue plus its longest work (``idle_end_s``). Phases repeat (``which`` picks one of
    three), as layers do."""
    (_, ref), (_, new) = _bank(), _bank()
    issued = list(_phases_on_idle_channels(schedule, which))
    for now, durs in issued:
        assert ref.issue(now, "phase", durs) == ChannelBank.idle_end_s(now, float(durs.max()))
    if issued:
        new.repeat_idle(issued[-1][0], [durs for _, durs in issued])
    assert np.array_equal(new.busy_s, ref.busy_s) and np.array_equal(new.free_at_s, ref.free_at_s)


class _Part:
    def __init__(self, kind, durations_s, nbytes, flops, energy_j):
        self.kind, self.durations_s, self.nbytes, self.flops, self.energy_j = kind, durations_s, nbytes, flops, energy_j


@given(st.lists(st.lists(st.floats(0, 3), min_size=4, max_size=4), min_size=1, max_size=6),
       st.lists(st.floats(0, 4), min_size=4, max_size=4), st.floats(0, 5), st.booleans())
def test_part_table_records_what_the_parts_record(part_seconds, busy_until, now, keep):
    """A phase's parts given with their table (``part_table``: seconds and totals as arrays, read in a few
    array operations) record the same spans, totals and end as the parts read one by one, bit for bit, also
    when channels start at different times."""
    rng = np.random.default_rng(len(part_seconds))
    parts = [_Part(f"p{k}", np.array(d), rng.random(4) * 1e6, rng.random(4) * 1e9, rng.random(4))
             for k, d in enumerate(part_seconds)]
    durs = np.sum([p.durations_s for p in parts], axis=0)
    table = (np.array([p.durations_s for p in parts]),
             np.array([[p.nbytes.sum(), p.flops.sum(), p.energy_j.sum()] for p in parts]))
    out = []
    for given_table in (None, table):
        tracer = Tracer(keep_steps=1 if keep else 0)
        tracer.register("pim", "compute")
        b = ChannelBank(simpy.Environment(), "pim", 4, tracer, trace_lanes=2)
        b.free_at_s[:] = busy_until
        done = b.issue(now, "phase", durs, parts=parts, part_table=given_table)
        out.append((done, tracer.spans, tracer.totals, tracer.kind_busy_s, b.free_at_s.tolist()))
    assert out[0] == out[1]
