"""Prefill in the timeline and request-level metrics (sim.serving): a hand-calculated TTFT, the two views of a
prefill (exact alone, never beaten in mixed steps), request-record invariants, and the request log."""

import csv
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_models import gpu as gpu_model
from hw_models.machine import load_machine
from sim.cli import main
from sim.config import make_config
from sim.run import simulate
from workloads.models import load_model

SYSTEMS = ("gpu", "offload", "pim", "aqpim")


def test_ttft_by_hand():
    """One llama-3.1-8b request of 1,024 prompt tokens at t = 0 on the gpu system, prefill first: TTFT is 32 layers
    of QKV, causal attention, O and FFN kernels plus the LM head of one sequence, each launch + roofline time."""
    g, m = load_machine("a100-pcie4-ddr5").gpu, load_model("llama-3.1-8b")
    assert (m.n_layers, m.hidden_size, m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_size) == (32, 4096, 32, 8, 128,
                                                                                           14336)
    T, e = 1024, 2

    def k(flops, nbytes, occupancy=1.0):
        return g.launch_s + max(flops / g.achievable_flops_per_s, nbytes / g.achievable_bw_bytes_per_s) / occupancy

    def occ(*shapes):  # the GPU model's tile quantisation of the prompt GEMMs (hw_models.gpu.gemm_occupancy)
        return gpu_model.gemm_occupancy(g, tuple((T, n, kk) for n, kk in shapes), e)

    qkv = k(2 * T * 4096 * 6144, 4096 * 6144 * e + T * (4096 + 4096 + 2048) * e, occ((6144, 4096)))
    pairs = T * (T + 1) / 2  # causal: query i attends i + 1 keys
    # 8 query tiles x 32 heads = 256 blocks on 108 SMs: 3 waves, 256 / 324 busy
    assert g.sm_count == 108
    attn = k((4 * 128 + 5) * pairs * 32, T * 2 * 1024 * e + 2 * T * 4096 * e, 256 / 324)
    o = k(2 * T * 4096 * 4096, 4096 * 4096 * e + T * 8192 * e, occ((4096, 4096)))
    ffn = k(2 * T * 3 * 4096 * 14336, 3 * 4096 * 14336 * e + 2 * T * 4096 * e + T * 14336 * e,
            occ((14336, 4096), (14336, 4096), (4096, 14336)))
    head_occ = gpu_model.gemm_occupancy(g, ((1, m.vocab_size, 4096),), e)
    head = k(2 * 4096 * m.vocab_size, m.vocab_size * 4096 * e + (4096 + m.vocab_size) * e, head_occ)
    hand = 32 * (qkv + attn + o + ffn) + head
    r = simulate(make_config(system="gpu", requests=1, context=T, output_tokens=3, prefill="first"))
    assert r.ttft_p50_s == pytest.approx(hand, rel=1e-9)
    assert r.queue_p50_s == 0.0 and r.requests_completed == 1
    # then two decode steps: E2E = TTFT + 2 x TPOT
    assert r.e2e_p50_s == pytest.approx(r.ttft_p50_s + 2 * r.tpot_p50_s, rel=1e-9)


@settings(max_examples=8, deadline=None)
@given(system=st.sampled_from(SYSTEMS), prompt=st.integers(64, 8192), out=st.integers(1, 4))
def test_lone_prefill_two_views_agree(system, prompt, out):
    r = simulate(make_config(system=system, requests=1, context=prompt, output_tokens=out, prefill="first",
                             trace_steps=0))
    assert r.prefill_analytic_exact
    assert r.prefill_time_s == pytest.approx(r.prefill_analytic_time_s, rel=1e-9)
    assert r.ttft_p50_s == pytest.approx(r.prefill_time_s, rel=1e-9)  # nothing else ran before its first token


@settings(max_examples=6, deadline=None)
@given(system=st.sampled_from(SYSTEMS), n=st.integers(2, 4), rate=st.sampled_from([2.0, 20.0]),
       chunk=st.sampled_from([256, 1024]), mode=st.sampled_from(["first", "chunked"]), seed=st.integers(0, 5))
def test_des_never_beats_the_closed_forms_and_records_hold(system, n, rate, chunk, mode, seed):
    records = []
    extra = {"prefill_chunk_tokens": chunk} if mode == "chunked" else {}
    r = simulate(make_config(system=system, requests=n, context=1024, output_dist="uniform:1,6",
                             arrival_rate_per_s=rate, prefill=mode, seed=seed, max_batch=3, trace_steps=0, **extra),
                 on_request=records.append)
    assert r.prefill_analytic_max_rel_undershoot <= 1e-9 and r.analytic_max_rel_undershoot <= 1e-9
    assert r.requests_completed == n == len(records) and r.prefill_tokens == 1024 * n
    lone = simulate(make_config(system=system, requests=1, context=1024, output_tokens=1, prefill="first",
                                trace_steps=0)).prefill_time_s
    for rec in records:
        assert rec.arrival_s <= rec.start_s <= rec.first_token_s <= rec.finish_s
        assert rec.ttft_s >= rec.queue_s + lone * (1 - 1e-9)  # its prompt's prefill alone is a lower bound
        if rec.tpot_s is not None:
            assert rec.e2e_s == pytest.approx(rec.ttft_s + (rec.output_tokens - 1) * rec.tpot_s, rel=1e-9)
    assert r.ttft_p99_s >= r.ttft_p50_s >= lone * (1 - 1e-3)


def test_none_mode_records_first_token_at_first_decode_step():
    records = []
    r = simulate(make_config(system="gpu", batch=2, context=1024, steps=3), on_request=records.append)
    assert [rec.output_tokens for rec in records] == [3, 3] and r.prefill_steps == 0
    assert all(rec.queue_s == 0 and rec.ttft_s == pytest.approx(r.step_latency_min_s, rel=0.01) for rec in records)


def test_slo_attainment_and_goodput():
    base = dict(system="gpu", requests=3, context=2048, output_tokens=4, arrival_rate_per_s=1.0, prefill="first")
    loose = simulate(make_config(**base, slo_ttft_s=100.0, slo_tpot_s=100.0))
    tight = simulate(make_config(**base, slo_ttft_s=1e-6))
    assert loose.slo_attainment == 1.0 and loose.goodput_tokens_per_s == pytest.approx(loose.request_tokens_per_s)
    assert tight.slo_attainment == 0.0 and tight.goodput_tokens_per_s == 0.0


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_cli_request_log(tmp_path, capsys, suffix):
    log, out = tmp_path / f"req.{suffix}", tmp_path / "r.json"
    assert main(["run", "--system", "pim", "--requests", "3", "--context", "1024", "--output-tokens", "3",
                 "--arrival-rate", "4", "--prefill", "chunked", "--prefill-chunk-tokens", "512", "--slo-ttft", "1",
                 "--slo-tpot", "0.1", "--request-log", str(log), "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "TTFT p50/p90/p99" in text and "SLO attainment" in text
    if suffix == "csv":
        rows = list(csv.DictReader(log.open()))
    else:
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 3
    res = json.loads(out.read_text())
    assert res["schema_version"] == 4 and res["requests_completed"] == 3
    assert max(float(r["ttft_s"]) for r in rows) == pytest.approx(res["ttft_p99_s"], rel=1e-12)
