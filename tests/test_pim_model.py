"""PIM channel and device model: sourced presets, hand-calculated bandwidths and attention times, invariants."""

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_models import dram, pim
from hw_models.errors import HardwareError
from hw_models.loading import read_toml

REQUIRED = {"attacc-hbm3", "hbm-pim-aquabolt", "gddr6-aim", "ddr5-dimm-pim", "upmem"}
BANK_LEVEL = sorted(n for n in pim.pim_preset_names() if pim.load_pim(n).channel.processing_level == "bank")


def attacc():
    return pim.load_pim("attacc-hbm3")


def test_required_presets_present():
    assert REQUIRED <= set(pim.pim_preset_names())


@pytest.mark.parametrize("name", pim.pim_preset_names())
def test_every_preset_value_has_a_source(name):
    table = read_toml(pim.PIM_PRESET_DIR / f"{name}.toml")
    for section in ("device", "channel"):
        for key, v in table[section].items():
            if key == "name":
                continue
            assert isinstance(v, dict) and v.get("source"), f"{name} [{section}] {key} has no source"


@pytest.mark.parametrize("name", pim.pim_preset_names())
def test_presets_are_many_channels_with_internal_above_external(name):
    dev = pim.load_pim(name)
    ch = dev.channel
    assert dev.channels >= 32
    assert dev.capacity_bytes == dev.channels * ch.capacity_bytes
    assert pim.internal_bw_bytes_per_s(ch) > ch.external_bw_bytes_per_s


def test_attacc_internal_bandwidth_by_hand():
    dev = attacc()
    ch = dev.channel
    assert (dev.channels, ch.units, dev.capacity_bytes) == (160, 32, 80 * 2**30)
    tck = 0.769e-9
    # Power-capped all-bank MACs every 6 cycles: a 1 KiB row (32 bursts) takes tRCD + 31 x 6 + tRTP, then tRP.
    row_cycles = 19 + 31 * 6 + 8 + 19
    refresh = (350e-9 + (8 + 19 + 19) * tck) / 3.9e-6
    expected = 32 * 32 / (row_cycles * tck / 32) * (1 - refresh)
    assert pim.internal_bw_bytes_per_s(ch) == pytest.approx(expected, rel=1e-12)
    assert pim.internal_bw_limiter(ch) == "bank row cycle"
    # AttAcc's analytic model (src/config.py) puts the power-capped ratio at 9x; row changes and refresh cost 12%.
    assert 7.5 < pim.internal_bw_bytes_per_s(ch) / ch.external_bw_bytes_per_s < 9.0


def test_uncapped_attacc_is_sixteen_times_before_row_overheads():
    ch = attacc().channel
    free = dataclasses.replace(ch, bank_column_interval_cycles=4)
    peak_columns = ch.units * 32 / (4 * 0.769e-9)
    assert peak_columns / (670.4e9 / 32) == pytest.approx(16, rel=0.01)
    assert pim.internal_bw_bytes_per_s(free) > pim.internal_bw_bytes_per_s(ch)


def test_aquabolt_is_unit_bound():
    ch = pim.load_pim("hbm-pim-aquabolt").channel
    assert ch.units == 8 and ch.banks_per_unit == 2
    assert pim.internal_bw_limiter(ch) == "unit ingest"
    assert pim.internal_bw_bytes_per_s(ch) == pytest.approx(8 * 9.6e9 / ch.timing.refresh_factor, rel=1e-12)


def test_levels_count_units():
    ch = attacc().channel
    assert dataclasses.replace(ch, processing_level="bankgroup").units == 2 * 4
    assert dataclasses.replace(ch, processing_level="rank").units == 2
    assert dataclasses.replace(ch, units_per_bank=0.5).units == 16
    # A buffer-die unit per rank reads through the rank's data path: about the external rate per rank.
    rank = dataclasses.replace(ch, processing_level="rank", unit_bw_bytes_per_s=1e12)
    assert pim.internal_bw_limiter(rank) == "rank data path"
    assert pim.internal_bw_bytes_per_s(rank) == pytest.approx(
        2 * 32 / (2 * 0.769e-9) / ch.timing.refresh_factor, rel=1e-12)


def test_activation_limits_apply_without_all_bank_activate():
    ch = dataclasses.replace(attacc().channel, all_bank_activate=False)
    bounds = pim.unit_burst_bounds_s(ch)
    # 16 units per rank, one ACT per 32-burst row each; a rank issues 4 ACTs per tFAW = 39 cycles.
    assert bounds["activation (tRRD/tFAW)"] == pytest.approx(16 / (32 * 4 / 39) * 0.769e-9)


def test_one_layer_attention_time_is_kv_bytes_over_internal_bandwidth_plus_overheads():
    dev = attacc()
    ch = dev.channel
    # LLaMA-2-7B-like layer: 32 KV heads x head_dim 128, FP16, one sequence of 32K tokens, spread over all channels.
    kv_vectors_total = 32 * 32768
    w = pim.ChannelAttention(kv_vectors=kv_vectors_total / dev.channels, head_dim=128, queries_per_kv=1,
                             query_vectors=32 / dev.channels)
    kv_bytes_layer = 2 * kv_vectors_total * 128 * 2
    internal = pim.internal_bw_bytes_per_s(ch)
    t = sum(x.duration_s for x in pim.attention_works(ch, w, softmax="pim"))
    simple = kv_bytes_layer / (dev.channels * internal)
    tck = ch.timing.tCK_s
    exact = (5 * ch.op_overhead_s + simple + 2 * (19 + 19) * tck
             + (w.query_bytes + w.output_bytes) / ch.external_bw_bytes_per_s
             + pim.SOFTMAX_FLOPS_PER_ELEMENT * w.scores / ch.peak_flops_per_s)
    assert t == pytest.approx(exact, rel=1e-12)
    assert t == pytest.approx(simple, rel=0.05)
    # 512 MiB of K and V per layer at 26.5 TB/s: about 20 us.
    assert 15e-6 < t < 25e-6


def test_attention_works_sequence_and_energy():
    ch = attacc().channel
    w = pim.ChannelAttention(kv_vectors=1000, head_dim=128, queries_per_kv=4, query_vectors=4)
    works = pim.attention_works(ch, w, softmax="near")
    assert [x.kind for x in works] == ["pim.q_in", "pim.score", "pim.softmax.near", "pim.context", "pim.out"]
    score = works[1]
    assert score.nbytes == w.kv_bytes == 1000 * 128 * 2
    assert score.flops == 2 * 1000 * 128 * 4
    assert score.energy_j == pytest.approx(w.kv_bytes * 4.4e-12 + score.flops * 0.32e-12)
    assert pim.score_work(ch, w).energy_j == score.energy_j


def test_op_time_is_overhead_plus_the_larger_of_stream_and_compute():
    ch = attacc().channel
    nbytes = 1e6
    stream = pim.stream_time_s(ch, nbytes)
    assert pim.op_time_s(ch, nbytes, 0) == pytest.approx(ch.op_overhead_s + stream)
    big_flops = 10 * nbytes
    assert pim.op_time_s(ch, nbytes, big_flops) == pytest.approx(
        ch.op_overhead_s + big_flops / (32 * 10.475e9))
    # GQA with 8 queries per K vector on 1 FLOP/B units is compute-bound.
    w = pim.ChannelAttention(kv_vectors=1e4, head_dim=128, queries_per_kv=8)
    assert pim.score_work(ch, w).duration_s == pytest.approx(ch.op_overhead_s + w.gemv_flops / ch.peak_flops_per_s)


def test_softmax_placements():
    ch = attacc().channel
    n = 4096
    assert pim.softmax_work(ch, n, "pim").duration_s == pytest.approx(ch.op_overhead_s + 5 * n / ch.peak_flops_per_s)
    assert pim.softmax_work(ch, n, "near").duration_s == pytest.approx(
        ch.op_overhead_s + 2 * n * 2 / 20.95e9 + 5 * n / 20.95e9)
    assert pim.softmax_work(ch, n, "host").duration_s == pytest.approx(ch.op_overhead_s + 2 * n * 2 / 20.95e9)
    with pytest.raises(HardwareError, match="has no near-memory unit"):
        pim.softmax_work(pim.load_pim("gddr6-aim").channel, n, "near")
    with pytest.raises(HardwareError, match=r"softmax placement must be one of .*\(did you mean 'near'\?\)"):
        pim.softmax_work(ch, n, "nearr")


def test_append_broadcast_and_table_passes():
    ch = attacc().channel
    assert pim.append_work(ch, 1, 128).duration_s == pytest.approx(ch.op_overhead_s + 2 * 128 * 2 / 20.95e9)
    assert pim.append_work(ch, 1, 128).energy_j == pytest.approx(512 * (4.4e-12 + 24.32e-12))
    assert pim.broadcast_work(ch, 256).duration_s == pytest.approx(ch.op_overhead_s + 256 / 20.95e9)
    # M=16, K=256 FP16 tables of 4 query heads (32 KiB) in a 4 KiB lookup buffer (8 rows): 8 passes of 2 sub-spaces
    unit = dataclasses.replace(ch.aqpim_unit, lut_bytes=4096)
    assert pim.pq_lookup_plan(dataclasses.replace(ch, aqpim_unit=unit), 4, 16, 256).passes == 8


@given(name=st.sampled_from(BANK_LEVEL), scale=st.floats(0.01, 100))
def test_bank_level_internal_at_least_external(name, scale):
    """Bank-level units see every bank at once: internal bandwidth stays above the channel interface even when
    the unit datapath is rescaled, down to a unit that ingests one burst per column interval at 1/100 speed."""
    ch = pim.load_pim(name).channel
    units_fast = dataclasses.replace(ch, unit_bw_bytes_per_s=max(ch.unit_bw_bytes_per_s * scale, ch.unit_bw_bytes_per_s))
    assert pim.internal_bw_bytes_per_s(units_fast) >= ch.external_bw_bytes_per_s
    assert pim.internal_bw_bytes_per_s(units_fast) >= pim.internal_bw_bytes_per_s(ch) * (1 - 1e-12)


@given(name=st.sampled_from(sorted(pim.pim_preset_names())), a=st.floats(0, 1e12), b=st.floats(0, 1e12),
       flops=st.floats(0, 1e12))
def test_times_monotone_in_bytes(name, a, b, flops):
    ch = pim.load_pim(name).channel
    lo, hi = sorted((a, b))
    assert pim.stream_time_s(ch, lo) <= pim.stream_time_s(ch, hi)
    assert pim.op_time_s(ch, lo, flops) <= pim.op_time_s(ch, hi, flops)
    assert pim.op_time_s(ch, hi, flops) >= ch.op_overhead_s + hi / pim.internal_bw_bytes_per_s(ch)
    assert pim.write_work(ch, lo).duration_s <= pim.write_work(ch, hi).duration_s


@given(level=st.sampled_from(pim.PROCESSING_LEVELS), units_per_bank=st.sampled_from([0.25, 0.5, 1.0]),
       interval=st.floats(1, 64), unit_bw=st.floats(1e8, 1e12), activate=st.booleans())
def test_internal_bandwidth_bounded_by_units_and_banks(level, units_per_bank, interval, unit_bw, activate):
    ch = dataclasses.replace(attacc().channel, processing_level=level, units_per_bank=units_per_bank,
                             bank_column_interval_cycles=interval, unit_bw_bytes_per_s=unit_bw,
                             all_bank_activate=activate)
    internal = pim.internal_bw_bytes_per_s(ch)
    t = ch.timing
    assert 0 < internal <= ch.units * unit_bw * (1 + 1e-12)
    # No faster than every bank delivering a burst per column interval with no row changes.
    assert internal <= ch.banks * t.burst_bytes / (interval * t.tCK_s) * (1 + 1e-12)


def test_bad_values_rejected_with_clear_messages():
    ch = attacc().channel
    with pytest.raises(HardwareError, match=r"processing_level must be one of .*\(did you mean 'bank'\?\)"):
        dataclasses.replace(ch, processing_level="banks")
    with pytest.raises(HardwareError, match=r"units_per_bank must be in \(0, 1\]"):
        dataclasses.replace(ch, units_per_bank=2.0)
    with pytest.raises(HardwareError, match="32 banks x units_per_bank 0.3 = 9.6 is not a whole number of units"):
        dataclasses.replace(ch, units_per_bank=0.3)
    with pytest.raises(HardwareError, match="unit_bw_bytes_per_s must be a positive number"):
        dataclasses.replace(ch, unit_bw_bytes_per_s=0)
    with pytest.raises(HardwareError, match="all_bank_activate must be true or false"):
        dataclasses.replace(ch, all_bank_activate=1)
    with pytest.raises(HardwareError, match="timing must be DRAM timing parameters"):
        dataclasses.replace(ch, timing="hbm3-5200")
    with pytest.raises(HardwareError, match=r"placement must be one of .*\(did you mean 'host'\?\)"):
        dataclasses.replace(attacc(), placement="hots")
    with pytest.raises(HardwareError, match="channels must be a whole number"):
        dataclasses.replace(attacc(), channels=1.5)
    with pytest.raises(HardwareError, match="stream_time_s: nbytes must be zero or positive"):
        pim.stream_time_s(ch, -1)
    with pytest.raises(HardwareError, match="head_dim must be a positive number"):
        pim.ChannelAttention(kv_vectors=1, head_dim=0)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(HardwareError, match=r"unknown PIM device preset 'attacc' \(did you mean 'attacc-hbm3'\?\); "
                                            r"valid presets: .*gddr6-aim.*upmem"):
        pim.load_pim("attacc")
    with pytest.raises(HardwareError, match="PIM device file not found"):
        pim.load_pim("nope.toml")


def test_user_file_with_plain_numbers_and_nested_timing(tmp_path):
    t = dram.load_dram_timing("hbm3-5200")
    timing_lines = "\n".join(f"{f.name} = {getattr(t, f.name)!r}".replace("'", '"')
                             for f in dataclasses.fields(t) if f.compare)  # not origin, sources
    text = f"""name = "mine"
[device]
channels = 64
placement = "accelerator"
link_bw_bytes_per_s = 1e11
link_latency_s = 0
link_energy_per_byte_j = 0
[channel]
name = "c"
capacity_bytes = 1e9
ranks = 2
bank_groups_per_rank = 4
banks_per_rank = 16
processing_level = "bank"
units_per_bank = 1
bank_column_interval_cycles = 4
all_bank_activate = true
unit_flops_per_s = 1e10
unit_bw_bytes_per_s = 1e10
unit_buffer_bytes = 256
near_flops_per_s = 0
external_bw_bytes_per_s = 2e10
op_overhead_s = 0
energy_per_array_byte_j = 0
energy_per_flop_j = 0
energy_per_io_byte_j = 0
[aqpim_unit]
lut_bytes = 4096
lut_banks = 4
lut_clock_hz = 1e9
lut_access_energy_j = 0
[channel.timing]
{timing_lines}
"""
    path = tmp_path / "mine.toml"
    path.write_text(text)
    dev = pim.load_pim(str(path))
    assert dev.name == "mine" and dev.channel.timing == t
    assert (dev.channel.unit_buffer_bytes, dev.channel.aqpim_unit.lut_bytes) == (256, 4096)
    named = tmp_path / "named.toml"
    named.write_text(text.split("[channel.timing]")[0].replace('name = "c"', 'name = "c"\ntiming = "hbm3-5200"'))
    assert pim.load_pim(str(named)).channel.timing == t
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("unit_buffer_bytes", "unit_bufer_bytes"))
    with pytest.raises(HardwareError, match=r"unknown key 'unit_bufer_bytes' \(did you mean 'unit_buffer_bytes'\?\)"):
        pim.load_pim(str(typo))
    no_channel = tmp_path / "nochannel.toml"
    no_channel.write_text(text.split("[channel]")[0])
    with pytest.raises(HardwareError, match=r"missing section \[channel\]"):
        pim.load_pim(str(no_channel))
    bad_timing = tmp_path / "badtiming.toml"
    bad_timing.write_text(text.split("[channel.timing]")[0].replace('name = "c"', 'name = "c"\ntiming = "hbm9"'))
    with pytest.raises(HardwareError, match="unknown DRAM timing preset 'hbm9'"):
        pim.load_pim(str(bad_timing))
    old = tmp_path / "old.toml"  # lut_bytes in [channel], where it used to be
    old.write_text(text.replace("near_flops_per_s = 0", "near_flops_per_s = 0\nlut_bytes = 4096"))
    with pytest.raises(HardwareError, match=r"lut_bytes moved to the \[aqpim_unit\] section"):
        pim.load_pim(str(old))
    no_unit = tmp_path / "nounit.toml"
    no_unit.write_text(text.replace("[aqpim_unit]\nlut_bytes = 4096\nlut_banks = 4\nlut_clock_hz = 1e9\n"
                                    "lut_access_energy_j = 0\n", ""))
    assert pim.load_pim(str(no_unit)).channel.aqpim_unit is None


def test_costs_do_not_grow_with_bytes():
    ch = attacc().channel

    def busy_s(w):
        return sum(x.duration_s for x in pim.attention_works(ch, w))

    small = pim.ChannelAttention(kv_vectors=10, head_dim=128)
    huge = pim.ChannelAttention(kv_vectors=1e12, head_dim=128)
    assert math.isfinite(busy_s(huge)) and busy_s(huge) > busy_s(small)
