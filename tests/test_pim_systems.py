"""PIM baseline and AQPIM: the two views agree, hand calculations hold, and the capacity wall behaves."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_models import pim as pim_model
from hw_models.machine import load_machine
from sim.config import make_config
from sim.run import simulate, simulate_traced
from sim.systems.pim import distinct_rows, place
from workloads.kvformats import PqSettings
from workloads.models import ModelSpec, load_model


def tiny_model(layers, kv_heads, group, head_dim):
    return ModelSpec(name="tiny", family="llama", n_layers=layers, hidden_size=kv_heads * group * head_dim,
                     n_heads=kv_heads * group, n_kv_heads=kv_heads, head_dim=head_dim, ffn_size=4 * head_dim,
                     vocab_size=1000, max_context=1 << 22)


models = st.builds(tiny_model, st.integers(1, 4), st.integers(1, 8), st.sampled_from([1, 2, 4]),
                   st.sampled_from([64, 128]))
options = st.fixed_dictionaries({
    "system": st.sampled_from(["pim", "aqpim"]),
    "batch": st.integers(1, 32), "context": st.integers(1, 400_000), "steps": st.integers(1, 2),
    "pim": st.sampled_from(pim_model.pim_preset_names()),
    "channels": st.one_of(st.none(), st.integers(1, 600)),
    "placement": st.sampled_from(["hybrid", "head", "token"]),
    "softmax": st.sampled_from(["pim", "host"]),
    "capacity_policy": st.sampled_from(["spill", "limit"]),
    "sub_batches": st.sampled_from([1, 1, 2]),
    "link_chunks": st.sampled_from([1, 1, 4]),
    "pq_m": st.sampled_from([8, 16]), "pq_k": st.sampled_from([16, 256]),
    "recent": st.sampled_from([0, 32, 128]),
    "lut_bytes": st.sampled_from([None, 512, 2048, 16384]),
    "lut_dataflow": st.sampled_from(pim_model.PQ_DATAFLOWS),
})


AQPIM_ONLY = ("pq_m", "pq_k", "recent", "lut_bytes", "lut_dataflow")


@given(models, options)
def test_two_views_agree_or_bound(model, opts):
    if opts["system"] == "pim":
        opts = {k: v for k, v in opts.items() if k not in AQPIM_ONLY}
    opts["sub_batches"] = min(opts["sub_batches"], opts["batch"])  # a sub-batch holds at least one sequence
    steps = []
    r = simulate(make_config(**opts, trace_steps=0), model=model, on_step=steps.append)
    for s in steps:
        if r.analytic_exact:
            assert s.latency_s == pytest.approx(s.analytic_s, rel=1e-9)
        else:
            assert s.latency_s >= s.analytic_s * (1 - 1e-9)
    if opts["sub_batches"] > 1 and min(s.n_seqs for s in steps) > 1:
        assert not r.analytic_exact  # two processes share the GPU: only a bound is claimed


@pytest.mark.parametrize("system", ["pim", "aqpim"])
def test_default_pim_machine_two_views_within_0_1_percent(system):
    r = simulate(make_config(system=system, model="llama-3-8b", batch=8, context=16384, steps=2))
    assert r.analytic_exact and abs(r.mean_step_latency_s / r.analytic_mean_step_latency_s - 1) < 1e-3


def test_link_pipelining_hides_transfers_without_paying_overheads_per_chunk():
    cfg = dict(system="pim", model="llama-3-8b", batch=32, context=4096, steps=1)
    one, four = simulate(make_config(**cfg)), simulate(make_config(**cfg, link_chunks=4))
    assert four.analytic_exact and four.mean_step_latency_s < one.mean_step_latency_s
    # a channel's command stream is the unpipelined one, split in time: the same work and energy on every channel
    assert four.details["pim_channel_busy_s"] == pytest.approx(one.details["pim_channel_busy_s"], rel=1e-12)
    assert four.energy_dynamic_j["pim"] == pytest.approx(one.energy_dynamic_j["pim"], rel=1e-12)
    # each link direction pays its set-up once per layer, however many chunks stream behind it
    n = load_model("llama-3-8b").n_layers
    setup = pim_model.load_pim("attacc-hbm3").link_latency_s
    for link in ("pim.link.down", "pim.link.up"):
        assert four.busy_s[link] == pytest.approx(one.busy_s[link], rel=1e-9)
        assert four.busy_s[link] > n * setup


pipelined = st.fixed_dictionaries({
    "system": st.sampled_from(["pim", "aqpim"]),
    "batch": st.integers(1, 48), "context": st.integers(1, 300_000), "steps": st.integers(1, 2),
    "pim": st.sampled_from(pim_model.pim_preset_names()),
    "channels": st.one_of(st.none(), st.integers(1, 400)),
    "placement": st.sampled_from(["hybrid", "head", "token"]),
    "softmax": st.sampled_from(["pim", "near"]),
    "capacity_policy": st.sampled_from(["spill", "limit"]),
    "sub_batches": st.sampled_from([1, 1, 2]),
})


@given(models, pipelined, st.integers(2, 64))
def test_link_chunks_never_slower_than_one(model, opts, chunks):
    """In its own model, pipelining the link never makes a step slower: the closed form always, and the
    simulated step whenever that closed form is exact (nothing else queues on the PIM path's resources)."""
    if pim_model.load_pim(opts["pim"]).channel.near_flops_per_s == 0:
        opts["softmax"] = "pim"  # its channels have no near-memory unit
    opts["sub_batches"] = min(opts["sub_batches"], opts["batch"])
    one_rows, many_rows = [], []
    one = simulate(make_config(**opts, trace_steps=0), model=model, on_step=one_rows.append)
    many = simulate(make_config(**opts, link_chunks=chunks, trace_steps=0), model=model, on_step=many_rows.append)
    assert len(one_rows) == len(many_rows) > 0
    for a, b in zip(many_rows, one_rows, strict=True):
        assert a.analytic_s <= b.analytic_s * (1 + 1e-9)
    if one.analytic_exact and many.analytic_exact:
        for a, b in zip(many_rows, one_rows, strict=True):
            assert a.latency_s <= b.latency_s * (1 + 1e-9)


def test_pim_attention_layer_time_by_hand():
    """One layer, MHA, long context: the attention phase takes KV bytes / (channels x internal bandwidth),
    plus per-operation overheads, first-access latency, the queries in and partial outputs out through each
    channel's interface, and the softmax arithmetic, within 1%."""
    model = dataclasses.replace(load_model("llama-2-7b"), n_layers=1)
    dev = pim_model.load_pim("attacc-hbm3")
    r = simulate(make_config(system="pim", batch=4, context=65536, steps=1, placement="token"), model=model)
    kv_bytes = 4 * 65537 * model.kv_bytes_per_token_per_layer
    ch = dev.channel
    first_access = 2 * (ch.timing.tRCD_cycles + ch.timing.tCL_cycles) * ch.timing.tCK_s
    queries = 4 * 32  # every channel holds a stripe of every (sequence, head) under 'token' placement
    io = queries * (128 * 2 + 128 * 2 + 8) / ch.external_bw_bytes_per_s
    softmax = 5 * 4 * 65537 * 32 / dev.channels / (ch.units * ch.unit_flops_per_s)
    hand = kv_bytes / (dev.channels * ch.internal_bw_bytes_per_s) + 6 * ch.op_overhead_s + first_access + io + softmax
    assert r.busy_by_kind_s["pim.attention"] == pytest.approx(hand, rel=0.01)


def test_striped_placement_is_balanced_and_conserves_tokens():
    m = load_model("llama-3-8b")
    kept = np.array([1000, 5000, 7, 123456])
    for policy in ("hybrid", "head", "token"):
        tokens, present, new = place(policy, m, kept, 37).loads()
        assert tokens.sum() == pytest.approx(kept.sum() * m.n_kv_heads)
        assert new.sum() == kept.size * m.n_kv_heads
    tokens, _, _ = place("hybrid", m, kept, 37).loads()
    assert tokens.max() == pytest.approx(tokens.mean())


def test_capacity_wall_spill_collapses_speedup_and_limit_cuts_batch():
    base = dict(model="llama-2-7b", batch=16, steps=2)
    fits = simulate(make_config(system="pim", context=8192, **base))
    wall = simulate(make_config(system="pim", context=32768, **base))
    offload = simulate(make_config(system="offload", context=32768, **base))
    assert fits.fits and not wall.fits and wall.details["spilled_share"] > 0.5
    assert "spilled to host DRAM" in wall.fit_reasons[0]
    # with most tokens spilled the PIM system is bound by the same PCIe link as offload
    assert offload.mean_step_latency_s / wall.mean_step_latency_s < 2
    assert wall.bytes_by_link["pcie.h2d"] > 0 and fits.bytes_by_link.get("pcie.h2d", 0) == 0
    limited = simulate(make_config(system="pim", context=32768, capacity_policy="limit", **base))
    assert limited.fits and limited.peak_batch < 16 and limited.details["spilled_bytes"] == 0


def test_aqpim_fits_where_pim_spills_and_stores_compressed_kv():
    cfg = dict(model="llama-2-7b", batch=16, context=32768, steps=2)
    pim, aq = simulate(make_config(system="pim", **cfg)), simulate(make_config(system="aqpim", **cfg))
    assert not pim.fits and aq.fits
    pq = PqSettings(m=16, k=256, sinks=4, recent=128)
    model = load_model("llama-2-7b")
    assert aq.details["compression"] == pytest.approx(
        model.kv_bytes_per_token * 32770 / pq.kv_bytes(model, 32770).total)
    assert aq.kv_bytes < pim.kv_bytes / 8
    assert aq.mean_step_latency_s < pim.mean_step_latency_s


def test_aqpim_per_query_costs_make_a_crossover_in_the_pim_phase():
    """Codes move 16x fewer bytes per token but tables and bins cost the same at any context."""
    def phase(system, ctx, **lut):
        window = {"recent": 0, "sinks": 0, **lut} if system == "aqpim" else {}
        r = simulate(make_config(system=system, model="llama-2-7b", batch=1, context=ctx, steps=1, **window))
        return r.busy_s["pim"]
    big = {"lut_bytes": 1 << 20}  # the tables fit: one pass over the codes
    assert phase("aqpim", 256, **big) > phase("pim", 256)
    # 3.9x: the gather and scatter are bound by the lookup SRAM's accesses (16 banks serve 10.3 random accesses
    # a cycle), not by the 16x fewer bytes
    assert phase("aqpim", 262144, **big) < phase("pim", 262144) / 3.5
    # with the preset's one-row buffer the running scores are carried between 16 passes: still a win at 256K
    assert phase("pim", 262144) / 3.5 < phase("aqpim", 262144) < phase("pim", 262144)


def test_table_bigger_than_lut_costs_extra_passes():
    cfg = dict(system="aqpim", model="llama-3-8b", batch=4, context=65536, steps=1)
    small = simulate(make_config(**cfg, lut_bytes=4096))
    big = simulate(make_config(**cfg, lut_bytes=1 << 20))
    assert small.details["lut_passes"] > big.details["lut_passes"] == 1
    assert small.busy_s["pim"] > big.busy_s["pim"]
    # the default buffer is the preset's (HBM-PIM's 512 B per unit): one table row
    default = simulate(make_config(**cfg))
    assert default.details["aqpim_lookup"]["lut_bytes"] == 512 and default.details["aqpim_lookup"]["rows_per_buffer"] == 1


@pytest.mark.parametrize("dataflow", pim_model.PQ_DATAFLOWS)
@pytest.mark.parametrize("softmax,rerank", [("pim", 0), ("host", 0), ("pim", 16)])
def test_aqpim_phases_add_up_to_the_pim_busy_time(dataflow, softmax, rerank):
    """Every AQPIM phase is its own span kind on the PIM device; the phases' durations add up to its busy time, in
    the traced spans and in the per-kind totals, and each traced channel's phase spans to that channel's busy.
    Exact re-rank's phase is there only with ``rerank``."""
    steps = 2
    r, spans = simulate_traced(make_config(system="aqpim", model="llama-3-8b", batch=4, context=8192, steps=steps,
                                           trace_steps=steps, lut_dataflow=dataflow, softmax=softmax,
                                           lut_bytes=2048, rerank=rerank))
    kinds = {k: v for k, v in r.busy_by_kind_s.items() if k.startswith("aqpim.")}
    assert set(kinds) == {f"aqpim.{p}" for p in pim_model.PQ_PHASES if rerank or p != "rerank"}
    assert sum(kinds.values()) == pytest.approx(r.busy_s["pim"], rel=1e-12)
    device = [s for s in spans if s.component == "pim"]
    assert {s.kind for s in device} == set(kinds)
    assert sum(s.end_s - s.start_s for s in device) == pytest.approx(r.busy_s["pim"], rel=1e-12)
    lane = [s for s in spans if s.component == "pim.ch0"]
    busy0 = r.details["pim_channel_busy_s"][0]
    assert sum(s.end_s - s.start_s for s in lane) == pytest.approx(busy0, rel=1e-9)


def test_host_side_dimm_pim_routes_queries_over_pcie():
    r = simulate(make_config(system="pim", pim="ddr5-dimm-pim", model="llama-3-8b", batch=2, context=8192, steps=1))
    assert r.bytes_by_link["pcie.d2h"] > 0 and r.bytes_by_link["pim.link.down"] > 0


def test_channel_count_override_and_bad_pim_name():
    r = simulate(make_config(system="pim", channels=1024, batch=2, context=4096, steps=1))
    assert r.details["pim_channels"] == 1024 and len(r.details["pim_channel_busy_s"]) == 1024
    with pytest.raises(ValueError, match="valid presets: attacc-hbm3"):
        simulate(make_config(system="pim", pim="attac"))


def test_pim_run_reports_the_machine_and_device_it_simulated():
    r = simulate(make_config(system="pim", batch=1, context=1024, steps=1))
    assert r.hardware == load_machine().name and r.details["pim_device"] == make_config(system="pim").options.pim
    assert r.details["pim_capacity_bytes"] == pim_model.load_pim(make_config(system="pim").options.pim).capacity_bytes


def _hybrid_reference(tokens: list[int], n: int) -> tuple[list, list, list, list, list]:
    """Hybrid stripes unit by unit in exact rationals, as ``StripePlacement`` says them: the units' tokens end to
    end, cut into ``n`` stripes of width T / n, each unit on the channels its span overlaps by a positive length,
    its new token on the channel of its last token (the first channel at or after its start for an empty unit), a
    pair's share the part of the unit's tokens in that channel's stripe. Returns the pairs, the shares (floats of
    the exact fractions), the last channels and the units present per channel."""
    import math
    from fractions import Fraction

    width = Fraction(sum(tokens), n)
    pairs_u, pairs_c, shares, last, present = [], [], [], [], [0] * n
    start = Fraction(0)
    for i, t in enumerate(tokens):
        end = start + t
        c0 = min(math.floor(start / width), n - 1)
        c1 = max(min(math.ceil(end / width) - 1, n - 1), c0)
        last.append(c1)
        for c in range(c0, c1 + 1):
            overlap = min(end, (c + 1) * width) - max(start, c * width)
            if overlap > 0:
                pairs_u.append(i)
                pairs_c.append(c)
                shares.append(float(overlap / t))
                present[c] += 1
        start = end
    return pairs_u, pairs_c, shares, last, present


@given(st.lists(st.sampled_from([0, 1, 7, 100, 1000, 4097, 65536]), min_size=1, max_size=40),
       st.sampled_from([1, 2, 7, 32, 37, 160, 256]))
def test_hybrid_placement_is_the_exact_stripes(kept, n):
    """``place("hybrid")`` (integer arrays over all units at once) gives the stripes computed unit by unit in
    exact rationals: the same pairs, last channels and units present per channel, and each share the float of its
    exact fraction; every channel holds T / n tokens."""
    m = load_model("llama-3.1-8b")
    kept = np.array(kept)
    p = place("hybrid", m, kept, n)
    tokens = np.repeat(kept, m.n_kv_heads).tolist()
    if sum(tokens) == 0:
        return  # nothing to stripe: whole units round-robin (the head policy)
    pu, pc, share, last, present = _hybrid_reference(tokens, n)
    held, units, new = p.loads()
    assert units.tolist() == present and p.n_pairs == len(pu)  # from the stripes, before any pair is built
    assert new.tolist() == np.bincount(last, minlength=n).tolist()
    assert p.pair_unit.tolist() == pu and p.pair_channel.tolist() == pc
    assert p.pair_share.tolist() == share and p.last_channel.tolist() == last
    assert held.tolist() == [sum(tokens) / n] * n


@given(st.lists(st.integers(1, 70000), min_size=1, max_size=40), st.sampled_from([1, 2, 7, 32, 37, 160, 256]))
def test_hybrid_placement_of_units_that_all_hold_tokens_is_the_exact_stripes(kept, n):
    """Every unit holding tokens (a serving step: the case ``StripePlacement`` computes without clamps) gives
    the stripes of the exact rationals too."""
    test_hybrid_placement_is_the_exact_stripes.hypothesis.inner_test(kept, n)


@given(st.lists(st.integers(0, 70000), min_size=1, max_size=40), st.sampled_from([1, 2, 7, 32, 37, 160, 256]),
       st.sampled_from([1.0, 0.75, 1 / 3]))
def test_stripe_groups_are_the_distinct_rows_of_the_loads(kept, n, scale):
    """``StripePlacement.groups`` (a plan's channels grouped by their units present and new vectors) gives what
    ``distinct_rows`` gives for the whole batch's loads: the same rows, bit for bit, in the same order, the same
    row per channel, and the channels per row."""
    p = place("hybrid", load_model("llama-3.1-8b"), np.array(kept), n)
    if p.groups(scale) is None:
        assert sum(kept) == 0  # nothing to stripe: the head policy, whose rows are sorted
        return
    rows, inv, counts = p.groups(scale)
    want_rows, want_inv = distinct_rows(np.column_stack(p.loads(scale)))
    assert rows == want_rows and inv.tolist() == want_inv.tolist()
    assert counts.tolist() == np.bincount(want_inv, minlength=len(want_rows)).tolist()


def test_hybrid_placement_keeps_unit_ends_on_stripe_boundaries_exact():
    """28 units of 47,894 tokens over 160 channels: units 7, 14 and 21 end exactly on a stripe boundary (every
    7 units span 40 stripes). Computed in floats (a stripe is 8381.45 tokens, not a binary fraction) such an end
    fell a rounding error past the boundary and put the unit on the next channel too, with a share of 2e-15: one
    unit more present there and its new token sent there. The exact stripes put no unit on a channel by less
    than 1 / n of a token."""
    m = dataclasses.replace(load_model("llama-3.1-8b"), n_kv_heads=1)
    p = place("hybrid", m, np.full(28, 47894), 160)
    pu, pc, share, last, present = _hybrid_reference([47894] * 28, 160)
    _, units, new = p.loads()
    assert p.pair_share.min() >= 1 / (160 * 47894) and p.n_pairs == len(pu)
    assert units.tolist() == present and p.last_channel.tolist() == last
    assert [last[k] for k in (6, 13, 20)] == [39, 79, 119]  # the channel of each unit's last token


@given(st.lists(st.sampled_from([0, 1, 7, 100, 4097]), min_size=1, max_size=12), st.sampled_from([1, 7, 32]),
       st.sampled_from(["hybrid", "head", "token"]), st.integers(0, 200), st.integers(0, 200))
def test_loads_of_consecutive_units_are_those_of_their_pairs(kept, n, policy, a, b):
    """A run of consecutive units (a sub-batch's, a link chunk's) takes its pairs as one slice; the loads are those
    of the pairs whose unit is in the set, as any set of units gets them."""
    p = place(policy, load_model("llama-3.1-8b"), np.array(kept), n)
    u = p.unit_tokens.size
    lo, hi = sorted((a % u, b % u))
    units = np.arange(lo, hi + 1)
    keep = np.isin(p.pair_unit, units)
    expected = (np.bincount(p.pair_channel[keep], weights=p.pair_share[keep] * p.unit_tokens[p.pair_unit[keep]] * 0.5,
                            minlength=n),
                np.bincount(p.pair_channel[keep], minlength=n).astype(float),
                np.bincount(p.last_channel[units], minlength=n).astype(float))
    for got, want in zip(p.loads(0.5, units), expected, strict=True):
        assert got.tobytes() == want.tobytes()
    assert all(np.array_equal(x, y) for x, y in zip(p.loads(0.5, units[::-1].copy()), expected, strict=True))


def test_hybrid_placement_beyond_int64_positions_is_exact():
    """Positions in 1/n tokens past 2**62 (here 2**61 + 3 tokens over 4 channels) are taken as Python integers:
    the same stripes as the exact rationals."""
    m = dataclasses.replace(load_model("llama-3.1-8b"), n_kv_heads=1)
    kept = [2**61, 1, 2]
    p = place("hybrid", m, np.array(kept, dtype=np.int64), 4)
    pu, pc, share, last, present = _hybrid_reference(kept, 4)
    _, units, new = p.loads()
    assert units.tolist() == present and p.last_channel.tolist() == last and p.n_pairs == len(pu)
    assert p.pair_unit.tolist() == pu and p.pair_channel.tolist() == pc and p.pair_share.tolist() == share
    assert new.tolist() == np.bincount(last, minlength=4).tolist()
