"""Offload placement (FlexGen-style fractions of weights and KV cache in GPU memory): both views, the auto
formulas, hand calculations, capacity, bad inputs, and compare's choice of baseline."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_models.machine import PRESETS, load_machine
from sim.cli import main
from sim.config import make_config
from sim.errors import ConfigError
from sim.run import simulate
from sim.systems.offload import CPU_KERNELS, GPU_RESERVED_BYTES, activation_bytes, head_weight_bytes, place
from workloads.models import ModelSpec, load_model

GiB = 2**30
BASE = load_machine()


def small_model(layers, kv_heads, group, head_dim, window=None):
    return ModelSpec(name="tiny", family="llama", n_layers=layers, hidden_size=kv_heads * group * head_dim,
                     n_heads=kv_heads * group, n_kv_heads=kv_heads, head_dim=head_dim, ffn_size=4 * head_dim,
                     vocab_size=1000, max_context=1 << 20, sliding_window=window)


models = st.builds(small_model, st.integers(1, 6), st.integers(1, 8), st.sampled_from([1, 2, 4]),
                   st.sampled_from([32, 64, 128]), st.one_of(st.none(), st.integers(16, 5000)))
workloads = st.fixed_dictionaries({"batch": st.integers(1, 64), "context": st.integers(1, 200_000),
                                   "steps": st.integers(1, 3)})
fractions = st.one_of(st.just("auto"), st.sampled_from(["0", "1"]), st.floats(0, 1).map(repr))
links = st.tuples(st.floats(1e9, 100e9), st.floats(1e9, 100e9), st.floats(0, 20e-6), st.sampled_from(["full", "half"]))


def machine(model, wl, link, scale):
    """The default machine with the given PCIe link and a GPU whose memory holds the reserve, the activations and
    ``scale`` times the weights plus the whole KV cache: auto placement then lands anywhere from nothing to all."""
    h2d, d2h, lat, duplex = link
    tokens = wl["batch"] * (wl["context"] + wl["steps"])
    need = model.weight_bytes + tokens * model.kv_bytes_per_token
    cap = GPU_RESERVED_BYTES + activation_bytes(model, wl["batch"], tokens) + scale * need
    return dataclasses.replace(
        BASE, gpu=dataclasses.replace(BASE.gpu, mem_capacity_bytes=cap),
        pcie=dataclasses.replace(BASE.pcie, h2d_bw_bytes_per_s=h2d, d2h_bw_bytes_per_s=d2h, latency_s=lat,
                                 duplex=duplex))


def steps_of(cfg, **kw):
    """The Result and its per-step rows (latency_s, analytic_s), as ``simulate(on_step=...)`` streams them."""
    rows = []
    return simulate(cfg, on_step=rows.append, **kw), rows


def latencies(cfg, **kw):
    return [row.latency_s for row in steps_of(cfg, **kw)[1]]


def run_or_refused(cfg, params, model):
    """The Result and its step rows, or None when auto placement refuses (nothing fits): then the error is the
    one-line one."""
    try:
        return steps_of(cfg, params=params, model=model)
    except ConfigError as e:
        assert "\n" not in str(e) and "does not fit" in str(e)
        assert cfg.options.kv_gpu_fraction == "auto" and cfg.options.weights_gpu_fraction == "auto"
        return None


# ---- the two views ---------------------------------------------------------------------------------------------

@given(models, workloads, links, st.floats(0.0, 1.5), fractions, fractions,
       st.sampled_from([(False, "flexgen"), *((True, k) for k in CPU_KERNELS)]))
def test_sync_and_cpu_attention_match_the_closed_form(model, wl, link, scale, kv, weights, host):
    cpu_attention, cpu_kernel = host
    cfg = make_config(**wl, kv_gpu_fraction=kv, weights_gpu_fraction=weights, cpu_attention=cpu_attention,
                      cpu_kernel=cpu_kernel, trace_steps=0)
    out = run_or_refused(cfg, machine(model, wl, link, scale), model)
    if out is None:
        return
    r, rows = out
    assert r.analytic_exact and rows
    for row in rows:
        assert row.latency_s == pytest.approx(row.analytic_s, rel=1e-9)


@given(models, workloads, links, st.floats(0.0, 1.5), fractions, fractions)
def test_prefetch_never_beats_the_lower_bound(model, wl, link, scale, kv, weights):
    cfg = make_config(**wl, kv_gpu_fraction=kv, weights_gpu_fraction=weights, prefetch=True, trace_steps=0)
    out = run_or_refused(cfg, machine(model, wl, link, scale), model)
    if out is None:
        return
    r, rows = out
    assert not r.analytic_exact and rows
    for row in rows:
        assert row.latency_s >= row.analytic_s * (1 - 1e-12)


# ---- auto placement --------------------------------------------------------------------------------------------

@given(models, workloads, st.floats(0.0, 1.5), st.booleans(), st.booleans())
def test_auto_is_the_most_that_fits(model, wl, scale, prefetch, cpu_attention):
    cap = machine(model, wl, (25e9, 25e9, 5e-6, "full"), scale).gpu.mem_capacity_bytes
    n, tokens = wl["batch"], wl["batch"] * wl["context"]
    try:
        pl = place(model, cap, n, tokens, None, None, prefetch, cpu_attention)
    except ConfigError:
        # nothing fits: even everything streamed exceeds the GPU
        low = place(model, cap, n, tokens, 0.0, 0.0, prefetch, cpu_attention)
        assert not low.fits_gpu
        return
    assert pl.fits_gpu
    assert 0 <= pl.kv_fraction <= 1 and 0 <= pl.weights_fraction <= 1
    if pl.weights_fraction < 1:
        assert pl.kv_fraction == 0  # weights first
    if pl.weights_fraction < 1 or pl.kv_fraction < 1:
        # the GPU is full (within rounding), unless streaming frees nothing (as many buffers as layers)
        k = 2 if prefetch else 1
        if model.n_layers > k or pl.weights_fraction < 1:
            assert pl.gpu_used_bytes == pytest.approx(cap, rel=1e-9)
    # a little more of either would not fit
    if pl.kv_fraction < 1 and pl.weights_fraction == 1:
        more = place(model, cap, n, tokens, min(1.0, pl.kv_fraction + 1e-6), 1.0, prefetch, cpu_attention)
        assert not more.fits_gpu or model.n_layers <= (2 if prefetch else 1)


def test_auto_formula_by_hand_default_scenario():
    """LLaMA-3.1-8B, batch 16, 64K, sync: f = (C - reserve - activations - W - KV_layer) / (KV - KV_layer)."""
    m = load_model("llama-3.1-8b")
    n, t = 16, 16 * 65536
    cache = t + n
    kv = cache * 32 * 2 * 1024 * 2            # 32 layers x K,V x 8 heads x 128 x FP16
    act = n * 2 * (2 * 4096 + 4096 + 2 * 1024 + 2 * 14336) + 2 * cache * 32 * 2 + 4 * n * 128256
    w = m.weight_bytes
    f = (80 * GiB - 2 * GiB - act - w - kv / 32) / (kv - kv / 32)
    pl = place(m, 80 * GiB, n, cache, None, None, False, False)
    assert pl.weights_fraction == 1 and pl.kv_fraction == pytest.approx(f, rel=1e-12)
    assert 0.47 < f < 0.48
    # prefetch keeps two KV buffers: a little less resident
    f2 = (80 * GiB - 2 * GiB - act - w - 2 * kv / 32) / (kv - 2 * kv / 32)
    assert place(m, 80 * GiB, n, cache, None, None, True, False).kv_fraction == pytest.approx(f2, rel=1e-12)


def test_sync_step_by_hand_default_scenario():
    """One step of the default scenario: (1 - f) of every layer's KV at 25 GB/s dominates; GPU work is the rest."""
    r, rows = steps_of(make_config(context=65536, steps=1, trace_steps=0))
    f = r.details["kv_gpu_fraction"]
    per_layer_kv = 16 * 65536 * 4096           # batch x tokens x (K,V x 8 x 128 x 2 bytes)
    h2d = 32 * (5e-6 + (1 - f) * per_layer_kv / 25e9)
    d2h = 32 * (5e-6 + (1 - f) * 16 * 4096 / 25e9)
    assert r.busy_s["pcie.h2d"] == pytest.approx(h2d, rel=1e-12)
    assert r.busy_s["pcie.d2h"] == pytest.approx(d2h, rel=1e-12)
    assert r.bytes_by_link["pcie.h2d"] == pytest.approx(32 * (1 - f) * per_layer_kv, rel=1e-12)
    assert rows[0].latency_s == pytest.approx(h2d + d2h + r.busy_s["gpu"], rel=1e-12)
    assert r.details["kv_streamed_bytes_per_step"] == pytest.approx(32 * (1 - f) * per_layer_kv, rel=1e-12)
    host = latencies(make_config(context=65536, steps=1, trace_steps=0, kv_gpu_fraction="0"))
    assert host[0] / rows[0].latency_s == pytest.approx(1 / (1 - f), rel=0.02)


def test_weights_streaming_by_hand_llama_2_70b():
    """LLaMA-2-70B on one 80 GiB A100: weights do not fit, so w is the most that fits and the rest streams."""
    m = load_model("llama-2-70b")
    r, rows = steps_of(make_config(model="llama-2-70b", batch=1, context=4096, steps=1, trace_steps=0))
    d = r.details
    assert r.fits and d["kv_gpu_fraction"] == 0 and 0.5 < d["weights_gpu_fraction"] < 0.7
    w = d["weights_gpu_fraction"]
    kv_layer = 4097 * m.kv_bytes_per_token_per_layer
    unit = max(m.layer_weight_bytes, head_weight_bytes(m))
    act = activation_bytes(m, 1, 4097)
    expect = (80 * GiB - GPU_RESERVED_BYTES - act - kv_layer - unit) / (m.weight_bytes - unit)
    assert w == pytest.approx(expect, rel=1e-12)
    streamed = (1 - w) * (80 * m.layer_weight_bytes + head_weight_bytes(m))
    assert d["weights_streamed_bytes_per_step"] == pytest.approx(streamed, rel=1e-12)
    kv = 80 * 4096 * m.kv_bytes_per_token_per_layer
    h2d_s = 81 * 5e-6 + 80 * 5e-6 + (streamed + kv) / 25e9
    assert r.busy_s["pcie.h2d"] == pytest.approx(h2d_s, rel=1e-12)
    assert rows[0].latency_s == pytest.approx(h2d_s + r.busy_s["pcie.d2h"] + r.busy_s["gpu"], rel=1e-12)
    assert d["gpu_free_bytes"] == pytest.approx(0, abs=1e-3 * GiB)


def test_everything_resident_is_the_gpu_system():
    off, rows = steps_of(make_config(batch=2, context=4096, steps=2, trace_steps=0))
    gpu = latencies(make_config(system="gpu", batch=2, context=4096, steps=2, trace_steps=0))
    assert off.details["kv_gpu_fraction"] == 1 and off.kv_location == "gpu"
    assert [row.latency_s for row in rows] == pytest.approx(gpu, rel=1e-12)
    assert sum(off.bytes_by_link.values()) == 0


def test_cpu_attention_splits_the_cache_between_gpu_and_cpu():
    kw = dict(batch=16, context=65536, steps=1, trace_steps=0, cpu_attention=True)
    r = simulate(make_config(**kw, kv_gpu_fraction="0.5"))
    host = simulate(make_config(**kw, kv_gpu_fraction="0"))
    assert r.busy_s["host.cpu"] == pytest.approx(0.5 * host.busy_s["host.cpu"], rel=0.01)
    assert r.busy_by_kind_s["attn_merge"] > 0 and "attn_merge" not in host.busy_by_kind_s
    assert r.mean_step_latency_s < host.mean_step_latency_s
    assert r.analytic_exact and r.mean_step_latency_s == pytest.approx(r.analytic_mean_step_latency_s, rel=1e-9)


def test_bandwidth_cpu_kernel_reads_the_host_share_at_the_host_dram_rate():
    """cpu_kernel = bandwidth: each CPU attention operation is its dispatch cost plus its bytes at the host DRAM
    read rate, never its FLOPs; flexgen (the preset's calibrated efficiency) is FLOP-bound and slower."""
    from hw_models import dram

    kw = dict(batch=16, context=65536, steps=1, trace_steps=0, cpu_attention=True, kv_gpu_fraction="0")
    bw = simulate(make_config(**kw, cpu_kernel="bandwidth"))
    fg = simulate(make_config(**kw))
    host = BASE.host_dram
    rates = [dram.host_read_bw_bytes_per_s(host, dram.SEQUENTIAL)]
    m = load_model("llama-3.1-8b")
    kv_bytes = 16 * 65536 * m.kv_bytes_per_token  # the whole cache, read once per step
    # the CPU's busy time: at most the read at the slowest rate it may use, at least the read at the peak rate
    ops = 32 * 3  # score, softmax, context per layer
    busy = bw.busy_s["host.cpu"] - ops * BASE.cpu.op_overhead_s
    assert kv_bytes / max(rates) * 0.99 < busy < kv_bytes / (0.5 * max(rates))
    assert fg.busy_s["host.cpu"] > 5 * bw.busy_s["host.cpu"]
    assert bw.energy_dynamic_j["host.cpu"] == pytest.approx(fg.energy_dynamic_j["host.cpu"], rel=1e-12)
    assert main(["run", "--steps", "1", "--cpu-kernel", "bandwidth"]) == 2  # without cpu_attention: refused


# ---- capacity --------------------------------------------------------------------------------------------------

def test_capacity_details_say_where_everything_lives():
    r = simulate(make_config(context=65536, steps=2, trace_steps=0))
    d = r.details
    for key in ("kv_gpu_fraction", "kv_gpu_bytes", "kv_host_bytes", "kv_streamed_bytes_per_step",
                "weights_gpu_fraction", "weights_gpu_bytes", "weights_host_bytes", "weights_streamed_bytes_per_step",
                "gpu_kv_buffer_bytes", "gpu_weight_buffer_bytes", "gpu_activation_bytes", "gpu_reserved_bytes",
                "gpu_used_bytes", "gpu_free_bytes", "gpu_capacity_bytes", "host_dram_used_bytes",
                "host_dram_capacity_bytes"):
        assert key in d, key
    assert d["kv_gpu_bytes"] + d["kv_host_bytes"] == pytest.approx(r.kv_bytes, rel=1e-12)
    assert d["gpu_used_bytes"] + d["gpu_free_bytes"] == d["gpu_capacity_bytes"]
    assert r.kv_location == "gpu+host.dram" and r.fits


def test_explicit_fractions_that_do_not_fit_are_reported(capsys):
    argv = ["run", "--context", "65536", "--steps", "1", "--kv-gpu-fraction", "0.9"]
    assert main([*argv, "--weights-gpu-fraction", "1"]) == 0
    out = capsys.readouterr().out
    assert "NO: GPU memory: weights 100.0%" in out and "KV 90.0%" in out and "exceed 80.0 GiB" in out
    assert "warning: does not fit" in out
    # weights at auto fill what the given KV share leaves: nothing here, so all of them stream
    assert main(argv) == 0
    assert "NO: GPU memory: weights 0.0% 0.0 GiB + KV 90.0%" in capsys.readouterr().out
    # the old placement of a 70B model: weights whole on an 80 GiB GPU
    r = simulate(make_config(model="llama-2-70b", batch=1, context=2048, steps=1, weights_gpu_fraction="1",
                             trace_steps=0))
    assert not r.fits and r.fit_reasons[0].startswith("GPU memory: weights 100.0% 128.")


def test_host_dram_counts_streamed_weights_and_host_kv(tmp_path):
    small_host = dataclasses.replace(BASE, host_dram=dataclasses.replace(BASE.host_dram, capacity_bytes=64 * GiB))
    r = simulate(make_config(context=65536, steps=1, trace_steps=0), params=small_host)
    assert not r.fits and r.fit_reasons[0].startswith("KV cache 67.") and "exceeds host DRAM 64.0 GiB" in r.fit_reasons[0]


# ---- bad inputs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,match", [
    ("--kv-gpu-fraction", "1.5", "kv_gpu_fraction must be a number in [0, 1] or auto, got '1.5'"),
    ("--kv-gpu-fraction", "-0.1", "kv_gpu_fraction must be a number in [0, 1] or auto"),
    ("--weights-gpu-fraction", "half", "weights_gpu_fraction must be a number in [0, 1] or auto, got 'half'"),
    ("--weights-gpu-fraction", "nan", "weights_gpu_fraction must be a number in [0, 1] or auto"),
    ("--kv-gpu-fraction", "AUTO", "kv_gpu_fraction must be a number in [0, 1] or auto"),
    ("--kv-gpu-fraction", "", "kv_gpu_fraction must be a number in [0, 1] or auto"),
])
def test_bad_fractions_are_one_line_errors(capsys, flag, value, match):
    assert main(["run", "--steps", "1", "--context", "1024", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


def test_bad_fraction_in_a_run_file(tmp_path, capsys):
    f = tmp_path / "run.toml"
    f.write_text('kv_gpu_fraction = "2"\nsteps = 1\n')
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.toml" in err and "kv_gpu_fraction must be a number in [0, 1]" in err


def test_auto_refuses_when_even_one_streamed_layer_does_not_fit(capsys):
    # one layer's KV of 200 x 131000 tokens of LLaMA-3.1-8B is 100 GiB: no buffer for it fits an 80 GiB GPU
    argv = ["run", "--batch", "200", "--context", "131000", "--steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit 80.0 GiB of GPU memory even with every weight and KV byte" in err
    # given explicitly, the same placement is simulated and reported as not fitting
    assert main([*argv, "--kv-gpu-fraction", "0", "--weights-gpu-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "NO:" in out and "GPU memory: weights 0.0%" in out


# ---- compare: the baseline -------------------------------------------------------------------------------------

def test_compare_measures_speedups_over_the_best_fitting_offload_variant(tmp_path, capsys):
    assert main(["compare", "--steps", "1", "--context", "65536", "--variants",
                 "offload,offload+prefetch,offload+cpu-attention,offload+0,aqpim", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    labels = ["offload", "offload+prefetch", "offload+cpu-attention", "offload+0", "aqpim"]
    best = max((r for r in results if r["system"] == "offload" and r["fits"]), key=lambda r: r["tokens_per_s"])
    best_label = labels[results.index(best)]
    assert f"speedup over {best_label} (the best fitting offload variant)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in labels}
    assert " 1.00x " in rows[best_label]
    assert "offload+0: kv_gpu_fraction = 0" in out
    report = (tmp_path / "report.md").read_text()
    assert f"speedup over {best_label}" in report.lower() or f"over {best_label}" in report


def test_compare_without_a_fitting_baseline_shows_no_speedups(tmp_path, capsys):
    src = PRESETS.resolve("a100-pcie4-ddr5").read_text()
    small = src.replace("capacity_bytes = { value = 549755813888", "capacity_bytes = { value = 1073741824")
    assert small != src
    hw = tmp_path / "small-host.toml"
    hw.write_text(small)
    out_dir = tmp_path / "c"
    assert main(["compare", "--steps", "1", "--context", "65536", "--hardware", str(hw), "--variants",
                 "offload,offload+0,aqpim", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "no speedups: no offload variant fits" in out
    assert "x " not in "".join(line for line in out.splitlines() if line.startswith(("offload", "aqpim")))


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_cpu_attention_auto_keeps_the_faster_corner(kernel):
    """LLaMA-2-70B, batch 8, 16K: with FlexGen's slow CPU kernel the KV cache belongs on the GPU (the host share
    would be attended slowly); with a bandwidth-bound kernel the weights do (they would cross PCIe)."""
    kw = dict(model="llama-2-70b", batch=8, context=16384, steps=1, trace_steps=0, cpu_attention=True,
              cpu_kernel=kernel)
    auto = simulate(make_config(**kw))
    m = load_model("llama-2-70b")
    w_first = place(m, 80 * GiB, 8, 8 * 16385, None, None, False, True)
    kv_first = place(m, 80 * GiB, 8, 8 * 16385, place(m, 80 * GiB, 8, 8 * 16385, None, 0.0, False, True).kv_fraction,
                     None, False, True)
    corners = {name: simulate(make_config(**kw, kv_gpu_fraction=repr(p.kv_fraction),
                                          weights_gpu_fraction=repr(p.weights_fraction)))
               for name, p in (("weights", w_first), ("kv", kv_first))}
    best = min(corners, key=lambda k: corners[k].mean_step_latency_s)
    assert best == ("kv" if kernel == "flexgen" else "weights")
    assert auto.mean_step_latency_s == pytest.approx(corners[best].mean_step_latency_s, rel=1e-9)
    assert auto.fits and auto.analytic_exact
