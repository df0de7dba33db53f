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
from hw_models.params import build, fraction, non_negative, override, positive

PIM_PRESET_DIR = Path(__file__).parent / "presets" / "pim"
PIM_PRESETS = PresetDir(PIM_PRESET_DIR, ".toml", "PIM device")

PROCESSING_LEVELS = ("bank", "bankgroup", "rank")
PLACEMENTS = ("accelerator", "host")
SOFTMAX_PLACEMENTS = ("pim", "near", "host")

# FLOPs per score in a softmax: running max, subtract, exp, accumulate, normalise.
SOFTMAX_FLOPS_PER_ELEMENT = 5.0
# Softmax statistics (running max and sum, FP32) returned with each query's partial output.
SOFTMAX_STATS_BYTES_PER_QUERY = 8.0


@dataclass(frozen=True)
class PimChannelParams:
    """One PIM channel: DRAM banks, their timing, the processing units beside them, and its interface.

    ``processing_level`` places the units: ``bank`` (``units_per_bank`` of them per bank, e.g. 0.5 for one unit
    per two banks), ``bankgroup`` (one per bank group) or ``rank`` (one per rank, on a buffer die or chip).
    ``bank_column_interval_cycles`` is the spacing of column reads at one bank while all units stream (AttAcc's
    power-capped nCCDAB; usually tCCD_L). ``all_bank_activate`` says PIM mode opens rows in all banks with one
    command, free of tRRD/tFAW. ``near_flops_per_s`` is a near-memory unit per channel (buffer die, DIMM buffer)
    for softmax and reductions; 0 means the device has none.
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
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        owner = f"pim channel '{self.name}'"
        if not isinstance(self.timing, DramTimingParams):
            raise HardwareError(f"{owner}: timing must be DRAM timing parameters, got {type(self.timing).__name__}")
        positive(owner, capacity_bytes=self.capacity_bytes, ranks=self.ranks,
                 bank_groups_per_rank=self.bank_groups_per_rank, banks_per_rank=self.banks_per_rank,
                 bank_column_interval_cycles=self.bank_column_interval_cycles,
                 unit_flops_per_s=self.unit_flops_per_s, unit_bw_bytes_per_s=self.unit_bw_bytes_per_s,
                 unit_buffer_bytes=self.unit_buffer_bytes, external_bw_bytes_per_s=self.external_bw_bytes_per_s)
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

    @property
    def banks(self) -> int:
        return self.ranks * self.banks_per_rank

    @property
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

    @property
    def peak_flops_per_s(self) -> float:
        return self.units * self.unit_flops_per_s

    @property
    def internal_bw_bytes_per_s(self) -> float:
        return internal_bw_bytes_per_s(self)


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


def stream_time_s(ch: PimChannelParams, nbytes: float) -> float:
    """Time for the channel's units to stream ``nbytes`` spread evenly over its banks (no overhead).

    The first data arrives after tRCD + tCL; then bytes flow at the internal bandwidth.
    """
    _check("stream_time_s", nbytes=nbytes)
    if nbytes == 0:
        return 0.0
    t = ch.timing
    return (t.tRCD_cycles + t.tCL_cycles) * t.tCK_s + nbytes / internal_bw_bytes_per_s(ch)


def compute_time_s(ch: PimChannelParams, flops: float) -> float:
    """Time for the channel's units to do ``flops`` spread evenly over them (no overhead)."""
    _check("compute_time_s", flops=flops)
    return flops / ch.peak_flops_per_s


def io_time_s(ch: PimChannelParams, nbytes: float) -> float:
    """Time for ``nbytes`` to cross the channel's external interface (no overhead)."""
    _check("io_time_s", nbytes=nbytes)
    return nbytes / ch.external_bw_bytes_per_s


def op_time_s(ch: PimChannelParams, nbytes: float, flops: float) -> float:
    """One in-memory operation: overhead + max(stream ``nbytes`` from the banks, compute ``flops``)."""
    return ch.op_overhead_s + max(stream_time_s(ch, nbytes), compute_time_s(ch, flops))


def op_energy_j(ch: PimChannelParams, array_bytes: float, flops: float, io_bytes: float = 0.0) -> float:
    """Energy of bytes read or written in the array, FLOPs in the units, and bytes crossing the interface."""
    _check("op_energy_j", array_bytes=array_bytes, flops=flops, io_bytes=io_bytes)
    return (array_bytes * ch.energy_per_array_byte_j + flops * ch.energy_per_flop_j
            + io_bytes * ch.energy_per_io_byte_j)


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
    once. Data larger than a unit's buffer does not fit; see ``table_passes``.
    """
    return _work(ch, kind, ch.op_overhead_s + io_time_s(ch, nbytes), 0.0, 0.0, nbytes)


def table_passes(ch: PimChannelParams, table_bytes: float) -> int:
    """How many passes over the stored data a lookup table needs: 1 if it fits a unit's buffer, else one per
    buffer-sized slice (each pass re-streams the data against one slice)."""
    _check("table_passes", table_bytes=table_bytes)
    return max(1, math.ceil(table_bytes / ch.unit_buffer_bytes))


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
    in over the interface); the caller adds the device link (``gather_time_s``) and the host's compute.
    The cross-channel max and sum are a separate step (``tree_reduce_time_s``).
    """
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
    _check("append_work", new_vectors=new_vectors)
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


def attention_time_s(ch: PimChannelParams, w: ChannelAttention, softmax: str = "pim") -> float:
    """Sum of ``attention_works`` durations (the channel's busy time for one layer)."""
    return sum(x.duration_s for x in attention_works(ch, w, softmax))


def attention_energy_j(ch: PimChannelParams, w: ChannelAttention, softmax: str = "pim") -> float:
    return sum(x.energy_j for x in attention_works(ch, w, softmax))


# ------------------------------------------------------------------ across channels (device level)

def tree_reduce_time_s(ch: PimChannelParams, nbytes_per_channel: float, n_channels: int,
                       bytes_per_element: float = 4.0) -> float:
    """Combine ``n_channels`` partial results of ``nbytes_per_channel`` each on near-memory units, pairwise:
    ceil(log2 n) levels, each moving one partial over a channel interface and adding it element-wise."""
    _check("tree_reduce_time_s", nbytes_per_channel=nbytes_per_channel)
    positive("tree_reduce_time_s", n_channels=n_channels, bytes_per_element=bytes_per_element)
    if n_channels == 1 or nbytes_per_channel == 0:
        return 0.0
    if ch.near_flops_per_s == 0:
        raise HardwareError(f"pim channel '{ch.name}' has no near-memory unit (near_flops_per_s = 0); "
                            f"reduce on the host (gather_time_s) instead")
    levels = math.ceil(math.log2(n_channels))
    per_level = io_time_s(ch, nbytes_per_channel) + (nbytes_per_channel / bytes_per_element) / ch.near_flops_per_s
    return ch.op_overhead_s + levels * per_level


def gather_time_s(dev: PimDeviceParams, nbytes_per_channel: float, n_channels: int) -> float:
    """Move ``nbytes_per_channel`` from each of ``n_channels`` channels over the device link to its other end
    (the GPU for an accelerator, the host memory controller for host DIMM-PIM). Limited by the link or by the
    channels' interfaces together, whichever is slower."""
    _check("gather_time_s", nbytes_per_channel=nbytes_per_channel)
    positive("gather_time_s", n_channels=n_channels)
    if n_channels > dev.channels:
        raise HardwareError(f"pim device '{dev.name}' has {dev.channels} channels, asked for {n_channels}")
    total = nbytes_per_channel * n_channels
    rate = min(dev.link_bw_bytes_per_s, n_channels * dev.channel.external_bw_bytes_per_s)
    return dev.link_latency_s + total / rate


def scatter_time_s(dev: PimDeviceParams, nbytes_per_channel: float, n_channels: int) -> float:
    """Send ``nbytes_per_channel`` to each of ``n_channels`` channels over the device link (mirror of gather)."""
    return gather_time_s(dev, nbytes_per_channel, n_channels)


def link_energy_j(dev: PimDeviceParams, nbytes: float) -> float:
    _check("link_energy_j", nbytes=nbytes)
    return nbytes * dev.link_energy_per_byte_j


def channels_needed(dev: PimDeviceParams, nbytes: float) -> int:
    """Channels whose capacity holds ``nbytes`` (may exceed ``dev.channels``: the capacity wall)."""
    _check("channels_needed", nbytes=nbytes)
    return math.ceil(nbytes / dev.channel.capacity_bytes)


# ------------------------------------------------------------------ presets

TOP_KEYS = {"name", "description", "device", "channel"}

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
    """Build a device from a table: top-level name and description, a [device] and a [channel] table."""
    for key in table:
        if key not in TOP_KEYS:
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, TOP_KEYS)}; "
                                f"valid keys: {', '.join(sorted(TOP_KEYS))}")
    for section in ("device", "channel"):
        if not isinstance(table.get(section), dict):
            raise HardwareError(f"{where}: missing section [{section}]")
    channel_table = dict(table["channel"])
    if "timing" not in channel_table:
        raise HardwareError(f"{where} [channel]: missing required key 'timing' (a DRAM timing preset name, one of "
                            f"{', '.join(dram_timing_preset_names())})")
    raw = channel_table["timing"]
    # ``timing = { value = "hbm3-5200", source = ... }`` keeps its source; only the value is replaced.
    sourced = isinstance(raw, dict) and "value" in raw
    timing = _timing_from(raw["value"] if sourced else raw, f"{where} [channel.timing]", origin)
    channel_table["timing"] = {**raw, "value": timing} if sourced else timing
    channel = build(PimChannelParams, channel_table, f"{where} [channel]")
    return build(PimDeviceParams, table["device"], f"{where} [device]", name=str(table.get("name", Path(where).stem)),
                 description=str(table.get("description", "")), channel=channel, origin=origin)


def load_pim(name_or_path: str) -> PimDeviceParams:
    """Load a PIM device preset by name (see ``pim_preset_names``) or from a TOML file path."""
    path = PIM_PRESETS.resolve(name_or_path)
    return pim_from_table(read_toml(path), str(path), origin_of(path))


def with_channel(dev: PimDeviceParams, **changes) -> PimDeviceParams:
    """A copy of ``dev`` whose channel has ``changes`` applied (validated again, sources marked overridden)."""
    return dataclasses.replace(dev, channel=override(dev.channel, **changes))
