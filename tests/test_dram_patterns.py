"""DRAM access patterns: hand calculations on a small timing, monotonicity properties, host memory by pattern."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_models import cpu, dram
from hw_models.errors import HardwareError
from hw_models.machine import load_machine, preset_names
from sim.config import make_config
from sim.run import run_simulation
from sim.topology import GPU, HOST_CPU, HOST_DRAM, HOST_RC, Topology
from workloads.models import ModelSpec

# A small channel whose numbers are easy to follow: 1 ns clock, 64 B bursts of 4 cycles (peak 16 GB/s), 1 KiB rows
# (B = 16 bursts), 2 bank groups of 2 banks, and refresh reduced to one row close and reopen per 24 us (0.1%).
TINY = dram.DramTimingParams(
    name="tiny", tCK_s=1e-9, transfers_per_cycle=2, bus_width_bytes=8, burst_length=8, row_bytes=1024, ranks=1,
    bank_groups_per_rank=2, banks_per_rank=4, tRCD_cycles=10, tCL_cycles=10, tRP_cycles=10, tRAS_cycles=24,
    tRTP_cycles=4, tCCD_S_cycles=4, tCCD_L_cycles=6, tRRD_S_cycles=4, tRRD_L_cycles=6, tFAW_cycles=20,
    tREFI_s=24e-6, tRFC_s=0.0, tRTRS_cycles=2)
RF = 1 / (1 - 24e-9 / 24e-6)        # refresh factor: (tRTP + tRP + tRCD) x 1 ns out of 24 us
INF = 1e12                           # "infinitely many" outstanding accesses


def eff(t, pattern):
    return dram.pattern_efficiency(t, pattern)


def test_tiny_timing_basics():
    assert TINY.burst_bytes == 64 and TINY.burst_cycles == 4 and TINY.bursts_per_row == 16
    assert TINY.peak_bw_bytes_per_s == pytest.approx(16e9)
    assert TINY.refresh_factor == pytest.approx(RF)


def test_random_64b_by_hand():
    # One burst per access, one activation. The bank is busy tRP + max(tRAS, tRCD + tRTP) = 10 + 24 = 34 cycles
    # per access; data returns tCL + burst - tRTP = 10 cycles after the bank frees.
    # Bounds (cycles per access): bus 4, column max(tCCD_S, tCCD_L / 2) = 4, activation 1 / min(4/20, 1/4, 2/6) = 5.
    # Queue of 4 over 4 banks: 1 x (34 x (4 + 4 - 1) / 4 + 10) / 4 = 17.375 cycles.
    c = dram.pattern_cost(TINY, dram.RandomAccess(64, 4))
    assert c.bounds_cycles == pytest.approx({"data bus": 4, "column spacing": 4, "activation (tRRD/tFAW)": 5,
                                             "banks at queue depth": 17.375})
    assert c.limiter == "banks at queue depth"
    assert eff(TINY, dram.RandomAccess(64, 4)) == pytest.approx(4 / 17.375 / RF)
    # One access in flight: exactly the closed-page latency of one access, 34 + 10 cycles.
    assert dram.pattern_cost(TINY, dram.RandomAccess(64, 1)).bounds_cycles["banks at queue depth"] == pytest.approx(44)
    # Unlimited queue: each of the 4 banks serves one access per 34 cycles, 8.5 cycles per access.
    assert eff(TINY, dram.RandomAccess(64, INF)) == pytest.approx(4 / 8.5 / RF)


def test_random_two_ranks_by_hand():
    t = dataclasses.replace(TINY, ranks=2)
    # 8 banks: 34 / 8 = 4.25 cycles; activations 1 / (2 x 0.2) = 2.5; the bus pays a rank switch (tRTRS = 2) with
    # probability 1/2: 4 + 1 = 5 cycles, which now binds.
    c = dram.pattern_cost(t, dram.RandomAccess(64, INF))
    assert c.bounds_cycles["data bus"] == pytest.approx(5)
    assert c.bounds_cycles["activation (tRRD/tFAW)"] == pytest.approx(2.5)
    assert c.bounds_cycles["banks at queue depth"] == pytest.approx(4.25, rel=1e-9)
    assert eff(t, dram.RandomAccess(64, INF)) == pytest.approx(4 / 5 / RF)


def test_random_256b_by_hand():
    # 4 bursts rotate over the 2 bank groups: 2 row pieces of 2 bursts, aligned, so one row each: 2 activations.
    # A piece keeps its bank 10 + max(24, 10 + 1 x 6 + 4) = 34 cycles. One access in flight (2 pieces over 4 banks):
    # 2 x (34 x (2 + 3) / 4 + 10) / 2 = 52.5 cycles; bus and columns 16, activations 2 x 5 = 10.
    c = dram.pattern_cost(TINY, dram.RandomAccess(256, 1))
    assert c.bounds_cycles == pytest.approx({"data bus": 16, "column spacing": 16, "activation (tRRD/tFAW)": 10,
                                             "banks at queue depth": 52.5})
    assert eff(TINY, dram.RandomAccess(256, 1)) == pytest.approx(16 / 52.5 / RF)
    # Unlimited queue: 2 pieces x 34 cycles over 4 banks = 17 cycles per access of 16 bus cycles.
    assert eff(TINY, dram.RandomAccess(256, INF)) == pytest.approx(16 / 17 / RF)


def test_rows_per_piece_counts_row_crossings():
    # Aligned pieces that divide the row stay in it; ones the row divides take k / B rows; unaligned ones cross
    # a row boundary with probability (k - 1) / B.
    assert dram.rows_per_piece(TINY, 4, aligned=True) == 1
    assert dram.rows_per_piece(TINY, 32, aligned=True) == 2
    assert dram.rows_per_piece(TINY, 4, aligned=False) == pytest.approx(1 + 3 / 16)
    assert dram.rows_per_piece(TINY, 24, aligned=True) == pytest.approx(1 + (24 - 8) / 16)
    # Brute force over every start offset an aligned piece of 24 bursts can take (multiples of 24, mod 16).
    offsets = {(24 * i) % 16 for i in range(16)}
    assert sum((o + 24 - 1) // 16 + 1 for o in offsets) / len(offsets) == pytest.approx(1 + (24 - 8) / 16)


def test_strided_by_hand():
    # 128 B every 512 B: a stripe (2 bank groups x 1 KiB) holds 4 runs = 8 bursts in 2 open rows (2 activations).
    # Bus and columns 32 cycles, activations 10, banks 2 x (10 + max(24, 10 + 3 x 6 + 4)) / 4 = 21: bus-bound,
    # 512 useful bytes per 32 cycles = the peak.
    c = dram.pattern_cost(TINY, dram.Strided(128, 512))
    assert c.useful_bytes == 512
    assert c.bounds_cycles == pytest.approx({"data bus": 32, "column spacing": 32, "activation (tRRD/tFAW)": 10,
                                             "bank row cycle": 21})
    assert eff(TINY, dram.Strided(128, 512)) == pytest.approx(1 / RF)
    # 64 B every 4 KiB: each run opens its own row, as an unlimited queue of random 64 B reads does.
    assert eff(TINY, dram.Strided(64, 4096)) == pytest.approx(eff(TINY, dram.RandomAccess(64, INF)))
    # A partial burst is still a burst: 32 B runs every 64 B deliver half the bus.
    assert eff(TINY, dram.Strided(32, 64)) == pytest.approx(0.5 / RF)


@pytest.mark.parametrize("name", dram.dram_timing_preset_names())
def test_contiguous_patterns_are_the_stream(name):
    t = dram.load_dram_timing(name)
    seq = dram.channel_stream_bw_bytes_per_s(t)
    assert dram.pattern_bw_bytes_per_s(t, dram.SEQUENTIAL) == pytest.approx(seq)
    assert dram.pattern_bw_bytes_per_s(t, dram.Strided(t.burst_bytes, t.burst_bytes)) == pytest.approx(seq)
    assert dram.pattern_bw_bytes_per_s(t, dram.Strided(4096, 4096)) == pytest.approx(seq)
    stripe = t.bank_groups_per_rank * t.row_bytes
    # Reads of whole stripes, aligned, with plenty in flight: the stream, less a rank switch per activated row
    # (tRTRS x (ranks - 1) / ranks per row of B bursts: 0.8% on the 2-rank HBM3 pseudo-channel).
    big = dram.pattern_bw_bytes_per_s(t, dram.RandomAccess(64 * stripe, INF))
    switch = t.tRTRS_cycles * (t.ranks - 1) / t.ranks / t.bursts_per_row
    assert big == pytest.approx(seq * t.burst_cycles / (t.burst_cycles + switch), rel=1e-3)


def test_read_time_is_latency_then_rate():
    p = dram.RandomAccess(256, 1)
    c = dram.pattern_cost(TINY, p)
    # First access: tRP + tRCD + (2 - 1) x 6 + tCL + burst = 40 cycles; then 52.5 cycles per access.
    assert c.first_cycles == pytest.approx(40)
    assert dram.pattern_read_time_s(TINY, p, 256) == pytest.approx(40e-9 * RF)
    assert dram.pattern_read_time_s(TINY, p, 10 * 256) == pytest.approx((9 * 52.5 + 40) * 1e-9 * RF)
    assert dram.pattern_read_time_s(TINY, p, 0) == 0.0
    assert dram.pattern_read_time_s(TINY, dram.SEQUENTIAL, 2**20) == dram.channel_stream_time_s(TINY, 2**20)


def test_bad_patterns_rejected():
    with pytest.raises(HardwareError, match="size_bytes must be a positive number"):
        dram.RandomAccess(0, 4)
    with pytest.raises(HardwareError, match="outstanding must be a positive number"):
        dram.RandomAccess(64, 0)
    with pytest.raises(HardwareError, match=r"stride_bytes \(64\) must not be below run_bytes \(128\)"):
        dram.Strided(128, 64)
    with pytest.raises(HardwareError, match="access pattern must be Sequential, RandomAccess or Strided"):
        dram.pattern_efficiency(TINY, "random")
    with pytest.raises(HardwareError, match="tRTRS_cycles must be zero or positive"):
        dataclasses.replace(TINY, tRTRS_cycles=-1)


# ------------------------------------------------------------------ properties

presets = st.sampled_from(sorted(dram.dram_timing_preset_names()))
timings = st.builds(
    lambda name, ranks, bg, bpg, faw, ccd_l, rtrs: dataclasses.replace(
        dram.load_dram_timing(name), ranks=ranks, bank_groups_per_rank=bg, banks_per_rank=bg * bpg,
        tFAW_cycles=faw, tCCD_L_cycles=max(ccd_l, dram.load_dram_timing(name).tCCD_S_cycles), tRTRS_cycles=rtrs),
    presets, st.integers(1, 4), st.sampled_from([1, 2, 4, 8]), st.integers(1, 4), st.floats(8, 64),
    st.floats(2, 16), st.floats(0, 4))
bursts = st.integers(1, 4096)
queues = st.floats(0.05, 1e4)


@settings(max_examples=300)
@given(t=timings, a=bursts, b=bursts, q=queues)
def test_larger_accesses_never_less_efficient(t, a, b, q):
    lo, hi = sorted((a, b))
    small = dram.RandomAccess(lo * t.burst_bytes, q, aligned=False)
    large = dram.RandomAccess(hi * t.burst_bytes, q, aligned=False)
    assert eff(t, large) >= eff(t, small) * (1 - 1e-12)


@settings(max_examples=300)
@given(t=timings, a=st.integers(0, 12), b=st.integers(0, 12), q=queues)
def test_larger_aligned_blocks_never_less_efficient(t, a, b, q):
    # Aligned accesses of powers of two (pool blocks) either fit a row or are whole rows.
    lo, hi = sorted((a, b))
    assert eff(t, dram.RandomAccess(2**hi * t.burst_bytes, q)) >= eff(t, dram.RandomAccess(2**lo * t.burst_bytes, q)) \
        * (1 - 1e-12)


@settings(max_examples=300)
@given(t=timings, n=bursts, a=queues, b=queues, aligned=st.booleans())
def test_more_outstanding_never_less_efficient(t, n, a, b, aligned):
    lo, hi = sorted((a, b))
    size = n * t.burst_bytes
    assert eff(t, dram.RandomAccess(size, hi, aligned)) >= eff(t, dram.RandomAccess(size, lo, aligned)) * (1 - 1e-12)


@settings(max_examples=300)
@given(t=timings, size=st.floats(1, 2**22), q=queues, aligned=st.booleans(), run=st.floats(1, 2**16),
       gap=st.floats(1, 64))
def test_random_and_strided_never_above_sequential(t, size, q, aligned, run, gap):
    seq = eff(t, dram.SEQUENTIAL)
    r = eff(t, dram.RandomAccess(size, q, aligned))
    s = eff(t, dram.Strided(run, run * gap))
    assert 0 < r <= seq * (1 + 1e-12)
    assert 0 < s <= seq * (1 + 1e-12)


@given(t=timings, size=st.floats(1, 2**20), q=queues, a=st.floats(0, 1e10), b=st.floats(0, 1e10))
def test_read_time_monotone_and_never_beats_the_rate(t, size, q, a, b):
    p = dram.RandomAccess(size, q)
    lo, hi = sorted((a, b))
    assert dram.pattern_read_time_s(t, p, lo) <= dram.pattern_read_time_s(t, p, hi)
    # At most one access faster than the steady rate (the first access need not wait for its bank's tRAS).
    interval_s = dram.pattern_cost(t, p).interval_cycles * t.tCK_s * t.refresh_factor
    assert dram.pattern_read_time_s(t, p, hi) >= hi / dram.pattern_bw_bytes_per_s(t, p) - interval_s * (1 + 1e-9)


# ------------------------------------------------------------------ host memory


def host():
    return load_machine().host_dram


def test_host_dram_from_its_timing():
    h = host()
    assert h.dram.name == dram.load_dram_timing(h.timing).name and h.dram.ranks == h.ranks_per_channel
    assert h.subchannels == h.channels * h.subchannels_per_channel == 16
    assert h.peak_bw_bytes_per_s == pytest.approx(16 * 19.2e9, rel=1e-4)          # 8 x DDR5-4800 = 307 GB/s
    assert h.channel_bw_bytes_per_s == pytest.approx(38.4e9, rel=1e-4)
    assert h.achievable_bw_bytes_per_s == pytest.approx(16 * dram.channel_stream_bw_bytes_per_s(h.dram))
    assert h.dram.sources["ranks"].startswith("host_dram")


def test_paged_kv_pattern_geometry():
    h = host()
    # CPU attention: one head's block, 16 tokens x 128 x 2 B = 4 KiB, spread over 16 sub-channels: 256 B (4 bursts)
    # on each; the 32-line queue holds 8 such pieces.
    p = dram.paged_kv_pattern(h, 128, 2)
    assert p == dram.RandomAccess(4096, 8.0, aligned=True)
    assert dram.channel_pattern(h, p).size_bytes == 256
    assert cpu.attention_pattern(h, 128, 2) == p
    # DMA of whole blocks of 8 KV heads: 32 KiB, 2 KiB per sub-channel, one block in flight per channel.
    d = dram.paged_kv_pattern(h, 128, 2, heads=8)
    assert (d.size_bytes, d.outstanding) == (32768, 1.0)
    assert dram.channel_pattern(h, d).size_bytes == 2048
    # Smaller than the interleave: the whole access lands on one channel.
    assert dram.channel_pattern(h, dram.RandomAccess(128, 1)).size_bytes == 128
    # Strided at host level keeps its density: 512 B runs every 4 KiB become 256 B runs every 2 KiB.
    assert dram.channel_pattern(h, dram.Strided(512, 4096)) == dram.Strided(256, 2048)


def test_host_rate_is_channels_times_channel_rate():
    h = host()
    for p in (dram.SEQUENTIAL, dram.paged_kv_pattern(h, 128, 2), dram.Strided(256, 2048)):
        per_channel = dram.pattern_bw_bytes_per_s(h.dram, dram.channel_pattern(h, p))
        assert dram.host_read_bw_bytes_per_s(h, p) == pytest.approx(16 * per_channel)
        assert dram.host_read_bw_bytes_per_s(h, p) <= h.achievable_bw_bytes_per_s * (1 + 1e-12)
    assert dram.host_read_time_s(h, dram.SEQUENTIAL, 2**30) == pytest.approx(
        dram.channel_stream_time_s(h.dram, 2**30 / 16))


@pytest.mark.parametrize("preset", preset_names())
def test_presets_read_kv_blocks_below_the_stream(preset):
    h = load_machine(preset).host_dram
    seq = dram.host_read_bw_bytes_per_s(h, dram.SEQUENTIAL)
    for heads in (1, 8):
        rate = dram.host_read_bw_bytes_per_s(h, dram.paged_kv_pattern(h, 128, 2, heads))
        assert 0.5 * seq < rate <= seq


def test_bad_host_values_rejected():
    h = host()
    with pytest.raises(HardwareError, match="ranks_per_channel must be a whole number >= 1"):
        dataclasses.replace(h, ranks_per_channel=0)
    with pytest.raises(HardwareError, match=r"interleave_bytes \(100\) must be a whole number of 64-byte bursts"):
        dataclasses.replace(h, interleave_bytes=100)
    with pytest.raises(HardwareError, match=r"unknown DRAM timing preset 'ddr5-480'"):
        dataclasses.replace(h, timing="ddr5-480")


# ------------------------------------------------------------------ the rate a run uses


def tiny_model():
    return ModelSpec(name="tiny", family="llama", n_layers=2, hidden_size=1024, n_heads=8, n_kv_heads=8,
                     head_dim=128, ffn_size=512, vocab_size=1000, max_context=1 << 20)


def test_kv_dma_runs_at_the_host_read_rate():
    # One DDR5 channel (2 sub-channels, ~35 GB/s) behind a 200 GB/s PCIe link: the memory bus sets the DMA rate.
    p = load_machine()
    params = dataclasses.replace(p, host_dram=dataclasses.replace(p.host_dram, channels=1),
                                 pcie=dataclasses.replace(p.pcie, h2d_bw_bytes_per_s=200e9, d2h_bw_bytes_per_s=200e9))
    run = run_simulation(make_config(system="offload", batch=2, context=4096, steps=1, trace_steps=1,
                                     kv_gpu_fraction="0"),
                         params=params, model=tiny_model())
    rate = dram.host_read_bw_bytes_per_s(params.host_dram, run.topology.host_read_pattern)
    assert rate < 200e9
    fetches = [s for s in run.spans if s.kind == "kv_fetch"]
    assert fetches
    for s in fetches:
        assert s.end_s - s.start_s == pytest.approx(params.pcie.latency_s + s.nbytes / rate, rel=1e-12)
    assert run.topology.graph.nodes[HOST_CPU]["mem_bw_bytes_per_s"] == rate
    assert run.topology.route(HOST_DRAM, GPU).bw_bytes_per_s == rate


def test_topology_takes_the_pattern():
    p = load_machine()
    kv = dram.paged_kv_pattern(p.host_dram, 128, 2, heads=8)
    membus = Topology(p, host_read_pattern=kv).graph.edges[HOST_DRAM, HOST_RC]["link"]
    assert membus.bw_bytes_per_s == dram.host_read_bw_bytes_per_s(p.host_dram, kv)
    assert Topology(p).graph.edges[HOST_DRAM, HOST_RC]["link"].bw_bytes_per_s == p.host_dram.achievable_bw_bytes_per_s


def test_cpu_attention_reads_at_the_host_read_rate():
    # With unlimited FLOP/s the CPU attention spans are the dispatch cost plus bytes at the host DRAM rate for the
    # pattern the offload system reads with: the stream until it passes the paged-KV pattern, then that one.
    p = load_machine()
    params = dataclasses.replace(p, cpu=dataclasses.replace(p.cpu, flops_efficiency=1.0, peak_flops_per_s=1e30))
    model = tiny_model()
    run = run_simulation(make_config(system="offload", cpu_attention=True, batch=2, context=4096, steps=1,
                                     trace_steps=1, kv_gpu_fraction="0"), params=params, model=model)
    mem = params.host_dram
    rates = {dram.host_read_bw_bytes_per_s(mem, q)
             for q in (dram.SEQUENTIAL, cpu.attention_pattern(mem, model.head_dim, model.bytes_per_element))}
    attn = [s for s in run.spans if s.component == HOST_CPU and s.nbytes > 0]
    assert attn
    for s in attn:
        used = s.nbytes / (s.end_s - s.start_s - params.cpu.op_overhead_s)
        assert any(math.isclose(used, r, rel_tol=1e-9) for r in rates)
