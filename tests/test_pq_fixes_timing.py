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

FIXES = [{"pre_rope": True}, {"key_k": 1024}, {"pre_rope": True, "key_k": 512}, {"pre_rope": True, "outliers": 4}]


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
