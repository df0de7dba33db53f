"""Whole-machine energy: static power of every powered device plus the work's dynamic energy, checked against hand
calculations from the presets' power figures, and the PIM power cap (docs/metrics.md, "Energy")."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_models import pim as pim_model
from hw_models.errors import HardwareError
from hw_models.loading import read_toml
from hw_models.machine import PRESET_DIR, load_machine, preset_names
from sim.config import make_config
from sim.results import Result
from sim.run import simulate
from workloads.models import load_model


def machine_files():
    root = PRESET_DIR.parents[1]
    return ([PRESET_DIR / f"{n}.toml" for n in preset_names()] + sorted((root / "examples" / "machines").glob("*.toml"))
            + sorted((root / "experiments" / "machines").glob("*.toml")))


# --- presets -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", machine_files(), ids=lambda p: p.stem)
def test_every_machine_device_has_sourced_idle_and_max_power(path):
    table = read_toml(path)
    for section in ("gpu", "cpu", "host_dram", "pcie"):
        for key in ("idle_power_w", "max_power_w"):
            v = table[section][key]
            assert isinstance(v, dict) and v.get("source") and v["value"] > 0, f"{path.name} [{section}] {key}"
    m = load_machine(str(path))
    for block in (m.gpu, m.cpu, m.host_dram, m.pcie):
        assert 0 < block.idle_power_w < block.max_power_w


@pytest.mark.parametrize("name", pim_model.pim_preset_names())
def test_every_pim_channel_has_sourced_idle_and_max_power(name):
    table = read_toml(pim_model.PIM_PRESET_DIR / f"{name}.toml")
    for key in ("idle_power_w", "max_power_w"):
        assert table["channel"][key].get("source") and table["channel"][key]["value"] > 0, f"{name} {key}"


@pytest.mark.parametrize("path", machine_files(), ids=lambda p: p.stem)
def test_cpu_energy_per_flop_is_derived_from_its_power_figures(path):
    c = load_machine(str(path)).cpu
    assert c.energy_per_flop_j == pytest.approx((c.max_power_w - c.idle_power_w) / c.peak_flops_per_s, rel=0.01)


@pytest.mark.parametrize("path", machine_files(), ids=lambda p: p.stem)
def test_memory_and_link_stay_within_their_limit_at_full_rate(path):
    m = load_machine(str(path))
    d, p = m.host_dram, m.pcie
    assert d.idle_power_w + d.achievable_bw_bytes_per_s * d.energy_per_byte_j <= d.max_power_w
    both = (p.h2d_bw_bytes_per_s + p.d2h_bw_bytes_per_s) * p.energy_per_byte_j
    assert p.idle_power_w + both == pytest.approx(p.max_power_w, abs=0.06)
    g = m.gpu
    assert g.idle_power_w + g.achievable_bw_bytes_per_s * g.energy_per_byte_j < g.max_power_w


def test_attacc_cap_is_attaccs_nine_times_column_rate_and_does_not_bind_on_its_capped_timing():
    ch = pim_model.load_pim("attacc-hbm3").channel
    per_stack = 9 * 670.4e9 * (4.4e-12 + 0.32e-12)  # AttAcc BW_SCALE[True][BA] x external, at its energies
    assert pim_model.dynamic_power_cap_w(ch) == pytest.approx(per_stack / 32, rel=1e-3)
    assert pim_model.peak_dynamic_power_w(ch) < pim_model.dynamic_power_cap_w(ch)  # nCCDAB = 6 keeps it below
    uncapped = dataclasses.replace(ch, bank_column_interval_cycles=4)  # AttAcc's NPC timing
    assert pim_model.peak_dynamic_power_w(uncapped) > pim_model.dynamic_power_cap_w(ch)


@pytest.mark.parametrize("name", [n for n in pim_model.pim_preset_names() if n != "attacc-hbm3"])
def test_pim_presets_without_a_published_limit_never_bind(name):
    ch = pim_model.load_pim(name).channel
    assert ch.max_power_w >= ch.idle_power_w + pim_model.peak_dynamic_power_w(ch)


def test_power_throttle_by_hand_and_bad_limits():
    ch = dataclasses.replace(pim_model.load_pim("attacc-hbm3").channel, idle_power_w=0.5, max_power_w=1.5)
    assert pim_model.power_throttle(ch, 2.0, 1.0) == pytest.approx(2.0)  # 2 W of work under a 1 W dynamic cap
    assert pim_model.power_throttle(ch, 0.5, 1.0) == 1.0
    assert pim_model.power_throttle(dataclasses.replace(ch, max_power_w=0.0), 9.0, 1.0) == 1.0  # no limit
    with pytest.raises(HardwareError, match="max_power_w .* must not be below idle_power_w"):
        dataclasses.replace(ch, max_power_w=0.2)
    with pytest.raises(HardwareError, match="idle_power_w must be zero or positive"):
        dataclasses.replace(load_machine().gpu, idle_power_w=-1.0)


# --- the accounting ------------------------------------------------------------------------------------------------

def idle_w(hardware: str, pim: str | None = None, channels: int | None = None) -> float:
    m = load_machine(hardware)
    total = m.gpu.idle_power_w + m.cpu.idle_power_w + m.host_dram.idle_power_w + m.pcie.idle_power_w
    if pim:
        dev = pim_model.load_pim(pim)
        total += (channels or dev.channels) * dev.channel.idle_power_w
    return total


@pytest.mark.parametrize("opts", [
    {"system": "offload"}, {"system": "offload", "cpu_attention": True}, {"system": "gpu"},
    {"system": "pim", "pim": "ddr5-dimm-pim"}, {"system": "aqpim", "channels": 64},
    {"system": "offload", "requests": 4, "output_tokens": 3, "arrival_rate_per_s": 20.0, "max_batch": 2},
])
def test_static_is_idle_power_times_the_whole_run_and_parts_add_up(opts):
    r = simulate(make_config(batch=4, context=8192, steps=2, **opts))
    pim = r.config.get("pim")
    assert sum(r.energy_static_j.values()) == pytest.approx(
        idle_w(r.hardware, pim, r.config.get("channels")) * r.total_time_s, rel=1e-12)
    for c, e in r.energy_j.items():
        assert e == pytest.approx(r.energy_static_j.get(c, 0.0) + r.energy_dynamic_j.get(c, 0.0), rel=1e-12)
    assert r.energy_per_token_j == pytest.approx(r.energy_static_per_token_j + r.energy_dynamic_per_token_j)
    assert r.mean_power_w == pytest.approx(sum(r.energy_j.values()) / r.total_time_s)
    assert r.energy_static_j["pcie.h2d"] == r.energy_static_j["pcie.d2h"]
    assert ("pim" in r.energy_static_j) == (pim is not None)
    assert Result.from_json(r.to_json()) == r


def test_energy_moves_with_the_machine_and_the_link_generation():
    # the whole KV in host DRAM (8 x 32K fits the GPU, and auto placement would leave the link idle)
    cfg = {"system": "offload", "batch": 8, "context": 32768, "steps": 1, "kv_gpu_fraction": "0"}
    a100, h100 = (simulate(make_config(hardware=h, **cfg)) for h in ("a100-pcie4-ddr5", "h100-pcie5-ddr5"))
    assert h100.energy_per_token_j < 0.9 * a100.energy_per_token_j  # a shorter step on a faster link
    root = PRESET_DIR.parents[1] / "examples" / "machines"
    gen3, gen6 = (simulate(make_config(hardware=str(root / f"a100-pcie{g}-ddr5.toml"), **cfg)) for g in (3, 6))
    assert gen6.energy_per_token_j < 0.5 * gen3.energy_per_token_j


def test_cpu_attention_pays_for_its_flops_at_the_sockets_derived_energy():
    r = simulate(make_config(system="offload", cpu_attention=True, batch=16, context=65536, steps=1))
    c = load_machine().cpu
    flops = r.energy_dynamic_j["host.cpu"] / c.energy_per_flop_j
    assert r.energy_dynamic_j["host.cpu"] > 10 * flops * 2.3e-12  # more than the 45 nm arithmetic alone
    assert r.energy_dynamic_j["host.cpu"] < (c.max_power_w - c.idle_power_w) * r.busy_s["host.cpu"]
    assert r.energy_static_j["host.cpu"] == pytest.approx(c.idle_power_w * r.total_time_s)


# --- hand calculation of the default scenario (docs/metrics.md; the measurement) --------------------------

DEFAULT = {"model": "llama-3.1-8b", "batch": 16, "context": 65536, "steps": 2}
VARIANTS = [{"system": "offload"}, {"system": "offload", "cpu_attention": True, "cpu_kernel": "bandwidth"},
            {"system": "pim", "capacity_policy": "limit"}, {"system": "aqpim"}]


def hand_energy_per_token(r: Result) -> tuple[float, float]:
    """(floor, ceiling) per token from the presets' figures and the step time: idle power of every device x the
    step, plus the step's main data movement at its per-byte energies (floor), and the same with the GPU at its
    TDP whenever it is busy (ceiling)."""
    m, model = load_machine(r.hardware), load_model(r.model)
    step = r.mean_step_latency_s
    tokens = r.tokens / r.steps  # one per sequence of the step
    contexts = r.peak_kv_tokens  # KV tokens attended, the whole batch
    weights = model.weight_bytes * m.gpu.energy_per_byte_j
    static = idle_w(r.hardware, r.config.get("pim"), r.config.get("channels")) * step
    if r.system == "offload":
        # the resident share is read from HBM; the host share from host DRAM, then over PCIe into HBM, unless the
        # CPU attends it where it lives
        kv, f = contexts * model.kv_bytes_per_token, r.details["kv_gpu_fraction"]
        host = (1 - f) * kv
        moved = f * kv * m.gpu.energy_per_byte_j + host * m.host_dram.energy_per_byte_j
        if not r.config.get("cpu_attention"):
            moved += host * (m.pcie.energy_per_byte_j + m.gpu.energy_per_byte_j)
    else:
        ch = pim_model.load_pim(r.config["pim"]).channel
        per_token = model.kv_bytes_per_token if r.system == "pim" else (
            2 * model.n_layers * model.n_kv_heads * r.config["pq_m"] * 8 / 8)  # K and V codes, 8-bit for K = 256
        moved = contexts * per_token * ch.energy_per_array_byte_j
    gpu_busy = r.busy_s["gpu"] / r.steps
    floor = (static + weights + moved) / tokens
    ceiling = floor + (m.gpu.max_power_w - m.gpu.idle_power_w) * gpu_busy / tokens
    return floor, ceiling


@pytest.mark.parametrize("hardware", ["a100-pcie4-ddr5", "h100-pcie5-ddr5"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(str(x) for x in v.values()))
def test_default_scenario_within_2x_of_the_hand_calculation(hardware, variant):
    r = simulate(make_config(hardware=hardware, **DEFAULT, **variant))
    floor, ceiling = hand_energy_per_token(r)
    assert floor / 2 < r.energy_per_token_j < 2 * floor
    assert floor * 0.9 < r.energy_per_token_j <= ceiling  # never above the GPU-at-TDP bound


def test_default_scenario_energy_differs_between_a100_and_h100():
    for variant in VARIANTS:
        a, h = (simulate(make_config(hardware=hw, **DEFAULT, **variant)) for hw in ("a100-pcie4-ddr5", "h100-pcie5-ddr5"))
        if variant.get("cpu_attention"):
            # the step is bound by the same host DRAM on both machines: the H100, idling higher, costs more
            assert h.mean_step_latency_s == pytest.approx(a.mean_step_latency_s, rel=0.05)
            assert h.energy_per_token_j > 1.03 * a.energy_per_token_j
        else:
            assert abs(a.energy_per_token_j / h.energy_per_token_j - 1) > 0.1, variant


# --- the PIM power cap ---------------------------------------------------------------------------------------------

def uncapped_timing(max_power_w: float | None = None):
    dev = pim_model.load_pim("attacc-hbm3")
    changes = {"bank_column_interval_cycles": 4}
    if max_power_w is not None:
        changes["max_power_w"] = max_power_w
    return pim_model.with_channel(dev, **changes)


def test_power_cap_binds_on_uncapped_timing_and_says_so():
    cfg = make_config(system="pim", model="llama-2-7b", batch=4, context=32768, steps=2)
    shipped = simulate(cfg)
    capped = simulate(cfg, pim=uncapped_timing())
    free = simulate(cfg, pim=uncapped_timing(max_power_w=0.0))
    assert shipped.details["pim_power_throttle"] == 1.0 and not any("power cap" in w for w in shipped.warnings)
    throttle = capped.details["pim_power_throttle"]
    assert 1.05 < throttle < 1.3
    assert any("PIM power cap binds" in w for w in capped.warnings)
    assert free.details["pim_power_throttle"] == 1.0
    # the cap takes back part of what the uncapped timing gains; the PIM phase ends near the capped timing's
    pim_s = {k: r.busy_by_kind_s["pim.attention"] for k, r in (("shipped", shipped), ("capped", capped),
                                                                ("free", free))}
    assert pim_s["free"] < pim_s["capped"] < 1.1 * pim_s["shipped"]
    assert capped.energy_dynamic_j["pim"] == pytest.approx(free.energy_dynamic_j["pim"], rel=1e-12)  # same work
    # the closed form applies the same throttle
    assert capped.analytic_exact and capped.analytic_max_rel_gap < 1e-9


@settings(max_examples=25, deadline=None)
@given(system=st.sampled_from(["pim", "aqpim"]), fraction=st.floats(0.05, 2.0), batch=st.integers(1, 16),
       context=st.integers(1, 200_000), softmax=st.sampled_from(["pim", "host"]),
       link_chunks=st.sampled_from([1, 4]), name=st.sampled_from(pim_model.pim_preset_names()))
def test_two_views_agree_under_any_cap(system, fraction, batch, context, softmax, link_chunks, name):
    dev = pim_model.load_pim(name)
    ch = dev.channel
    dev = pim_model.with_channel(dev, max_power_w=ch.idle_power_w + fraction * pim_model.peak_dynamic_power_w(ch))
    steps = []
    r = simulate(make_config(system=system, model="llama-3-8b", batch=batch, context=context, steps=1,
                             softmax=softmax, link_chunks=link_chunks, trace_steps=0), pim=dev, on_step=steps.append)
    for s in steps:
        if r.analytic_exact:
            assert s.latency_s == pytest.approx(s.analytic_s, rel=1e-9)
        else:
            assert s.latency_s >= s.analytic_s * (1 - 1e-9)
    assert (r.details["pim_power_throttle"] > 1) == any("power cap" in w for w in r.warnings)
