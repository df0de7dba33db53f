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
served, whole periods of its repeating layers skipped: ``_Fcfs``); both give up, and the driver simulates the
step, where SimPy's event order would decide.
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
from sim.topology import GPU

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
        """A prefill step that may store its K/V over a link (pim, aqpim, offload with a host share) and fetch
        its layers' weights over one (offload with weights on the host) beside a decode step that is one chain
        of holds, made without SimPy events by the same first-come-first-served rules. The prefill runs its
        layers back to back (each one's weight fetch, waited for, then its GPU kernels), sends each layer's store
        as its kernels end (the stores queue on their link), then its head, and ends when the last store lands;
        the decode chain asks for each hold's resource as its previous hold ends (a PIM phase needs none: the
        channels are the decode's alone, idle at its start). A resource is granted to requests in the order they
        were made, at the later of the request and the previous holder's release. Two requests for one resource
        at the same instant (whose order SimPy's event queue would decide; at the step's start the prefill's,
        made first) make it give up, as do routes that hold other than one resource on one link, full detail
        and kept spans.

        The layers repeat: once the state of the two processes seen from the clock (what is queued, when each
        resource frees, relative to the prefill's next layer) recurs, everything from there repeats with the
        same period, shifted, and whole periods are skipped (``_Fcfs``). The holds are then recorded in start
        order with the processes' own bookkeeping: each distinct hold in full the first time, its repetitions
        (the next layers) as their resource holds, in arrays (``Occupancy.add_many``,
        ``ChannelBank.repeat_idle``), with the first one's totals added for them when the step stays within one
        binade of the clock (as ``run`` replays a segment). Returns (the prefill's end, the step's end) or
        None."""
        if self.full or self.tracer.keeping:
            return None
        m = self.machine
        topo, gpu = m.topology, m.gpu
        stores, fetches = pplan.store_bytes > 0, pplan.fetch_bytes > 0
        store_route = topo.route(pplan.store_src, pplan.store_dst) if stores else None
        fetch_route = topo.route(pplan.fetch_src, GPU) if fetches else None
        store_res = _held(store_route) if stores else None
        fetch_res = _held(fetch_route) if fetches else None
        if (stores and store_res is None) or (fetches and fetch_res is None):
            return None
        decode = [] if e is None else self.decode_holds(e)
        if decode is None:
            return None
        # The step's distinct holds, numbered: the decode's (layers repeat them), then the prefill's layer, head
        # and store. Per hold: the resource slot it asks for (-1: a PIM phase) and its duration (a PIM phase: its
        # longest channel work).
        holds: list = []
        number: dict[int, int] = {}
        slot_of: dict = {}
        res_slot, dur_of = [], []

        def add_hold(h, res, dur) -> int:
            number[id(h)] = len(holds)
            holds.append(h)
            res_slot.append(-1 if res is None else slot_of.setdefault(res, len(slot_of)))
            dur_of.append(dur)
            return len(holds) - 1

        for h in decode:
            if id(h) in number:
                continue
            if len(h) == 2:
                if h[0] is not gpu:
                    return None  # a hold on another component than the GPU
                add_hold(h, gpu, hold_s(h[1]))  # the GPU, keyed by its component beside the links' names
            elif len(h) == 4:
                route = topo.route(h[0], h[1])
                res = _held(route)
                if res is None:
                    return None  # a route over several resources
                add_hold(h, res, route.time_s(h[2], True))
            else:
                d = h[0].durations_s
                add_hold(h, None, float(np.max(d)) if np.size(d) else 0.0)
        t0 = self.env.now
        if m.pim is not None and float(m.pim.free_at_s.max(initial=t0)) > t0:
            return None
        n_decode = len(holds)
        n_layers = self.system.model.n_layers
        layer = add_hold((gpu, pplan.layer), gpu, hold_s(pplan.layer))
        p_idx = [layer]
        if fetches:  # each layer's weights fetched before it, the process waiting for them
            p_idx.insert(0, add_hold((pplan.fetch_src, GPU, pplan.fetch_bytes, f"{PREFILL}.weight_fetch"),
                                     fetch_res, fetch_route.time_s(pplan.fetch_bytes, True)))
        p_layer = len(p_idx)
        p_idx *= n_layers
        if pplan.head:
            p_idx.append(add_hold((gpu, pplan.head), gpu, hold_s(pplan.head)))
        store = -1
        if stores:
            store = add_hold((pplan.store_src, pplan.store_dst, pplan.store_bytes, f"{PREFILL}.kv_store"),
                             store_res, store_route.time_s(pplan.store_bytes, True))
        # the decode's repeating part: its first segment's chain, ``count`` times (the layers)
        period = (len(e.chains[0]), len(e.chains[0]) * e.segments[0][1]) if decode else (1, 0)
        run = _Fcfs(t0, [number[id(h)] for h in decode], p_idx, (p_layer, p_layer * n_layers), store, n_decode,
                    res_slot, dur_of, len(slot_of), period, m.pim)
        if not run.walk():
            return None
        self.system.prefill_energy(pplan)  # what the prefill process adds before its first hold
        prefill_end, end = run.prefill_end, run.end
        starts = np.array(run.starts)
        which = np.array(run.holds, dtype=np.intp)
        order = np.argsort(starts, kind="stable")  # start order, ties in the order the holds were taken
        starts, which = starts[order], which[order]
        step_end = max(end, prefill_end)
        if binade(t0) != binade(step_end):
            for start, h in zip(starts.tolist(), which.tolist(), strict=True):
                m.chain_end((holds[h],), start)
            return prefill_end, step_end
        self._record_repeated(holds, dur_of, starts, which)
        return prefill_end, step_end

    def _record_repeated(self, holds: list, longest: list, starts: np.ndarray, which: np.ndarray) -> None:
        """Record a contended step's holds (``holds[which[k]]`` from ``starts[k]``, in start order): each distinct
        hold in full the first time (``chain_end``), its later occurrences as their resource holds alone (the
        occupancy and the channels' state that ``chain_end`` would leave, in start order), their
        records added as the first one's totals (``Tracer.add``: the same within one binade of the clock). The
        occupancy of them all, the first ones' included, goes in at the end in one ``Occupancy.add_many``."""
        m, tracer = self.machine, self.tracer
        bank = m.pim
        n = len(holds)
        is_first = np.zeros(len(which), dtype=bool)
        is_first[np.unique(which, return_index=True)[1]] = True
        # per hold, what a repetition occupies: category and seconds (a PIM phase: its longest channel's) and,
        # for a PIM phase, its per-channel seconds as issue takes them
        cat = np.zeros(n, dtype=np.intp)
        dur = np.zeros(n)
        phase_s: dict[int, np.ndarray] = {}
        index = tracer.category_index
        for h, hold in enumerate(holds):
            occ = m.hold_occupancy(hold)
            if occ is None:
                cat[h], dur[h] = index[bank.name], longest[h]
                phase_s[h] = bank.durations(hold[0].durations_s, bank.free_at_s.shape)
            else:  # one component: contended_step takes routes that hold one link (_held)
                cat[h], dur[h] = index[occ[1][0]], occ[0]
        is_phase = np.zeros(n, dtype=bool)
        is_phase[list(phase_s)] = True
        on_bank = is_phase[which]
        firsts = _Intervals()
        occupancy, tracer.occupancy = tracer.occupancy, firsts  # the first holds' intervals, kept for later
        deltas: list = [None] * n
        times = (np.bincount(which, minlength=n) - 1).tolist()  # each hold's occurrences after its first
        repeated: list[np.ndarray] = []  # the PIM phases repeated since the last one issued
        last = 0.0
        try:
            for k in np.flatnonzero(is_first | on_bank).tolist():
                h = int(which[k])
                if not is_first[k]:
                    repeated.append(phase_s[h])
                    last = float(starts[k])
                    continue
                if repeated and h in phase_s:
                    bank.repeat_idle(last, repeated)
                    repeated = []
                if times[h] == 0:  # taken once (a head): recorded, no totals to repeat
                    m.chain_end((holds[h],), float(starts[k]))
                    continue
                mark = tracer.mark(m.chain_scope((holds[h],)))
                m.chain_end((holds[h],), float(starts[k]))
                deltas[h] = tracer.delta_since(mark)
        finally:
            tracer.occupancy = occupancy
        if repeated:
            bank.repeat_idle(last, repeated)
        again = ~is_first
        h_again = which[again]
        s_all = np.concatenate((starts[again], firsts.starts))
        order = np.argsort(s_all, kind="stable")
        occupancy.add_many(np.concatenate((cat[h_again], firsts.categories))[order], s_all[order],
                           np.concatenate((starts[again] + dur[h_again], firsts.ends))[order])
        for h in which[is_first].tolist():  # in the order of their first occurrences, as the totals were added
            if times[h] > 0:
                tracer.add(deltas[h], times[h])

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


def _held(route) -> str | None:
    """The one resource a route holds, on one link of it (a contended step's transfers: a repeated hold then
    occupies one component); None otherwise."""
    held = [link.resource for link in route.links if link.resource]
    return held[0] if len(held) == 1 else None


class _Intervals:
    """Stands in for the tracer's ``Occupancy`` while a contended step's first holds are recorded: keeps their
    intervals, to go in with their repetitions' in start order (``Occupancy.add_many``)."""

    def __init__(self):
        self.categories: list[int] = []
        self.starts: list[float] = []
        self.ends: list[float] = []

    def add(self, category: int, start_s: float, end_s: float) -> None:
        self.categories.append(category)
        self.starts.append(start_s)
        self.ends.append(end_s)

    @staticmethod
    def totals() -> tuple[float, float, float]:
        return 0.0, 0.0, 0.0  # (what a mark reads: the deltas' occupancy is not used, Tracer.add ignores it)


_P, _S, _D = 0, 1, 2  # a contended step's requests: a prefill layer (or head), a prefill store, a decode hold


class _Fcfs:
    """The two processes of a contended step (``Stepper.contended_step``) taking their holds first come, first
    served, without events. Holds are numbers: ``decode`` the decode chain's in order, ``p_idx`` the prefill's
    (each layer's weight fetch if any and its GPU kernels, then the head), ``store`` the store sent as each
    prefill layer's kernels end (-1: none); per hold ``res_slot`` (its resource, -1 for a PIM phase on idle
    channels) and ``dur_of`` (seconds). ``period`` and ``p_period``: (holds per layer, where the repeated layers
    end) of the decode and of the prefill. ``walk`` fills ``starts`` and ``holds`` (each hold taken, in
    the order taken), ``prefill_end`` and ``end``.

    Skipping periods: at each prefill layer the state is read relative to the clock (the queued requests, with
    the prefill's indices relative to the layer and the decode's position within its layer; when each resource
    frees and was last asked for, where that is still ahead). A float added to clock values of one binade (the
    multiples of one ulp) adds the same increment wherever the value lies in it, unless it lies exactly half-way
    between two multiples (rounded to the even one: then nothing is skipped), so when
    the state recurs, every later layer repeats the holds between the two sightings shifted by their distance
    Δ, until either process leaves its repeated layers or the clock would leave the binade; those periods are
    appended shifted by kΔ (exact: multiples of the ulp) and the walk goes on from the state shifted by mΔ."""

    def __init__(self, t0: float, decode: list[int], p_idx: list[int], p_period: tuple[int, int], store: int,
                 n_decode: int, res_slot: list[int], dur_of: list[float], n_slots: int, period: tuple[int, int],
                 bank):
        self.t0, self.decode, self.p_idx, self.p_period, self.store = t0, decode, p_idx, p_period, store
        self.n_decode, self.res_slot, self.dur_of, self.n_slots = n_decode, res_slot, dur_of, n_slots
        self.period, self.bank = period, bank
        self.starts: list[float] = []
        self.holds: list[int] = []
        self.prefill_end = self.end = t0

    def walk(self) -> bool:
        """Take every hold; False where two requests for one resource come at the same instant (other than the
        two processes' first, at the step's start), whose order SimPy's event queue would decide."""
        t0, decode, p_idx, store = self.t0, self.decode, self.p_idx, self.store
        res_slot, dur_of = self.res_slot, self.dur_of
        n_p, n_d = len(p_idx), len(decode)
        layer_len, repeat_end = self.period
        p_len, p_end = self.p_period
        idle_end = self.bank.idle_end_s if self.bank is not None else None
        queue = [(t0, 0, _P, 0)]
        made = 1
        if n_d:
            queue.append((t0, 1, _D, 0))
            made = 2
        free_at = [-math.inf] * self.n_slots
        asked: list = [None] * self.n_slots
        starts, holds, fins = self.starts, self.holds, []
        prefill_end = end = t0
        seen: dict = {}
        push, pop = heapq.heappush, heapq.heappop
        while queue:
            t, _, who, i = pop(queue)
            if (i < p_end and i % p_len == 0 if who == _P else (who == _D and not queue and i < repeat_end
                                                                 and i % layer_len == 0)):
                jump = self._recur(seen, t, who, i, queue, free_at, asked, len(starts))
                if jump is not None:
                    tj, rj, periods, p_step, d_step = jump
                    total = periods * (t - tj)
                    base_s, base_h, base_f = starts[rj:], holds[rj:], fins[rj:]
                    for k in range(1, periods + 1):
                        shift = k * (t - tj)
                        starts.extend([x + shift for x in base_s])
                        holds.extend(base_h)
                        fins.extend([x + shift for x in base_f])
                    pf = [f for f, h in zip(base_f, base_h, strict=True) if h >= self.n_decode]
                    df = [f for f, h in zip(base_f, base_h, strict=True) if h < self.n_decode]
                    if pf:
                        prefill_end = max(prefill_end, max(pf) + total)
                    if df:
                        end = max(end, max(df) + total)
                    queue = [(q[0] + total, q[1], q[2], q[3] + (d_step if q[2] == _D else p_step))
                             for q in queue]
                    heapq.heapify(queue)
                    free_at = [f + total if f >= t else f for f in free_at]
                    asked = [a + total if a is not None and a >= t else a for a in asked]
                    t, i = t + total, i + (p_step if who == _P else d_step)
                    seen.clear()
            h = decode[i] if who == _D else (p_idx[i] if who == _P else store)
            slot = res_slot[h]
            start = t
            if slot >= 0:
                if asked[slot] == t and not (who == _D and i == 0 and t == t0):
                    return False
                asked[slot] = t
                f = free_at[slot]
                if f > t:
                    start = f
                fin = start + dur_of[h]
                free_at[slot] = fin
            else:  # a PIM phase: its channels are free at the step's start and each phase ends before the next
                # one starts, so they are idle at its issue; the timeout is done - start, as in run
                fin = start + (idle_end(start, dur_of[h]) - start)
            starts.append(start)
            holds.append(h)
            fins.append(fin)
            if who == _D:
                if fin > end:
                    end = fin
                if i + 1 < n_d:
                    push(queue, (fin, made, _D, i + 1))
                    made += 1
            else:
                if fin > prefill_end:
                    prefill_end = fin
                if who == _P:
                    if store >= 0 and i < p_end and i % p_len == p_len - 1:  # a layer's kernels: its store
                        push(queue, (fin, made, _S, i))
                        made += 1
                    if i + 1 < n_p:
                        push(queue, (fin, made, _P, i + 1))
                        made += 1
        self.prefill_end, self.end = prefill_end, end
        return True

    def _recur(self, seen: dict, t: float, who: int, i: int, queue: list, free_at: list, asked: list, n_taken: int):
        """At a prefill layer ``i`` (or, once the prefill is done, the start of decode layer ``i``) taken at
        ``t``: None, or (the clock and holds taken when this state was seen before, the periods to skip, and
        how far they move the prefill's and the decode's indices)."""
        layer_len, repeat_end = self.period
        pending_d = i if who == _D else None
        rel = []
        for q in sorted(queue):
            if q[2] == _D:
                pending_d = q[3]
                pos = q[3] % layer_len if q[3] < repeat_end else -1 - q[3]
            else:
                pos = q[3] - i
            rel.append((q[0] - t, q[2], pos))
        key = (who, tuple(rel), tuple(f - t if f > t else 0.0 for f in free_at),
               tuple(a - t if a is not None and a >= t else None for a in asked))
        prev = seen.get(key)
        if prev is None:
            seen[key] = (t, i, n_taken, pending_d)
            return None
        tj, ij, rj, dj = prev
        delta = t - tj
        if not delta > 0.0:
            return None
        p_step = i - ij if who == _P else 0
        periods = (len(self.p_idx) - 1 - i) // p_step if p_step else len(self.decode)
        d_step = 0
        if pending_d is not None:
            d_step = pending_d - dj
            if d_step <= 0:
                return None
            # the decode's requests stay within its repeated layers, and its next one is still to come
            periods = min(periods, (min(repeat_end, len(self.decode) - 1) - pending_d) // d_step)
        ahead = [q[0] for q in queue] + [f for f in free_at if f > t] + [a for a in asked if a is not None and a > t]
        top = max([t, *ahead])  # every hold of the period ends by then
        b = binade(tj)
        while periods > 0 and binade(top + periods * delta) != b:
            periods -= 1
        if periods <= 0 or binade(t) != b:
            return None
        # a duration that lies exactly half-way between two multiples of the binade's ulp rounds to the even
        # one: its increment then depends on where the clock is, and the periods would not repeat bit for bit
        ulp = math.ldexp(1.0, b - 53)
        if any(math.fmod(d, ulp) == 0.5 * ulp for d in self.dur_of):
            return None
        return tj, rj, periods, periods * p_step, periods * d_step


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
