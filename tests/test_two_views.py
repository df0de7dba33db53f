"""The main correctness test: the discrete-event simulation against the closed-form model."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_models.machine import load_machine
from sim.config import make_config
from sim.run import simulate
from workloads.models import ModelSpec, load_model


def small_model(layers, kv_heads, group, head_dim, window=None):
    return ModelSpec(name="tiny", family="llama", n_layers=layers, hidden_size=kv_heads * group * head_dim,
                     n_heads=kv_heads * group, n_kv_heads=kv_heads, head_dim=head_dim, ffn_size=4 * head_dim,
                     vocab_size=1000, max_context=1 << 20, sliding_window=window)


machines = st.builds(
    lambda h2d, d2h, lat, duplex, dram_channels: dataclasses.replace(
        load_machine(), pcie=dataclasses.replace(load_machine().pcie, h2d_bw_bytes_per_s=h2d, d2h_bw_bytes_per_s=d2h,
                                                 latency_s=lat, duplex=duplex),
        host_dram=dataclasses.replace(load_machine().host_dram, channels=dram_channels)),
    st.floats(1e9, 100e9), st.floats(1e9, 100e9), st.floats(0, 20e-6), st.sampled_from(["full", "half"]),
    st.integers(1, 8))
models = st.builds(small_model, st.integers(1, 6), st.integers(1, 8), st.sampled_from([1, 2, 4]),
                   st.sampled_from([32, 64, 128]), st.one_of(st.none(), st.integers(16, 5000)))
workloads = st.fixed_dictionaries({"batch": st.integers(1, 64), "context": st.integers(1, 200_000),
                                   "steps": st.integers(1, 3)})


@given(machines, models, workloads, st.sampled_from(["sync", "cpu_attention", "gpu"]))
def test_uncontended_schedules_match_closed_form(params, model, wl, mode):
    # offload with the whole KV cache in host DRAM (placements: tests/test_offload_placement.py)
    opts = {"system": "gpu"} if mode == "gpu" else {"system": "offload", "cpu_attention": mode == "cpu_attention",
                                                    "kv_gpu_fraction": "0"}
    cfg = make_config(**wl, **opts, trace_steps=0)
    r = simulate(cfg, params=params, model=model)
    assert r.analytic_exact
    assert r.analytic_max_rel_gap <= 1e-9  # every step: |simulated - closed form| <= 1e-9 x closed form


@given(machines, models, workloads)
def test_prefetch_never_beats_the_lower_bound(params, model, wl):
    r = simulate(make_config(**wl, prefetch=True, kv_gpu_fraction="0", trace_steps=0), params=params, model=model)
    assert not r.analytic_exact
    assert r.analytic_max_rel_undershoot <= 1e-12  # every step: simulated >= bound x (1 - 1e-12)


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3-8b"])
def test_default_machine_within_0_1_percent(name):
    r = simulate(make_config(model=name, batch=8, context=16384, steps=2))
    assert abs(r.mean_step_latency_s / r.analytic_mean_step_latency_s - 1) < 1e-3


def test_offload_layer_by_hand():
    """One layer of LLaMA-2-7B, batch 1, 4096 tokens: the KV load dominates and is bytes / PCIe bandwidth."""
    m = dataclasses.replace(load_model("llama-2-7b"), n_layers=1)
    p = load_machine()
    r = simulate(make_config(batch=1, context=4096, steps=1, kv_gpu_fraction="0"), params=p, model=m)
    kv_bytes = 4096 * 2 * 4096 * 2
    h2d_s = 5e-6 + kv_bytes / 25e9
    assert r.busy_s["pcie.h2d"] == pytest.approx(h2d_s, rel=1e-12)
    assert r.bytes_by_link["pcie.h2d"] == kv_bytes
    assert r.bytes_by_link["pcie.d2h"] == 2 * 4096 * 2  # one token's K and V
    assert r.comm_share == pytest.approx((h2d_s + r.busy_s["pcie.d2h"]) / r.mean_step_latency_s, rel=1e-9)


def test_prefetch_hides_compute_when_pcie_bound():
    host = {"kv_gpu_fraction": "0"}  # the whole KV cache in host DRAM, so that the step is bound by PCIe
    base = simulate(make_config(model="llama-3-8b", batch=4, context=8192, steps=2, **host))
    pf = simulate(make_config(model="llama-3-8b", batch=4, context=8192, steps=2, prefetch=True, **host))
    assert pf.mean_step_latency_s < base.mean_step_latency_s
    # with prefetch the step is bounded below by the link: all of the step's KV over H2D
    assert pf.mean_step_latency_s >= pf.busy_s["pcie.h2d"] / pf.steps
