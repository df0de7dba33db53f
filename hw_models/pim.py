"""Processing-in-memory (PIM): channels of DRAM banks with processing units beside them, as pure cost functions.

A PIM *device* is many identical *channels* (an HBM pseudo-channel, a GDDR6 channel, a DIMM rank, a UPMEM DPU);
the simulator makes one SimPy resource per channel, so a device has hundreds to thousands of them. Inside a
channel everything is closed form: the channel's processing units (one per bank or per two banks, one per bank
group, or one per rank on a buffer chip) stream operands from their banks in parallel, at a rate the DRAM timing
model (``hw_models.dram``) gives for a row after row, bounded by how fast a unit can take data in. That is the
channel's *internal* bandwidth; its *external* bandwidth is the channel's own interface (what a host or GPU sees).

Every operation on one channel costs ``op_overhead_s + max(stream time, compute time)``: the command or launch
overhead, then the larger of streaming the operand bytes at the internal bandwidth and doing the FLOPs at the
units' throughput. Data that crosses the channel interface (a query in, partial outputs out, new K/V appended)
moves at the external bandwidth. Energy is bytes read in the array, FLOPs, and bytes crossing the interface,
each at its own cost. The functions take the *per-channel* share of the work: how the KV cache is placed across
channels is the caller's policy. Presets live in ``presets/pim/*.toml`` with a ``source`` per value.

What one channel does for one layer of decode attention depends on how the KV cache is stored: one function
per KV format (``fp16_attention_works``, ``int_attention_works``, ``pq_attention_works``) returns that work as
``AttentionWorks``, split where the scores would leave the channel for a softmax on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from hw_models.component import Work
from hw_models.dram import (
    DramTimingParams,
    dram_timing_from_table,
    dram_timing_preset_names,
    load_dram_timing,
    row_cycle_cycles,
)
from hw_models.errors import HardwareError
from hw_models.loading import PresetDir, did_you_mean, origin_of, read_toml
from hw_models.params import build, check_power, fraction, non_negative, override, positive

PIM_PRESET_DIR = Path(__file__).parent / "presets" / "pim"
PIM_PRESETS = PresetDir(PIM_PRESET_DIR, ".toml", "PIM device")

PROCESSING_LEVELS = ("bank", "bankgroup", "rank")
PLACEMENTS = ("accelerator", "host")
SOFTMAX_PLACEMENTS = ("pim", "near", "host")

# FLOPs per score in a softmax: running max, subtract, exp, accumulate, normalise.
SOFTMAX_FLOPS_PER_ELEMENT = 5.0
# Softmax statistics (running max and sum, FP32) returned with each query's partial output.
SOFTMAX_STATS_BYTES_PER_QUERY = 8.0
# Bytes of one FP16 value stored by a compressed KV format: a PQ centroid entry or table entry, an outlier key
# element, an INT-k scale or zero point.
FP16_BYTES = 2
# PQ nearest-centroid search: a subtract, a multiply and an add per element per centroid (squared distance).
QUANTIZE_FLOPS_PER_ELEMENT = 3.0
# PQ bins accumulate softmax weights in FP16, like the tables.
BIN_BYTES = FP16_BYTES
# INT-k (KIVI, arXiv 2402.02750, asymmetric): x_q = round((x - min) / s), s = (max - min) / (2^bits - 1).
# Per element: compare with the group's running min and max (2), subtract the zero point, multiply by 1 / s,
# round (3).
INT_QUANTIZE_FLOPS_PER_ELEMENT = 5.0
# Per group once its min and max are known: s = (max - min) / (2^bits - 1), a subtract and a divide.
INT_SCALE_FLOPS_PER_GROUP = 2.0
# Dequantize x = x_q * s + z: a multiply and an add per element.
INT_DEQUANTIZE_FLOPS_PER_ELEMENT = 2.0
# An FP16 scale and an FP16 zero point per quantization group (KIVI keeps both in half precision).
INT_GROUP_PARAM_BYTES = 2 * FP16_BYTES


@dataclass(frozen=True)
class AqpimUnitParams:
    """The lookup hardware an AQPIM unit adds beside each PIM unit (a preset's ``[aqpim_unit]`` section).

    ``lut_bytes`` of SRAM per unit hold query-centroid table rows while codes are scored and softmax-weight bins
    while they are scatter-added (the two phases reuse it); a row is the K FP16 entries of one (query head,
    sub-space). The SRAM has ``lut_banks`` single-ported banks with a row's entries interleaved over them, each
    serving one read or one write per cycle of ``lut_clock_hz``; ``lut_access_energy_j`` is one entry read or
    written. AQPIM's own unit is not public: every value is sourced from a real PIM part or tagged (I).
    """

    lut_bytes: float
    lut_banks: int
    lut_clock_hz: float
    lut_access_energy_j: float
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = "aqpim unit"
        positive(owner, lut_bytes=self.lut_bytes, lut_banks=self.lut_banks, lut_clock_hz=self.lut_clock_hz)
        non_negative(owner, lut_access_energy_j=self.lut_access_energy_j)
        if isinstance(self.lut_banks, bool) or not isinstance(self.lut_banks, int):
            raise HardwareError(f"{owner}: lut_banks must be a whole number, got {self.lut_banks!r}")

    @property
    def accesses_per_cycle(self) -> float:
        """Entries served per cycle when every bank is offered one uniformly random access per cycle: the
        expected number of distinct banks hit, ``b (1 - (1 - 1/b)^b)`` (colliding accesses wait a cycle; 1 for one
        bank, 10.3 for 16)."""
        b = self.lut_banks
        return b * (1.0 - (1.0 - 1.0 / b) ** b)

    @property
    def accesses_per_s(self) -> float:
        return self.accesses_per_cycle * self.lut_clock_hz



@dataclass(frozen=True)
class PimChannelParams:
    """One PIM channel: DRAM banks, their timing, the processing units beside them, and its interface.

    ``processing_level`` places the units: ``bank`` (``units_per_bank`` of them per bank, e.g. 0.5 for one unit
    per two banks), ``bankgroup`` (one per bank group) or ``rank`` (one per rank, on a buffer die or chip).
    ``bank_column_interval_cycles`` is the spacing of column reads at one bank while all units stream (AttAcc's
    power-capped nCCDAB; usually tCCD_L). ``all_bank_activate`` says PIM mode opens rows in all banks with one
    command, free of tRRD/tFAW. ``near_flops_per_s`` is a near-memory unit per channel (buffer die, DIMM buffer)
    for softmax and reductions; 0 means the device has none.

    ``unit_buffer_bytes`` is the GEMV operand buffer of the real part (a query held while the unit streams K or
    V). ``aqpim_unit`` is the lookup hardware an AQPIM unit adds beside each unit (``AqpimUnitParams``, the
    preset's ``[aqpim_unit]`` section); None when the preset has none, and then the device cannot run AQPIM.
    """

    name: str
    capacity_bytes: float
    ranks: int
    bank_groups_per_rank: int
    banks_per_rank: int
    timing: DramTimingParams
    processing_level: str
    units_per_bank: float
    bank_column_interval_cycles: float
    all_bank_activate: bool
    unit_flops_per_s: float
    unit_bw_bytes_per_s: float
    unit_buffer_bytes: float
    near_flops_per_s: float
    external_bw_bytes_per_s: float
    op_overhead_s: float
    energy_per_array_byte_j: float
    energy_per_flop_j: float
    energy_per_io_byte_j: float
    # Power of one channel (docs/metrics.md, "Energy"): background and refresh of its banks and its share of the
    # device's base die and link, drawn for the whole run; and its power limit, which throttles a phase whose
    # mean power would exceed it (``power_throttle``). 0: not modelled / no limit.
    idle_power_w: float = 0.0
    max_power_w: float = 0.0
    aqpim_unit: AqpimUnitParams | None = None
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = f"pim channel '{self.name}'"
        if self.aqpim_unit is not None and not isinstance(self.aqpim_unit, AqpimUnitParams):
            raise HardwareError(f"{owner}: aqpim_unit must be AQPIM unit parameters, got "
                                f"{type(self.aqpim_unit).__name__}")
        check_power(owner, self.idle_power_w, self.max_power_w)
        if not isinstance(self.timing, DramTimingParams):
            raise HardwareError(f"{owner}: timing must be DRAM timing parameters, got {type(self.timing).__name__}")
        positive(owner, capacity_bytes=self.capacity_bytes, ranks=self.ranks,
                 bank_groups_per_rank=self.bank_groups_per_rank, banks_per_rank=self.banks_per_rank,
                 bank_column_interval_cycles=self.bank_column_interval_cycles,
                 unit_flops_per_s=self.unit_flops_per_s, unit_bw_bytes_per_s=self.unit_bw_bytes_per_s,
                 unit_buffer_bytes=self.unit_buffer_bytes,
                 external_bw_bytes_per_s=self.external_bw_bytes_per_s)
        fraction(owner, units_per_bank=self.units_per_bank)
        non_negative(owner, near_flops_per_s=self.near_flops_per_s, op_overhead_s=self.op_overhead_s,
                     energy_per_array_byte_j=self.energy_per_array_byte_j, energy_per_flop_j=self.energy_per_flop_j,
                     energy_per_io_byte_j=self.energy_per_io_byte_j)
        for name in ("ranks", "bank_groups_per_rank", "banks_per_rank"):
            if not isinstance(getattr(self, name), int):
                raise HardwareError(f"{owner}: {name} must be a whole number, got {getattr(self, name)!r}")
        if not isinstance(self.all_bank_activate, bool):
            raise HardwareError(f"{owner}: all_bank_activate must be true or false, got {self.all_bank_activate!r}")
        if self.processing_level not in PROCESSING_LEVELS:
            raise HardwareError(f"{owner}: processing_level must be one of {PROCESSING_LEVELS}, "
                                f"got {self.processing_level!r}{did_you_mean(str(self.processing_level), PROCESSING_LEVELS)}")
        if self.banks_per_rank % self.bank_groups_per_rank:
            raise HardwareError(f"{owner}: banks_per_rank ({self.banks_per_rank}) must be a multiple of "
                                f"bank_groups_per_rank ({self.bank_groups_per_rank})")
        if self.processing_level == "bank":
            units = self.banks * self.units_per_bank
            if abs(units - round(units)) > 1e-9:
                raise HardwareError(f"{owner}: {self.banks} banks x units_per_bank {self.units_per_bank} = {units:g} "
                                    f"is not a whole number of units")

    # Derived values below are read by the cost functions for every load row: computed once per instance (the
    # parameters are frozen; functools.cached_property keeps them beside the fields, outside eq and hash).
    @property
    def banks(self) -> int:
        return self.ranks * self.banks_per_rank

    @functools.cached_property
    def units(self) -> int:
        """Processing units in the channel."""
        if self.processing_level == "bank":
            return round(self.banks * self.units_per_bank)
        if self.processing_level == "bankgroup":
            return self.ranks * self.bank_groups_per_rank
        return self.ranks

    @property
    def banks_per_unit(self) -> float:
        return self.banks / self.units

    @functools.cached_property
    def peak_flops_per_s(self) -> float:
        return self.units * self.unit_flops_per_s

    @functools.cached_property
    def internal_bw_bytes_per_s(self) -> float:
        return internal_bw_bytes_per_s(self)

    @functools.cached_property
    def first_access_s(self) -> float:
        """tRCD + tCL: the first data of a stream (``stream_time_s``)."""
        t = self.timing
        return (t.tRCD_cycles + t.tCL_cycles) * t.tCK_s


@dataclass(frozen=True)
class PimDeviceParams:
    """A PIM device: ``channels`` identical channels plus the link that feeds it.

    ``placement`` is ``accelerator`` (beside the GPU, as AttAcc; the link is GPU to device) or ``host`` (DIMM-PIM
    in the host, as L3; the link is the host memory bus, and the machine's PCIe sits between it and the GPU).
    """

    name: str
    description: str
    channels: int
    channel: PimChannelParams
    placement: str
    link_bw_bytes_per_s: float
    link_latency_s: float
    link_energy_per_byte_j: float
    origin: str = field(default="", compare=False)
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = f"pim device '{self.name}'"
        positive(owner, channels=self.channels, link_bw_bytes_per_s=self.link_bw_bytes_per_s)
        non_negative(owner, link_latency_s=self.link_latency_s, link_energy_per_byte_j=self.link_energy_per_byte_j)
        if not isinstance(self.channels, int):
            raise HardwareError(f"{owner}: channels must be a whole number, got {self.channels!r}")
        if not isinstance(self.channel, PimChannelParams):
            raise HardwareError(f"{owner}: channel must be PIM channel parameters, got {type(self.channel).__name__}")
        if self.placement not in PLACEMENTS:
            raise HardwareError(f"{owner}: placement must be one of {PLACEMENTS}, got {self.placement!r}"
                                f"{did_you_mean(str(self.placement), PLACEMENTS)}")

    @property
    def capacity_bytes(self) -> float:
        return self.channels * self.channel.capacity_bytes

    @property
    def internal_bw_bytes_per_s(self) -> float:
        return self.channels * internal_bw_bytes_per_s(self.channel)

    @property
    def external_bw_bytes_per_s(self) -> float:
        return self.channels * self.channel.external_bw_bytes_per_s

    @property
    def peak_flops_per_s(self) -> float:
        return self.channels * self.channel.peak_flops_per_s

    @property
    def units(self) -> int:
        return self.channels * self.channel.units


@dataclass(frozen=True)
class ChannelAttention:
    """One channel's share of one layer's decode attention.

    ``kv_vectors`` K vectors (and as many V vectors) of ``head_dim`` elements live in the channel, summed over the
    (sequence, KV head) pairs placed there; each is attended by ``queries_per_kv`` query vectors (the GQA group
    size); ``query_vectors`` distinct queries are sent in (and as many partial outputs come back).
    """

    kv_vectors: float
    head_dim: int
    queries_per_kv: float = 1.0
    query_vectors: float = 1.0
    bytes_per_element: float = 2.0

    def __post_init__(self):
        try:  # built for every load row: the named checks (which build the message) run only when this fails
            if (0.0 <= self.kv_vectors < math.inf and 0.0 <= self.query_vectors < math.inf
                    and 0.0 < self.head_dim < math.inf and 0.0 < self.queries_per_kv < math.inf
                    and 0.0 < self.bytes_per_element < math.inf and type(self.head_dim) is int):
                return
        except TypeError:
            pass
        owner = "channel attention work"
        non_negative(owner, kv_vectors=self.kv_vectors, query_vectors=self.query_vectors)
        positive(owner, head_dim=self.head_dim, queries_per_kv=self.queries_per_kv,
                 bytes_per_element=self.bytes_per_element)

    @property
    def kv_bytes(self) -> float:
        """Bytes of K (or of V) held in the channel."""
        return self.kv_vectors * self.head_dim * self.bytes_per_element

    @property
    def scores(self) -> float:
        return self.kv_vectors * self.queries_per_kv

    @property
    def gemv_flops(self) -> float:
        """FLOPs of q.K (or of the weighted sum of V): a multiply and an add per element per query."""
        return 2.0 * self.kv_vectors * self.head_dim * self.queries_per_kv

    @property
    def query_bytes(self) -> float:
        return self.query_vectors * self.head_dim * self.bytes_per_element

    @property
    def output_bytes(self) -> float:
        """Partial outputs plus their softmax statistics, returned for the cross-channel merge."""
        return self.query_vectors * (self.head_dim * self.bytes_per_element + SOFTMAX_STATS_BYTES_PER_QUERY)


# ------------------------------------------------------------------ internal bandwidth (closed form, per channel)

def unit_burst_bounds_s(ch: PimChannelParams) -> dict[str, float]:
    """Lower bounds on the seconds between two bursts reaching one unit, by cause (before refresh).

    A unit owning a single bank cannot hide that bank's row changes, so its bank term includes the row cycle at
    the unit's own pace; a unit fed by several banks overlaps their row changes, and the bounds simply add up
    across banks. Units above bank level also share their bank group's or rank's column path.
    """
    t = ch.timing
    tck = t.tCK_s
    bursts = t.bursts_per_row
    ingest_s = t.burst_bytes / ch.unit_bw_bytes_per_s
    k = ch.banks_per_unit
    bounds = {"unit ingest": ingest_s}
    if ch.processing_level == "bank" and k <= 1:
        pace_cycles = max(ch.bank_column_interval_cycles, ingest_s / tck)
        bounds["bank row cycle"] = row_cycle_cycles(t, pace_cycles) * tck / bursts
    else:
        bounds["bank row cycle"] = row_cycle_cycles(t, ch.bank_column_interval_cycles) * tck / (bursts * k)
    if ch.processing_level == "bankgroup":
        bounds["bank-group column path"] = t.tCCD_L_cycles * tck
    elif ch.processing_level == "rank":
        bounds["rank data path"] = max(t.burst_cycles, t.tCCD_S_cycles,
                                       t.tCCD_L_cycles / ch.bank_groups_per_rank) * tck
    if not ch.all_bank_activate:
        acts_per_cycle = min(4.0 / t.tFAW_cycles, 1.0 / t.tRRD_S_cycles, ch.bank_groups_per_rank / t.tRRD_L_cycles)
        units_per_rank = ch.units / ch.ranks
        bounds["activation (tRRD/tFAW)"] = units_per_rank / (bursts * acts_per_cycle) * tck
    return bounds


def internal_bw_limiter(ch: PimChannelParams) -> str:
    """Which bound sets the channel's internal bandwidth."""
    bounds = unit_burst_bounds_s(ch)
    return max(bounds, key=bounds.get)


@functools.lru_cache(maxsize=256)  # parameters are frozen: the bound is computed once per channel design
def internal_bw_bytes_per_s(ch: PimChannelParams) -> float:
    """Bytes per second all units of the channel stream from their banks together, refresh included."""
    per_burst_s = max(unit_burst_bounds_s(ch).values())
    return ch.units * ch.timing.burst_bytes / (per_burst_s * ch.timing.refresh_factor)


# ------------------------------------------------------------------ generic building blocks (one channel)

def _check(owner: str, **values: float) -> None:
    non_negative(owner, **values)


# The cost functions below run for every load row of every step: each checks its inputs with a chained comparison
# first (NaN and infinity fail it) and calls the named check, which builds the message, only when that fails.
_INF = math.inf


def _whole(owner: str, lo: int, **values: int) -> None:
    """Raise a HardwareError naming the first value that is not a whole number of at least ``lo``."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise HardwareError(f"{owner}: {name} must be a whole number >= {lo}, got {v!r}")


def stream_time_s(ch: PimChannelParams, nbytes: float) -> float:
    """Time for the channel's units to stream ``nbytes`` spread evenly over its banks (no overhead).

    The first data arrives after tRCD + tCL; then bytes flow at the internal bandwidth.
    """
    if not (0.0 <= nbytes < _INF):
        _check("stream_time_s", nbytes=nbytes)
    if nbytes == 0:
        return 0.0
    return ch.first_access_s + nbytes / ch.internal_bw_bytes_per_s


def compute_time_s(ch: PimChannelParams, flops: float) -> float:
    """Time for the channel's units to do ``flops`` spread evenly over them (no overhead)."""
    if not (0.0 <= flops < _INF):
        _check("compute_time_s", flops=flops)
    return flops / ch.peak_flops_per_s


def io_time_s(ch: PimChannelParams, nbytes: float) -> float:
    """Time for ``nbytes`` to cross the channel's external interface (no overhead)."""
    if not (0.0 <= nbytes < _INF):
        _check("io_time_s", nbytes=nbytes)
    return nbytes / ch.external_bw_bytes_per_s


def op_time_s(ch: PimChannelParams, nbytes: float, flops: float) -> float:
    """One in-memory operation: overhead + max(stream ``nbytes`` from the banks, compute ``flops``)."""
    return ch.op_overhead_s + max(stream_time_s(ch, nbytes), compute_time_s(ch, flops))


def op_energy_j(ch: PimChannelParams, array_bytes: float, flops: float, io_bytes: float = 0.0) -> float:
    """Energy of bytes read or written in the array, FLOPs in the units, and bytes crossing the interface."""
    if not (0.0 <= array_bytes < _INF and 0.0 <= flops < _INF and 0.0 <= io_bytes < _INF):
        _check("op_energy_j", array_bytes=array_bytes, flops=flops, io_bytes=io_bytes)
    return (array_bytes * ch.energy_per_array_byte_j + flops * ch.energy_per_flop_j
            + io_bytes * ch.energy_per_io_byte_j)


def peak_dynamic_power_w(ch: PimChannelParams) -> float:
    """The largest mean dynamic power one channel's work can reach: its units streaming at the internal bandwidth
    while computing at their peak FLOP/s, or its interface moving data (into the array) at the external
    bandwidth, or its near-memory unit at its peak FLOP/s with the scores crossing the interface."""
    stream = internal_bw_bytes_per_s(ch) * ch.energy_per_array_byte_j + ch.peak_flops_per_s * ch.energy_per_flop_j
    io = ch.external_bw_bytes_per_s * (ch.energy_per_io_byte_j + ch.energy_per_array_byte_j)
    near = ch.near_flops_per_s * ch.energy_per_flop_j + ch.external_bw_bytes_per_s * ch.energy_per_io_byte_j
    return max(stream, io, near)


def dynamic_power_cap_w(ch: PimChannelParams) -> float | None:
    """Dynamic power a channel may draw under its limit, ``max_power_w - idle_power_w``; None without a limit."""
    return ch.max_power_w - ch.idle_power_w if ch.max_power_w > 0 else None


def power_throttle(ch: PimChannelParams, energy_j: float, duration_s: float) -> float:
    """Stretch factor (>= 1) of a channel's work that takes ``duration_s`` and ``energy_j`` of dynamic energy:
    when its mean dynamic power exceeds the cap (``dynamic_power_cap_w``), the work is slowed to run at the cap,
    ``energy_j / (cap x duration_s)``; else 1 (and always 1 without a limit)."""
    cap = dynamic_power_cap_w(ch)
    if cap is None or duration_s <= 0 or energy_j <= 0:
        return 1.0
    if cap <= 0:
        raise HardwareError(f"pim channel '{ch.name}': max_power_w ({ch.max_power_w}) leaves no power above "
                            f"idle_power_w ({ch.idle_power_w}) for work")
    return max(1.0, energy_j / (cap * duration_s))


def _work(ch: PimChannelParams, kind: str, duration_s: float, array_bytes: float, flops: float,
          io_bytes: float) -> Work:
    return Work(kind, duration_s, array_bytes + io_bytes, flops, op_energy_j(ch, array_bytes, flops, io_bytes))


def op_work(ch: PimChannelParams, kind: str, nbytes: float, flops: float) -> Work:
    """``op_time_s`` as a ``Work`` item (streamed bytes, FLOPs and energy filled in)."""
    return _work(ch, kind, op_time_s(ch, nbytes, flops), nbytes, flops, 0.0)


def write_work(ch: PimChannelParams, nbytes: float, kind: str = "pim.write") -> Work:
    """Write ``nbytes`` into the banks through the interface (e.g. appended K/V): overhead + interface time."""
    return _work(ch, kind, ch.op_overhead_s + io_time_s(ch, nbytes), nbytes, 0.0, nbytes)


def read_out_work(ch: PimChannelParams, nbytes: float, kind: str = "pim.read_out") -> Work:
    """Read ``nbytes`` of results out through the interface: overhead + interface time."""
    return _work(ch, kind, ch.op_overhead_s + io_time_s(ch, nbytes), 0.0, 0.0, nbytes)


def broadcast_work(ch: PimChannelParams, nbytes: float, kind: str = "pim.broadcast") -> Work:
    """Write the same small data (a query, a lookup table) to every unit's buffer in the channel.

    The channel broadcasts to its units (AiM's global buffer, all-bank writes), so the data crosses the interface
    once. Data larger than a unit's buffer does not fit; see ``pq_lookup_plan``.
    """
    return _work(ch, kind, ch.op_overhead_s + io_time_s(ch, nbytes), 0.0, 0.0, nbytes)


PQ_DATAFLOWS = ("subspace", "repass", "bank_split")
# Between passes over the codes a token's running score (or its softmax weight) per query head waits in the bank.
SCORE_BYTES = FP16_BYTES
# A token's index within its sequence, as exact re-rank's candidates and selections carry it (32-bit).
INDEX_BYTES = 4


@dataclass(frozen=True)
class PqLookupPlan:
    """How one PIM unit scores PQ codes with a lookup buffer that may be smaller than its tables.

    A (sequence, KV head) needs ``rows = g x M`` table rows (K FP16 entries each) while scoring and as many bin
    rows while scatter-adding softmax weights; one unit's buffer holds ``rows_per_buffer`` of them. Per token and
    query head, with ``c`` the code bytes of one tensor:

    * ``code_reads``: times each code byte is streamed from the bank (per phase);
    * ``carried``: passes after the first that read and write back the token's running score (score phase)
      and read its softmax weight again (value phase), ``SCORE_BYTES`` each, through the bank;
    * ``reduced``: partial scores sent through the channel's shared data path to be summed (``bank_split``),
      and as many weight copies broadcast back for the value phase;
    * ``codebook_reads``: times a unit's codebook is streamed to build its table rows (and to multiply its bins).

    Dataflows (``PQ_DATAFLOWS``):

    * ``subspace``: codes stored sub-space by sub-space (a column per sub-space); a pass holds the rows of as
      many sub-spaces as fit, for all g query heads, and streams only their columns, so every code byte is read
      once; the running scores are carried between passes. With fewer rows than g, the query heads are split
      into ``ceil(g / rows_per_buffer)`` groups and each column is read once per group.
    * ``repass``: codes stored token by token (a token's M codes together); a pass holds the rows of as many
      whole query heads as fit and streams all codes again; when one head's M rows do not fit, its sub-spaces are
      split over ``ceil(M / rows_per_buffer)`` passes and its running score is carried between them.
    * ``bank_split``: the tables are split across the banks of a channel: up to ``units`` units pool their
      buffers, each holding all g query heads' rows of its own sub-spaces, and each sub-space's codes live in the
      bank of the unit holding its rows; each unit produces a partial score per token and query head and the
      partials are summed through the channel's shared data path (``external_bw_bytes_per_s``, the path its
      all-bank broadcasts use). When the pool cannot hold every row, it makes several passes, each over a slice
      of sub-spaces (more partials); with fewer rows than g per unit, query heads are grouped as in ``subspace``.

    All three equal one pass (``passes`` 1, nothing carried or reduced) when a unit's rows fit its buffer.
    """

    dataflow: str
    rows: int
    rows_per_buffer: int
    pool: int
    passes: int
    code_reads: int
    carried: int
    reduced: int
    codebook_reads: int


def pq_lookup_plan(ch: PimChannelParams, group: int, m: int, k: int, dataflow: str = "subspace") -> PqLookupPlan:
    """The lookup plan of one unit of ``ch`` (GQA ``group`` query heads per KV head, ``m`` sub-spaces, ``k``
    centroids); a HardwareError when the channel has no AQPIM unit or its buffer holds less than one row."""
    owner = "pq_lookup_plan"
    _whole(owner, 1, group=group, m=m, k=k)
    if dataflow not in PQ_DATAFLOWS:
        raise HardwareError(f"{owner}: dataflow must be one of {PQ_DATAFLOWS}, got {dataflow!r}"
                            f"{did_you_mean(str(dataflow), PQ_DATAFLOWS)}")
    unit = aqpim_unit_of(ch)
    row_bytes = k * FP16_BYTES
    r = int(unit.lut_bytes // row_bytes)
    if r < 1:
        raise HardwareError(f"pim channel '{ch.name}': lookup buffer of {unit.lut_bytes:g} bytes per unit is smaller "
                            f"than one table row ({k} centroids x {FP16_BYTES} bytes = {row_bytes} bytes); use a "
                            f"larger lut_bytes or a smaller pq_k")
    g, rows = group, group * m
    if r >= rows:
        return PqLookupPlan(dataflow, rows, r, 1, 1, 1, 0, 0, 1)
    if dataflow == "repass":
        if r >= m:
            passes = math.ceil(g / min(g, r // m))
            return PqLookupPlan(dataflow, rows, r, 1, passes, passes, 0, 0, passes)
        slices = math.ceil(m / r)
        return PqLookupPlan(dataflow, rows, r, 1, g * slices, g * slices, slices - 1, 0, g)
    groups = math.ceil(g / r) if r < g else 1  # query-head groups, each a sweep over the codes
    per_unit = max(1, r // g)                  # sub-spaces whose rows (all heads of the group) one unit holds
    if dataflow == "subspace":
        slices = math.ceil(m / per_unit)
        return PqLookupPlan(dataflow, rows, r, 1, groups * slices, groups, slices - 1, 0, groups)
    pool = min(ch.units, math.ceil(m / per_unit))
    slices = math.ceil(m / (pool * per_unit))
    return PqLookupPlan(dataflow, rows, r, pool, groups * slices, groups * slices, 0, pool * slices - 1, groups)


def aqpim_unit_of(ch: PimChannelParams) -> AqpimUnitParams:
    if ch.aqpim_unit is None:
        raise HardwareError(f"pim channel '{ch.name}' has no AQPIM lookup unit: its preset needs an [aqpim_unit] "
                            f"section (lut_bytes, lut_banks, lut_clock_hz, lut_access_energy_j)")
    return ch.aqpim_unit


def lookup_time_s(ch: PimChannelParams, accesses: float) -> float:
    """Time for the channel's units to make ``accesses`` lookup-SRAM reads or writes, spread evenly over them."""
    if not (0.0 <= accesses < _INF):
        _check("lookup_time_s", accesses=accesses)
    return accesses / (ch.units * aqpim_unit_of(ch).accesses_per_s) if accesses else 0.0


def lookup_op_work(ch: PimChannelParams, kind: str, nbytes: float, flops: float, accesses: float) -> Work:
    """An in-memory operation that also uses the lookup SRAM: overhead + max(stream, compute, lookups); the
    accesses add ``lut_access_energy_j`` each."""
    t = ch.op_overhead_s + max(stream_time_s(ch, nbytes), compute_time_s(ch, flops), lookup_time_s(ch, accesses))
    energy = op_energy_j(ch, nbytes, flops) + accesses * aqpim_unit_of(ch).lut_access_energy_j
    return Work(kind, t, nbytes, flops, energy)


def lookup_limiter(ch: PimChannelParams, nbytes: float, flops: float, accesses: float) -> str:
    """Which roof sets ``lookup_op_work``'s time: streaming from the banks, compute, or lookup-SRAM accesses."""
    roofs = {"bank streaming": stream_time_s(ch, nbytes), "compute": compute_time_s(ch, flops),
             "lookup SRAM": lookup_time_s(ch, accesses)}
    return max(roofs, key=roofs.get)


# ------------------------------------------------------------------ decode attention on one channel

def score_work(ch: PimChannelParams, w: ChannelAttention) -> Work:
    """q . K for every stored K vector: stream the channel's K bytes, 2 x head_dim FLOPs per score."""
    return op_work(ch, "pim.score", w.kv_bytes, w.gemv_flops)


def context_work(ch: PimChannelParams, w: ChannelAttention) -> Work:
    """Weighted sum of the stored V vectors: stream the channel's V bytes, 2 x head_dim FLOPs per score."""
    return op_work(ch, "pim.context", w.kv_bytes, w.gemv_flops)


def softmax_work(ch: PimChannelParams, n_scores: float, placement: str = "pim",
                 bytes_per_score: float = 2.0) -> Work:
    """Softmax over the channel's ``n_scores`` scores.

    ``pim``: the units work on scores they hold. ``near``: scores go to the channel's near-memory unit and back
    over the channel's interface path. ``host``: only the channel side is charged here (scores out, weights back
    in over the interface); the caller adds the device link and the host's compute. The cross-channel max and
    sum are the caller's merge (softmax statistics return with each query's partial output).
    """
    if not (0.0 <= n_scores < _INF and 0.0 <= bytes_per_score < _INF):
        _check("softmax_work", n_scores=n_scores, bytes_per_score=bytes_per_score)
    if placement not in SOFTMAX_PLACEMENTS:
        raise HardwareError(f"softmax placement must be one of {SOFTMAX_PLACEMENTS}, got {placement!r}"
                            f"{did_you_mean(str(placement), SOFTMAX_PLACEMENTS)}")
    flops = SOFTMAX_FLOPS_PER_ELEMENT * n_scores
    moved = 2.0 * n_scores * bytes_per_score
    kind = f"pim.softmax.{placement}"
    if placement == "pim":
        return _work(ch, kind, ch.op_overhead_s + compute_time_s(ch, flops), 0.0, flops, 0.0)
    if placement == "near":
        if ch.near_flops_per_s == 0:
            raise HardwareError(f"pim channel '{ch.name}' has no near-memory unit (near_flops_per_s = 0); "
                                f"use softmax placement 'pim' or 'host'")
        time_s = ch.op_overhead_s + io_time_s(ch, moved) + flops / ch.near_flops_per_s
        return _work(ch, kind, time_s, 0.0, flops, moved)
    return _work(ch, kind, ch.op_overhead_s + io_time_s(ch, moved), 0.0, 0.0, moved)


def append_work(ch: PimChannelParams, new_vectors: float, head_dim: int, bytes_per_element: float = 2.0) -> Work:
    """Append ``new_vectors`` new K and as many V vectors (the decode step's new token) to the channel."""
    if not (0.0 <= new_vectors < _INF):
        _check("append_work", new_vectors=new_vectors)
    if not (type(head_dim) is int and 0 < head_dim and 0.0 < bytes_per_element < _INF):
        positive("append_work", head_dim=head_dim, bytes_per_element=bytes_per_element)
    return write_work(ch, 2.0 * new_vectors * head_dim * bytes_per_element, kind="pim.append")


def attention_works(ch: PimChannelParams, w: ChannelAttention, softmax: str = "pim") -> tuple[Work, ...]:
    """The channel's part of one layer's decode attention, in order: query in, scores, softmax, weighted sum
    of V, partial outputs out. Hand the tuple to one ``Component.run`` (one resource hold per channel)."""
    return (broadcast_work(ch, w.query_bytes, kind="pim.q_in"),
            score_work(ch, w),
            softmax_work(ch, w.scores, softmax, w.bytes_per_element),
            context_work(ch, w),
            read_out_work(ch, w.output_bytes, kind="pim.out"))


# ------------------------------------------------------------------ decode attention per KV format (one channel)
#
# One function per KV format gives the work of ONE channel for one layer, from the channel's load: ``tokens``
# coded (or, for FP16, stored) K vectors held, as many V vectors; ``units`` (sequence, KV head) units present;
# ``new`` new K/V vectors appended this step (the channel receiving a unit's new token also holds that unit's
# FP16 window). Geometry comes as plain numbers: ``head_dim``, ``group`` (query heads per KV head) and
# ``bytes_per_element`` of the model's activations (queries, outputs, FP16 tokens). Loads may be fractional
# (a unit's tokens striped over channels, loads divided into link chunks).

@dataclass(frozen=True)
class AttentionWorks:
    """One channel's work for one layer of decode attention, cut where the scores leave the channel.

    With softmax on the host the channel runs ``before_softmax`` (which ends with the channel side of the softmax:
    scores out, weights back in), the host computes the softmax, then the channel runs ``after_softmax``. With
    softmax in PIM or near memory the channel runs ``all`` in one resource hold.
    """

    before_softmax: tuple[Work, ...]
    after_softmax: tuple[Work, ...]

    @property
    def all(self) -> tuple[Work, ...]:
        return self.before_softmax + self.after_softmax


def _check_load(owner: str, tokens: float, units: float, new: float, head_dim: int, group: int,
                bytes_per_element: float) -> None:
    if not (0.0 <= tokens < _INF and 0.0 <= units < _INF and 0.0 <= new < _INF):
        _check(owner, tokens=tokens, units=units, new=new)
    if not (type(head_dim) is int and type(group) is int and 0 < head_dim and 0 < group
            and 0.0 < bytes_per_element < _INF):
        positive(owner, head_dim=head_dim, group=group, bytes_per_element=bytes_per_element)


def _queries_in(ch: PimChannelParams, units: float, group: int, head_dim: int, e: float) -> Work:
    """The ``units x group`` queries, ``head_dim x e`` bytes each, broadcast to the channel's units."""
    return broadcast_work(ch, units * group * head_dim * e, kind="pim.q_in")


def _partials_out(ch: PimChannelParams, units: float, group: int, head_dim: int, e: float) -> Work:
    """One partial output (``head_dim x e`` bytes) plus its softmax statistics per query, read out."""
    return read_out_work(ch, units * group * (head_dim * e + SOFTMAX_STATS_BYTES_PER_QUERY), kind="pim.out")


def _window(new: float, window: int, head_dim: int, group: int, e: float) -> ChannelAttention:
    """The FP16 window of the units whose new token this channel receives: ``new x window`` K and V vectors.
    Its queries are counted with the coded part (``query_vectors=0``)."""
    return ChannelAttention(kv_vectors=new * window, head_dim=head_dim, queries_per_kv=group, query_vectors=0,
                            bytes_per_element=e)


def fp16_attention_works(ch: PimChannelParams, tokens: float, units: float, new: float, *, head_dim: int,
                         group: int, bytes_per_element: float, softmax: str) -> AttentionWorks:
    """FP16 KV in PIM (the SOTA PIM baseline). With ``d = head_dim``, ``g = group``, ``e = bytes_per_element``:

    before the softmax
      - ``pim.append``: the new K and V written through the interface, ``2 x new x d x e`` bytes (one command
        overhead even when ``new`` is 0, as the baseline has always charged it);
      - ``pim.q_in``: ``units x g`` queries of ``d x e`` bytes broadcast to the units;
      - ``pim.score``: stream K, ``tokens x d x e`` bytes; ``2 x d`` FLOPs per score (multiply and add per
        element), ``tokens x g`` scores;
      - ``pim.softmax.<placement>``: softmax over ``tokens x g`` scores (``softmax_work``);
    after the softmax
      - ``pim.context``: stream V, ``tokens x d x e`` bytes, ``2 x d`` FLOPs per score;
      - ``pim.out``: ``units x g`` partial outputs of ``d x e`` bytes plus ``SOFTMAX_STATS_BYTES_PER_QUERY``.
    """
    _check_load("fp16_attention_works", tokens, units, new, head_dim, group, bytes_per_element)
    e = bytes_per_element
    w = ChannelAttention(kv_vectors=tokens, head_dim=head_dim, queries_per_kv=group, query_vectors=units * group,
                         bytes_per_element=e)
    q_in, score, soft, context, out = attention_works(ch, w, softmax)
    return AttentionWorks((append_work(ch, new, head_dim, e), q_in, score, soft), (context, out))


def pq_attention_works(ch: PimChannelParams, tokens: float, units: float, new: float, *, head_dim: int, group: int,
                       bytes_per_element: float, m: int, k: int, outliers: int, window: int, lut: PqLookupPlan,
                       softmax: str, key_k: int = 0, pre_rope: bool = False,
                       lut_key: PqLookupPlan | None = None, stages: int = 1,
                       scale_keys: bool = False, rerank: int = 0) -> AttentionWorks:
    """PQ codes in PIM (AQPIM; DESIGN.md's working dataflow). Each coded token stores, per tensor, ``m`` codes of
    ``log2 k`` bits (``code = m x log2(k) / 8`` bytes) and ``outliers`` FP16 key channels; each (unit, layer)
    has K and V codebooks of ``k x d`` FP16 entries (``cb = k x d x FP16_BYTES`` bytes per tensor). With
    ``d = head_dim``, ``g = group``, ``e = bytes_per_element``, the lookup plan ``lut`` (``pq_lookup_plan``:
    ``code_reads``, ``carried``, ``reduced``, ``codebook_reads``) and ``S = SCORE_BYTES``; the lookup-SRAM
    accesses of an operation bound its time beside streaming and compute (``lookup_op_work``):

    before the softmax
      - ``pim.q_in``: ``units x g`` queries of ``d x e`` bytes;
      - if ``new``: ``aqpim.quantize``: the token leaving the FP16 window is coded in memory: stream both
        codebooks (``new x 2 x cb`` bytes), ``QUANTIZE_FLOPS_PER_ELEMENT x k x d`` FLOPs per tensor (distance to
        every centroid); ``aqpim.write_codes``: ``new x 2 x code`` bytes written; ``pim.append``: the new token
        enters the window, ``2 x new x d x e`` bytes;
      - ``aqpim.table``: the query-centroid tables from the key codebook, ``units x cb x codebook_reads`` bytes
        streamed, ``2 x k x d`` FLOPs per query (``units x g`` queries), ``units x g x m x k`` entries written;
      - ``aqpim.score``: stream the key codes ``code_reads`` times plus the FP16 outlier channels, and read and
        write back the running scores ``carried`` times, ``tokens x (code x code_reads + outliers x FP16_BYTES +
        2 x g x carried x S)`` bytes; per score ``2 x m`` FLOPs (gather and add m table entries) plus
        ``2 x outliers`` (their exact dot products), ``tokens x g`` scores; ``tokens x g x m`` entries read;
      - if ``reduced``: ``aqpim.reduce``: ``tokens x g x reduced x S`` bytes of partial scores over the channel's
        shared data path (``read_out_work`` timing);
      - ``pim.softmax.<placement>``: over ``(tokens + new x window) x g`` scores (coded and window tokens);
    after the softmax
      - if ``reduced``: ``aqpim.weights_in``: the weights broadcast back to the pool, as many bytes;
      - ``aqpim.value``: stream the value codes ``code_reads`` times and the weights again ``carried`` times,
        ``tokens x (code x code_reads + g x carried x S)`` bytes; ``2 x m`` FLOPs per score (scatter-add the
        weight into m bins), each a read and a write of a bin: ``2 x tokens x g x m`` accesses;
      - ``aqpim.bins_x_centroids``: bins times the value codebook, ``units x cb x codebook_reads`` bytes,
        ``2 x k x d`` FLOPs per query, ``units x g x m x k`` bins read;
      - if ``new`` and ``window``: the FP16 window attended exactly, ``pim.score`` and ``pim.context`` over
        ``new x window`` K and V vectors (``score_work`` / ``context_work``). Its scores are computed after the
        host softmax in this order (the baseline AQPIM model's order, kept so its numbers do not move);
      - ``pim.out``: ``units x g`` partial outputs plus softmax statistics.

    Key-side fixes (``workloads.kvformats.PqPimCosts`` lists them): ``key_k`` (a key codebook of ``kk = key_k``
    centroids: key codes of ``m x log2 kk / 8`` bytes, a ``kk x d`` key codebook streamed to build the tables and to
    quantize, ``m x kk`` table entries per query) and ``pre_rope`` (keys coded before RoPE: the table holds
    ``kk x d`` values per query, built with ``3 x kk x d`` FLOPs; a score reads ``d`` entries with ``2 d`` FLOPs,
    outliers 6 FLOPs each, and each token's rotation costs ``3 d`` FLOPs per unit). The key phases then use
    ``lut_key``, the lookup plan of the key table (``d`` rows of ``kk`` entries per query with ``pre_rope``).

    ``stages`` (``S``, residual PQ: the m codes of a token spent as S stages of m / S sub-spaces, each stage coding
    what the stages before it left): the key and value codebooks are S times larger (``S x kk x d`` and ``S x k x
    d`` FP16), so ``aqpim.table`` streams S times the key codebook with S times the FLOPs, ``aqpim.bins_x_centroids``
    S times the value codebook and FLOPs, and ``aqpim.quantize`` streams both and computes S times the distances
    (each stage's centroids cover all d dims); the table and bin rows stay ``m`` per query head (the stages share
    them) and a token still reads m entries and scatters into m bins. With ``pre_rope`` every stage has its own
    complex table: ``S x kk x d`` values per query, ``S x d`` reads and ``2 S d`` FLOPs per score (``lut_key`` is
    then the plan of ``S x d`` rows). ``scale_keys`` (key channels divided by their RMS before k-means): the
    ``d`` FP16 scales are streamed with the key codebook and each query is multiplied by them, ``d`` FLOPs per
    query, in ``aqpim.table``; nothing per token. Defaults (1 stage, no scales) leave the work unchanged.

    ``rerank`` (``R``, exact re-rank: the R coded tokens of highest coded score per unit, the largest over its ``g``
    query heads, are attended exactly on the host; ``sim.systems.aqpim``) cuts the work after the score gather
    instead of at the softmax, since the softmax and the bins must leave the selected tokens out and the
    selection is made on the GPU from every channel's candidates:
      - before the cut, after ``aqpim.score``/``aqpim.reduce``: ``aqpim.select``, a running top R per unit,
        ``g + 1`` FLOPs per token (the group's largest score, one compare with the R-th best);
        ``aqpim.scores_spill``: the ``tokens x g`` scores written to the banks (``S`` bytes each), since the
        channel waits a round trip for the selection; ``aqpim.rerank_out``: the candidates read out, ``min(units x
        R, tokens)`` of ``INDEX_BYTES + S`` bytes;
      - after the cut, first: ``aqpim.rerank_in``: the selection broadcast, ``units x R x INDEX_BYTES`` bytes;
        ``aqpim.scores_reload``: the scores streamed back, ``tokens x g x S`` bytes; then the softmax and the rest
        as above (the selected tokens' weights skipped, their scores' share of the work left in).
    """
    owner = "pq_attention_works"
    _check_load(owner, tokens, units, new, head_dim, group, bytes_per_element)
    _whole(owner, 1, m=m, k=k)
    _whole(owner, 0, outliers=outliers, window=window)
    if k & (k - 1):
        raise HardwareError(f"{owner}: k must be a power of two (codes of log2 k bits), got {k}")
    if not isinstance(lut, PqLookupPlan):
        raise HardwareError(f"{owner}: lut must be a PqLookupPlan (pq_lookup_plan), got {type(lut).__name__}")
    _whole(owner, 1, stages=stages)
    if not isinstance(scale_keys, bool):
        raise HardwareError(f"{owner}: scale_keys must be true or false, got {scale_keys!r}")
    if m % stages:
        raise HardwareError(f"{owner}: stages ({stages}) must divide m ({m})")
    g, d, e = group, head_dim, bytes_per_element
    codebook_bytes = stages * k * d * FP16_BYTES  # one tensor of one KV head in one layer, all residual stages
    code_bytes = m * (k.bit_length() - 1) / 8  # one tensor of one token in one KV head
    entries = units * g * m * k  # bins read per layer (and table entries written without a key fix)
    # The key side: plain PQ unless a fix gives keys their own codebook size or pre-RoPE tables.
    if key_k or pre_rope:
        if not isinstance(lut_key, PqLookupPlan):
            raise HardwareError(f"{owner}: key_k or pre_rope needs lut_key, the key table's lookup plan")
        if key_k and key_k & (key_k - 1):
            raise HardwareError(f"{owner}: key_k must be a power of two, got {key_k}")
    else:
        lut_key = lut
    kk = key_k or k
    key_cb = stages * kk * d * FP16_BYTES
    key_code = m * (kk.bit_length() - 1) / 8
    reads, table_flops, outlier_flops = (stages * d, 3.0, 6.0) if pre_rope else (m, 2.0, 2.0)
    table_entries = units * g * (stages * kk * d if pre_rope else m * kk)
    scales = d * FP16_BYTES if scale_keys else 0  # the key scales, streamed with the key codebook
    scale_flops = units * g * d if scale_keys else 0.0  # each query times the scales
    before = [_queries_in(ch, units, g, d, e)]
    if new:
        before.append(op_work(ch, "aqpim.quantize", new * (key_cb + codebook_bytes),
                              new * QUANTIZE_FLOPS_PER_ELEMENT * stages * (kk + k) * d))
        before.append(write_work(ch, new * (key_code + code_bytes), kind="aqpim.write_codes"))
        before.append(append_work(ch, new, d, e))
    before.append(lookup_op_work(ch, "aqpim.table", units * (key_cb + scales) * lut_key.codebook_reads,
                                 units * g * table_flops * stages * kk * d + scale_flops, table_entries))
    before.append(lookup_op_work(ch, "aqpim.score", tokens * (key_code * lut_key.code_reads + outliers * FP16_BYTES
                                                              + 2.0 * g * lut_key.carried * SCORE_BYTES),
                                 tokens * g * (2.0 * reads + outlier_flops * outliers)
                                 + (tokens * 3.0 * d if pre_rope else 0.0), tokens * g * reads))
    shared = tokens * g * lut_key.reduced * SCORE_BYTES
    if shared:
        before.append(read_out_work(ch, shared, kind="aqpim.reduce"))
    soft = softmax_work(ch, (tokens + new * window) * g, softmax, e)
    after = []
    if rerank:
        _whole(owner, 1, rerank=rerank)
        scores = tokens * g * SCORE_BYTES
        before += [op_work(ch, "aqpim.select", 0.0, tokens * (g + 1.0)),
                   write_work(ch, scores, kind="aqpim.scores_spill"),
                   read_out_work(ch, min(units * rerank, tokens) * (INDEX_BYTES + SCORE_BYTES),
                                 kind="aqpim.rerank_out")]
        after += [broadcast_work(ch, units * rerank * INDEX_BYTES, kind="aqpim.rerank_in"),
                  op_work(ch, "aqpim.scores_reload", scores, 0.0), soft]
    else:
        before.append(soft)
    weights_back = tokens * g * lut.reduced * SCORE_BYTES  # the value pool's weight copies (= shared without a fix)
    after += [broadcast_work(ch, weights_back, kind="aqpim.weights_in")] if weights_back else []
    after += [lookup_op_work(ch, "aqpim.value", tokens * (code_bytes * lut.code_reads + g * lut.carried * SCORE_BYTES),
                             tokens * g * 2.0 * m, 2.0 * tokens * g * m),
              lookup_op_work(ch, "aqpim.bins_x_centroids", units * codebook_bytes * lut.codebook_reads,
                             units * g * 2.0 * stages * k * d, entries)]
    if new and window:
        fp16 = _window(new, window, d, g, e)
        after += [score_work(ch, fp16), context_work(ch, fp16)]
    after.append(_partials_out(ch, units, g, d, e))
    return AttentionWorks(tuple(before), tuple(after))


# The AQPIM phases as they appear in traces, breakdowns and ``explain``: each Work kind of ``pq_attention_works``
# belongs to one of them (``pq_phase_of``).
PQ_PHASES = ("quantize", "table", "score", "rerank", "softmax", "scatter", "bins", "window", "out")
_PQ_PHASE_OF_KIND = {"aqpim.quantize": "quantize", "aqpim.write_codes": "quantize", "pim.append": "quantize",
                     "pim.q_in": "table", "aqpim.table": "table", "aqpim.score": "score", "aqpim.reduce": "score",
                     "aqpim.weights_in": "scatter", "aqpim.value": "scatter", "aqpim.bins_x_centroids": "bins",
                     "pim.score": "window", "pim.context": "window", "pim.out": "out",
                     "aqpim.select": "rerank", "aqpim.scores_spill": "rerank", "aqpim.rerank_out": "rerank",
                     "aqpim.rerank_in": "rerank", "aqpim.scores_reload": "rerank"}


def pq_phase_of(kind: str) -> str:
    """The AQPIM phase of a Work kind of ``pq_attention_works`` (in-memory quantization and the new token,
    table build, score gather, exact re-rank's selection and score round trip, softmax, bin scatter, bins x
    centroids, the FP16 window, partial outputs out)."""
    if kind.startswith("pim.softmax."):
        return "softmax"
    return _PQ_PHASE_OF_KIND[kind]


def int_attention_works(ch: PimChannelParams, tokens: float, units: float, new: float, *, head_dim: int, group: int,
                        bytes_per_element: float, bits: int, group_size: int, window: int,
                        softmax: str) -> AttentionWorks:
    """INT-k KV in PIM, KIVI style (ICML'24, arXiv 2402.02750): keys quantized per channel in groups of
    ``group_size`` tokens, values per token in groups of ``group_size`` channels, asymmetric, with an FP16 scale
    and zero point per group (``INT_GROUP_PARAM_BYTES``); the last ``window`` tokens (sinks and recent) of a
    unit stay FP16 in the channel that receives its new token.

    With ``d = head_dim``, ``g = group``, ``e = bytes_per_element``, ``G = group_size``, ``P =
    INT_GROUP_PARAM_BYTES``, ``vg = ceil(d / G)`` value groups per token, one coded token stores per tensor
    ``c = d x bits / 8`` code bytes; the keys add ``d x P / G`` bytes of scales per token (d channels, one group
    per G tokens, amortised: no partial group is rounded up, as the PIM storage count), the values ``vg x P``.

    before the softmax
      - ``pim.q_in``: ``units x g`` queries of ``d x e`` bytes;
      - if ``new``: ``int.quantize``: the token leaving the FP16 window is quantized in memory: read its K and V,
        ``new x 2 x d x e`` bytes; ``INT_QUANTIZE_FLOPS_PER_ELEMENT`` FLOPs per element (``new x 2 x d``
        elements) plus ``INT_SCALE_FLOPS_PER_GROUP`` per group completed (``d / G`` key groups amortised and
        ``vg`` value groups per token); ``int.write_codes``: codes and the token's share of scales written,
        ``new x (2 c + d x P / G + vg x P)`` bytes (through the write path, as PQ's codes); ``pim.append``: the
        new token enters the window, ``2 x new x d x e`` bytes;
      - ``int.score``: stream the key codes and key scales, ``tokens x (c + d x P / G)`` bytes; per element
        ``INT_DEQUANTIZE_FLOPS_PER_ELEMENT`` (dequantized once, shared by the group's queries) plus ``2 x g``
        (a multiply-add with each query), ``tokens x d`` elements;
      - if ``new`` and ``window``: ``pim.score`` over the FP16 window's ``new x window`` keys (``score_work``),
        so every score exists before the softmax;
      - ``pim.softmax.<placement>``: over ``(tokens + new x window) x g`` scores;
    after the softmax
      - ``int.value``: stream the value codes and value scales, ``tokens x (c + vg x P)`` bytes;
        ``INT_DEQUANTIZE_FLOPS_PER_ELEMENT + 2 x g`` FLOPs per element (dequantize, then a multiply-add with
        each query's weight);
      - if ``new`` and ``window``: ``pim.context`` over the window's values (``context_work``);
      - ``pim.out``: ``units x g`` partial outputs plus softmax statistics.
    """
    owner = "int_attention_works"
    _check_load(owner, tokens, units, new, head_dim, group, bytes_per_element)
    _whole(owner, 1, bits=bits, group_size=group_size)
    _whole(owner, 0, window=window)
    if bits > 8:
        raise HardwareError(f"{owner}: bits must be at most 8, got {bits}")
    g, d, e = group, head_dim, bytes_per_element
    code_bytes = d * bits / 8  # one tensor of one token in one KV head
    key_param_bytes = d * INT_GROUP_PARAM_BYTES / group_size  # per token: d channel groups, one per G tokens
    value_groups = math.ceil(d / group_size)
    value_param_bytes = value_groups * INT_GROUP_PARAM_BYTES  # per token
    before = [_queries_in(ch, units, g, d, e)]
    if new:
        flops = new * (2 * d * INT_QUANTIZE_FLOPS_PER_ELEMENT + INT_SCALE_FLOPS_PER_GROUP * (d / group_size
                                                                                           + value_groups))
        before.append(op_work(ch, "int.quantize", new * 2 * d * e, flops))
        before.append(write_work(ch, new * (2 * code_bytes + key_param_bytes + value_param_bytes),
                                 kind="int.write_codes"))
        before.append(append_work(ch, new, d, e))
    per_element = INT_DEQUANTIZE_FLOPS_PER_ELEMENT + 2.0 * g
    before.append(op_work(ch, "int.score", tokens * (code_bytes + key_param_bytes), tokens * d * per_element))
    fp16 = _window(new, window, d, g, e) if new and window else None
    if fp16 is not None:
        before.append(score_work(ch, fp16))
    before.append(softmax_work(ch, (tokens + new * window) * g, softmax, e))
    after = [op_work(ch, "int.value", tokens * (code_bytes + value_param_bytes), tokens * d * per_element)]
    if fp16 is not None:
        after.append(context_work(ch, fp16))
    after.append(_partials_out(ch, units, g, d, e))
    return AttentionWorks(tuple(before), tuple(after))


# ------------------------------------------------------------------ presets

TOP_KEYS = {"name", "description", "device", "channel", "aqpim_unit"}

pim_preset_names = PIM_PRESETS.names


def _timing_from(raw, where: str, origin: str) -> DramTimingParams:
    """A channel's ``timing``: a DRAM timing preset name or path, or a nested table of timing values (which
    then comes from the device's own file, ``origin``)."""
    if isinstance(raw, str):
        return load_dram_timing(raw)
    if isinstance(raw, dict):
        return dram_timing_from_table({"timing": raw}, where, origin)
    raise HardwareError(f"{where}: timing must be a DRAM timing preset name or a table, got {raw!r}")


def pim_from_table(table: dict, where: str, origin: str = "") -> PimDeviceParams:
    """Build a device from a table: top-level name and description, a [device] and a [channel] table, and
    optionally an [aqpim_unit] table (the AQPIM lookup hardware beside each unit)."""
    for key in table:
        if key not in TOP_KEYS:
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, TOP_KEYS)}; "
                                f"valid keys: {', '.join(sorted(TOP_KEYS))}")
    for section in ("device", "channel"):
        if not isinstance(table.get(section), dict):
            raise HardwareError(f"{where}: missing section [{section}]")
    channel_table = dict(table["channel"])
    if "lut_bytes" in channel_table:
        raise HardwareError(f"{where} [channel]: lut_bytes moved to the [aqpim_unit] section (with lut_banks, "
                            f"lut_clock_hz and lut_access_energy_j)")
    unit = None
    if "aqpim_unit" in table:
        unit = build(AqpimUnitParams, table["aqpim_unit"], f"{where} [aqpim_unit]")
    if "timing" not in channel_table:
        raise HardwareError(f"{where} [channel]: missing required key 'timing' (a DRAM timing preset name, one of "
                            f"{', '.join(dram_timing_preset_names())})")
    raw = channel_table["timing"]
    # ``timing = { value = "hbm3-5200", source = ... }`` keeps its source; only the value is replaced.
    sourced = isinstance(raw, dict) and "value" in raw
    timing = _timing_from(raw["value"] if sourced else raw, f"{where} [channel.timing]", origin)
    channel_table["timing"] = {**raw, "value": timing} if sourced else timing
    channel = build(PimChannelParams, channel_table, f"{where} [channel]", aqpim_unit=unit)
    return build(PimDeviceParams, table["device"], f"{where} [device]", name=str(table.get("name", Path(where).stem)),
                 description=str(table.get("description", "")), channel=channel, origin=origin)


def load_pim(name_or_path: str) -> PimDeviceParams:
    """Load a PIM device preset by name (see ``pim_preset_names``) or from a TOML file path."""
    path = PIM_PRESETS.resolve(name_or_path)
    return pim_from_table(read_toml(path), str(path), origin_of(path))


def with_channel(dev: PimDeviceParams, **changes) -> PimDeviceParams:
    """A copy of ``dev`` whose channel has ``changes`` applied (validated again, sources marked overridden)."""
    return dataclasses.replace(dev, channel=override(dev.channel, **changes))


def with_aqpim_unit(dev: PimDeviceParams, **changes) -> PimDeviceParams:
    """A copy of ``dev`` whose AQPIM unit has ``changes`` applied (validated again, sources marked overridden)."""
    unit = override(aqpim_unit_of(dev.channel), **changes)
    return dataclasses.replace(dev, channel=dataclasses.replace(dev.channel, aqpim_unit=unit))
