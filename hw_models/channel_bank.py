"""A bank of identical FIFO servers driven together: how hundreds to thousands of PIM channels are simulated.

Each channel is a first-come-first-served server, exactly as if it were one ``simpy.Resource`` of capacity
one, but the bank keeps the channels' next-free times in one numpy array. A *phase* (the same command issued to
many channels, each with its own amount of work) then costs O(1) SimPy events and one vector operation instead
of one process, request and timeout per channel. Equivalence with one SimPy resource per channel is a test
(``tests/test_channel_bank.py``).

Why the bank's makespan interval is exact for "some channel is busy": the channel that finishes last was either
idle at submission (so it is busy from then on) or was still working on earlier submissions, which chain back
without gaps to before the submission time.
"""

from __future__ import annotations

import numpy as np
import simpy


class ChannelBank:
    def __init__(self, env: simpy.Environment, name: str, n_channels: int, tracer, trace_lanes: int = 8):
        """``tracer`` needs ``record``, ``occupy``, ``detail`` (trace-only spans of the first ``trace_lanes``
        channels) and ``keeping`` (whether the current step's spans are kept)."""
        self.env = env
        self.name = name
        self.n = n_channels
        self.tracer = tracer
        self.free_at_s = np.zeros(n_channels)
        self.busy_s = np.zeros(n_channels)
        self.trace_lanes = min(trace_lanes, n_channels)
        self.lane_names = [f"{name}.ch{c}" for c in range(self.trace_lanes)]

    def run(self, kind: str, duration_s, nbytes: float = 0.0, flops: float = 0.0, energy_j: float = 0.0,
            channels: np.ndarray | None = None, parts=(), part_table=None) -> simpy.Event:
        """Issue one phase: channel c works ``duration_s[c]`` (or a scalar for all, or for ``channels`` only).

        Returns an event that fires when the last channel finishes. Totals (bytes, FLOP, joules) are for the
        whole phase. ``parts`` (objects with ``kind`` and per-channel ``durations_s``, ``nbytes``, ``flops`` and
        ``energy_j`` that add up to the phase's) are recorded as consecutive spans of their own kinds instead of
        one span of ``kind``: part k runs, on the device lane, from the moment the last channel finished part
        k - 1 to the moment the last channel finished part k, so the parts' spans add up to the phase's span.
        ``part_table``: the parts' seconds (part x channel) and totals (part x [bytes, FLOPs, joules]) as arrays,
        the same numbers as the parts give, when the caller has them (else they are stacked from the parts).
        """
        now = self.env.now
        return self.env.timeout(self.issue(now, kind, duration_s, nbytes, flops, energy_j, channels, parts,
                                           part_table=part_table) - now)

    @staticmethod
    def idle_end_s(now: float, longest_s: float) -> float:
        """What ``issue`` returns for a phase issued at ``now`` on channels that are all free by then, whose
        longest channel work is ``longest_s``, without issuing it: every channel starts at ``now``, and rounding
        is monotone, so the last to finish ends at ``now + longest_s`` exactly."""
        return now + longest_s

    @staticmethod
    def durations(duration_s, shape: tuple[int, ...]) -> np.ndarray:
        """A phase's per-channel seconds as ``issue`` takes them: a float array of ``shape`` (a scalar or a
        shorter array broadcast; an array already so shaped as it is)."""
        if type(duration_s) is np.ndarray and duration_s.dtype == np.float64 and duration_s.shape == shape:
            return duration_s
        return np.broadcast_to(np.asarray(duration_s, dtype=float), shape)

    def repeat_idle(self, last_s: float, durations: list[np.ndarray]) -> None:
        """The channels' state after ``issue`` of each phase of ``durations`` in turn, each on channels all free
        by its issue, the last issued at ``last_s`` (a contended step's repeated decode phases): the same busy
        and next-free times, bit for bit, without records or occupancy (the caller adds the phases' totals and
        their intervals itself: ``Tracer.add``, ``Occupancy.add_many``)."""
        busy = self.busy_s
        for d in durations:
            busy += d
        self.free_at_s[:] = last_s + durations[-1]

    def issue(self, now: float, kind: str, duration_s, nbytes: float = 0.0, flops: float = 0.0,
              energy_j: float = 0.0, channels: np.ndarray | None = None, parts=(), part_table=None) -> float:
        """``run``'s bookkeeping at clock ``now`` (channels' next-free and busy times, spans): returns the moment
        the last channel finishes. ``run`` waits ``done - now`` after it; a chain replayed without events
        (``sim.machine.Machine.chain_end``) does the same arithmetic. ``part_table``: as ``run``."""
        idx = slice(None) if channels is None else channels
        free = self.free_at_s if channels is None else self.free_at_s[idx]  # (a copy for a channel list)
        dur = self.durations(duration_s, free.shape)
        start = np.maximum(free, now)
        end = start + dur
        self.free_at_s[idx] = end
        self.busy_s[idx] += dur
        done = float(end.max()) if end.size else now
        if parts:
            # the channels' ends after each part, added part by part (accumulate adds in order), and each part's
            # totals, each summed over its own array of channels
            seconds, totals = part_table if part_table is not None else (
                np.array([p.durations_s for p in parts]),
                np.array([[p.nbytes.sum(), p.flops.sum(), p.energy_j.sum()] for p in parts]))
            ends = np.add.accumulate(np.concatenate((start[None, :], seconds)), axis=0)[1:].max(axis=1).tolist() \
                if end.size else [now] * len(parts)
            t = now
            for i, (p, (b, f, e)) in enumerate(zip(parts, totals.tolist(), strict=True)):
                t_next = done if i == len(parts) - 1 else max(t, ends[i])
                self.tracer.record(self.name, p.kind, t, t_next, b, f, e)
                t = t_next
        else:
            self.tracer.record(self.name, kind, now, done, nbytes, flops, energy_j)
        self.tracer.occupy(self.name, now, done)
        if self.tracer.keeping:
            numbers = np.arange(self.n)[idx]  # channel of each position
            for pos in np.nonzero(numbers < self.trace_lanes)[0]:
                if dur[pos] <= 0:
                    continue
                lane = self.lane_names[numbers[pos]]
                if not parts:
                    self.tracer.detail(lane, kind, float(start[pos]), float(end[pos]))
                    continue
                t = float(start[pos])
                for p in parts:
                    if p.durations_s[pos] > 0:
                        self.tracer.detail(lane, p.kind, t, t + float(p.durations_s[pos]))
                        t += float(p.durations_s[pos])
        return done
