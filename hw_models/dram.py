"""DRAM: a closed-form timing model of one DRAM channel by access pattern, and host memory built from it.

``DramTimingParams`` describes one channel's organisation and JEDEC timings (presets in ``presets/dram/*.toml``,
one ``source`` per value). The pure functions below turn them into time, bandwidth and efficiency (achieved over
peak) for one bank (what a processing unit next to a bank sees) or for a whole channel (what a memory
controller sees), for three read patterns: ``Sequential`` (a stream), ``RandomAccess`` (independent accesses of
a given size, some number outstanding) and ``Strided`` (runs of contiguous bytes at a fixed stride).
``HostDramParams`` is the host's memory: channels of DIMMs whose timing is such a preset, an address interleave
across channels, a controller queue and the paged-KV block geometry; ``host_read_bw_bytes_per_s(host, pattern)``
is the rate its reads reach for a pattern, which is what the offload DMA and CPU attention pay. Everything is
closed form: the cost of a call does not grow with the number of bytes, so a simulation's event count stays
independent of data size. Model assumptions and the comparison with Ramulator 2 and DRAMsim3 are in
docs/pim-model.md, section 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from hw_models.errors import HardwareError
from hw_models.loading import PresetDir, origin_of, read_toml
from hw_models.params import build, check_power, fraction, non_negative, positive

# ---------------------------------------------------------------------------------------------------------------
# DRAM timing: one channel's organisation and timing, and closed-form streaming times.
#
# A channel has ``ranks`` x ``banks_per_rank`` banks (split into bank groups); every bank holds rows of
# ``row_bytes`` read in bursts of ``burst_bytes`` (= bus width x burst length). Streaming is modelled in steady
# state: a bank opens a row (tRCD), reads its bursts one column interval apart, closes it (after tRAS and tRTP)
# and precharges (tRP); a channel interleaves banks so that the data bus, column spacing (tCCD_S / tCCD_L),
# activation limits (tRRD_S / tRRD_L / tFAW) and per-bank row cycles each bound the time per burst, and the
# largest bound wins. All-bank refresh removes tRFC plus one row close and reopen out of every tREFI (the same
# penalty Ramulator 2's latency-throughput tests use). Every function is O(1) in the number of bytes.
# ---------------------------------------------------------------------------------------------------------------

DRAM_PRESET_DIR = Path(__file__).parent / "presets" / "dram"
DRAM_PRESETS = PresetDir(DRAM_PRESET_DIR, ".toml", "DRAM timing")


@dataclass(frozen=True)
class DramTimingParams:
    """Organisation and timing of one DRAM channel (an HBM pseudo-channel, a DDR5 sub-channel, ...).

    Timings named ``*_cycles`` count command-clock cycles of ``tCK_s`` seconds; refresh values are in seconds.
    """

    name: str
    tCK_s: float
    transfers_per_cycle: int
    bus_width_bytes: int
    burst_length: int
    row_bytes: int
    ranks: int
    bank_groups_per_rank: int
    banks_per_rank: int
    tRCD_cycles: float
    tCL_cycles: float
    tRP_cycles: float
    tRAS_cycles: float
    tRTP_cycles: float
    tCCD_S_cycles: float
    tCCD_L_cycles: float
    tRRD_S_cycles: float
    tRRD_L_cycles: float
    tFAW_cycles: float
    tREFI_s: float
    tRFC_s: float
    # Data-bus bubble when consecutive reads come from different ranks; 0 for single-rank channels.
    tRTRS_cycles: float = 0.0
    origin: str = field(default="", compare=False)
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = f"dram timing '{self.name}'"
        positive(owner, tCK_s=self.tCK_s, transfers_per_cycle=self.transfers_per_cycle,
                 bus_width_bytes=self.bus_width_bytes, burst_length=self.burst_length, row_bytes=self.row_bytes,
                 ranks=self.ranks, bank_groups_per_rank=self.bank_groups_per_rank,
                 banks_per_rank=self.banks_per_rank, tRCD_cycles=self.tRCD_cycles, tCL_cycles=self.tCL_cycles,
                 tRP_cycles=self.tRP_cycles, tRAS_cycles=self.tRAS_cycles, tCCD_S_cycles=self.tCCD_S_cycles,
                 tCCD_L_cycles=self.tCCD_L_cycles, tRRD_S_cycles=self.tRRD_S_cycles,
                 tRRD_L_cycles=self.tRRD_L_cycles, tFAW_cycles=self.tFAW_cycles, tREFI_s=self.tREFI_s)
        non_negative(owner, tRTP_cycles=self.tRTP_cycles, tRFC_s=self.tRFC_s, tRTRS_cycles=self.tRTRS_cycles)
        for name in ("transfers_per_cycle", "bus_width_bytes", "burst_length", "row_bytes", "ranks",
                     "bank_groups_per_rank", "banks_per_rank"):
            if not isinstance(getattr(self, name), int):
                raise HardwareError(f"{owner}: {name} must be a whole number, got {getattr(self, name)!r}")
        if self.banks_per_rank % self.bank_groups_per_rank:
            raise HardwareError(f"{owner}: banks_per_rank ({self.banks_per_rank}) must be a multiple of "
                                f"bank_groups_per_rank ({self.bank_groups_per_rank})")
        if self.row_bytes % self.burst_bytes:
            raise HardwareError(f"{owner}: row_bytes ({self.row_bytes}) must be a whole number of bursts of "
                                f"{self.burst_bytes} bytes (bus_width_bytes x burst_length)")
        if self.tCCD_L_cycles < self.tCCD_S_cycles:
            raise HardwareError(f"{owner}: tCCD_L_cycles ({self.tCCD_L_cycles}) must not be below tCCD_S_cycles "
                                f"({self.tCCD_S_cycles})")
        if self.refresh_overhead >= 1:
            raise HardwareError(f"{owner}: refresh (tRFC_s plus a row close and reopen) must take less than "
                                f"tREFI_s, got {self.refresh_overhead:.3g} of it")

    @property
    def burst_bytes(self) -> int:
        return self.bus_width_bytes * self.burst_length

    @property
    def burst_cycles(self) -> float:
        """Data-bus cycles one burst occupies."""
        return self.burst_length / self.transfers_per_cycle

    @property
    def bursts_per_row(self) -> int:
        return self.row_bytes // self.burst_bytes

    @property
    def banks(self) -> int:
        return self.ranks * self.banks_per_rank

    @property
    def peak_bw_bytes_per_s(self) -> float:
        """Channel data-bus peak: bus width x transfers per second."""
        return self.bus_width_bytes * self.transfers_per_cycle / self.tCK_s

    @property
    def refresh_overhead(self) -> float:
        """Fraction of time refresh takes away: (tRFC + tRTP + tRP + tRCD) / tREFI."""
        penalty_s = self.tRFC_s + (self.tRTP_cycles + self.tRP_cycles + self.tRCD_cycles) * self.tCK_s
        return penalty_s / self.tREFI_s

    @property
    def refresh_factor(self) -> float:
        """Stretch of any busy period by refresh: 1 / (1 - refresh_overhead)."""
        return 1.0 / (1.0 - self.refresh_overhead)


def _check_bytes(nbytes: float) -> None:
    if not (isinstance(nbytes, (int, float)) and math.isfinite(nbytes) and nbytes >= 0):
        raise HardwareError(f"byte count must be a finite number >= 0, got {nbytes!r}")


def _column_interval(t: DramTimingParams, column_interval_cycles: float | None) -> float:
    """Spacing of column reads at one bank: max(tCCD_L, one burst on the bus) unless a PIM-mode interval is given."""
    if column_interval_cycles is None:
        return max(t.tCCD_L_cycles, t.burst_cycles)
    positive(f"dram timing '{t.name}'", column_interval_cycles=column_interval_cycles)
    return float(column_interval_cycles)


def row_cycle_cycles(t: DramTimingParams, column_interval_cycles: float | None = None) -> float:
    """Cycles for one bank to open a row, read all its bursts ``column_interval_cycles`` apart and precharge.

    ``max(tRAS, tRCD + (bursts - 1) x interval + tRTP) + tRP``. The column interval defaults to
    max(tCCD_L, burst cycles), a bank read through the channel's data bus; processing units beside the bank
    pass their own (PIM-mode) interval.
    """
    ci = _column_interval(t, column_interval_cycles)
    return max(t.tRAS_cycles, t.tRCD_cycles + (t.bursts_per_row - 1) * ci + t.tRTP_cycles) + t.tRP_cycles


def bank_stream_time_s(t: DramTimingParams, nbytes: float, column_interval_cycles: float | None = None) -> float:
    """Time for ONE bank to stream ``nbytes`` of consecutive rows (a row miss per row, hits inside it).

    Full rows cost a row cycle each; the last (possibly partial) row costs tRCD, its column reads and the
    read latency tCL plus one burst until its last data arrives; refresh stretches the total.
    """
    _check_bytes(nbytes)
    if nbytes == 0:
        return 0.0
    ci = _column_interval(t, column_interval_cycles)
    rows = max(1, math.ceil(nbytes / t.row_bytes))  # at least one: a subnormal nbytes / row_bytes rounds to 0
    last_bursts = max(1, math.ceil((nbytes - (rows - 1) * t.row_bytes) / t.burst_bytes))
    cycles = ((rows - 1) * row_cycle_cycles(t, ci)
              + t.tRCD_cycles + (last_bursts - 1) * ci + t.tCL_cycles + t.burst_cycles)
    return cycles * t.tCK_s * t.refresh_factor


def bank_stream_bw_bytes_per_s(t: DramTimingParams, column_interval_cycles: float | None = None) -> float:
    """Steady-state streaming bandwidth of one bank (row after row, refresh included)."""
    return t.row_bytes / (row_cycle_cycles(t, column_interval_cycles) * t.tCK_s * t.refresh_factor)


def bank_stream_efficiency(t: DramTimingParams, column_interval_cycles: float | None = None) -> float:
    """Steady-state bank bandwidth over the bank's column-rate peak (one burst per column interval)."""
    ci = _column_interval(t, column_interval_cycles)
    return bank_stream_bw_bytes_per_s(t, ci) / (t.burst_bytes / (ci * t.tCK_s))


def _act_rate_per_cycle(t: DramTimingParams) -> float:
    """Row activations one rank can issue per cycle under tRRD_S, tRRD_L (per bank group) and tFAW."""
    return min(4.0 / t.tFAW_cycles, 1.0 / t.tRRD_S_cycles, t.bank_groups_per_rank / t.tRRD_L_cycles)


def channel_burst_bounds_cycles(t: DramTimingParams) -> dict[str, float]:
    """Lower bounds on the cycles per burst of a sequential stream over the whole channel, by cause."""
    return {
        "data bus": t.burst_cycles,
        "column spacing": max(t.tCCD_S_cycles, t.tCCD_L_cycles / t.bank_groups_per_rank),
        "activation (tRRD/tFAW)": 1.0 / (t.bursts_per_row * t.ranks * _act_rate_per_cycle(t)),
        "bank row cycle": row_cycle_cycles(t) / (t.bursts_per_row * t.banks),
    }


def channel_burst_interval_cycles(t: DramTimingParams) -> float:
    """Steady-state cycles per burst of a sequential stream over the channel (the largest bound)."""
    return max(channel_burst_bounds_cycles(t).values())


def channel_stream_limiter(t: DramTimingParams) -> str:
    """Which bound sets the channel's streaming rate ('data bus', 'column spacing', ...)."""
    bounds = channel_burst_bounds_cycles(t)
    return max(bounds, key=bounds.get)


def channel_stream_time_s(t: DramTimingParams, nbytes: float) -> float:
    """Time to stream ``nbytes`` of consecutive addresses through the channel, banks interleaved.

    One first-access latency (tRCD + tCL + one burst), then a burst every ``channel_burst_interval_cycles``;
    refresh stretches the total.
    """
    _check_bytes(nbytes)
    if nbytes == 0:
        return 0.0
    bursts = max(1, math.ceil(nbytes / t.burst_bytes))
    cycles = (bursts - 1) * channel_burst_interval_cycles(t) + t.tRCD_cycles + t.tCL_cycles + t.burst_cycles
    return cycles * t.tCK_s * t.refresh_factor


def channel_stream_bw_bytes_per_s(t: DramTimingParams) -> float:
    """Steady-state streaming bandwidth of the channel, refresh included."""
    return t.burst_bytes / (channel_burst_interval_cycles(t) * t.tCK_s * t.refresh_factor)


def channel_stream_efficiency(t: DramTimingParams, nbytes: float | None = None) -> float:
    """Achieved over peak bandwidth for a sequential read of ``nbytes`` (steady state when None); in (0, 1]."""
    if nbytes is None:
        return channel_stream_bw_bytes_per_s(t) / t.peak_bw_bytes_per_s
    _check_bytes(nbytes)
    if nbytes == 0:
        raise HardwareError("efficiency needs a byte count > 0")
    return (nbytes / t.peak_bw_bytes_per_s) / channel_stream_time_s(t, nbytes)


# ---------------------------------------------------------------------------------------------------------------
# Access patterns: sequential, random and strided reads of one channel, closed form.
#
# Assumptions (docs/pim-model.md, section 1.2):
# - reads only, open-page policy: a row stays open until another row of its bank is needed;
# - address mapping, most to least significant: row | rank | bank | column | bank group | burst offset. Consecutive
#   bursts rotate over the bank groups of one rank and fill one row per bank group: a "stripe" of
#   bank_groups x row_bytes bytes. An access opens one row in each bank group it touches;
# - random accesses fall uniformly over a footprint much larger than the open rows (row-hit probability 0) and
#   on a uniformly random rank and bank; strides do not alias onto one bank group or bank;
# - the requester keeps ``outstanding`` accesses in flight per channel and the controller serves them out of
#   order (FR-FCFS-like); bank conflicts are then a closed queueing network of the accesses' row pieces over the
#   channel's banks (balanced-network mean-value formula), while sequential and strided streams are predictable
#   and are assumed to have enough requests in flight to overlap every bank;
# - reads from a different rank than the previous ones leave a tRTRS bubble on the data bus: the controller serves
#   each activated row's reads together, and the next row is on another rank with probability (ranks-1)/ranks
#   (no rank batching); streams stay in one rank for a whole stripe, so the model ignores their rare switches;
# - every cause bounds the cycles per access and the largest bound wins; refresh stretches the result.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sequential:
    """Consecutive addresses: a stream with enough reads in flight to keep every bank group busy."""


@dataclass(frozen=True)
class RandomAccess:
    """Independent reads of ``size_bytes`` contiguous bytes each, at uniformly random places.

    ``outstanding`` is the number of such accesses one channel has in flight (the requester's and the
    controller's queues together; a fraction when one access is larger than the queue). ``aligned`` accesses
    start at a multiple of their size (blocks of a pool, such as paged-KV blocks); unaligned ones start at any
    burst.
    """

    size_bytes: float
    outstanding: float
    aligned: bool = True

    def __post_init__(self):
        positive("random access pattern", size_bytes=self.size_bytes)
        positive("random access pattern", outstanding=self.outstanding)


@dataclass(frozen=True)
class Strided:
    """Runs of ``run_bytes`` contiguous bytes, one every ``stride_bytes``: a regular, predictable stream. Runs
    start at burst boundaries (a run shorter than a burst still moves a whole burst)."""

    run_bytes: float
    stride_bytes: float

    def __post_init__(self):
        positive("strided access pattern", run_bytes=self.run_bytes, stride_bytes=self.stride_bytes)
        if self.stride_bytes < self.run_bytes:
            raise HardwareError(f"strided access pattern: stride_bytes ({self.stride_bytes}) must not be below "
                                f"run_bytes ({self.run_bytes})")


AccessPattern = Sequential | RandomAccess | Strided
SEQUENTIAL = Sequential()


@dataclass(frozen=True)
class PatternCost:
    """One pattern on one channel: the cycles one unit (a burst, an access, a stripe visit) takes, by cause,
    the useful bytes it delivers, and the latency of the first unit (cycles)."""

    bounds_cycles: dict
    useful_bytes: float
    first_cycles: float

    @property
    def interval_cycles(self) -> float:
        return max(self.bounds_cycles.values())

    @property
    def limiter(self) -> str:
        return max(self.bounds_cycles, key=self.bounds_cycles.get)


def _bursts(t: DramTimingParams, nbytes: float) -> int:
    """Bursts that hold ``nbytes`` starting at a burst boundary (a partial burst is still a whole burst)."""
    return max(1, math.ceil(nbytes / t.burst_bytes - 1e-9))


def rows_per_piece(t: DramTimingParams, k: float, aligned: bool) -> float:
    """Expected rows that ``k`` consecutive bursts of one bank open: ``1 + (k - g) / B`` (B bursts per row).

    An aligned piece starts at a multiple of its own length, so it starts at one of B/g equally likely offsets
    with g = gcd(k, B) (g = k when k divides the row: one row; g = B when rows divide it: k / B rows); an
    unaligned piece starts at any of the B bursts (g = 1). The sum over those offsets of
    floor((offset + k - 1) / B) is exactly k - g, which gives the formula.
    """
    b = t.bursts_per_row
    g = math.gcd(int(k), b) if aligned and float(k).is_integer() else 1
    return 1.0 + max(0.0, k - g) / b


def _piece_cycles(t: DramTimingParams, k_row: float) -> float:
    """Cycles one bank is busy serving a row piece of ``k_row`` bursts under open page: precharge the row left
    open, activate, read the bursts one column interval apart, until the next precharge may issue."""
    ci = _column_interval(t, None)
    return t.tRP_cycles + max(t.tRAS_cycles, t.tRCD_cycles + (k_row - 1) * ci + t.tRTP_cycles)


def _column_cycles_per_burst(t: DramTimingParams) -> float:
    return max(t.tCCD_S_cycles, t.tCCD_L_cycles / t.bank_groups_per_rank)


def _sequential_cost(t: DramTimingParams) -> PatternCost:
    return PatternCost(channel_burst_bounds_cycles(t), float(t.burst_bytes),
                       t.tRCD_cycles + t.tCL_cycles + t.burst_cycles)


def _random_cost(t: DramTimingParams, p: RandomAccess) -> PatternCost:
    n = _bursts(t, p.size_bytes)
    groups = t.bank_groups_per_rank
    pieces = min(n, groups)                      # one row piece per bank group the access touches
    k = n / pieces                               # bursts per piece
    rows = rows_per_piece(t, k, p.aligned)       # rows per piece
    acts = pieces * rows                         # activations per access
    s = _piece_cycles(t, k / rows)               # bank busy time per activated row
    tail = max(0.0, t.tCL_cycles + t.burst_cycles - t.tRTP_cycles)  # data return after the bank is free
    banks = t.banks
    # Row pieces in flight: every piece of each outstanding access; when one access is larger than the queue
    # (outstanding < 1), its queued bursts still spread over the bank groups: one piece per burst, at most acts.
    in_flight = max(1.0, p.outstanding * acts if p.outstanding >= 1 else min(acts, p.outstanding * n))
    # Closed network of ``in_flight`` pieces over ``banks`` equally loaded banks (service s) plus a delay
    # ``tail``: pieces per cycle X = P / (s (P + N - 1) / N + tail); exact for P = 1, -> N / s for P -> inf.
    queue = acts * (s * (in_flight + banks - 1) / banks + tail) / in_flight
    bounds = {
        # A rank switch is possible before each activated row's reads: probability (ranks - 1) / ranks.
        "data bus": n * t.burst_cycles + acts * (t.ranks - 1) / t.ranks * t.tRTRS_cycles,
        "column spacing": n * _column_cycles_per_burst(t),
        "activation (tRRD/tFAW)": acts / (t.ranks * _act_rate_per_cycle(t)),
        "banks at queue depth": queue,
    }
    first = t.tRP_cycles + t.tRCD_cycles + (k / rows - 1) * _column_interval(t, None) + t.tCL_cycles + t.burst_cycles
    return PatternCost(bounds, float(p.size_bytes), first)


def _strided_cost(t: DramTimingParams, p: Strided) -> PatternCost:
    n_run = _bursts(t, p.run_bytes)
    stripe = t.bank_groups_per_rank * t.row_bytes   # one row in each bank group
    if p.stride_bytes <= stripe:
        # A visit is one stripe: stripe / stride runs share one open row per bank group.
        per_visit = stripe / p.stride_bytes
        n = n_run * per_visit
        pieces = min(n, t.bank_groups_per_rank)
        rows = 1.0
    else:
        # A visit is one run, in rows of its own.
        per_visit = 1.0
        n = n_run
        pieces = min(n, t.bank_groups_per_rank)
        rows = rows_per_piece(t, n / pieces, aligned=False)
    acts = pieces * rows
    s = _piece_cycles(t, n / acts)
    bounds = {
        "data bus": n * t.burst_cycles,
        "column spacing": n * _column_cycles_per_burst(t),
        "activation (tRRD/tFAW)": acts / (t.ranks * _act_rate_per_cycle(t)),
        "bank row cycle": acts * s / t.banks,
    }
    return PatternCost(bounds, p.run_bytes * per_visit, t.tRCD_cycles + t.tCL_cycles + t.burst_cycles)


def pattern_cost(t: DramTimingParams, pattern: AccessPattern) -> PatternCost:
    """Cycles per unit of ``pattern`` on channel ``t``, by cause, before refresh (see the assumptions above)."""
    if isinstance(pattern, Sequential):
        return _sequential_cost(t)
    if isinstance(pattern, RandomAccess):
        return _random_cost(t, pattern)
    if isinstance(pattern, Strided):
        return _strided_cost(t, pattern)
    raise HardwareError(f"access pattern must be Sequential, RandomAccess or Strided, got {pattern!r}")


def pattern_bw_bytes_per_s(t: DramTimingParams, pattern: AccessPattern) -> float:
    """Steady-state useful bytes per second one channel delivers for ``pattern``, refresh included."""
    c = pattern_cost(t, pattern)
    return c.useful_bytes / (c.interval_cycles * t.tCK_s * t.refresh_factor)


def pattern_efficiency(t: DramTimingParams, pattern: AccessPattern) -> float:
    """Useful bytes per second over the channel's peak, in (0, 1]."""
    return pattern_bw_bytes_per_s(t, pattern) / t.peak_bw_bytes_per_s


def pattern_limiter(t: DramTimingParams, pattern: AccessPattern) -> str:
    """Which bound sets the pattern's rate ('data bus', 'activation (tRRD/tFAW)', 'banks at queue depth', ...)."""
    return pattern_cost(t, pattern).limiter


def pattern_read_time_s(t: DramTimingParams, pattern: AccessPattern, nbytes: float) -> float:
    """Time for one channel to read ``nbytes`` useful bytes in ``pattern``: the first unit's latency, then one
    unit per interval (fractional units count pro rata); refresh stretches the total."""
    _check_bytes(nbytes)
    if nbytes == 0:
        return 0.0
    if isinstance(pattern, Sequential):
        return channel_stream_time_s(t, nbytes)
    c = pattern_cost(t, pattern)
    units = nbytes / c.useful_bytes
    return (max(0.0, units - 1.0) * c.interval_cycles + c.first_cycles) * t.tCK_s * t.refresh_factor


dram_timing_preset_names = DRAM_PRESETS.names


def dram_timing_from_table(table: dict, where: str, origin: str = "") -> DramTimingParams:
    """Build timing from a preset file's table: ``[timing]`` plus an optional top-level ``description``."""
    extra = set(table) - {"timing", "description"}
    if extra or "timing" not in table:
        raise HardwareError(f"{where}: a DRAM timing file holds a [timing] table and an optional description; "
                            f"found {sorted(table)}")
    return build(DramTimingParams, table["timing"], f"{where} [timing]", origin=origin)


def load_dram_timing(name_or_path: str) -> DramTimingParams:
    """Load a DRAM timing preset by name (see ``dram_timing_preset_names``) or from a TOML file path."""
    path = DRAM_PRESETS.resolve(name_or_path)
    return dram_timing_from_table(read_toml(path), str(path), origin_of(path))


# ---------------------------------------------------------------------------------------------------------------
# Host memory: channels of DIMMs with a DRAM timing preset, read by pattern.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostDramParams:
    """The host's memory: ``channels`` DDR channels of ``subchannels_per_channel`` independent (sub-)channels each
    (DDR5: two 32-bit sub-channels; DDR4: one 64-bit channel), every one organised and timed as the DRAM timing
    preset ``timing`` with ``ranks_per_channel`` ranks. Addresses rotate over the sub-channels every
    ``interleave_bytes``; each sub-channel's controller holds ``read_queue_lines`` reads (bursts) in flight.
    ``kv_block_tokens`` is the paged KV cache's block size (tokens per block), which sets the size of the scattered
    reads that offloaded attention makes. ``dram`` is the resolved timing (ranks applied)."""

    name: str
    channels: int
    subchannels_per_channel: int
    timing: str
    ranks_per_channel: int
    interleave_bytes: int
    read_queue_lines: int
    kv_block_tokens: int
    capacity_bytes: float
    energy_per_byte_j: float
    # Power of all DIMMs together (docs/metrics.md, "Energy"): background and refresh for the whole run / their
    # limit at full bandwidth. 0: not modelled.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    # The share of every channel's bandwidth one GPU's traffic gets when several GPUs use the host at once (tensor
    # parallelism: 1 / ranks; set by ``MachineParams.rank_view``, never by a preset).
    share: float = 1.0
    sources: dict = field(default_factory=dict, compare=False, repr=False)
    dram: DramTimingParams = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        owner = f"host_dram '{self.name}'"
        check_power(owner, self.idle_power_w, self.max_power_w)
        fraction(owner, share=self.share)
        self.sources.setdefault("share", "not a preset value: 1 for the whole host; 1 / ranks in a tensor-parallel "
                                         "run's rank view")
        for name in ("channels", "subchannels_per_channel", "ranks_per_channel", "interleave_bytes",
                     "read_queue_lines", "kv_block_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HardwareError(f"{owner}: {name} must be a whole number >= 1, got {v!r}")
        positive(owner, capacity_bytes=self.capacity_bytes)
        non_negative(owner, energy_per_byte_j=self.energy_per_byte_j)
        if not isinstance(self.timing, str) or not self.timing:
            raise HardwareError(f"{owner}: timing must be a DRAM timing preset name or file, one of "
                                f"{', '.join(dram_timing_preset_names())}; got {self.timing!r}")
        base = load_dram_timing(self.timing)
        # Presets describe one rank; the host's DIMMs set how many share a (sub-)channel.
        timing = dataclasses.replace(base, ranks=self.ranks_per_channel, sources={
            **base.sources, "ranks": f"host_dram '{self.name}' ranks_per_channel = {self.ranks_per_channel}"})
        if self.interleave_bytes % timing.burst_bytes:
            raise HardwareError(f"{owner}: interleave_bytes ({self.interleave_bytes}) must be a whole number of "
                                f"{timing.burst_bytes}-byte bursts of {timing.name}")
        object.__setattr__(self, "dram", timing)

    @property
    def subchannels(self) -> int:
        return self.channels * self.subchannels_per_channel

    @property
    def channel_bw_bytes_per_s(self) -> float:
        """Peak of one DDR channel (all its sub-channels)."""
        return self.subchannels_per_channel * self.dram.peak_bw_bytes_per_s

    @property
    def peak_bw_bytes_per_s(self) -> float:
        return self.subchannels * self.dram.peak_bw_bytes_per_s

    @property
    def achievable_bw_bytes_per_s(self) -> float:
        """Streaming (sequential) read rate from the timing model; other patterns: ``host_read_bw_bytes_per_s``."""
        return host_read_bw_bytes_per_s(self, SEQUENTIAL)


def channel_pattern(host: HostDramParams, pattern: AccessPattern) -> AccessPattern:
    """What one (sub-)channel sees when the host reads ``pattern``: addresses rotate over the ``subchannels`` every
    ``interleave_bytes`` (G), so an access of S bytes leaves pieces of max(min(S, G), S / subchannels) bytes on
    the channels it touches, and a strided stream keeps its density (run / stride) with runs cut the same way."""
    n, g = host.subchannels, host.interleave_bytes
    if isinstance(pattern, Sequential):
        return pattern
    if isinstance(pattern, RandomAccess):
        piece = max(min(pattern.size_bytes, g), pattern.size_bytes / n)
        return RandomAccess(piece, pattern.outstanding, pattern.aligned)
    if isinstance(pattern, Strided):
        run = max(min(pattern.run_bytes, g), pattern.run_bytes / n) if pattern.run_bytes > g else pattern.run_bytes
        return Strided(run, run * pattern.stride_bytes / pattern.run_bytes)
    raise HardwareError(f"access pattern must be Sequential, RandomAccess or Strided, got {pattern!r}")


def host_read_bw_bytes_per_s(host: HostDramParams, pattern: AccessPattern) -> float:
    """Useful bytes per second the host's memory delivers for reads in ``pattern``, every channel equally loaded.

    This is the rate the offload system's KV DMA (``paged_kv_pattern(host, ..., heads=kv_heads)``) and CPU
    attention (``paged_kv_pattern(host, ..., heads=1)``) read at; ``SEQUENTIAL`` gives the streaming rate.
    """
    return host.share * host.subchannels * pattern_bw_bytes_per_s(host.dram, channel_pattern(host, pattern))


def host_read_time_s(host: HostDramParams, pattern: AccessPattern, nbytes: float) -> float:
    """Time to read ``nbytes`` in ``pattern`` spread evenly over the channels, first-access latency included."""
    _check_bytes(nbytes)
    return pattern_read_time_s(host.dram, channel_pattern(host, pattern), nbytes / (host.subchannels * host.share))


def paged_kv_pattern(host: HostDramParams, head_dim: int, bytes_per_element: float, heads: int = 1) -> RandomAccess:
    """Reads of a paged KV cache: one block of ``kv_block_tokens`` tokens x ``heads`` KV heads x ``head_dim`` per
    read, blocks scattered over the pool (vLLM's block table) and aligned to their size.

    Within a block a head's tokens are contiguous (vLLM's paged layout [blocks, kv_heads, head_dim/x, block, x]),
    so ``heads=1`` is what CPU attention reads per (sequence, head) and ``heads=n_kv_heads`` is what a DMA of whole
    blocks reads. The controller's ``read_queue_lines`` bursts in flight are shared by the accesses' pieces.
    """
    positive("paged KV pattern", head_dim=head_dim, bytes_per_element=bytes_per_element, heads=heads)
    return _scattered_reads(host, host.kv_block_tokens * heads * head_dim * bytes_per_element)


def _scattered_reads(host: HostDramParams, size: float) -> RandomAccess:
    """Aligned reads of ``size`` bytes at scattered places, the controller's ``read_queue_lines`` bursts in flight
    shared by the reads' pieces."""
    piece = channel_pattern(host, RandomAccess(size, 1.0)).size_bytes
    return RandomAccess(size, host.read_queue_lines / _bursts(host.dram, piece), aligned=True)


def token_gather_pattern(host: HostDramParams, head_dim: int, bytes_per_element: float) -> RandomAccess:
    """Reads of single tokens' K or V rows of one KV head (``head_dim`` elements, contiguous in vLLM's paged
    layout), at scattered places: what the host reads to attend a selection of tokens exactly (AQPIM's exact
    re-rank)."""
    positive("token gather pattern", head_dim=head_dim, bytes_per_element=bytes_per_element)
    return _scattered_reads(host, head_dim * bytes_per_element)
