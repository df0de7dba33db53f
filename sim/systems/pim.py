"""SOTA PIM baseline: the KV cache lives in PIM channels, which compute attention where it is stored.

Per layer: the GPU computes the QKV projection; q and the new K/V cross the device link to the PIM device (for
host-side DIMM-PIM they cross PCIe first); every channel holding a part of the batch's KV appends the new K/V it
owns and runs its share of attention (q in, scores, softmax, weighted sum of V, partial output out) in one phase;
the partial outputs return and the GPU merges them (log-sum-exp merge of per-channel softmax statistics) before
the output projection and FFN.

**Placement** of the KV across channels is a policy over *units*, one (sequence, KV head) pair each:
``head`` puts each unit whole on one channel, round-robin (few units leave channels idle); ``token`` spreads
every unit's tokens over all channels (balanced, but every channel then serves every query and returns a
partial for it); ``hybrid`` (default) gives each unit its own group of ``channels // units`` channels when there
are fewer units than channels, else falls back to ``head``.

**Capacity wall**: when the peak KV exceeds the PIM capacity, ``capacity_policy`` decides. ``spill``: the
overflow share of every sequence's tokens stays in host DRAM and is attended over the offload path (PCIe to the
GPU, GPU attention) concurrently with the PIM part, then merged; new K/V go to the host. ``limit``: requests are
admitted only while their whole KV (prompt + output) fits, so the batch shrinks and throughput shows it.

``sub_batches = 2`` splits the batch in two halves that run as separate processes and alternate between the GPU
and PIM (NeuPIMs, L3); each half reads the weights again, which the GPU resource makes visible.

``link_chunks = N`` pipelines the link as a device does (AttAcc's head-wise ``--pipeopt``): the channels are cut
into N contiguous groups; each direction of the link carries one burst per layer whose set-up (the route's
latency) is paid once, with the chunks streaming behind it: down, the queries (and new K/V) each group needs
first, group by group; up, each group's partial outputs as soon as its channels finish. A channel still gets all
of its queries before it starts and issues its commands once, so no per-operation overhead is paid per chunk; a
group computes while later groups' queries cross the link and earlier groups' outputs return. The closed form is
the exact flow-shop recurrence of that schedule and is never above the unpipelined path (``pipelined_path_s``).

Channel work is computed once per step for each distinct (tokens, units, new vectors) load, so the cost grows with
channels and layers, not with tokens.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from hw_models import gpu as gpu_model
from hw_models import pim as pim_model
from hw_models.component import Work
from hw_models.params import override
from sim.errors import ConfigError
from sim.options import Options, option
from sim.systems.base import (
    Capacity,
    Devices,
    Estimate,
    PrefillPlan,
    SeqsCache,
    StepBatch,
    System,
    dense_works,
    excess,
    gib,
    share,
    total_s,
)
from sim.topology import GPU, HOST_DRAM, PIM
from workloads.errors import WorkloadError
from workloads.kvformats import KvFormat, accuracy_summary, compression_by_context, parse_format
from workloads.models import ModelSpec
from workloads.opgraph import kv_ops

ATTENTION_OPS = ("attn_score", "softmax", "attn_context")
# Per-channel loads (tokens, units, new vectors) are rounded to 1 / LOAD_STEPS before their costs are evaluated,
# so that equal stripes that differ only by floating-point noise share one evaluation (``distinct_rows``).
LOAD_STEPS = 1000.0


class Placement:
    """Where each unit (sequence, KV head) lives: (unit, channel, share of the unit's tokens) pairs, in unit order
    (``place`` makes them so; ``loads`` of a run of consecutive units takes them as one slice)."""

    def __init__(self, unit_tokens: np.ndarray, last_channel: np.ndarray, n_channels: int,
                 pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        self.unit_tokens = unit_tokens  # attended tokens of each unit
        self.last_channel = last_channel  # channel that receives each unit's new token
        self.n_channels = n_channels
        if pairs is not None:  # (a subclass that builds them when asked leaves them out)
            self._pairs = pairs  # (unit, channel, share) of every pair
        self._whole: list = []  # the whole batch's loads for the last scale asked (a step's plan and its
        # capacity report ask alike)

    pair_unit = property(lambda self: self._pairs[0])
    pair_channel = property(lambda self: self._pairs[1])
    pair_share = property(lambda self: self._pairs[2])

    @property
    def n_pairs(self) -> int:
        return self.pair_unit.size

    @property
    def pairs_per_unit(self) -> float:
        return self.n_pairs / max(1, self.unit_tokens.size)

    def loads(self, tokens_scale: float = 1.0, units: np.ndarray | None = None):
        """Per channel: tokens held (per KV tensor), units present, new vectors appended this step (arrays not to
        be written to: the whole batch's are kept and handed out again)."""
        if units is None:
            whole = self._whole
            if whole and whole[0] == tokens_scale:
                return whole[1]
            out = self._whole_loads(tokens_scale)
            for a in out:
                a.flags.writeable = False
            self._whole[:] = (tokens_scale, out)
            return out
        if units.size and units[-1] - units[0] + 1 == units.size and bool(np.all(np.diff(units) == 1)):
            # consecutive units (a sub-batch's, a link chunk's): their pairs are one run of the sorted pairs
            lo, hi = np.searchsorted(self.pair_unit, (units[0], units[-1] + 1))
            keep = slice(int(lo), int(hi))
        else:
            keep = np.isin(self.pair_unit, units)
        return self._pair_loads(self.pair_unit[keep], self.pair_channel[keep], self.pair_share[keep],
                                self.last_channel[units], tokens_scale)

    def _whole_loads(self, tokens_scale: float):
        return self._pair_loads(self.pair_unit, self.pair_channel, self.pair_share, self.last_channel, tokens_scale)

    def groups(self, tokens_scale: float = 1.0):
        """The whole batch's per-channel loads grouped as ``distinct_rows`` groups them (rows, each channel's row,
        channels per row), where a placement knows them without sorting; None here (``bank_phase`` sorts)."""
        return None

    def _pair_loads(self, pu, pc, ps, last, tokens_scale: float):
        n = self.n_channels
        tokens = np.bincount(pc, weights=ps * self.unit_tokens[pu] * tokens_scale, minlength=n)
        return tokens, np.bincount(pc, minlength=n).astype(float), np.bincount(last, minlength=n).astype(float)


class StripePlacement(Placement):
    """``hybrid``: all units' tokens laid end to end, cut into ``n`` equal contiguous stripes, in exact integer
    arithmetic. Positions are counted in 1/n tokens, so unit i spans [n S_i, n E_i) (S, E: the tokens before it
    and up to its end) and channel c the stripe [c T, (c+1) T) (T: all tokens): every boundary is an integer, a
    unit is on exactly the channels its span overlaps by a positive length, and its new token goes to the channel
    of its last token. (Computed in floats, a unit ending on a stripe boundary could also land, by a share of
    1e-15, on the next channel: one more unit present there, and its new token sent there.) Each channel holds
    T / n tokens; the pairs themselves are built only when asked for (a subset of units' loads)."""

    def __init__(self, unit_tokens: np.ndarray, tokens: np.ndarray, n_channels: int):
        n = n_channels
        ends = np.cumsum(tokens)
        total = int(ends[-1])
        if n * total >= 2**62:  # beyond int64: Python integers (a far larger batch than any preset holds)
            tokens, ends = tokens.astype(object), ends.astype(object)
        starts = ends - tokens
        if tokens.dtype != object and tokens.min() > 0:
            # every unit holds tokens (a serving step's): S < T and E <= T keep both channels in range and the
            # last at or after the first, so the general case's clamps change nothing
            c0 = n * starts // total
            past = (n * ends + (total - 1)) // total  # one past each unit's last channel
            c1 = past - 1
            diff = np.bincount(c0, minlength=n + 1) - np.bincount(past, minlength=n + 1)
        else:
            c0 = np.minimum(n * starts // total, n - 1).astype(np.int64)
            c1 = np.minimum((n * ends + (total - 1)) // total - 1, n - 1).astype(np.int64)
            np.maximum(c1, c0, out=c1)
            held = tokens > 0
            diff = np.bincount(c0[held], minlength=n + 1) - np.bincount(c1[held] + 1, minlength=n + 1)
        super().__init__(unit_tokens, c1, n)
        self._tokens, self._starts, self._ends, self._first, self._total = tokens, starts, ends, c0, total
        self._present = np.cumsum(diff[:n])

    @functools.cached_property
    def n_pairs(self) -> int:
        return int(self._present.sum())

    @functools.cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, tokens, c0, c1 = self.n_channels, self._tokens, self._first, self.last_channel
        spans = np.where(tokens > 0, c1 - c0 + 1, 0)
        first = np.cumsum(spans) - spans  # each unit's first pair
        pu = np.repeat(np.arange(tokens.size), spans)
        pc = np.arange(int(spans.sum())) - np.repeat(first - c0, spans)  # unit i's pairs: channels c0[i], ...
        at = pc.astype(tokens.dtype)  # (Python integers with them, when positions exceed int64)
        overlap = (np.minimum(n * self._ends[pu], (at + 1) * self._total)
                   - np.maximum(n * self._starts[pu], at * self._total))
        return pu, pc, (overlap / (n * tokens[pu])).astype(float)

    def _whole_loads(self, tokens_scale: float):
        n = self.n_channels
        return (np.full(n, self._total * tokens_scale / n), self._present.astype(float),
                self._new.astype(float))

    @functools.cached_property
    def _new(self) -> np.ndarray:
        return np.bincount(self.last_channel, minlength=self.n_channels)

    def groups(self, tokens_scale: float = 1.0):
        """Every channel holds the same tokens, so a channel's row is its units present and new vectors, two
        small integers: packed into one, a count per value finds the distinct rows in increasing order, as
        ``distinct_rows`` orders them, without a sort. The tokens are rounded to 1 / ``LOAD_STEPS`` as it rounds
        them."""
        present, new = self._present, self._new
        radix = int(new.max()) + 1
        key = present * radix + new
        counts = np.bincount(key)
        keys = np.flatnonzero(counts)
        index = np.zeros(counts.size, dtype=np.intp)
        index[keys] = np.arange(keys.size)
        tokens = float(np.rint(self._total * tokens_scale / self.n_channels * LOAD_STEPS)) / LOAD_STEPS
        rows = [(tokens, float(k // radix), float(k % radix)) for k in keys.tolist()]
        return rows, index[key], counts[keys]


def place(policy: str, model: ModelSpec, kept: np.ndarray, n_channels: int) -> Placement:
    """``head``: each unit whole on one channel, round-robin. ``token``: every unit's tokens over all channels.
    ``hybrid``: all units' tokens laid end to end and cut into equal contiguous stripes, one per channel, so the
    load is balanced and each channel serves only the few units whose tokens it holds (``StripePlacement``).
    ``kept``: whole tokens per sequence."""
    kept = np.asarray(kept)
    if kept.dtype.kind not in "iu":
        if not np.all(kept == np.round(kept)):
            raise ValueError(f"placement: tokens per sequence must be whole numbers, got {kept!r}")
        kept = kept.astype(np.int64)
    tokens = np.repeat(kept, model.n_kv_heads)
    ut = tokens.astype(float)
    u, n = ut.size, n_channels
    if policy == "head" or not tokens.any():
        ch = np.arange(u) % n
        return Placement(ut, ch, n, (np.arange(u), ch, np.ones(u)))
    if policy == "token":
        last = (tokens + np.arange(u)) % n
        return Placement(ut, last, n, (np.repeat(np.arange(u), n), np.tile(np.arange(n), u), np.full(u * n, 1.0 / n)))
    return StripePlacement(ut, tokens, n)


class PhasePart(NamedTuple):
    """A named part of a phase (an AQPIM phase such as the score gather): per channel of the phase, its seconds
    and the bytes, FLOPs and joules behind them. A channel runs a phase's parts back to back; traces, breakdowns
    and ``explain`` show each part as its own span kind. (A named tuple: a plan makes several per step, and a
    frozen dataclass costs several times more to build.)"""

    kind: str
    durations_s: np.ndarray
    nbytes: np.ndarray
    flops: np.ndarray
    energy_j: np.ndarray

    def scaled(self, share: np.ndarray, channels: np.ndarray) -> PhasePart:
        """This part's piece in a link chunk: each channel's share of it, on the chunk's channels."""
        return PhasePart(self.kind, (self.durations_s * share)[channels], (self.nbytes * share)[channels],
                         (self.flops * share)[channels], (self.energy_j * share)[channels])


@dataclass(frozen=True)
class Phase:
    """One command to the channel bank: per-channel seconds plus whole-phase totals (and the per-channel bytes,
    FLOPs and joules behind them, which link pipelining splits). ``parts``, when given, cut every channel's
    seconds into named parts that add up to them."""

    kind: str
    durations_s: np.ndarray
    nbytes: float
    flops: float
    energy_j: float
    throttle: float = 1.0  # largest stretch of a channel's work by the PIM power cap (1: the cap did not bind)
    per_channel: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    channels: np.ndarray | None = field(default=None, repr=False)  # None: all; else the channels it runs on
    parts: tuple[PhasePart, ...] = field(default=(), repr=False)
    # the parts' per-channel seconds (part x channel) and totals (part x [bytes, FLOPs, joules]) as one table,
    # which ChannelBank.issue reads in a few array operations (None: it reads the parts one by one)
    part_table: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def makespan_s(self) -> float:
        return float(self.durations_s.max()) if self.durations_s.size else 0.0


@dataclass(frozen=True)
class LinkChunk:
    """One piece of a pipelined layer: the bytes it sends down, its channels' phase, the bytes it returns."""

    down_bytes: float
    phase: Phase
    up_bytes: float


@dataclass(frozen=True)
class PimPlan:
    """One layer of one (sub-)batch, every layer alike; built once per step from pure cost functions."""

    pre: tuple[Work, ...]
    down_bytes: float
    phases: tuple[Phase, ...]
    between: tuple               # holds between the two phases (host softmax, AQPIM's exact re-rank): (device, works)
    up_bytes: float              # or (src, dst, bytes, kind), one after another (``PimSystem.between_phases``)
    merge_post: tuple[Work, ...]
    spill_store_bytes: float
    spill_fetch_bytes: float
    spill_attn: tuple[Work, ...]
    chunks: tuple[LinkChunk, ...] = ()  # the PIM path pipelined over the link (empty: not pipelined)


def work_sums(works: tuple[Work, ...], part_of=None) -> tuple[tuple[str, ...], np.ndarray]:
    """A channel's works summed, before any power throttle: (part names in order of first appearance, values),
    values ``[seconds, bytes, FLOPs, joules]`` of the whole, then the same four per part (``part_of``: a Work kind
    -> its part's name; None: no parts)."""
    parts: dict[str, list[float]] = {}
    d = b = fl = e = 0.0
    for w in works:
        d += w.duration_s
        b += w.nbytes
        fl += w.flops
        e += w.energy_j
        if part_of is not None:
            acc = parts.setdefault(part_of(w.kind), [0.0, 0.0, 0.0, 0.0])
            acc[0] += w.duration_s
            acc[1] += w.nbytes
            acc[2] += w.flops
            acc[3] += w.energy_j
    values = [d, b, fl, e]
    for acc in parts.values():
        values += acc
    return tuple(parts), np.array(values)


class RowCosts:
    """A channel's work sums (``work_sums``) per load row (tokens, units, new vectors), kept across steps, and
    interpolated in tokens where that is exact.

    Contexts grow by a token a step, so a row's tokens are new almost every step while its units and new vectors
    recur. For a fixed (units, new) and tokens > 0 every quantity of ``work_sums`` is a sum of per-Work terms that
    are affine in tokens (bytes, FLOPs, joules) or an overhead plus the largest of affine roofs (seconds: streaming,
    compute, lookups, interface), with the branches of the cost functions (``if new``, ``if nbytes == 0``) fixed:
    so each is convex and piecewise linear in tokens. Tokens are cut into cells, 2^``CELL_BITS`` per binade (a
    cell of [2^k, 2^(k+1)) is 2^(k-3) tokens wide, its ends exact in binary); a cell's two ends and its midpoint
    are evaluated with the scalar cost functions (``works_of``), once. A convex function that meets its chord at
    the midpoint (to ``TOLERANCE`` relative) is affine on the whole cell up to twice that gap (chord minus the
    function is concave, zero at the ends, so at most twice its midpoint value), so a row in that cell is the
    linear interpolation of the ends: within 2 x ``TOLERANCE`` of the scalar evaluation. A cell whose midpoint
    misses its chord (a roof changes inside it) or whose parts differ, and rows below ``MIN_TOKENS`` tokens, are
    evaluated exactly at their own tokens. A cell's ends and midpoint are evaluated when a third row falls into
    it (the first ``BUILD_AFTER`` are evaluated at their own tokens), so rows that rarely fall near each other
    (a sweep's points, the explorer's two steps) cost one evaluation each. ``tests/test_row_costs.py`` checks the interpolation against the scalar path for every KV
    format with hypothesis.

    Memory grows only as it pays, as ``GrowingMemo``: cells and exact rows are kept least recently used out, at
    most ``START`` of each plus one per *revisit* (a cell asked for again after more than ``START`` other
    requests: a serving run's contexts that come back), up to ``limit``. A run whose contexts only grow (a fixed
    batch) moves from cell to cell and keeps ``START``."""

    MIN_TOKENS = 16.0
    CELL_BITS = 3
    TOLERANCE = 1e-12
    START = 8
    BUILD_AFTER = 2  # rows evaluated alone in a cell before its ends and midpoint are

    def __init__(self, limit: int = 16384):
        self.limit = limit
        self.points: OrderedDict = OrderedDict()
        self.cells: OrderedDict = OrderedDict()  # key -> [last request, state]; state: rows asked so far (int),
        self.evaluations = 0                     # False (not affine) or (names, values at lo, slope)
        self.requests = 0
        self.revisits = 0

    def _keep(self, memo: OrderedDict, key, value):
        memo[key] = value
        size = min(self.limit, self.START + self.revisits)
        while len(memo) > size:
            memo.popitem(last=False)
        return value

    def point(self, key, works_of, row: tuple, part_of=None) -> tuple[tuple[str, ...], np.ndarray]:
        """The exact sums of ``row`` (scalar cost functions), kept."""
        k = (key, *row)
        v = self.points.get(k)
        if v is None:
            v = self._keep(self.points, k, self.evaluate(works_of, row, part_of))
        else:
            self.points.move_to_end(k)
        return v

    def evaluate(self, works_of, row: tuple, part_of=None) -> tuple[tuple[str, ...], np.ndarray]:
        self.evaluations += 1
        return work_sums(works_of(*row) if any(row) else (), part_of)

    def sums(self, key, works_of, row: tuple, part_of=None) -> tuple[tuple[str, ...], np.ndarray]:
        """``work_sums(works_of(*row))`` for ``row = (tokens, *rest)``, interpolated in tokens where exact
        (class docstring); ``key`` names ``works_of`` (rows of one key must come from one function)."""
        t, rest = row[0], row[1:]
        if t < self.MIN_TOKENS:
            return self.point(key, works_of, row, part_of)
        width = math.ldexp(1.0, math.frexp(t)[1] - 1 - self.CELL_BITS)
        lo = math.floor(t / width) * width
        if lo == t:
            return self.point(key, works_of, row, part_of)
        self.requests += 1
        ck = (key, lo, *rest)
        entry = self.cells.get(ck)
        if entry is None:  # first asked: evaluate the row alone
            self._keep(self.cells, ck, [self.requests, 1])
            return self.evaluate(works_of, row, part_of)
        self.cells.move_to_end(ck)
        if self.requests - entry[0] > self.START:
            self.revisits += 1
        entry[0] = self.requests
        cell = entry[1]
        if type(cell) is int:
            if cell < self.BUILD_AFTER:  # asked a few times: evaluate the row alone
                entry[1] = cell + 1
                return self.evaluate(works_of, row, part_of)
            # asked again and again in this cell: worth the three evaluations
            names, a = self.evaluate(works_of, (lo, *rest), part_of)
            names_b, b = self.evaluate(works_of, (lo + width, *rest), part_of)
            names_m, m = self.evaluate(works_of, (lo + 0.5 * width, *rest), part_of)
            gap = np.abs(m - 0.5 * (a + b))
            ok = names == names_b == names_m and bool(np.all(gap <= self.TOLERANCE * np.maximum(np.abs(a), np.abs(b))))
            cell = entry[1] = (names, a, (b - a) / width) if ok else False
        if cell is False:
            return self.point(key, works_of, row, part_of)
        names, a, slope = cell
        return names, a + (t - lo) * slope


def bank_phase(kind: str, rows: np.ndarray, works_of, channel: pim_model.PimChannelParams | None = None,
               part_of=None, part_order: tuple[str, ...] = (), memo: RowCosts | None = None,
               memo_key=None, groups=None) -> Phase:
    """Evaluate ``works_of(*row) -> tuple[Work]`` once per distinct row of per-channel loads.

    ``memo`` (a ``RowCosts``): the rows' sums kept across steps, and interpolated in tokens where that is exact,
    for a caller whose ``works_of`` is the same function of the row for a given ``memo_key`` (default ``kind``).

    Loads are rounded to 1e-3 (of a token, a unit, a vector) first, so that equal stripes that differ only by
    floating-point noise share one evaluation. With ``channel``, its power limit applies: a channel whose mean
    dynamic power over the phase would exceed the cap has its work stretched to run at the cap
    (``hw_models.pim.power_throttle``); both the simulation and the closed form read the stretched durations.
    ``part_of`` (a Work kind -> a part's span kind) groups the works into ``Phase.parts``, in ``part_order``
    (then in order of first appearance); every part is stretched like the whole. ``groups``: the rows already
    grouped (``Placement.groups``), which ``rows`` then need not give."""
    if groups is None:
        uniq, inv = distinct_rows(rows)
        counts = None
    else:
        uniq, inv, counts = groups
    n = len(uniq)
    dur, nbytes, flops, energy = (np.zeros(n) for _ in range(4))
    evaluated = []  # per distinct row: (its part names, its sums, its stretch)
    slot: dict[str, int] = {}  # part -> its index, in order of first appearance
    throttle = 1.0
    key = kind if memo_key is None else memo_key
    for i, row in enumerate(uniq):
        if memo is None:
            names, v = work_sums(works_of(*row) if any(row) else (), part_of)
        else:
            names, v = memo.sums(key, works_of, row, part_of)
        d, e = float(v[0]), float(v[3])
        f = pim_model.power_throttle(channel, e, d) if channel is not None else 1.0
        dur[i], nbytes[i], flops[i], energy[i] = d * f, v[1], v[2], e
        throttle = max(throttle, f)
        evaluated.append((names, v, f))
        for name in names:
            slot.setdefault(name, len(slot))
    if counts is None:
        counts = np.bincount(inv, minlength=n)
    parts: tuple[PhasePart, ...] = ()
    table = None
    if slot:
        names_all = tuple(slot)
        if all(names == names_all for names, _, _ in evaluated):  # every row has every part, in slot order
            part_rows = np.array([v[4:] for _, v, _ in evaluated]).reshape(n, len(slot), 4)
            part_rows[:, :, 0] *= np.array([f for _, _, f in evaluated])[:, None]
        else:
            part_rows = np.zeros((n, len(slot), 4))  # distinct row, part, [seconds, bytes, FLOPs, joules]
            for i, (names, v, f) in enumerate(evaluated):
                for j, name in enumerate(names):
                    acc = part_rows[i, slot[name]]
                    acc += v[4 + 4 * j: 8 + 4 * j]
                    acc[0] *= f
        ordered, index = _drawing_order(names_all, part_order)
        # part (in drawing order), quantity, channel: one gather for them all
        by_part = np.take(part_rows[:, index].transpose(1, 2, 0), inv, axis=2)
        parts = tuple(PhasePart(name, *by_part[k]) for k, name in enumerate(ordered))
        # (each total summed over its own contiguous row of channels, as the bank sums one part's array)
        table = (by_part[:, 0], by_part[:, 1:].sum(axis=2))
    # (the whole's per-channel values each gathered on its own: a dot product over them, as link_chunks takes,
    # may round differently on a row of a shared array, whose alignment differs)
    return Phase(kind, dur[inv], float(nbytes @ counts), float(flops @ counts), float(energy @ counts),
                 throttle, (nbytes[inv], flops[inv], energy[inv]), parts=parts, part_table=table)


@functools.lru_cache(maxsize=64)
def _drawing_order(names: tuple[str, ...], part_order: tuple[str, ...]) -> tuple[tuple[str, ...], list[int]]:
    """``names`` (parts in order of first appearance) in ``part_order``, unknown parts after them in their own
    order, and each one's position in ``names``."""
    rank = {name: i for i, name in enumerate(part_order)}
    ordered = tuple(sorted(names, key=lambda name: rank.get(name, len(rank))))  # stable
    return ordered, [names.index(name) for name in ordered]


def fresh(value):
    """A copy of nested dicts and lists (their leaves are immutable), so that Results never share one."""
    if isinstance(value, dict):
        return {k: fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fresh(v) for v in value]
    return value


def distinct_rows(rows: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """The distinct rows of ``rows`` (n x 3, non-negative) rounded to 1e-3 as ``np.round(rows, 3)`` rounds them
    (to whole thousandths, then divided by 1000), as tuples of floats in increasing order, and per row the index
    of its distinct row. Each row is packed into one integer (mixed radix over its loads in thousandths) when that
    fits 62 bits, so one sort of n integers finds them; the distinct keys are unpacked into their rows and each
    row finds its key by bisection (``np.unique`` asked for its inverse costs several times more on the few
    hundred channels of a step)."""
    thousandths = np.rint(rows * LOAD_STEPS)
    q = thousandths.astype(np.int64)
    top = q.max(axis=0).tolist() if len(q) else []
    radix = [r + 1 for r in top[1:]]
    if len(q) and (top[0] + 1) * math.prod(radix) <= 2**62:  # every packed key below 2**62
        key = q[:, 0]
        for j, r in enumerate(radix, start=1):
            key = key * r + q[:, j]
        uniq = np.unique(key)
        inv = np.searchsorted(uniq, key)
        digits = []  # the distinct rows' loads in thousandths, last column first
        rest = uniq
        for r in reversed(radix):
            rest, d = np.divmod(rest, r)
            digits.append(d)
        digits.append(rest)
        # (each digit is a rounded load's thousandths, a float's integer value: converting it back is exact)
        return list(zip(*((d.astype(float) / LOAD_STEPS).tolist() for d in reversed(digits)), strict=True)), inv
    rounded = thousandths / LOAD_STEPS
    _, first, inv = np.unique(rounded, axis=0, return_index=True, return_inverse=True)
    return list(map(tuple, rounded[first].tolist())), inv.ravel()


def pipelined_path_s(down, up, chunks: tuple[LinkChunk, ...], n_channels: int) -> float:
    """Closed form of ``PimSystem._pim_path_pipelined`` on idle resources (exact: the flow-shop recurrence).

    Chunk j lands at ``a_j = L_down + (d_0 + ... + d_j) / B_down``; each of its channels starts its piece when it
    is free and the chunk has landed, ``f_c = max(f_c, a_j) + w_cj``, and the chunk is done at the latest of its
    channels, ``F_j``; the up link serves the chunks in the order they are done (ties in chunk order), the first
    paying ``L_up``: ``g = max(g, F) + u / B_up``. Never above the unpipelined ``L_down + D / B_down +
    max_c w_c + L_up + U / B_up``: every ``a_j`` is at most the whole burst's landing, a channel's pieces add up
    to its unpipelined work, and the up burst carries the same bytes with one set-up."""
    free = np.zeros(n_channels)
    landed, done_at = 0.0, []
    for i, c in enumerate(chunks):
        landed += down.time_s(c.down_bytes, setup=i == 0)
        ch = c.phase.channels
        if ch is None or ch.size == 0:
            done_at.append(landed)
            continue
        free[ch] = np.maximum(free[ch], landed) + c.phase.durations_s
        done_at.append(float(free[ch].max()))
    done = 0.0
    for n, j in enumerate(sorted(range(len(chunks)), key=lambda j: (done_at[j], j))):
        done = max(done, done_at[j]) + up.time_s(chunks[j].up_bytes, setup=n == 0)
    return done


@dataclass(frozen=True)
class PimStepPlan:
    """One step: the plan of each sub-batch (one unless ``sub_batches`` > 1) and the once-per-step LM head."""

    plans: tuple[PimPlan, ...]
    head: tuple[Work, ...]


@dataclass(frozen=True)
class PimDeviceOptions(Options):
    """Options of every system that keeps its KV cache in a PIM device."""

    pim: str = option("attacc-hbm3", "PIM device preset or .toml file (see aqpim-sim presets)")
    channels: int | None = option(None, "override the PIM device's channel count", minimum=1, maximum=65536,
                                  limit=2**22)
    capacity_policy: str = option("spill", "KV beyond PIM capacity: spill (to host DRAM, attended over the "
                                  "offload path) or limit (the batch)", choices=("spill", "limit"))
    placement: str = option("hybrid", "KV across channels: hybrid stripes, whole heads, or every token "
                            "everywhere", choices=("hybrid", "head", "token"))
    softmax: str = option("pim", "where softmax runs: the PIM units, a near-memory unit, or the GPU",
                          choices=pim_model.SOFTMAX_PLACEMENTS)
    sub_batches: int = option(1, "2: two sub-batches alternate between GPU and PIM (NeuPIMs-style)", minimum=1,
                              maximum=64, limit=2**20)
    link_chunks: int = option(1, "pipeline q in and partials out over the PIM link in this many chunks "
                              "(1: no pipelining)", minimum=1, maximum=1024, limit=2**16)
    trace_channels: int = option(8, "PIM channels drawn one per lane in traces (all are always simulated)",
                                 minimum=0, maximum=1024, limit=2**22)

    def check_run(self, run) -> None:
        if self.sub_batches > run.effective_max_batch:
            raise ConfigError(f"sub_batches ({self.sub_batches}) must not exceed the batch "
                              f"({run.effective_max_batch}): a sub-batch holds at least one sequence")


@dataclass(frozen=True)
class PimOptions(PimDeviceOptions):
    kv_format: str = option("fp16", "KV format stored in PIM: fp16, int8, int4, int2, or int:bits=B,group=G,"
                            "sinks=S,recent=W (KIVI-style INT-k)")

    @property
    def fmt(self) -> KvFormat:
        return parse_format(self.kv_format)

    def check(self) -> None:
        try:
            fmt = self.fmt
        except WorkloadError as e:
            raise ConfigError(str(e)) from None
        if fmt.kind not in ("fp16", "int"):
            raise ConfigError(f"kv_format: {fmt.kind} is not a format of the pim system; PQ codes in PIM are "
                              f"--system aqpim")


class PimSystem(System):
    """KV cache in PIM channels that compute attention (AttAcc-like); FP16 or INT-k."""

    name = "pim"
    Options = PimOptions
    variants = ({}, {"capacity_policy": "limit"}, {"kv_format": "int4"})
    what_ifs = ({"sub_batches": 2}, {"link_chunks": 4}, {"link_chunks": 16}, {"softmax": "near"},
                {"placement": "hybrid"})
    kv_location = "pim"

    def __init__(self, machine, model: ModelSpec, options: PimDeviceOptions):
        super().__init__(machine, model, options)
        self.dev = machine.pim_params
        self.fmt = self.kv_format()
        self.fmt.check(model)
        self.window = self.fmt.window_tokens
        # Once PIM is full, new FP16 tokens are stored in host DRAM with the spilled ones; a quantized format
        # codes its new tokens in PIM (into the exact window whose room is reserved per sequence, if it has one).
        self.new_tokens_spill = self.fmt.kind == "fp16"
        self.power_throttle = 1.0  # largest stretch of channel work by the power cap over the run's steps
        self._row_memo = RowCosts()  # a channel's work per distinct (rounded) load, across steps
        self._placed: tuple[bytes, Placement] | None = None  # the last batch placed (``placement``)
        self._fixed = SeqsCache()       # GPU kernels that read no KV, per batch size
        self._format_fixed = None       # format_details that depend on the format and model alone

    def kv_format(self) -> KvFormat:
        return self.options.fmt

    @classmethod
    def devices(cls, options: PimDeviceOptions, pim: pim_model.PimDeviceParams | None = None, load=None) -> Devices:
        if pim is None:
            pim = (load or pim_model.load_pim)(options.pim)
            if options.channels is not None:
                pim = override(pim, channels=options.channels)
        return Devices(pim=pim, pim_trace_lanes=options.trace_channels)

    # ---- prefill ---------------------------------------------------------------------------------------------
    def prefill_plan(self, chunks, resident: StepBatch) -> PrefillPlan:
        """The GPU prefills; per layer the chunks' new K/V (in the KV format's stored size) go over the device
        link into PIM. Writing them into the channels is not timed (the channels' internal bandwidth is many times
        the link's); the spill policy's host share is not modelled at prefill (docs/design-notes.md, "Prefill")."""
        base = super().prefill_plan(chunks, resident)
        tokens = sum(c.new for c in chunks)
        return PrefillPlan(base.layer, base.head, base.tokens,
                           store_bytes=tokens * self.pim_bytes_per_token() / self.model.n_layers,
                           store_src=GPU, store_dst=PIM)

    # ---- storage ---------------------------------------------------------------------------------------------
    def pim_bytes_per_token(self) -> float:
        """Bytes one coded (or FP16) token occupies in PIM over all layers."""
        return self._storage[0]

    def pim_fixed_bytes(self, n_pairs: float, n_seqs: int) -> float:
        """Bytes in PIM that do not grow with tokens: per (unit, channel) pair (PQ codebooks, replicated in every
        channel holding a stripe of the unit) and per sequence (its exact window)."""
        _, per_pair, per_seq = self._storage
        return n_pairs * per_pair + n_seqs * per_seq

    @functools.cached_property
    def _storage(self) -> tuple[float, float, float]:
        """The format's bytes per token, per (unit, channel) pair and per sequence in PIM (every step's capacity
        check asks for them)."""
        f, m = self.fmt, self.model
        return f.pim_token_bytes(m), f.pim_unit_fixed_bytes(m), f.pim_window_bytes(m)

    def placed_tokens(self, kept: np.ndarray) -> np.ndarray:
        """Tokens per sequence stored at ``pim_bytes_per_token`` (those outside the exact window)."""
        return np.maximum(kept - self.window, 0) if self.window else kept

    def pim_tokens_capacity(self, n_pairs: float, n_seqs: int) -> float:
        free = self.dev.capacity_bytes - self.pim_fixed_bytes(n_pairs, n_seqs)
        return max(0.0, free) / self.pim_bytes_per_token()

    def forget_rows(self) -> None:
        """Start the per-row cost memo afresh, as a new system would: a row interpolated in a cell that earlier
        steps built can differ in its last digits from one evaluated alone, so the closed-form evaluator, which
        keeps one system for many points, calls this per point to make each point's numbers its own."""
        self._row_memo = RowCosts()

    def placement(self, batch: StepBatch) -> Placement:
        key = batch.kept.tobytes()  # the last one kept: a step's plan and its capacity report place one batch
        if self._placed is None or self._placed[0] != key:
            self._placed = (key, place(self.options.placement, self.model, self.placed_tokens(batch.kept),
                                       self.dev.channels))
        return self._placed[1]

    def token_budget(self, max_batch: int) -> int | None:
        """KV tokens (all sequences, over their whole life) that admission may allow, for ``limit``."""
        if self.options.capacity_policy != "limit":
            return None
        return int(self.pim_tokens_capacity(max_batch * self.model.n_kv_heads + self.dev.channels, max_batch))

    def spill_fraction(self, batch: StepBatch, placement: Placement, need: float | None = None) -> float:
        """Share of the batch's tokens beyond PIM capacity; ``need``: the tokens it stores (this step's plus the
        new one), when the caller has them."""
        if need is None:
            need = float(self.placed_tokens(batch.kept + 1).sum())
        cap = self.pim_tokens_capacity(placement.n_pairs, batch.n_seqs)
        return 0.0 if need <= cap else (need - cap) / need

    # ---- per-channel work --------------------------------------------------------------------------------------
    def format_works(self) -> tuple:
        """(the format's per-channel work function in hw_models.pim, its format-specific arguments)."""
        f = self.fmt
        if f.kind == "int":
            return pim_model.int_attention_works, {"bits": f.bits, "group_size": f.group, "window": self.window}
        return pim_model.fp16_attention_works, {}

    def channel_phases(self, tokens, present, new, groups=None) -> tuple[Phase, ...]:
        """The PIM phases of a layer for these per-channel loads (``groups``: the same loads grouped, from
        ``Placement.groups``)."""
        m = self.model
        fn, extra = self.format_works()
        args = dict(head_dim=m.head_dim, group=m.gqa_group, bytes_per_element=m.bytes_per_element,
                    softmax=self.options.softmax, **extra)
        ch = self.dev.channel

        def works(t, u, v):
            return fn(ch, t, u, v, **args)

        rows = np.column_stack([tokens, present, new]) if groups is None else None
        kind = f"{self.name}.attention"
        # rows are kept per work function: its format arguments (an AQPIM lookup plan among them) are in the key
        fn_key = (fn.__name__, tuple(sorted(extra.items())))
        parts = dict(part_of=self.part_of, part_order=self.part_order, memo=self._row_memo, groups=groups)
        if self.split_layer:
            return (bank_phase(f"{kind}.scores", rows, lambda t, u, v: works(t, u, v).before_softmax, ch, **parts,
                               memo_key=("scores", fn_key)),
                    bank_phase(f"{kind}.context", rows, lambda t, u, v: works(t, u, v).after_softmax, ch, **parts,
                               memo_key=("context", fn_key)))
        return (bank_phase(kind, rows, lambda t, u, v: works(t, u, v).all, ch, **parts, memo_key=("all", fn_key)),)

    @property
    def split_layer(self) -> bool:
        """Whether a layer's channel work is two phases with ``between_phases`` between them (host softmax)."""
        return self.options.softmax == "host"

    # The span kind of each channel Work kind when a channel's phase is drawn in parts (None: one span per phase),
    # and the order the parts are drawn in.
    part_of = None
    part_order: tuple[str, ...] = ()

    def down_bytes(self, batch: StepBatch, spilling: bool) -> float:
        m = self.model
        q = batch.n_seqs * m.q_dim * m.bytes_per_element
        return q + (0.0 if spilling else batch.n_seqs * m.kv_bytes_per_token_per_layer)

    def up_bytes(self, pairs: float) -> float:
        """Partial outputs sent up for ``pairs`` (unit, channel) pairs: one per query of each."""
        m = self.model
        per_query = m.head_dim * m.bytes_per_element + pim_model.SOFTMAX_STATS_BYTES_PER_QUERY
        return pairs * m.gqa_group * per_query

    # ---- the plan ------------------------------------------------------------------------------------------------
    def layer_plan(self, batch: StepBatch, placement: Placement, units: np.ndarray | None, spill: float) -> PimPlan:
        p, m, opts = self.machine.params, self.model, self.options
        g = p.gpu

        def kernel(name, op):
            return gpu_model.op_kernel(g, name, op)

        new_to_host = spill > 0 and self.new_tokens_spill
        groups = placement.groups(1.0 - spill) if units is None and not new_to_host else None
        if groups is not None and opts.softmax != "host" and opts.link_chunks <= 1:
            # the phases read the groups and the merge the pair count: the per-channel loads are not needed
            tokens = present = new = None
            pairs = float(placement.n_pairs)
        else:
            tokens, present, new = placement.loads(1.0 - spill, units)
            if new_to_host:
                new = np.zeros_like(new)
            pairs = float(present.sum())
        phases = self.channel_phases(tokens, present, new, groups)
        up = self.up_bytes(pairs)
        e = m.bytes_per_element
        queries = batch.n_seqs * m.n_heads  # one merge per query: a GEMV-like item each
        between, host_partials = self.between_phases(batch, tokens, pairs)
        merged = up + host_partials  # a host part (exact re-rank) is one more partial per query
        merge_needed = placement.pairs_per_unit > 1 or spill > 0 or host_partials > 0
        merge = (gpu_model.items_kernel(g, "attn_merge", 4.0 * merged / e, merged, queries),) if merge_needed else ()
        spill_attn: tuple[Work, ...] = ()
        fetch = store = 0.0
        if spill > 0:
            sops = kv_ops(m, batch.n_seqs, max(1, round(batch.kv_tokens * spill)))
            spill_attn = tuple(kernel(name, sops[name]) for name in ATTENTION_OPS)
            fetch = sops["kv_fetch"].kv_bytes
            store = kv_ops(m, batch.n_seqs, batch.kv_tokens)["kv_append"].kv_bytes if new_to_host else 0.0
        down = self.down_bytes(batch, new_to_host)
        chunks: tuple[LinkChunk, ...] = ()
        if opts.link_chunks > 1 and len(phases) == 1:  # a host softmax splits the path: not pipelined
            q_bytes = batch.n_seqs * m.q_dim * e
            chunks = self.link_chunks(placement, units, phases[0], spill, new_to_host, q_bytes, down - q_bytes)
        dense = self._fixed.get_or(batch.n_seqs, lambda n: dense_works(p, m, n))
        return PimPlan(
            pre=dense.pre, down_bytes=down,
            phases=phases, between=between, up_bytes=up,
            merge_post=merge + dense.post,
            spill_store_bytes=store, spill_fetch_bytes=fetch, spill_attn=spill_attn, chunks=chunks)

    def between_phases(self, batch: StepBatch, tokens: np.ndarray | None, pairs: float) -> tuple[tuple, float]:
        """The holds between a split layer's two PIM phases, and the bytes of partial outputs they return to the
        GPU beside the channels' (merged with them). Host softmax: the scores up, the softmax on the GPU, the
        weights down."""
        if self.options.softmax != "host":
            return (), 0.0
        m, g = self.model, self.machine.params.gpu
        e = m.bytes_per_element
        scores = float(tokens.sum()) * m.gqa_group
        soft = gpu_model.items_kernel(g, "softmax", pim_model.SOFTMAX_FLOPS_PER_ELEMENT * scores, 2 * scores * e,
                                      batch.n_seqs * m.n_heads)
        return ((PIM, GPU, scores * e, "scores_up"), (GPU, (soft,)), (GPU, PIM, scores * e, "weights_down")), 0.0

    def hold_time_s(self, hold) -> float:
        """Seconds of one hold of ``between_phases`` alone."""
        if len(hold) == 4:
            return self.machine.topology.route(hold[0], hold[1]).time_s(hold[2])
        return total_s(hold[1])

    def link_chunks(self, placement: Placement, units: np.ndarray | None, phase: Phase, spill: float,
                    new_to_host: bool, q_bytes: float, kv_bytes: float) -> tuple[LinkChunk, ...]:
        """The layer's units cut into ``link_chunks`` consecutive sets (the order the GPU produces the queries:
        sequence by sequence, head by head), fewer when there are fewer units.

        Chunk j carries its units' queries and new K/V down and their partial outputs up. A channel works on a
        unit's stripe once that unit's chunk has landed, but its command stream for the layer is the unpipelined
        one: each channel's work (``phase``) is split over the chunks in proportion to what each chunk alone would
        cost it, so fixed costs (command overhead, first access) are paid once per channel per layer, not per
        chunk: the device overlaps them across units as AttAcc's command trace overlaps the next head's query
        write and row opening with the current head's MACs (pim_ramulator_src/trace_gen/gen_trace_attacc_bank.py).
        """
        units = np.arange(placement.unit_tokens.size) if units is None else np.asarray(units)
        parts = [p for p in np.array_split(units, min(self.options.link_chunks, units.size)) if p.size]
        alone, present = [], []
        for part in parts:
            t, pr, nw = placement.loads(1.0 - spill, part)
            alone.append(self.channel_phases(t, pr, np.zeros_like(nw) if new_to_host else nw)[0].durations_s)
            present.append(pr)
        total = np.sum(alone, axis=0)
        share = [np.divide(a, total, out=np.zeros_like(a), where=total > 0) for a in alone]
        nbytes, flops, energy = phase.per_channel
        chunks = []
        for part, sh, pr in zip(parts, share, present, strict=True):
            channels = np.nonzero(sh > 0)[0]
            ph = Phase(phase.kind, (phase.durations_s * sh)[channels], float(nbytes @ sh), float(flops @ sh),
                       float(energy @ sh), phase.throttle, None, channels,
                       tuple(p.scaled(sh, channels) for p in phase.parts))
            down = (q_bytes + kv_bytes) * part.size / units.size
            chunks.append(LinkChunk(down, ph, self.up_bytes(float(pr.sum()))))
        return tuple(chunks)

    def plan(self, batch: StepBatch) -> PimStepPlan:
        placement = self.placement(batch)
        spill = self.spill_fraction(batch, placement)
        subs = batch.split(self.options.sub_batches)
        plans, start = [], 0
        for sub in subs:
            seqs = np.arange(start, start + sub.n_seqs)
            start += sub.n_seqs
            units = None if len(subs) == 1 else (seqs[:, None] * self.model.n_kv_heads
                                                  + np.arange(self.model.n_kv_heads)[None, :]).ravel()
            plans.append(self.layer_plan(sub, placement, units, spill))
        self.power_throttle = max([self.power_throttle] + [ph.throttle for p in plans for ph in p.phases])
        head = self._fixed.get_or(batch.n_seqs, lambda n: dense_works(self.machine.params, self.model, n)).head
        return PimStepPlan(tuple(plans), head)

    # ---- closed form ---------------------------------------------------------------------------------------------
    def estimate(self, step: PimStepPlan) -> Estimate:
        """Per layer, projection + max(PIM path, spill path) + merge and FFN.

        Exact when one process runs and nothing else competes for its resources; with sub-batches, or when the
        spill path shares the GPU (host softmax) or PCIe (host-side PIM) with the PIM path, it is a lower bound:
        the longest sub-batch chain, the GPU's total work, or the busiest channel's total work, whichever is
        largest.
        """
        topo = self.machine.topology
        down, up = topo.route(GPU, PIM), topo.route(PIM, GPU)
        n = self.model.n_layers
        chains = []
        for plan in step.plans:
            if plan.chunks:
                pim_path = pipelined_path_s(down, up, plan.chunks, self.dev.channels)
            else:
                pim_path = (down.time_s(plan.down_bytes) + sum(ph.makespan_s for ph in plan.phases)
                            + up.time_s(plan.up_bytes))
            if plan.between:
                between = 0.0
                for h in plan.between:
                    between += self.hold_time_s(h)
                pim_path += between
            spill_path = 0.0
            if plan.spill_fetch_bytes > 0:
                store = topo.route(GPU, HOST_DRAM).time_s(plan.spill_store_bytes) if plan.spill_store_bytes else 0.0
                spill_path = (store + topo.route(HOST_DRAM, GPU).time_s(plan.spill_fetch_bytes)
                              + total_s(plan.spill_attn))
            chains.append(n * (total_s(plan.pre) + max(pim_path, spill_path) + total_s(plan.merge_post)))
        # the spill path beside a PIM path that uses the GPU between its phases (host softmax, exact re-rank's
        # selection and its PCIe transfers) or a PIM device behind PCIe: they contend
        shared = any(p.spill_fetch_bytes > 0 for p in step.plans) and (
            self.split_layer or self.dev.placement == "host")
        if len(step.plans) == 1 and not shared:
            return Estimate(chains[0] + total_s(step.head), exact=True)
        gpu_total = total_s(step.head)
        for plan in step.plans:
            gpu_total += n * (total_s(plan.pre) + total_s(plan.merge_post) + total_s(plan.spill_attn)
                              + sum(total_s(h[1]) for h in plan.between if len(h) == 2 and h[0] == GPU))
        channel_busy = sum(np.sum([ph.durations_s for ph in plan.phases], axis=0) for plan in step.plans)
        return Estimate(max(max(chains) + total_s(step.head), gpu_total, n * float(np.max(channel_busy))),
                        exact=False)

    # ---- discrete-event step -------------------------------------------------------------------------------------
    def step(self, step: PimStepPlan):
        env = self.machine.env
        yield env.all_of([env.process(self._layers(plan)) for plan in step.plans])
        yield self.machine.gpu.run(step.head)

    def segments(self, step: PimStepPlan):
        """One (sub-)batch: every layer the same chain (forks to the PIM path, the spill path and the link chunks
        joined before the merge), then the LM head: replayable. Sub-batches overlap each other: None."""
        if len(step.plans) != 1:
            return None
        plan = step.plans[0]
        return (lambda: self._layer(plan), self.model.n_layers), (lambda: self._head(step), 1)

    def chains(self, step: PimStepPlan):
        """The holds of ``_layer`` when its PIM path is the only path (no spill path beside it) and is not
        pipelined over link chunks, and of ``_head``."""
        if len(step.plans) != 1:
            return None
        plan, gpu = step.plans[0], self.machine.gpu
        layer = None
        if not plan.chunks and not plan.spill_fetch_bytes > 0:
            holds = [(gpu, plan.pre), (GPU, PIM, plan.down_bytes, "q_kv_down")]
            compute = self.machine.compute
            for i, ph in enumerate(plan.phases):
                holds.append((ph,))
                if i + 1 < len(plan.phases):
                    holds += [h if len(h) == 4 else (compute[h[0]], h[1]) for h in plan.between]
            layer = (*holds, (PIM, GPU, plan.up_bytes, "partials_up"), (gpu, plan.merge_post))
        return layer, ((gpu, step.head),)

    def _head(self, step: PimStepPlan):
        yield self.machine.gpu.run(step.head)

    def _layers(self, plan: PimPlan):
        for _ in range(self.model.n_layers):
            yield from self._layer(plan)

    def _layer(self, plan: PimPlan):
        m, env = self.machine, self.machine.env
        yield m.gpu.run(plan.pre)
        paths = [env.process(self._pim_path(plan))]
        if plan.spill_fetch_bytes > 0:
            paths.append(env.process(self._spill_path(plan)))
        yield env.all_of(paths)
        yield m.gpu.run(plan.merge_post)

    def _pim_path(self, plan: PimPlan):
        m = self.machine
        if plan.chunks:
            yield from self._pim_path_pipelined(plan)
            return
        yield m.transfer(GPU, PIM, plan.down_bytes, "q_kv_down")
        for i, ph in enumerate(plan.phases):
            yield m.pim.run(ph.kind, ph.durations_s, ph.nbytes, ph.flops, ph.energy_j, parts=ph.parts,
                            part_table=ph.part_table)
            if i + 1 < len(plan.phases):
                for h in plan.between:
                    yield m.transfer(*h) if len(h) == 4 else m.compute[h[0]].run(h[1])
        yield m.transfer(PIM, GPU, plan.up_bytes, "partials_up")

    def _pim_path_pipelined(self, plan: PimPlan):
        """One burst down (its set-up paid by the first chunk, the rest streaming behind it), each group of
        channels starting when its chunk lands, and one burst up whose chunks leave as their groups finish (the
        first to leave pays the set-up). The link directions are FIFO resources, so chunk j+1 crosses the link
        while chunk j computes."""
        m, env = self.machine, self.machine.env
        downs = [m.transfer(GPU, PIM, c.down_bytes, "q_kv_down", setup=i == 0) for i, c in enumerate(plan.chunks)]
        ups_issued = [0]

        def chunk(i, c: LinkChunk):
            yield downs[i]
            ph = c.phase
            yield m.pim.run(ph.kind, ph.durations_s, ph.nbytes, ph.flops, ph.energy_j, channels=ph.channels,
                            parts=ph.parts)
            first = ups_issued[0] == 0
            ups_issued[0] += 1
            yield m.transfer(PIM, GPU, c.up_bytes, "partials_up", setup=first)

        yield env.all_of([env.process(chunk(i, c)) for i, c in enumerate(plan.chunks)])

    def _spill_path(self, plan: PimPlan):
        m = self.machine
        if plan.spill_store_bytes:
            yield m.transfer(GPU, HOST_DRAM, plan.spill_store_bytes, "kv_append")
        yield m.transfer(HOST_DRAM, GPU, plan.spill_fetch_bytes, "kv_fetch")
        yield m.gpu.run(plan.spill_attn)

    # ---- capacity and details ------------------------------------------------------------------------------------
    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        cap, placement, spill, need, spilled = self._fit(peak)
        dev = self.dev
        busy = self.machine.pim.busy_s
        details = {}
        if self.fmt.kind != "fp16":
            details = self.format_details(peak)
        return Capacity(
            cap.kv_location, cap.kv_bytes, cap.fits, cap.reasons,
            {"pim_device": dev.name, "pim_channels": dev.channels, "pim_capacity_bytes": dev.capacity_bytes,
             "pim_used_bytes": min(need, dev.capacity_bytes), "spilled_bytes": spilled,
             "spilled_share": spill, "placement": self.options.placement, "channels_per_unit": placement.pairs_per_unit,
             "pim_channel_busy_s": [float(x) for x in busy],
             "pim_channel_busy_max_over_mean": float(busy.max() / busy.mean()) if busy.mean() > 0 else 0.0,
             "pim_channels_idle": int((busy == 0).sum()), "kv_format": self.fmt.name,
             "pim_power_cap_w": dev.channels * dev.channel.max_power_w, "pim_power_throttle": self.power_throttle,
             **details})

    def fit(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        return self._fit(peak)[0]

    def _fit(self, peak: StepBatch):
        """The capacity report without details, and what the details read: the placement, the share of tokens
        spilled to host DRAM, the PIM bytes needed and the bytes spilled."""
        p, m, dev = self.machine.params, self.model, self.dev
        placement = self.placement(peak)
        tokens_needed = float(self.placed_tokens(peak.kept + 1).sum())
        spill = self.spill_fraction(peak, placement, tokens_needed)
        need = (tokens_needed * self.pim_bytes_per_token()
                + self.pim_fixed_bytes(placement.n_pairs, peak.n_seqs))
        reasons = []
        if spill > 0:
            reasons.append(f"KV cache needs {excess(need, dev.capacity_bytes)} of PIM: {share(spill)} of tokens "
                           f"spilled to host DRAM")
        tokens, _, _ = placement.loads(1.0 - spill)
        per_channel = tokens.max() * self.pim_bytes_per_token() / max(1, m.n_kv_heads) if tokens.size else 0.0
        if spill == 0 and per_channel > dev.channel.capacity_bytes:
            reasons.append(f"placement '{self.options.placement}' puts {gib(per_channel)} on one channel of "
                           f"{gib(dev.channel.capacity_bytes)}")
        spilled = spill * (peak.kv_tokens + peak.n_seqs) * m.kv_bytes_per_token
        if spilled > p.host_dram.capacity_bytes:
            reasons.append(f"spilled KV {gib(spilled)} exceeds host DRAM {gib(p.host_dram.capacity_bytes)}")
        if m.weight_bytes > p.gpu.mem_capacity_bytes:
            reasons.append(f"GPU memory: weights {gib(m.weight_bytes)} exceed {gib(p.gpu.mem_capacity_bytes)}")
        cap = Capacity(self.kv_location if spill == 0 else f"{self.kv_location}+host.dram", need, not reasons,
                       tuple(reasons))
        return cap, placement, spill, need, spilled

    def format_details(self, peak: StepBatch) -> dict:
        """A quantized format's storage by part at the peak context, its compression, and its measured accuracy
        (matched by geometry, ``workloads.kvformats.accuracy_entry``)."""
        ctx = int(peak.max_context) + 1
        parts = self.fmt.kv_bytes(self.model, ctx)
        fp16 = self.model.kv_bytes_per_token * self.model.kv_tokens(ctx)
        by_part = {k: getattr(parts, k) for k in ("codes", "fp16_tokens", "outliers", "codebooks", "scales")}
        fixed = self._format_fixed
        if fixed is None:  # the format's and model's alone: computed once (a sweep asks at every point)
            fixed = self._format_fixed = (self.fmt.code_bits_per_element(self.model),
                                          compression_by_context(self.model, self.fmt),
                                          accuracy_summary(self.fmt, self.model.head_dim))
        bits, by_context, accuracy = fixed
        return {"code_bits_per_element": bits,
                "kv_bytes_per_sequence_by_part": by_part,
                "kv_bytes_per_token_by_part": {k: v / ctx for k, v in by_part.items()},
                "compression": fp16 / parts.total,
                "kv_bytes_fp16": (peak.kv_tokens + peak.n_seqs) * self.model.kv_bytes_per_token,
                "bits_per_element_by_context": fresh(by_context),
                "accuracy": accuracy}
