"""DRAM timing model: presets carry sources, closed-form times match hand calculations, invariants hold."""

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_models import dram
from hw_models.errors import HardwareError
from hw_models.loading import read_toml

REQUIRED = {"ddr4-3200", "ddr5-4800", "hbm3-5200", "gddr6-16000"}


def ddr4():
    return dram.load_dram_timing("ddr4-3200")


def test_required_presets_present():
    assert REQUIRED <= set(dram.dram_timing_preset_names())


@pytest.mark.parametrize("name", dram.dram_timing_preset_names())
def test_every_preset_value_has_a_source(name):
    table = read_toml(dram.DRAM_PRESET_DIR / f"{name}.toml")
    assert set(table) <= {"timing", "description"}
    for key, v in table["timing"].items():
        if key == "name":
            continue
        assert isinstance(v, dict) and v.get("source"), f"{name} [timing] {key} has no source"


@pytest.mark.parametrize("name", dram.dram_timing_preset_names())
def test_presets_load_and_stream_efficiently(name):
    t = dram.load_dram_timing(name)
    assert 0.85 < dram.channel_stream_efficiency(t) <= 1.0
    assert 0 < dram.bank_stream_efficiency(t) <= 1.0


def test_ddr4_hand_calculation():
    t = ddr4()
    tck = 0.625e-9
    assert t.burst_bytes == 64 and t.burst_cycles == 4 and t.bursts_per_row == 128
    assert t.peak_bw_bytes_per_s == pytest.approx(25.6e9)
    overhead = (350e-9 + (12 + 22 + 22) * tck) / 7.8e-6
    assert t.refresh_overhead == pytest.approx(overhead)
    rf = 1 / (1 - overhead)
    # A bank: open (22), 128 bursts tCCD_L = 8 apart, tRTP 12, precharge 22.
    assert dram.row_cycle_cycles(t) == 22 + 127 * 8 + 12 + 22
    # One full row from one bank: tRCD + 127 x tCCD_L + tCL + one burst.
    assert dram.bank_stream_time_s(t, 8192) == pytest.approx((22 + 127 * 8 + 22 + 4) * tck * rf)
    # Three rows: two full row cycles, then the third row's reads.
    assert dram.bank_stream_time_s(t, 3 * 8192) == pytest.approx((2 * 1072 + 22 + 127 * 8 + 22 + 4) * tck * rf)
    assert dram.bank_stream_bw_bytes_per_s(t) == pytest.approx(8192 / (1072 * tck * rf))
    # The channel is data-bus bound: a burst every 4 cycles after the first access.
    assert dram.channel_stream_limiter(t) == "data bus"
    assert dram.channel_stream_time_s(t, 2**20) == pytest.approx((16383 * 4 + 22 + 22 + 4) * tck * rf)
    assert dram.channel_stream_efficiency(t) == pytest.approx(1 - overhead)


def test_partial_row_and_burst_rounding():
    t = ddr4()
    rf = t.refresh_factor
    # 100 bytes: two bursts of one row.
    assert dram.bank_stream_time_s(t, 100) == pytest.approx((22 + 8 + 22 + 4) * t.tCK_s * rf)
    assert dram.channel_stream_time_s(t, 0) == 0.0 and dram.bank_stream_time_s(t, 0) == 0.0


def test_activation_limit_binds_with_tiny_rows():
    # One burst per row: every burst needs an ACT, and four ACTs per tFAW = 40 cycles allow one per 10 cycles.
    t = dataclasses.replace(ddr4(), row_bytes=64, tFAW_cycles=40, ranks=1)
    assert dram.channel_stream_limiter(t) == "activation (tRRD/tFAW)"
    assert dram.channel_burst_interval_cycles(t) == pytest.approx(10)


def test_pim_column_interval_slows_a_bank():
    t = ddr4()
    assert dram.bank_stream_bw_bytes_per_s(t, 16) < dram.bank_stream_bw_bytes_per_s(t)
    with pytest.raises(HardwareError, match="column_interval_cycles must be a positive number"):
        dram.row_cycle_cycles(t, 0)


def test_cost_is_closed_form():
    t = ddr4()
    # A petabyte costs the same arithmetic as a kilobyte: no loop over bursts.
    assert dram.channel_stream_time_s(t, 1e15) == pytest.approx(1e15 / dram.channel_stream_bw_bytes_per_s(t), rel=1e-6)
    assert dram.bank_stream_time_s(t, 1e15) == pytest.approx(1e15 / dram.bank_stream_bw_bytes_per_s(t), rel=1e-6)


@given(name=st.sampled_from(sorted(dram.dram_timing_preset_names())),
       a=st.floats(0, 1e12), b=st.floats(0, 1e12))
def test_times_monotone_in_bytes(name, a, b):
    t = dram.load_dram_timing(name)
    lo, hi = sorted((a, b))
    assert dram.channel_stream_time_s(t, lo) <= dram.channel_stream_time_s(t, hi)
    assert dram.bank_stream_time_s(t, lo) <= dram.bank_stream_time_s(t, hi)


@given(name=st.sampled_from(sorted(dram.dram_timing_preset_names())), nbytes=st.floats(1, 1e12))
def test_efficiency_in_unit_interval(name, nbytes):
    t = dram.load_dram_timing(name)
    eff = dram.channel_stream_efficiency(t, nbytes)
    assert 0 < eff <= 1
    assert dram.channel_stream_time_s(t, nbytes) >= nbytes / t.peak_bw_bytes_per_s


timings = st.builds(
    lambda bg, bpg, tccd_s, extra_l, burst_len, bursts_row, trfc: dataclasses.replace(
        dram.load_dram_timing("ddr5-4800"), bank_groups_per_rank=bg, banks_per_rank=bg * bpg,
        tCCD_S_cycles=tccd_s, tCCD_L_cycles=tccd_s + extra_l, burst_length=burst_len,
        row_bytes=4 * burst_len * bursts_row, tRFC_s=trfc),
    st.integers(1, 8), st.integers(1, 4), st.floats(1, 16), st.floats(0, 16), st.sampled_from([4, 8, 16]),
    st.integers(1, 256), st.floats(0, 2e-6))


@given(t=timings, nbytes=st.floats(1, 1e10))
def test_invariants_on_random_timings(t, nbytes):
    assert 0 < dram.channel_stream_efficiency(t) <= 1
    assert 0 < dram.channel_stream_efficiency(t, nbytes) <= 1
    assert 0 < dram.bank_stream_efficiency(t) <= 1
    # A whole channel never streams slower than one of its banks.
    assert dram.channel_stream_bw_bytes_per_s(t) >= dram.bank_stream_bw_bytes_per_s(t) * (1 - 1e-12)


def test_bad_values_rejected_with_clear_messages():
    t = ddr4()
    with pytest.raises(HardwareError, match="tCCD_L_cycles .* must not be below tCCD_S_cycles"):
        dataclasses.replace(t, tCCD_L_cycles=2)
    with pytest.raises(HardwareError, match="row_bytes .* must be a whole number of bursts"):
        dataclasses.replace(t, row_bytes=1000)
    with pytest.raises(HardwareError, match="banks_per_rank .* multiple of bank_groups_per_rank"):
        dataclasses.replace(t, banks_per_rank=10)
    with pytest.raises(HardwareError, match="must take less than tREFI_s"):
        dataclasses.replace(t, tRFC_s=8e-6)
    with pytest.raises(HardwareError, match="tRCD_cycles must be a positive number"):
        dataclasses.replace(t, tRCD_cycles=-1)
    with pytest.raises(HardwareError, match="ranks must be a whole number"):
        dataclasses.replace(t, ranks=1.5)
    with pytest.raises(HardwareError, match="byte count must be a finite number >= 0"):
        dram.channel_stream_time_s(t, -1)
    with pytest.raises(HardwareError, match="byte count must be a finite number >= 0"):
        dram.bank_stream_time_s(t, math.nan)
    with pytest.raises(HardwareError, match="efficiency needs a byte count > 0"):
        dram.channel_stream_efficiency(t, 0)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(HardwareError, match=r"unknown DRAM timing preset 'ddr4-320' \(did you mean 'ddr4-3200'\?\); "
                                            r"valid presets: .*hbm3-5200"):
        dram.load_dram_timing("ddr4-320")
    with pytest.raises(HardwareError, match="DRAM timing file not found"):
        dram.load_dram_timing("missing.toml")


def test_user_file_plain_numbers_and_typos(tmp_path):
    text = (dram.DRAM_PRESET_DIR / "ddr4-3200.toml").read_text()
    plain = tmp_path / "t.toml"
    plain.write_text("[timing]\n" + "\n".join(
        f"{k} = {v}" for k, v in {
            "name": '"mine"', "tCK_s": 1e-9, "transfers_per_cycle": 2, "bus_width_bytes": 8, "burst_length": 8,
            "row_bytes": 8192, "ranks": 1, "bank_groups_per_rank": 4, "banks_per_rank": 16, "tRCD_cycles": 14,
            "tCL_cycles": 14, "tRP_cycles": 14, "tRAS_cycles": 33, "tRTP_cycles": 8, "tCCD_S_cycles": 4,
            "tCCD_L_cycles": 6, "tRRD_S_cycles": 4, "tRRD_L_cycles": 6, "tFAW_cycles": 20, "tREFI_s": 7.8e-6,
            "tRFC_s": 350e-9}.items()))
    assert dram.load_dram_timing(str(plain)).peak_bw_bytes_per_s == pytest.approx(16e9)
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("tFAW_cycles", "tFAW_cycle"))
    with pytest.raises(HardwareError, match=r"unknown key 'tFAW_cycle' \(did you mean 'tFAW_cycles'\?\)"):
        dram.load_dram_timing(str(typo))
    extra = tmp_path / "extra.toml"
    extra.write_text(text + "\n[other]\nx = 1\n")
    with pytest.raises(HardwareError, match=r"holds a \[timing\] table"):
        dram.load_dram_timing(str(extra))


@pytest.mark.parametrize("name", sorted(dram.dram_timing_preset_names()))
def test_a_subnormal_read_costs_one_first_access(name):
    # 5e-324 / row_bytes rounds to 0: it still opens one row and reads one burst (it used to come out negative)
    t = dram.load_dram_timing(name)
    assert dram.bank_stream_time_s(t, 5e-324) == dram.bank_stream_time_s(t, 1.0) > 0
    assert dram.channel_stream_time_s(t, 5e-324) == dram.channel_stream_time_s(t, 1.0) > 0
