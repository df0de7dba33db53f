"""A system is one file plus one registry line: a system defined in this module (nowhere else) gets its CLI flags,
run-file keys, sweep factors and compare variants from its declarations, and its closed form is checked."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from hw_models import gpu as gpu_model
from sim.cli import main
from sim.config import make_config
from sim.errors import ConfigError
from sim.options import Options, option
from sim.run import simulate
from sim.sweep import load_sweep, run_sweep
from sim.systems import SYSTEMS, register, unregister
from sim.systems.base import Capacity, Estimate, System, total_s


@dataclass(frozen=True)
class ToyOptions(Options):
    toy_bw_bytes_per_s: float = option(1e12, "bytes per second the toy reads its KV cache at", unit="B/s",
                                       minimum=1.0)
    toy_passes: int = option(1, "times the toy reads its KV cache per layer", minimum=1)


class ToySystem(System):
    """KV in GPU memory read at a configurable rate: one kernel per layer, one chain, so the closed form is exact."""

    name = "toy"
    Options = ToyOptions
    variants = ({}, {"toy_passes": 2})

    def plan(self, batch):
        m = self.model
        kv = batch.kv_tokens * m.kv_bytes_per_token_per_layer * self.options.toy_passes
        seconds = self.machine.params.gpu.kernel_launch_s + kv / self.options.toy_bw_bytes_per_s
        head = gpu_model.kernel(self.machine.params.gpu, "lm_head", 2.0 * batch.n_seqs * m.hidden_size
                                * m.vocab_size, m.vocab_size * m.hidden_size * m.bytes_per_element)
        return (gpu_model.Work("toy_attention", seconds, kv),), (head,)

    def step(self, plan):
        layer, head = plan
        for _ in range(self.model.n_layers):
            yield self.machine.gpu.run(layer)
        yield self.machine.gpu.run(head)

    def estimate(self, plan) -> Estimate:
        layer, head = plan
        return Estimate(self.model.n_layers * total_s(layer) + total_s(head), exact=True)

    def capacity(self, kv_bytes, peak) -> Capacity:
        return Capacity("gpu", kv_bytes, True)


@pytest.fixture
def toy():
    register(ToySystem)
    yield ToySystem
    unregister("toy")


SMALL = ["--batch", "2", "--context", "4096", "--steps", "2"]


def test_runs_through_run_with_its_own_flags_and_the_closed_form(toy, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run", "--system", "toy", "--toy-passes", "3", *SMALL, "--json-out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["system"] == "toy" and r["config"]["toy_passes"] == 3 and r["analytic_exact"]
    assert r["analytic_max_rel_gap"] <= 1e-12  # every step: the toy's closed form is its simulated latency
    # the toy's options are not the offload system's, and offload's are not the toy's
    assert main(["run", "--system", "offload", "--toy-passes", "3", *SMALL]) == 2
    assert "'toy_passes' (--toy-passes) is an option of toy, not of offload" in capsys.readouterr().err
    assert main(["run", "--system", "toy", "--prefetch", *SMALL]) == 2
    assert "is an option of offload, not of toy" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="toy_passes must be a positive integer"):
        make_config(system="toy", toy_passes=0)


def test_attention_time_by_hand(toy):
    """LLaMA-3.1-8B: 32 layers, 8 KV heads x 128 x 2 bytes x (K, V) = 4 KiB per token and layer."""
    r = simulate(make_config(system="toy", batch=4, context=65536, steps=1, toy_passes=2))
    kv_per_layer = 4 * 65536 * 4096
    assert r.busy_by_kind_s["toy_attention"] == pytest.approx(32 * (5e-6 + 2 * kv_per_layer / 1e12), rel=1e-12)


def test_compare_runs_its_variants(toy, tmp_path, capsys):
    assert main(["compare", "--system", "toy", *SMALL, "--trace-steps", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\ntoy " in out and "\ntoy+toy-passes=2 " in out
    assert main(["compare", "--variants", "offload,toy", "--toy-passes", "2", *SMALL, "--out",
                 str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert {r["system"] for r in results} == {"offload", "toy"}
    assert [r["config"]["toy_passes"] for r in results if r["system"] == "toy"] == [2]


def test_sweep_factors_and_rejection_of_foreign_options(toy, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[base]\nsystem = "toy"\nbatch = 2\nsteps = 1\n[factors]\ntoy_passes = [1, 2]\n'
                    'context = [1024, 2048]\n')
    summary = run_sweep(load_sweep(good), tmp_path / "out", jobs=1, quiet=True)
    assert summary.ran == 4 and summary.failed == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[base]\nbatch = 2\nsteps = 1\n[factors]\nsystem = ["offload", "toy"]\ntoy_passes = [1, 2]\n')
    with pytest.raises(ConfigError, match="'toy_passes' .* is an option of toy, not of offload"):
        load_sweep(bad)


def test_registry_refuses_a_clashing_declaration(toy):
    @dataclass(frozen=True)
    class OtherOptions(Options):
        toy_passes: int = option(5, "a different default for the same name", minimum=1)

    class Other(System):
        name = "other"
        Options = OtherOptions

    with pytest.raises(ConfigError, match="declared differently"):
        register(Other)
    assert "other" not in SYSTEMS
