"""Per-format channel work of one decode layer (hw_models.pim): FP16 and PQ reproduce, Work for Work, the
compositions the systems used to build inline; INT-k is checked by hand on a tiny channel."""

import dataclasses
import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_models import pim
from hw_models.errors import HardwareError
from workloads.kvformats import IntSettings, PqSettings
from workloads.models import load_model

PRESETS = pim.pim_preset_names()


# ---- the old compositions, copied from sim/systems/pim.py and sim/systems/aqpim.py as they were when the
# ---- per-format functions replaced them (commit c3ac839); the reference the new functions must reproduce.

OLD_QUANTIZE_FLOPS_PER_ELEMENT = 3.0  # sim/systems/aqpim.py
OLD_FP16_BYTES = 2                    # workloads/kvformats.py
OLD_BIN_BYTES = OLD_FP16_BYTES


def old_fp16_works(ch, tok, units, nv, part, *, g, d, e, softmax):
    """PimSystem.channel_phases.works"""
    w = pim.ChannelAttention(kv_vectors=tok, head_dim=d, queries_per_kv=g, query_vectors=units * g,
                             bytes_per_element=e)
    full = (pim.append_work(ch, nv, d, e),) + pim.attention_works(ch, w, softmax)
    # host softmax: [append, q_in, score, softmax(out)] | [context, out]
    return full if part is None else (full[:4] if part == 0 else full[4:])


def old_pq_works(ch, tok, units, nv, *, g, d, e, m, k, outliers, window, passes, softmax):
    """AqpimSystem.channel_phases.works"""
    FP16_BYTES = OLD_FP16_BYTES
    code_bits = int(k).bit_length() - 1
    codebook_bytes = k * d * FP16_BYTES
    code_bytes = m * code_bits / 8
    fp16 = pim.ChannelAttention(kv_vectors=nv * window, head_dim=d, queries_per_kv=g, query_vectors=0,
                                bytes_per_element=e)
    out = []
    out.append(pim.broadcast_work(ch, units * g * d * e, kind="pim.q_in"))
    if nv:
        out.append(pim.op_work(ch, "aqpim.quantize", nv * 2 * codebook_bytes,
                               nv * 2 * OLD_QUANTIZE_FLOPS_PER_ELEMENT * k * d))
        out.append(pim.write_work(ch, nv * 2 * code_bytes, kind="aqpim.write_codes"))
        out.append(pim.append_work(ch, nv, d, e))
    out.append(pim.op_work(ch, "aqpim.table", units * codebook_bytes, units * g * 2.0 * k * d))
    out.append(pim.op_work(ch, "aqpim.score", tok * (code_bytes * passes + outliers * FP16_BYTES),
                           tok * g * (2.0 * m + 2.0 * outliers)))
    out.append(pim.softmax_work(ch, (tok + nv * window) * g, softmax, e))
    out.append(pim.op_work(ch, "aqpim.value", tok * code_bytes * passes, tok * g * 2.0 * m))
    out.append(pim.op_work(ch, "aqpim.bins_x_centroids", units * codebook_bytes, units * g * 2.0 * k * d))
    if nv and window:
        out.append(pim.score_work(ch, fp16))
        out.append(pim.context_work(ch, fp16))
    out.append(pim.read_out_work(ch, units * g * (d * e + pim.SOFTMAX_STATS_BYTES_PER_QUERY), kind="pim.out"))
    return tuple(out)


def old_pq_split(works):
    """AqpimSystem.channel_phases first / second: cut after the softmax's channel side."""
    i = next(j for j, x in enumerate(works) if x.kind.startswith("pim.softmax"))
    return works[: i + 1], works[i + 1:]


# ---- equality, Work for Work ----------------------------------------------------------------------------------

@functools.cache
def channel(name):
    return pim.load_pim(name).channel


def channel_for(name, softmax):
    ch = channel(name)
    return ch, softmax == "near" and ch.near_flops_per_s == 0


def check_fp16(name, softmax, tok, units, nv, g, d, e):
    ch, no_near = channel_for(name, softmax)
    if no_near:
        with pytest.raises(HardwareError, match="no near-memory unit"):
            pim.fp16_attention_works(ch, tok, units, nv, head_dim=d, group=g, bytes_per_element=e, softmax=softmax)
        return
    new = pim.fp16_attention_works(ch, tok, units, nv, head_dim=d, group=g, bytes_per_element=e, softmax=softmax)
    kw = dict(g=g, d=d, e=e, softmax=softmax)
    assert new.all == old_fp16_works(ch, tok, units, nv, None, **kw)
    assert new.before_softmax == old_fp16_works(ch, tok, units, nv, 0, **kw)
    assert new.after_softmax == old_fp16_works(ch, tok, units, nv, 1, **kw)


# A lookup unit that never binds: its buffer holds every table row, its accesses are free and instant. With it
# the lookup plan is one pass and the PQ works reduce to the old composition with one pass.
UNBOUNDED = pim.AqpimUnitParams(lut_bytes=2.0**40, lut_banks=1, lut_clock_hz=1e300, lut_access_energy_j=0.0)


def check_pq(name, softmax, tok, units, nv, g, d, e, m, k, outliers, window, dataflow):
    ch, no_near = channel_for(name, softmax)
    ch = dataclasses.replace(ch, aqpim_unit=UNBOUNDED)
    plan = pim.pq_lookup_plan(ch, g, m, k, dataflow)
    assert (plan.passes, plan.code_reads, plan.carried, plan.reduced) == (1, 1, 0, 0)
    passes = 1
    kw = dict(head_dim=d, group=g, bytes_per_element=e, m=m, k=k, outliers=outliers, window=window,
              lut=plan, softmax=softmax)
    if no_near:
        with pytest.raises(HardwareError, match="no near-memory unit"):
            pim.pq_attention_works(ch, tok, units, nv, **kw)
        return
    new = pim.pq_attention_works(ch, tok, units, nv, **kw)
    old = old_pq_works(ch, tok, units, nv, g=g, d=d, e=e, m=m, k=k, outliers=outliers, window=window,
                       passes=passes, softmax=softmax)
    assert new.all == old
    assert (new.before_softmax, new.after_softmax) == old_pq_split(old)


loads = st.one_of(st.just(0.0), st.floats(0, 1e6, allow_subnormal=False))
few = st.one_of(st.just(0.0), st.just(1.0), st.floats(0, 64, allow_subnormal=False))
placements = st.sampled_from(pim.SOFTMAX_PLACEMENTS)
presets = st.sampled_from(PRESETS)


@settings(max_examples=300)
@given(name=presets, softmax=placements, tok=loads, units=few, nv=few, g=st.sampled_from([1, 2, 4, 8]),
       d=st.sampled_from([64, 80, 128]), e=st.sampled_from([2, 4]))
def test_fp16_works_equal_the_old_composition(name, softmax, tok, units, nv, g, d, e):
    check_fp16(name, softmax, tok, units, nv, g, d, e)


@st.composite
def pq_geometry(draw):
    d = draw(st.sampled_from([64, 80, 128]))
    m = draw(st.sampled_from([x for x in (1, 2, 4, 8, 16, 32, 40) if d % x == 0]))
    return d, m, draw(st.sampled_from([2, 16, 256, 1024])), draw(st.integers(0, 8))


@settings(max_examples=300)
@given(name=presets, softmax=placements, tok=loads, units=few, nv=few, g=st.sampled_from([1, 2, 4, 8]),
       e=st.sampled_from([2, 4]), geometry=pq_geometry(), window=st.sampled_from([0, 1, 4, 132]),
       dataflow=st.sampled_from(pim.PQ_DATAFLOWS))
def test_pq_works_equal_the_old_composition(name, softmax, tok, units, nv, g, e, geometry, window, dataflow):
    d, m, k, outliers = geometry
    check_pq(name, softmax, tok, units, nv, g, d, e, m, k, outliers, window, dataflow)


def test_many_seeded_loads_equal_the_old_compositions():
    """Loads as the systems make them: striped tokens, units and new vectors, divided into link chunks."""
    rng = np.random.default_rng(7)
    for _ in range(1000):
        name, softmax = str(rng.choice(PRESETS)), str(rng.choice(pim.SOFTMAX_PLACEMENTS))
        chunks = int(rng.choice([1, 2, 4]))
        tok, units, nv = (rng.integers(0, 200_000) * rng.random(), rng.integers(0, 40), rng.integers(0, 3)) \
            if rng.random() < 0.8 else (0.0, 1.0, 0.0)
        tok, units, nv = np.round(np.array([tok, units, nv], dtype=float) / chunks, 3)
        g, d, e = int(rng.choice([1, 4, 8])), 128, 2
        check_fp16(name, softmax, tok, units, nv, g, d, e)
        check_pq(name, softmax, tok, units, nv, g, d, e, m=int(rng.choice([8, 16, 32])),
                 k=int(rng.choice([16, 256])), outliers=int(rng.integers(0, 5)), window=int(rng.choice([0, 132])),
                 dataflow=str(rng.choice(pim.PQ_DATAFLOWS)))


def test_split_is_where_the_softmax_ends():
    ch = pim.load_pim("attacc-hbm3").channel
    for works in (pim.fp16_attention_works(ch, 100, 2, 1, head_dim=128, group=4, bytes_per_element=2,
                                           softmax="host"),
                  pim.pq_attention_works(ch, 100, 2, 1, head_dim=128, group=4, bytes_per_element=2, m=16, k=256,
                                         outliers=2, window=132, lut=pim.pq_lookup_plan(ch, 4, 16, 256),
                                         softmax="host"),
                  pim.int_attention_works(ch, 100, 2, 1, head_dim=128, group=4, bytes_per_element=2, bits=4,
                                          group_size=32, window=132, softmax="host")):
        assert works.before_softmax[-1].kind == "pim.softmax.host"
        assert not any(w.kind.startswith("pim.softmax") for w in works.after_softmax)
        assert works.all == works.before_softmax + works.after_softmax


# ---- the lookup unit and its dataflows ------------------------------------------------------------------------

def unit_channel(lut_bytes, units_per_bank=1.0):
    ch = pim.load_pim("attacc-hbm3").channel
    return dataclasses.replace(ch, units_per_bank=units_per_bank,
                               aqpim_unit=dataclasses.replace(ch.aqpim_unit, lut_bytes=lut_bytes))


def plan_tuple(p):
    return p.passes, p.code_reads, p.carried, p.reduced, p.pool, p.codebook_reads


def test_lookup_plans_by_hand():
    # GQA group 4, M = 16, K = 256: 64 rows of 512 B (32 KiB of tables) per (sequence, KV head); 32 units
    g, m, k = 4, 16, 256
    assert pim.load_pim("attacc-hbm3").channel.units == 32
    for flow in pim.PQ_DATAFLOWS:  # everything fits: one pass, nothing carried or reduced
        assert plan_tuple(pim.pq_lookup_plan(unit_channel(32768), g, m, k, flow)) == (1, 1, 0, 0, 1, 1)
    # 16 KiB = 32 rows: two whole heads per pass (repass); 8 sub-spaces x 4 heads per pass (subspace)
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(16384), g, m, k, "repass")) == (2, 2, 0, 0, 1, 2)
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(16384), g, m, k, "subspace")) == (2, 1, 1, 0, 1, 1)
    # bank_split: 2 units pool their buffers (8 sub-spaces each), one pass, each token's 2 partials summed
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(16384), g, m, k, "bank_split")) == (1, 1, 0, 1, 2, 1)
    # 2 KiB = 4 rows: repass splits each head over 4 passes (16 in all), carrying its score 3 times
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(2048), g, m, k, "repass")) == (16, 16, 3, 0, 1, 4)
    # subspace: one sub-space x 4 heads per pass, every code read once, scores carried 15 times
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(2048), g, m, k, "subspace")) == (16, 1, 15, 0, 1, 1)
    # bank_split: 16 units, one sub-space each: one pass, 15 partials per token and head cross the shared path
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(2048), g, m, k, "bank_split")) == (1, 1, 0, 15, 16, 1)
    # 512 B = one row, less than the 4 heads: heads in 4 groups, each column read once per group
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(512), g, m, k, "subspace")) == (64, 4, 15, 0, 1, 4)
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(512), g, m, k, "repass")) == (64, 64, 15, 0, 1, 4)
    # bank_split: 4 head groups, 16 units with one sub-space each: 15 partials per token and head
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(512), g, m, k, "bank_split")) == (4, 4, 0, 15, 16, 4)
    # 8 units per channel (one per 4 banks): the pool is capped at 8 and makes two passes over sub-space halves
    assert plan_tuple(pim.pq_lookup_plan(unit_channel(2048, 0.25), g, m, k, "bank_split")) == (2, 2, 0, 15, 8, 1)


def test_lookup_buffer_smaller_than_one_row_is_an_error():
    with pytest.raises(HardwareError, match=r"lookup buffer of 511 bytes per unit is smaller than one table row "
                                            r"\(256 centroids x 2 bytes = 512 bytes\)"):
        pim.pq_lookup_plan(unit_channel(511), 4, 16, 256)
    assert pim.pq_lookup_plan(unit_channel(511), 4, 16, 128).rows_per_buffer == 1
    with pytest.raises(HardwareError, match="no AQPIM lookup unit"):
        pim.pq_lookup_plan(dataclasses.replace(unit_channel(512), aqpim_unit=None), 4, 16, 256)
    with pytest.raises(HardwareError, match="dataflow must be one of"):
        pim.pq_lookup_plan(unit_channel(512), 4, 16, 256, "subspaces")
    with pytest.raises(HardwareError, match="lut_bytes must be a positive number"):
        dataclasses.replace(unit_channel(512).aqpim_unit, lut_bytes=0)
    with pytest.raises(HardwareError, match="m must be a whole number >= 1"):
        pim.pq_lookup_plan(unit_channel(512), 1, 0, 256)


def test_lookup_sram_throughput_and_energy_by_hand():
    unit = pim.load_pim("attacc-hbm3").channel.aqpim_unit
    # 16 banks offered 16 random accesses a cycle serve 16 (1 - (15/16)^16) = 10.30 of them
    assert unit.accesses_per_cycle == pytest.approx(10.3028, abs=1e-4)
    assert dataclasses.replace(unit, lut_banks=1).accesses_per_cycle == 1.0
    ch = unit_channel(512)
    w = pim.lookup_op_work(ch, "x", 0.0, 0.0, 1e6)
    assert w.duration_s == pytest.approx(1e6 / (32 * 10.3028e0 * 327e6), rel=1e-4)
    assert w.energy_j == pytest.approx(1e6 * 2.5e-12)
    assert pim.lookup_limiter(ch, 0.0, 0.0, 1e6) == "lookup SRAM"
    assert pim.lookup_limiter(ch, 1e9, 0.0, 1e6) == "bank streaming"


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_has_a_sourced_lookup_unit(name):
    unit = pim.load_pim(name).channel.aqpim_unit
    assert set(unit.sources) == {"lut_bytes", "lut_banks", "lut_clock_hz", "lut_access_energy_j"}
    assert all(s.rstrip().endswith(")") or "(I)" in s or "(R)" in s or "(V)" in s for s in unit.sources.values())
    # the default buffer is a real part's: HBM-PIM's 512 B register file per unit, or UPMEM's 64 KB WRAM
    assert unit.lut_bytes == (65536 if name == "upmem" else 512)


# A channel with random lookup hardware and geometry: used by the invariants below.
@st.composite
def lookup_cases(draw):
    ch = pim.load_pim(draw(presets)).channel
    k = draw(st.sampled_from([16, 64, 256]))
    lut = draw(st.integers(k * 2, 1 << 17))
    unit = dataclasses.replace(ch.aqpim_unit, lut_bytes=float(lut), lut_banks=draw(st.integers(1, 32)))
    ch = dataclasses.replace(ch, aqpim_unit=unit)
    m = draw(st.sampled_from([4, 8, 16, 32]))
    return ch, draw(st.sampled_from([1, 2, 4, 8])), m, k


@settings(max_examples=100)
@given(case=lookup_cases(), more=st.integers(1, 1 << 17), tok=st.floats(0, 1e6), units=st.floats(0, 8),
       nv=st.floats(0, 4), flow=st.sampled_from(pim.PQ_DATAFLOWS))
def test_a_bigger_lookup_buffer_is_never_slower(case, more, tok, units, nv, flow):
    """Each dataflow: more buffer means no more passes, code reads, carried scores or reduced partials, and so no
    longer channel work for any load."""
    ch, g, m, k = case
    big = dataclasses.replace(ch, aqpim_unit=dataclasses.replace(ch.aqpim_unit,
                                                                 lut_bytes=ch.aqpim_unit.lut_bytes + more))
    small_plan, big_plan = pim.pq_lookup_plan(ch, g, m, k, flow), pim.pq_lookup_plan(big, g, m, k, flow)
    for f in ("passes", "code_reads", "carried", "reduced", "codebook_reads"):
        assert getattr(big_plan, f) <= getattr(small_plan, f)
    kw = dict(head_dim=128, group=g, bytes_per_element=2, m=m, k=k, outliers=0, window=4, softmax="pim")
    small_t = sum(w.duration_s for w in pim.pq_attention_works(ch, tok, units, nv, lut=small_plan, **kw).all)
    big_t = sum(w.duration_s for w in pim.pq_attention_works(big, tok, units, nv, lut=big_plan, **kw).all)
    assert big_t <= small_t * (1 + 1e-12)


@settings(max_examples=50)
@given(case=lookup_cases())
def test_dataflows_agree_when_the_tables_fit(case):
    ch, g, m, k = case
    plans = {f: pim.pq_lookup_plan(ch, g, m, k, f) for f in pim.PQ_DATAFLOWS}
    if ch.aqpim_unit.lut_bytes >= g * m * k * 2:
        assert {plan_tuple(p) for p in plans.values()} == {(1, 1, 0, 0, 1, 1)}
    else:
        assert all(p.passes > 1 or p.reduced > 0 for p in plans.values())


def test_phases_cover_every_pq_work_kind():
    ch = unit_channel(512)
    for softmax, rerank in (("pim", 0), ("host", 0), ("pim", 8)):
        w = pim.pq_attention_works(ch, 1000.0, 2.0, 1.0, head_dim=128, group=4, bytes_per_element=2, m=16, k=256,
                                   outliers=2, window=132, lut=pim.pq_lookup_plan(ch, 4, 16, 256, "bank_split"),
                                   softmax=softmax, rerank=rerank)
        assert {pim.pq_phase_of(x.kind) for x in w.all} == set(pim.PQ_PHASES) - ({"rerank"} if not rerank else set())


# ---- INT-k by hand -------------------------------------------------------------------------------------------------

def tiny_channel():
    """AttAcc's channel with easy numbers outside: 1 us per command, a 1 GB/s interface, round energies."""
    ch = pim.load_pim("attacc-hbm3").channel
    ch = dataclasses.replace(ch, op_overhead_s=1e-6, external_bw_bytes_per_s=1e9, energy_per_array_byte_j=1.0,
                             energy_per_flop_j=0.01, energy_per_io_byte_j=10.0)
    return ch


def test_int_works_by_hand():
    ch = tiny_channel()
    # 1000 coded tokens, 2 units, 1 new token; head_dim 64, GQA group 4, FP16; INT4, groups of 32, window 8.
    tok, units, nv, d, g, e, bits, gs, win = 1000.0, 2.0, 1.0, 64, 4, 2, 4, 32, 8
    w = pim.int_attention_works(ch, tok, units, nv, head_dim=d, group=g, bytes_per_element=e, bits=bits,
                                group_size=gs, window=win, softmax="pim")
    kinds = [x.kind for x in w.before_softmax], [x.kind for x in w.after_softmax]
    assert kinds == (["pim.q_in", "int.quantize", "int.write_codes", "pim.append", "int.score", "pim.score",
                      "pim.softmax.pim"], ["int.value", "pim.context", "pim.out"])
    by = {x.kind: x for x in w.all if x.kind not in ("pim.score", "pim.context")}
    # q in: 2 units x 4 queries x 64 x 2 bytes
    assert by["pim.q_in"].nbytes == 1024
    # quantize: read the leaving token's K and V (2 x 64 x 2 bytes); 5 FLOPs per element over 128 elements plus
    # 2 per group: 64 channels / 32 tokens = 2 key groups (amortised) and 64 / 32 = 2 value groups
    assert by["int.quantize"].nbytes == 256
    assert by["int.quantize"].flops == 128 * 5 + 2 * (2 + 2) == 648
    # codes 2 x 64 x 4 / 8 = 64 bytes; key scales 64 channels x 4 bytes / 32 tokens = 8; value scales 2 x 4 = 8
    assert by["int.write_codes"].nbytes == 2 * (64 + 8 + 8)  # array + interface bytes
    assert by["int.write_codes"].duration_s == pytest.approx(1e-6 + 80 / 1e9)
    assert by["pim.append"].nbytes == 2 * 256
    # scores: 1000 tokens x (32 code bytes + 8 key-scale bytes); per element 2 (dequantize) + 2 x 4 (queries)
    assert by["int.score"].nbytes == 1000 * 40
    assert by["int.score"].flops == 1000 * 64 * 10
    # softmax over (1000 coded + 8 window tokens) x 4 queries
    assert by["pim.softmax.pim"].flops == 5 * 1008 * 4
    # values: 1000 x (32 code bytes + 2 groups x 4 bytes)
    assert by["int.value"].nbytes == 1000 * 40
    assert by["int.value"].flops == 1000 * 64 * 10
    # out: 8 queries x (64 x 2 + 8 bytes of statistics)
    assert by["pim.out"].nbytes == 8 * 136
    # the window is attended as FP16: 8 K and 8 V vectors
    window = [x for x in w.all if x.kind in ("pim.score", "pim.context")]
    assert [x.nbytes for x in window] == [8 * 64 * 2] * 2
    assert [x.flops for x in window] == [2 * 8 * 64 * 4] * 2
    # time and energy of one op: overhead + max(stream, compute); array bytes at 1 J, FLOPs at 0.01 J
    score = by["int.score"]
    assert score.duration_s == pytest.approx(ch.op_overhead_s + max(pim.stream_time_s(ch, 40_000),
                                                                   640_000 / ch.peak_flops_per_s))
    assert score.energy_j == pytest.approx(40_000 * 1.0 + 640_000 * 0.01)


def test_int_without_new_tokens_or_window():
    ch = tiny_channel()
    w = pim.int_attention_works(ch, 320.0, 1.0, 0.0, head_dim=64, group=1, bytes_per_element=2, bits=2,
                                group_size=64, window=132, softmax="host")
    assert [x.kind for x in w.all] == ["pim.q_in", "int.score", "pim.softmax.host", "int.value", "pim.out"]
    score, soft, value = w.all[1], w.all[2], w.all[3]
    # INT2: 16 code bytes per tensor; key scales 64 x 4 / 64 = 4 bytes per token; value scales 1 group x 4
    assert score.nbytes == value.nbytes == 320 * 20
    assert score.flops == 320 * 64 * (2 + 2)
    # host softmax: the 320 scores go out and the weights come back, 2 bytes each, window not counted (no new)
    assert soft.nbytes == 2 * 320 * 2
    none = pim.int_attention_works(ch, 0.0, 0.0, 0.0, head_dim=64, group=1, bytes_per_element=2, bits=8,
                                   group_size=32, window=0, softmax="pim")
    assert [x.nbytes for x in none.all] == [0.0] * 5


def test_int_bytes_shrink_with_bits_and_beat_fp16():
    ch = pim.load_pim("attacc-hbm3").channel
    kw = dict(head_dim=128, group=4, bytes_per_element=2, group_size=32, window=0, softmax="pim")
    streamed = {b: sum(x.nbytes for x in pim.int_attention_works(ch, 1e5, 1, 0, bits=b, **kw).all
                       if x.kind.startswith("int.")) for b in (2, 4, 8)}
    fp16 = sum(x.nbytes for x in pim.fp16_attention_works(ch, 1e5, 1, 0, head_dim=128, group=4,
                                                          bytes_per_element=2, softmax="pim").all
               if x.kind in ("pim.score", "pim.context"))
    assert streamed[2] < streamed[4] < streamed[8] < fp16
    # INT4: 0.5 bytes per element plus scales 4 / 32 (keys) and 4 x 4 / 128 (values) per element per tensor
    assert streamed[4] == pytest.approx(1e5 * 128 * (2 * 0.5 + 4 / 32 + 4 * 4 / 128))


@pytest.mark.parametrize("bad, words", [
    (dict(bits=0), "bits must be a whole number >= 1"),
    (dict(bits=9), "bits must be at most 8"),
    (dict(group_size=0), "group_size must be a whole number >= 1"),
    (dict(window=-1), "window must be a whole number >= 0"),
    (dict(tokens=-1.0), "tokens must be zero or positive"),
])
def test_int_rejects_bad_values(bad, words):
    args = dict(tokens=1.0, units=1.0, new=0.0, head_dim=64, group=1, bytes_per_element=2, bits=4, group_size=32,
                window=0, softmax="pim")
    args.update(bad)
    ch = pim.load_pim("attacc-hbm3").channel
    with pytest.raises(HardwareError, match=words):
        pim.int_attention_works(ch, args.pop("tokens"), args.pop("units"), args.pop("new"), **args)


def test_pq_rejects_bad_values():
    ch = pim.load_pim("attacc-hbm3").channel
    kw = dict(head_dim=64, group=1, bytes_per_element=2, m=8, outliers=0, window=0,
              lut=pim.pq_lookup_plan(ch, 1, 8, 256), softmax="pim")
    with pytest.raises(HardwareError, match="power of two"):
        pim.pq_attention_works(ch, 1.0, 1.0, 0.0, k=255, **kw)
    with pytest.raises(HardwareError, match="lut must be a PqLookupPlan"):
        pim.pq_attention_works(ch, 1.0, 1.0, 0.0, k=256, **{**kw, "lut": 1})


def test_int_quantize_constants_are_the_stated_counts():
    assert pim.INT_QUANTIZE_FLOPS_PER_ELEMENT == 5.0 and pim.INT_DEQUANTIZE_FLOPS_PER_ELEMENT == 2.0
    assert pim.INT_GROUP_PARAM_BYTES == 4 and math.isclose(pim.QUANTIZE_FLOPS_PER_ELEMENT, 3.0)


# ---- the channel work streams and writes what the storage formats say -------------------------------------------

def test_streamed_and_written_bytes_per_token_match_the_storage_formats():
    model = load_model("llama-3-8b")
    ch = channel("attacc-hbm3")
    geo = dict(head_dim=model.head_dim, group=model.gqa_group, bytes_per_element=model.bytes_per_element)
    for fmt in (IntSettings(bits=4), IntSettings(bits=2, group=48, sinks=4, recent=128)):
        w = pim.int_attention_works(ch, 1000.0, 1.0, 1.0, bits=fmt.bits, group_size=fmt.group,
                                    window=fmt.window_tokens, softmax="pim", **geo)
        by = {x.kind: x for x in w.all}
        per_token = fmt.pim_token_bytes_per_head(model)
        assert by["int.write_codes"].nbytes == 2 * per_token  # array + interface
        assert by["int.score"].nbytes + by["int.value"].nbytes == pytest.approx(1000 * per_token, rel=1e-15)
    fmt = PqSettings(m=16, k=256, sinks=4, recent=128, outliers=4)
    ch = dataclasses.replace(ch, aqpim_unit=UNBOUNDED)  # one pass: the codes are read once
    w = pim.pq_attention_works(ch, 1000.0, 1.0, 0.0, m=fmt.m, k=fmt.k, outliers=fmt.outliers,
                               window=fmt.window_tokens, lut=pim.pq_lookup_plan(ch, 4, 16, 256, "repass"),
                               softmax="pim", **geo)
    by = {x.kind: x for x in w.all}
    assert by["aqpim.score"].nbytes + by["aqpim.value"].nbytes == 1000 * fmt.pim_token_bytes_per_head(model)
    assert by["aqpim.table"].nbytes * 2 * model.n_layers == fmt.pim_unit_fixed_bytes(model)
