"""The step-level path: work computed once per distinct batch, and steps replayed from one simulated layer.

Two things repeat in a long run, and ``Stepper`` does each once:

1. **Plans and closed forms.** A system's plan (the pure cost functions) and its closed form are functions of the
   step's batch alone. ``Stepper.entry`` memoizes both on ``System.plan_key(batch)`` (every field of the batch the
   plan reads) in a bounded cache, least recently used out (``System.plan_cache_size`` entries). Contexts grow by a
   token per step, so a key recurs when the same batch size meets the same total of KV tokens (``gpu``,
   ``offload``) or the same per-sequence contexts (the PIM systems, whose placement reads every sequence). Parts
   that do not depend on contexts at all (weight GEMMs, the LM head) are cached per batch size by the systems.
   The cache starts at ``MIN_ENTRIES`` and grows by one entry per hit up to ``plan_cache_size``, so a run whose
   batches never recur does not fill it with plans it will not see again.
2. **Identical layers.** ``System.segments(plan)`` describes a step as segments, each a generator function run
   ``count`` times in a row, where every run starts and ends with every resource idle and nothing else in flight
   (one process, no prefetch across layers, no concurrent sub-batches), so that every run of a segment does the
   same thing shifted in time. The first run is simulated (with events, or, for a segment that is a plain chain of
   holds, ``System.chains``, by ``Machine.chain_end``, which makes the same records and moves the clock by the
   same floating-point additions without an event); what it added to the tracer (a
   ``sim.engine.TracerDelta``: busy time, bytes, FLOP and energy per component and per kind, energy of parts
   without timed work, the merged compute / exposed-comm / exposed-link time) and to the PIM channels' busy
   times, and its duration, are kept with the plan's cache entry. The other runs are that change multiplied, and
   the clock advances over them in one timeout. A step whose plan is cached with its segments' changes therefore
   costs one timeout, whatever its layers and channels.

Exactness: a replayed run is the simulated run's own numbers, so a replayed step equals the layer-level simulation
up to the rounding of the sums. One more rounding matters: the simulation records a duration as end - start on the
clock, which rounds it to the grid of the clock's binade (a microsecond at a clock of minutes keeps only ~8
digits). A run's change is therefore replayed only within the binade it was measured in; a segment whose runs
would cross into the next binade is simulated run by run (once per doubling of the clock), and a cached change
measured in an earlier binade is measured again. So a replayed step rounds as the layer-level one does (``tests/test_fastpath.py`` checks every output to 1e-9 relative against
``detail = "full"`` with hypothesis). A system whose step is not such a chain (offload with ``prefetch``, PIM
with ``sub_batches`` > 1) returns no segments and is always simulated in full, as are the traced steps (the first
``trace_steps``, whose spans are kept) and every step with ``detail = "full"``. A prefill step is made without
events too: ``Stepper.prefill_step`` when it and the decode step beside it are nothing but GPU holds (their
repeating blocks replayed), ``Stepper.contended_step`` when either uses links or PIM channels (first come, first
served); both give up, and the driver simulates the step, where SimPy's event order would decide.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from hw_models.component import hold_s
from sim.engine import TracerDelta
from sim.systems.base import PREFILL, Estimate, GrowingMemo, StepBatch, System

DETAILS = ("auto", "full")
# The plan cache grows only as it pays: it starts this small and may keep one more entry per hit, up to the
# system's ``plan_cache_size``. A run whose batches never recur (a fixed batch, whose contexts only grow) keeps
# this many plans; a serving run whose batch shapes recur grows it to the bound. Either way it is bounded.
MIN_ENTRIES = 64


@dataclass(frozen=True, slots=True)
class SegmentDelta:
    """What one run of a segment did: its duration, its tracer change and the PIM channels' added busy time."""

    duration_s: float
    tracer: TracerDelta
    channel_busy_s: np.ndarray | None
    binade: int | None  # the clock's binade through the run (None: it crossed one; not replayed)


@dataclass(slots=True)
class StepEntry:
    """A cached step: the plan, its closed form, its segments (None: simulate in full) and their deltas."""

    plan: object
    estimate: Estimate
    segments: tuple[tuple[Callable[[], Generator], int], ...] | None
    deltas: list[SegmentDelta | None] = field(default_factory=list)
    chains: tuple | None = None  # per segment its holds when it is a plain chain (System.chains), else None
    reused: bool = False  # handed out again from the cache (a segment run once per step then keeps its delta)


class Stepper:
    """Runs a system's steps for the driver (``sim.run``): plans from the cache, steps in full or replayed."""

    def __init__(self, system: System, machine, detail: str = "auto"):
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
        self.system = system
        self.machine = machine
        self.env = machine.env
        self.tracer = machine.tracer
        self.full = detail == "full"
        self.cache: OrderedDict = OrderedDict()
        self.hits = self.misses = 0
        self.prefill_plans = GrowingMemo()
        self.periodic: dict = {}  # periodic_runs' cuts per pattern of prefill and decode holds

    @property
    def size(self) -> int:
        """Entries the cache may hold: ``MIN_ENTRIES``, plus one per hit so far, up to ``plan_cache_size``."""
        return min(self.system.plan_cache_size, MIN_ENTRIES + self.hits)

    def entry(self, batch: StepBatch) -> StepEntry:
        """The step's plan and closed form, computed once per distinct ``plan_key``."""
        key = self.system.plan_key(batch)
        e = self.cache.get(key)
        if e is not None:
            self.cache.move_to_end(key)
            self.hits += 1
            e.reused = True
            return e
        self.misses += 1
        plan = self.system.plan(batch)
        segments = None if self.full else self.system.segments(plan)
        chains = self.system.chains(plan) if segments is not None else None
        e = StepEntry(plan, self.system.estimate(plan), segments, [None] * len(segments or ()), chains)
        size = self.size
        if size > 0:
            self.cache[key] = e
            while len(self.cache) > size:
                self.cache.popitem(last=False)
        return e

    def run(self, e: StepEntry):
        """Generator for the driver process to ``yield from``: one step, in full or replayed (module docstring)."""
        env = self.env
        if e.segments is None or self.tracer.keeping:
            yield env.process(self.system.step(e.plan))
            return
        bank = self.machine.pim
        t = env.now  # the step's clock, replayed runs included
        for i, (segment, count) in enumerate(e.segments):
            d = e.deltas[i]
            chain = e.chains[i] if e.chains is not None else None
            if d is None and count == 1 and not e.reused:
                # run once in this step: its delta would serve only a later use of the entry, and most entries
                # (a serving run's growing contexts) are never used again; measure it from the entry's reuse on
                t = yield from self._once(segment, chain, t)
                continue
            if d is None or d.binade != binade(t):
                mark = self.tracer.mark(self.machine.chain_scope(chain) if chain is not None else None)
                busy = bank.busy_s.copy() if bank is not None else None
                t0 = t
                t = yield from self._once(segment, chain, t)
                same = binade(t0) == binade(t)
                d = SegmentDelta(t - t0, self.tracer.delta_since(mark),
                                 bank.busy_s - busy if bank is not None else None, binade(t0) if same else None)
                if same:
                    e.deltas[i] = d
                count -= 1
            if count <= 0:
                continue
            if binade(t + count * d.duration_s) != d.binade:  # the runs would reach a coarser clock: simulate them
                for _ in range(count):
                    t = yield from self._once(segment, chain, t)
                continue
            # nothing is open now and nothing else runs until the step ends: the runs' totals go in at once
            self.tracer.replay(d.tracer, count, t)
            if d.channel_busy_s is not None:
                bank.busy_s += count * d.channel_busy_s
            t += count * d.duration_s
        if t > env.now:
            yield env.timeout(t - env.now)

    def _once(self, segment, chain, t: float):
        """Generator: one run of a segment from clock ``t``, walked without events when it is a plain chain (the
        same records and clock as its events), else simulated once the clock reaches ``t``; returns the clock at
        its end."""
        if chain is not None:
            return self.machine.chain_end(chain, t)
        env = self.env
        if t > env.now:
            yield env.timeout(t - env.now)
        yield env.process(segment())
        return env.now

    def prefill_plan(self, chunks, resident: StepBatch):
        """``System.prefill_plan``, kept per ``System.prefill_key`` (chunked prefill repeats the same chunk
        shapes: a prompt cut into budget-sized pieces) in a memo that grows only with hits."""
        return self.prefill_plans.get_or(self.system.prefill_key(chunks, resident),
                                         lambda: self.system.prefill_plan(chunks, resident))

    @staticmethod
    def decode_holds(e: StepEntry) -> list | None:
        """The decode step of ``e`` as the holds its process makes one after another (``System.chains`` of every
        segment, each ``count`` times); None when a segment is not a plain chain or the step has no segments."""
        if e.segments is None or e.chains is None or any(c is None for c in e.chains):
            return None
        holds = []
        for chain, (_, count) in zip(e.chains, e.segments, strict=True):
            holds += list(chain) * count
        return holds

    def prefill_step(self, pplan, e: StepEntry | None) -> tuple[float, float] | None:
        """A prefill step (``pplan``, a ``sim.systems.base.PrefillPlan``) with the decode step of ``e`` beside it
        (None: prefill alone), made without events when both are nothing but GPU holds: the GPU is one FIFO
        resource that both processes ask for again the moment a hold of theirs ends, so the holds alternate,
        prefill first (its process is started first), and the longer one's rest follows. The records and clock
        additions are ``Machine.chain_end``'s, in the order the processes would make them. Returns (the prefill's
        end, the step's end); None when either has more than GPU holds, in full detail, or when the step's spans
        are kept (then the driver simulates it)."""
        if self.full or self.tracer.keeping or pplan.fetch_bytes > 0 or pplan.store_bytes > 0:
            return None
        gpu = self.machine.gpu
        decode = [] if e is None else self.decode_holds(e)
        if decode is None or any(len(h) != 2 or h[0] is not gpu for h in decode):
            return None
        self.system.prefill_energy(pplan)  # what the prefill process adds before its first hold
        prefill = [(gpu, pplan.layer)] * self.system.model.n_layers + ([(gpu, pplan.head)] if pplan.head else [])
        pairs = list(itertools.zip_longest(prefill, decode))
        t = self.env.now
        chain_end = self.machine.chain_end
        prefill_end = t
        done = 0
        for block, reps in periodic_runs(pairs, self.periodic):
            done += len(block) * reps
            last = done == len(prefill)  # the run that ends with the prefill's last hold, which ends the prefill
            t = self.chain_runs(tuple(h for pair in block for h in pair if h is not None), reps - last, t)
            if last:  # its last repetition hold by hold, to read the prefill's end
                for p, d in block:
                    t = prefill_end = chain_end((p,), t)
                    if d is not None:
                        t = chain_end((d,), t)
        return prefill_end, t

    def contended_step(self, pplan, e: StepEntry | None) -> tuple[float, float] | None:
        """A prefill step that may store its K/V over a link (pim, aqpim, offload with a host share) beside a
        decode step that is one chain of holds, made without SimPy events by the same first-come-first-served rules. The
        prefill runs its GPU layers back to back, sends each layer's store as the layer ends (the stores queue on
        their link), then its head, and ends when the last store lands; the decode chain asks for each hold's
        resource as its previous hold ends (a PIM phase needs none: the channels are the decode's alone, idle at
        its start). A resource is granted to requests in the order they were made, at the later of the request
        and the previous holder's release. Two requests for one resource at the same instant (whose order
        SimPy's event queue would decide; at the step's start the prefill's, made first) make it give up, as do
        routes over more than one resource, weight fetches, full detail and kept spans. The holds are then
        recorded in start order with the processes' own bookkeeping: each distinct hold in full the first time,
        its repetitions (the next layers) as their resource holds, with the first one's totals added for them
        when the step stays within one binade of the clock (as ``run`` replays a segment). Returns (the
        prefill's end, the step's end) or None."""
        if self.full or self.tracer.keeping or pplan.fetch_bytes > 0:
            return None
        m = self.machine
        topo, gpu = m.topology, m.gpu
        stores = pplan.store_bytes > 0
        store_route = topo.route(pplan.store_src, pplan.store_dst) if stores else None
        if stores and len(store_route.resources) != 1:
            return None
        decode = [] if e is None else self.decode_holds(e)
        if decode is None:
            return None
        # Per distinct decode hold (layers repeat them): the resource it asks for (None: a PIM phase) and its
        # duration (a PIM phase: its longest channel work).
        held: dict[int, tuple] = {}
        for h in decode:
            if id(h) in held:
                continue
            if len(h) == 2:
                if h[0] is not gpu:
                    return None  # a hold on another component than the GPU
                held[id(h)] = (gpu, hold_s(h[1]))  # the GPU, keyed by its component beside the links' names
            elif len(h) == 4:
                route = topo.route(h[0], h[1])
                if len(route.resources) != 1:
                    return None  # a route over several resources
                held[id(h)] = (route.resources[0], route.time_s(h[2], True))
            else:
                d = h[0].durations_s
                held[id(h)] = (None, float(np.max(d)) if np.size(d) else 0.0)
        d_held = [held[id(h)] for h in decode]
        t0 = self.env.now
        if m.pim is not None and float(m.pim.free_at_s.max(initial=t0)) > t0:
            return None
        n_layers = self.system.model.n_layers
        p_holds = [(gpu, pplan.layer)] * n_layers + ([(gpu, pplan.head)] if pplan.head else [])
        p_s = [hold_s(pplan.layer)] * n_layers + ([hold_s(pplan.head)] if pplan.head else [])
        store_hold = (pplan.store_src, pplan.store_dst, pplan.store_bytes, f"{PREFILL}.kv_store")
        store_res, store_s = (store_route.resources[0], store_route.time_s(pplan.store_bytes, True)) if stores \
            else (None, 0.0)
        queue: list = []
        made = itertools.count()
        heapq.heappush(queue, (t0, next(made), "p", 0))
        if decode:
            heapq.heappush(queue, (t0, next(made), "d", 0))
        free_at: dict[str, float] = {}
        asked: dict[str, float] = {}
        records = []  # (start, order, record): replayed in start order at the end
        prefill_end = end = t0
        while queue:
            t, _, who, i = heapq.heappop(queue)
            if who == "d":
                res, dur = d_held[i]
            else:
                res = store_res if who == "s" else gpu
            start = t
            if res is not None:
                if asked.get(res) == t and not (who == "d" and i == 0 and t == t0):
                    return None
                asked[res] = t
                start = max(t, free_at.get(res, t))
            if who == "p":
                fin = start + p_s[i]
                records.append((start, len(records), p_holds[i]))
                prefill_end = max(prefill_end, fin)
                if stores and i < n_layers:
                    heapq.heappush(queue, (fin, next(made), "s", i))
                if i + 1 < len(p_holds):
                    heapq.heappush(queue, (fin, next(made), "p", i + 1))
            elif who == "s":
                fin = start + store_s
                records.append((start, len(records), store_hold))
                prefill_end = max(prefill_end, fin)
            else:
                if res is not None:
                    fin = start + dur
                else:  # a PIM phase: its channels are free at the step's start and each phase ends before the
                    # next one starts, so they are idle at its issue; the timeout is done - start, as in run
                    fin = start + (m.pim.idle_end_s(start, dur) - start)
                records.append((start, len(records), decode[i]))
                end = max(end, fin)
                if i + 1 < len(decode):
                    heapq.heappush(queue, (fin, next(made), "d", i + 1))
            if res is not None:
                free_at[res] = fin
        self.system.prefill_energy(pplan)  # what the prefill process adds before its first hold
        records.sort(key=lambda r: (r[0], r[1]))
        step_end = max(end, prefill_end)
        if binade(t0) != binade(step_end):
            for start, _, hold in records:
                m.chain_end((hold,), start)
            return prefill_end, step_end
        # Every layer repeats the same holds: each is recorded in full once, and its later occurrences only hold
        # their resources (the occupancy and the channels' state, in start order as before) while their records
        # are added as that first one's totals, which are the same within one binade of the clock (as replay).
        tracer = self.tracer
        firsts: dict[int, list] = {}  # id(hold) -> [its totals, later occurrences, what a repetition occupies]
        for start, _, hold in records:
            f = firsts.get(id(hold))
            if f is None:
                mark = tracer.mark(m.chain_scope((hold,)))
                m.chain_end((hold,), start)
                occ = m.hold_occupancy(hold)
                if occ is None:  # a PIM phase: its durations as issue takes them, and its longest
                    occ = (m.pim.durations(hold[0].durations_s, m.pim.free_at_s.shape), held[id(hold)][1])
                firsts[id(hold)] = [tracer.delta_since(mark), 0, occ, len(hold) == 1]
                continue
            f[1] += 1
            if f[3]:  # chain_end(record=False) of a PIM phase: its channels are idle at its issue (above)
                m.pim.issue_idle(start, *f[2])
            else:  # chain_end(record=False), its occupancy computed once per distinct hold
                m.occupy_hold(f[2], start)
        for delta, times, *_ in firsts.values():
            if times:
                tracer.add(delta, times)
        return prefill_end, step_end

    def chain_runs(self, holds: tuple, count: int, t: float) -> float:
        """``count`` runs of the chain ``holds`` from clock ``t`` on idle resources, without events: the first
        walked by ``Machine.chain_end``, the others replayed from its change within its binade (as ``run``
        replays a segment), else walked too. Returns the clock at the end."""
        if count <= 0:
            return t
        chain_end = self.machine.chain_end
        if count == 1:
            return chain_end(holds, t)
        mark = self.tracer.mark(self.machine.chain_scope(holds))
        t0 = t
        t = chain_end(holds, t)
        duration, b = t - t0, binade(t0)
        if binade(t) != b or binade(t + (count - 1) * duration) != b:
            for _ in range(count - 1):
                t = chain_end(holds, t)
            return t
        self.tracer.replay(self.tracer.delta_since(mark), count - 1, t)
        return t + (count - 1) * duration


MAX_PERIOD = 8  # the longest block of holds looked for as a repeating unit (a decode layer's GPU holds)


def periodic_runs(items: list, memo: dict | None = None) -> list[tuple[list, int]]:
    """``items`` cut into (block, repetitions): at each position the block of at most ``MAX_PERIOD`` items whose
    back-to-back repetitions (items equal by identity) cover the most, else one item once. A prefill layer beside
    a decode layer of k GPU holds repeats with period k. ``memo``: a dict that keeps the cut per pattern of
    equal items (which is all the cut depends on; prefill steps repeat a few patterns)."""
    keys = [tuple(map(id, item)) for item in items]  # identity, compared a block at a time
    shape = None
    if memo is not None:
        first: dict = {}
        shape = tuple(first.setdefault(k, len(first)) for k in keys)
        cut = memo.get(shape)
        if cut is not None:
            return [(items[i:i + p], reps) for i, p, reps in cut]
    cut = _periodic_cut(keys)
    if memo is not None and len(memo) < PERIODIC_MEMO:
        memo[shape] = cut
    return [(items[i:i + p], reps) for i, p, reps in cut]


PERIODIC_MEMO = 256  # patterns kept (a run's prefill steps have a few: their chunk counts and batch changes)


def _periodic_cut(keys: list) -> list[tuple[int, int, int]]:
    """``periodic_runs`` on the items' keys: (start, block length, repetitions) per run."""
    runs, i, n = [], 0, len(keys)
    while i < n:
        best_p, best_reps = 1, 1
        for p in range(1, MAX_PERIOD + 1):
            if i + 2 * p > n:
                break
            block, reps = keys[i:i + p], 1
            while i + (reps + 1) * p <= n and keys[i + reps * p:i + (reps + 1) * p] == block:
                reps += 1
            if reps > 1 and reps * p > best_p * best_reps:
                best_p, best_reps = p, reps
        runs.append((i, best_p, best_reps))
        i += best_p * best_reps
    return runs


def binade(t_s: float) -> int:
    """The exponent of ``t_s``: every clock value of one binade is rounded to the same grid."""
    return math.frexp(t_s)[1]
