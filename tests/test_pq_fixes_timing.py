"""The PQ accuracy fixes (pre_rope, key_k) as timing options: charged in PIM, both views agree, storage counted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.config import make_config
from sim.run import simulate
from workloads.kvformats import PqSettings
from workloads.models import load_model

FIXES = [{"pre_rope": True}, {"key_k": 1024}, {"rerank": 32}, {"rerank": 8, "pq_stages": 2}, {"pre_rope": True, "key_k": 512}, {"pre_rope": True, "outliers": 4},
         {"pq_stages": 4}, {"scale_keys": True}, {"pq_stages": 2, "pre_rope": True}]


@settings(max_examples=12, deadline=None)
@given(fix=st.sampled_from(FIXES), batch=st.integers(1, 6), context=st.integers(1, 6000),
       lut=st.sampled_from([2048, 4096, 65536]), dataflow=st.sampled_from(["subspace", "repass", "bank_split"]))
def test_both_views_agree_with_a_fix(fix, batch, context, lut, dataflow):
    steps = []
    r = simulate(make_config(system="aqpim", batch=batch, context=context, steps=1, trace_steps=0, lut_bytes=lut,
                             lut_dataflow=dataflow, **fix), on_step=steps.append)
    assert r.analytic_exact and steps
    for s in steps:
        assert s.latency_s == pytest.approx(s.analytic_s, rel=1e-9)


def run(**kw):
    return simulate(make_config(system="aqpim", batch=4, context=8192, steps=1, trace_steps=1, lut_bytes=4096, **kw))


def test_pre_rope_costs_lookups_and_flops_in_the_score_phase():
    plain, rope = run(), run(pre_rope=True)
    # each score reads head_dim table values instead of m (128 against 16) and the tables are d/m times larger
    assert rope.busy_by_kind_s["aqpim.score"] > 2 * plain.busy_by_kind_s["aqpim.score"]
    assert rope.busy_by_kind_s["aqpim.table"] > plain.busy_by_kind_s["aqpim.table"]
    assert rope.mean_step_latency_s > plain.mean_step_latency_s
    assert rope.kv_bytes == plain.kv_bytes  # no extra storage
    # the phases still add up to the PIM device's busy time
    phases = sum(v for k, v in rope.busy_by_kind_s.items() if k.startswith("aqpim."))
    assert phases == pytest.approx(rope.busy_s["pim"], rel=1e-9)


def test_key_k_stores_longer_key_codes_and_a_larger_key_codebook():
    m = load_model("llama-3.1-8b")
    plain, big = PqSettings(m=16, k=256), PqSettings(m=16, k=256, key_k=1024)
    # key codes of log2 1024 = 10 bits instead of 8, per sub-space: 16 x 2 bits = 4 bytes more per key per head
    assert big.pim_costs(m).key_code_bytes_per_token - plain.pim_costs(m).key_code_bytes_per_token == 4
    a, b = run(), run(key_k=1024)
    assert b.kv_bytes > a.kv_bytes and b.mean_step_latency_s > a.mean_step_latency_s
    assert b.busy_by_kind_s["aqpim.table"] > 3 * a.busy_by_kind_s["aqpim.table"]  # 4x the key codebook streamed


def test_a_key_table_row_that_does_not_fit_names_the_fix(capsys):
    assert main(["run", "--system", "aqpim", "--steps", "1", "--context", "1024", "--key-k", "1024"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smaller than one table row" in err and "(key_k = 1024)" in err


# ---- stages and scale_keys: the timing model charges what PqPimCosts records --------------------------------------
RECORD_CASES = [{}, {"stages": 8}, {"scale_keys": True}, {"stages": 4, "pre_rope": True},
                {"stages": 2, "key_k": 1024, "outliers": 4}, {"scale_keys": True, "pre_rope": True, "stages": 2}]


@pytest.mark.parametrize("fix", RECORD_CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "plain")
def test_the_works_charge_what_the_cost_record_says(fix):
    import dataclasses

    from hw_models import pim

    model = load_model("llama-3.1-8b")
    fmt = PqSettings(m=16, k=256, sinks=4, recent=128, **fix)
    rec = fmt.pim_costs(model)
    ch = dataclasses.replace(pim.load_pim("attacc-hbm3").channel,
                             aqpim_unit=pim.AqpimUnitParams(lut_bytes=2.0**40, lut_banks=1, lut_clock_hz=1e300,
                                                            lut_access_energy_j=0.0))
    g, d = model.gqa_group, model.head_dim
    lut = pim.pq_lookup_plan(ch, g, fmt.m, fmt.k)
    key_rows = d * fmt.stages if fmt.pre_rope else fmt.m
    extra = {"stages": fmt.stages, "scale_keys": fmt.scale_keys}
    if fmt.key_k or fmt.pre_rope:
        extra.update(key_k=fmt.key_k, pre_rope=fmt.pre_rope, lut_key=pim.pq_lookup_plan(ch, g, key_rows, fmt.keys_k))
    tokens, units, new = 1000.0, 3.0, 2.0
    w = pim.pq_attention_works(ch, tokens, units, new, head_dim=d, group=g, bytes_per_element=2, m=fmt.m, k=fmt.k,
                               outliers=fmt.outliers, window=fmt.window_tokens, lut=lut, softmax="pim", **extra)
    by = {x.kind: x for x in w.all}
    assert by["aqpim.table"].nbytes == units * rec.table_bytes_streamed_per_query
    assert by["aqpim.table"].flops == pytest.approx(units * g * rec.table_flops_per_query, rel=1e-12)
    assert by["aqpim.score"].flops == pytest.approx(tokens * g * rec.score_flops_per_token_per_query
                                                    + tokens * rec.rope_flops_per_token, rel=1e-12)
    assert by["aqpim.score"].nbytes == tokens * (rec.key_code_bytes_per_token + rec.outlier_bytes_per_token)
    assert by["aqpim.bins_x_centroids"].flops == units * g * rec.bins_x_centroids_flops_per_query
    assert by["aqpim.bins_x_centroids"].nbytes + by["aqpim.table"].nbytes == units * rec.codebook_bytes
    assert by["aqpim.quantize"].flops == new * pim.QUANTIZE_FLOPS_PER_ELEMENT * rec.quantize_elements_per_new_token
    assert by["aqpim.quantize"].nbytes == new * rec.quantize_bytes_per_new_token


def test_stages_and_scale_keys_are_aqpim_options_that_cost_time_not_code_bytes():
    plain, staged, scaled = run(), run(pq_stages=8), run(scale_keys=True)
    assert staged.busy_by_kind_s["aqpim.bins"] > 4 * plain.busy_by_kind_s["aqpim.bins"]
    assert staged.busy_by_kind_s["aqpim.table"] > plain.busy_by_kind_s["aqpim.table"]
    assert staged.busy_by_kind_s["aqpim.score"] == pytest.approx(plain.busy_by_kind_s["aqpim.score"], rel=1e-12)
    assert staged.kv_bytes > plain.kv_bytes  # the codebooks only
    assert scaled.busy_by_kind_s["aqpim.table"] > plain.busy_by_kind_s["aqpim.table"]
    assert scaled.busy_by_kind_s["aqpim.score"] == pytest.approx(plain.busy_by_kind_s["aqpim.score"], rel=1e-12)
    phases = sum(v for k, v in staged.busy_by_kind_s.items() if k.startswith("aqpim."))
    assert phases == pytest.approx(staged.busy_s["pim"], rel=1e-9)


def test_refresh_is_not_a_simulated_option(capsys):
    from workloads.kvformats import REFRESH_NOT_DEPLOYABLE

    assert "does not keep" in REFRESH_NOT_DEPLOYABLE
    with pytest.raises(SystemExit) as e:
        main(["run", "--system", "aqpim", "--steps", "1", "--refresh", "1024"])
    assert e.value.code == 2


def test_rope_aug_lengthens_the_key_kmeans_at_prefill_and_nothing_else():
    """By hand: one llama-3.1-8b prompt of 4,096 tokens, 132 of them exact (4 sinks + 128 recent): per layer the
    k-means runs 10 passes over 3,964 tokens of 8 KV heads x 128 dims x 2 tensors at QUANTIZE_FLOPS_PER_ELEMENT per
    element and centroid; with rope_aug = 2 the keys are 3 x 3,964 points against 256 centroids, values 3,964
    against 256: 512 centroids per tensor on average instead of 256."""
    from hw_models import pim as pim_model
    from hw_models.machine import load_machine

    g, m = load_machine("a100-pcie4-ddr5").gpu, load_model("llama-3.1-8b")

    def serve(**kw):
        return simulate(make_config(system="aqpim", model="llama-3.1-8b", requests=1, context=4096, output_tokens=3,
                                    prefill="first", trace_steps=0, **kw))

    plain, aug = serve(), serve(rope_aug=2)
    coded = 4096 - 132
    for r, centroids, reads in ((plain, 256, 1.0), (aug, 512, 2.0)):
        flops = 10 * 2 * m.n_kv_heads * pim_model.QUANTIZE_FLOPS_PER_ELEMENT * coded * centroids * m.head_dim
        nbytes = 10 * coded * m.kv_bytes_per_token_per_layer * reads
        kernel = g.launch_s + max(flops / g.achievable_flops_per_s, nbytes / g.achievable_bw_bytes_per_s)
        assert r.busy_by_kind_s["prefill.kmeans"] == pytest.approx(m.n_layers * kernel, rel=1e-9)
    # (sums of the same kernels at other clock values: equal to rounding)
    assert aug.busy_by_kind_s["prefill.quantize"] == pytest.approx(plain.busy_by_kind_s["prefill.quantize"], rel=1e-12)
    assert aug.tpot_p50_s == pytest.approx(plain.tpot_p50_s, rel=1e-12)  # decode unchanged
    assert aug.kv_bytes == plain.kv_bytes  # and storage
    assert aug.ttft_p50_s > plain.ttft_p50_s


def test_rope_aug_with_pre_rope_is_refused_in_one_line(capsys):
    assert main(["run", "--system", "aqpim", "--steps", "1", "--rope-aug", "1", "--pre-rope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rope_aug" in err and "pre_rope" in err


def test_rerank_holds_by_hand():
    """Exact re-rank on llama-3.1-8b (8 KV heads, 4 query heads each, head_dim 128), batch 4 at 8,192 tokens, R =
    32: per layer 32 units select 32 tokens each (1,024 exact tokens); the host reads their K and V rows (1,024 x
    2 x 128 x 2 B = 512 KiB), the queries (4 x 4,096 x 2 B), the selection (1,024 x 4 B) and the new tokens' K/V
    (4 x 8 x 2 x 128 x 2 B) cross PCIe down, 128 partial outputs (128 x (256 + 8) B) come back; candidates are R per
    (unit, channel) pair, 6 B each, the selection goes down the device link at 4 B per token."""
    from hw_models.dram import host_read_bw_bytes_per_s, token_gather_pattern
    from hw_models.machine import load_machine
    from sim.run import simulate_traced

    r, spans = simulate_traced(make_config(system="aqpim", model="llama-3.1-8b", batch=4, context=8192, steps=1,
                                           trace_steps=1, rerank=32))
    plain = simulate(make_config(system="aqpim", model="llama-3.1-8b", batch=4, context=8192, steps=1, trace_steps=0))
    n_layers, units, exact = 32, 32, 1024
    kinds: dict = {}
    for s in spans:
        if s.kind.startswith("rerank_"):
            kinds[s.kind] = kinds.get(s.kind, 0.0) + s.nbytes
    assert kinds["rerank_to_host"] == pytest.approx(n_layers * (4 * 4096 * 2 + exact * 4 + 4 * 8 * 2 * 128 * 2))
    assert kinds["rerank_partials"] == pytest.approx(n_layers * 128 * (256 + 8))
    assert kinds["rerank_selection"] == pytest.approx(n_layers * exact * 4)
    pairs = r.details["channels_per_unit"] * units
    assert kinds["rerank_candidates"] == pytest.approx(n_layers * pairs * 32 * 6)
    # the host's kernel (bandwidth, the default): the gather of 512 KiB at the rate of single-row reads
    p = load_machine("a100-pcie4-ddr5")
    read = exact * 2 * 128 * 2
    t = p.cpu.op_overhead_s + max(exact * 4 * (4 * 128 + 5) / p.cpu.peak_flops_per_s,
                                  read / host_read_bw_bytes_per_s(p.host_dram, token_gather_pattern(p.host_dram, 128, 2)))
    assert r.busy_by_kind_s["rerank.host_attention"] == pytest.approx(n_layers * t, rel=1e-9)
    assert r.analytic_exact and r.mean_step_latency_s == pytest.approx(r.analytic_mean_step_latency_s, rel=1e-9)
    assert r.mean_step_latency_s > plain.mean_step_latency_s
    assert r.kv_bytes == plain.kv_bytes  # PIM storage unchanged; the FP16 copy is in host memory
    coded = 4 * (8192 + 1 - 132)
    assert r.details["rerank_host_copy_bytes"] == coded * 32 * 8 * 2 * 128 * 2
    assert "+host copy" in r.kv_location and plain.details.get("rerank_host_copy_bytes") is None


def test_rerank_step_level_path_matches_full_detail():
    """A serving run with exact re-rank (a CPU hold in every layer's chain): the step-level path and full detail
    give the same numbers to 1e-9."""
    cfg = dict(system="aqpim", model="llama-2-7b", requests=12, arrival_rate_per_s=20.0, context=512, output_tokens=6, prefill="chunked",
               max_batch=8, rerank=16, trace_steps=0)
    auto, full = simulate(make_config(**cfg)), simulate(make_config(**cfg, detail="full"))
    assert auto.mean_step_latency_s == pytest.approx(full.mean_step_latency_s, rel=1e-9)
    assert auto.total_time_s == pytest.approx(full.total_time_s, rel=1e-9)
    assert auto.busy_s["host.cpu"] == pytest.approx(full.busy_s["host.cpu"], rel=1e-9)


def test_rerank_bad_inputs_are_one_line(capsys):
    assert main(["run", "--system", "aqpim", "--steps", "1", "--rerank", "8", "--softmax", "host"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rerank" in err and "softmax" in err
    assert main(["run", "--system", "aqpim", "--steps", "1", "--rerank", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rerank" in err


def test_rerank_copy_that_does_not_fit_host_dram_gets_no_fit():
    r = simulate(make_config(system="aqpim", model="llama-3.1-8b", batch=64, context=131072, steps=1, trace_steps=0,
                             rerank=32, channels=65536))
    assert not r.fits and any("re-rank" in x for x in r.fit_reasons)


def test_rerank_beside_a_spill_path_is_a_bound_never_beaten():
    """Spilled tokens are attended over PCIe on the GPU while re-rank's selection and transfers use both: the
    closed form is a lower bound then, and the simulation never beats it."""
    r = simulate(make_config(system="aqpim", model="llama-3.1-8b", batch=4, context=65536, steps=2, trace_steps=0,
                             rerank=16, channels=4))
    assert r.details["spilled_share"] > 0 and not r.analytic_exact
    assert r.mean_step_latency_s >= r.analytic_mean_step_latency_s * (1 - 1e-12)
