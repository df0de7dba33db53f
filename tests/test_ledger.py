"""The assumption ledger (sim/ledger.py, `aqpim-sim assumptions`): which values are tagged, and how far each moves
the headline, checked against a grep of the presets and against swings worked out by hand on a toy machine."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from hw_models import gpu as gpu_model
from hw_models.machine import PRESET_DIR, load_machine
from sim.cli import main
from sim.config import make_config
from sim.errors import ConfigError
from sim.ledger import (
    Headline,
    Side,
    build_ledger,
    is_assumption,
    ledger_json,
    replace_at,
    run_tasks,
    sides,
    tagged_values,
)
from sim.options import Options, option
from sim.run import simulate
from sim.systems import register, unregister
from sim.systems.base import Capacity, Estimate, System, total_s
from sim.variants import variant_configs
from workloads.models import load_model

PCIE_BW = 25e9  # the toy machine's host-to-device rate, as the shipped a100-pcie4-ddr5


# ------------------------------------------------------------------------------------------------- the tag

@pytest.mark.parametrize("source, tagged", [
    ("assumption: one 64 GiB RDIMM per channel (I)", True),
    ("AT config NUM_HBM = 5 stacks x 32 pseudo-channels (V/I)", True),
    ("DDR4/DDR5 access estimate 20 pJ/bit x 8 (I, REFERENCE.md: 15-25 pJ/bit)", True),
    ("G5: tCCD_L = max(8 nCK, 5 ns) = 12 nCK at 4800 (V rule, I value; R2 uses 8)", True),
    ("about 150 mW per lane (Gen3 about 100 mW per lane end-to-end, rising with the rate: R/I) x 16 lanes", True),
    ("NVIDIA A100 datasheet: 2,039 GB/s HBM2e, 80GB SXM (V)", False),
    ("GDDR6 I/O 5.5 pJ/bit x 8 (V)", False),               # I/O is no tag
    ("(channel I/O, R)", False),
    ("I = derived or assumed here (R)", False),             # the letter outside parentheses is no tag
    ("UPMEM DPU (PrIM, R)", False),
    ("", False),
])
def test_tag_grammar(source, tagged):
    assert is_assumption(source) is tagged


def _grep_tagged(path: Path) -> set[tuple[str, str]]:
    """(file stem, key) of every line ``key = { value = ..., source = "..." }`` whose source holds a
    parenthesised group with the word I in it: a grep, independent of the loaders."""
    out = set()
    for line in path.read_text().splitlines():
        m = re.match(r'\s*(\w+)\s*=\s*\{.*source\s*=\s*"(.*)"\s*\}\s*$', line)
        if not m:
            continue
        for group in re.findall(r"\(([^()]*)\)", m.group(2)):
            words = re.split(r"[\s,;:]+", group)
            if any(w == "I" or w.startswith("I/") and w != "I/O" or w.endswith("/I") for w in words):
                out.add((path.stem, m.group(1)))
    return out


def test_the_default_comparison_lists_what_a_grep_of_its_presets_finds():
    h = Headline.load(variant_configs({"steps": 1}))
    listed = {(t.preset, t.path[-1]) for t in tagged_values(h)}
    files = [PRESET_DIR / "a100-pcie4-ddr5.toml", PRESET_DIR / "dram" / "ddr5-4800.toml",
             PRESET_DIR / "pim" / "attacc-hbm3.toml", PRESET_DIR / "dram" / "hbm3-5200.toml"]
    grep = set().union(*(_grep_tagged(f) for f in files))
    # The host sets the rank count of its DIMMs (ranks_per_channel, a sourced value): the timing preset's one rank,
    # tagged (I), is not what the machine runs on.
    assert listed == grep - {("ddr5-4800", "ranks")}
    assert len(listed) > 20 and ("attacc-hbm3", "lut_bytes") in listed


def test_a_value_the_user_sets_is_no_assumption_of_the_run():
    pairs = variant_configs({"steps": 1, "lut_bytes": 2048}, ["aqpim"])
    assert "pim.channel.aqpim_unit.lut_bytes" not in {t.key for t in tagged_values(Headline.load(pairs))}
    shipped = variant_configs({"steps": 1}, ["aqpim"])
    assert "pim.channel.aqpim_unit.lut_bytes" in {t.key for t in tagged_values(Headline.load(shipped))}


# ---------------------------------------------------------------------------------------- perturbations

def test_sides_of_numbers_booleans_and_names():
    assert sides(2.5e9) == ([Side("half", 1.25e9), Side("double", 5e9)], "")
    assert sides(32) == ([Side("half", 16), Side("double", 64)], "")
    assert sides(5) == ([Side("half", 3, "5/2 rounded to 3"), Side("double", 10)], "")
    assert sides(1) == ([Side("half", None, "1 has no whole half"), Side("double", 2)], "")
    assert sides(False) == ([Side("flip", True)], "")
    assert sides(0.0) == ([], "0: halving and doubling leave it at 0")
    assert sides("ddr5-4800") == ([], "a name, not a number")


def test_replace_at_reaches_a_derived_block_and_keeps_the_rest():
    m = load_machine("a100-pcie4-ddr5")
    new = replace_at(m, ("host_dram", "dram", "tCK_s"), 2 * m.host_dram.dram.tCK_s)
    assert new.host_dram.dram.tCK_s == 2 * m.host_dram.dram.tCK_s
    assert new.host_dram.dram.ranks == m.host_dram.dram.ranks == m.host_dram.ranks_per_channel
    assert new.host_dram.dram.sources["tCK_s"].startswith("overridden")
    assert m.host_dram.dram.tCK_s == pytest.approx(0.41667e-9)  # the original is untouched
    assert new.gpu is m.gpu


# ------------------------------------------------------------------------------ a toy machine, by hand

def _untag(text: str) -> str:
    """The preset text with every I tag turned into x, so nothing in it is an assumption."""
    return re.sub(r"\(([^()]*)\)", lambda g: "(" + re.sub(r"(?<![\w.])I(?![\w.]|/O)", "x", g.group(1)) + ")", text)


def _tag(text: str, section: str, key: str) -> str:
    """Tag ``key`` of ``[section]`` (I)."""
    out, current = [], None
    for line in text.splitlines():
        s = re.match(r"\[(\w+)\]", line)
        if s:
            current = s.group(1)
        if current == section and re.match(rf"{key}\s*=", line):
            line = line.replace('" }', ' (I)" }')
        out.append(line)
    return "\n".join(out) + "\n"


TOY_TAGS = (("pcie", "h2d_bw_bytes_per_s"), ("pcie", "energy_per_byte_j"), ("gpu", "cuda_graphs"),
            ("gpu", "bw_efficiency"), ("gpu", "mem_capacity_bytes"))


@pytest.fixture
def toy_machine(tmp_path) -> Path:
    """The shipped a100-pcie4-ddr5 (and its DDR5 timing) with no tags but five: PCIe host-to-device rate and
    energy, CUDA graphs (a boolean), the GPU's bandwidth efficiency (a fraction) and its memory capacity."""
    dram = tmp_path / "ddr5.toml"
    dram.write_text(_untag((PRESET_DIR / "dram" / "ddr5-4800.toml").read_text()))
    text = _untag((PRESET_DIR / "a100-pcie4-ddr5.toml").read_text())
    text = re.sub(r'(\ntiming = \{ value = )"ddr5-4800"', rf'\1"{dram}"', text)
    for section, key in TOY_TAGS:
        text = _tag(text, section, key)
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return path


TOY = {"batch": 4, "context": 65536, "steps": 1, "trace_steps": 0}


def _toy_pairs(machine: Path):
    return variant_configs({**TOY, "hardware": str(machine)}, ["offload+0", "gpu"])


def _entry(ledger: dict, key: str) -> dict:
    return next(e for e in ledger["entries"] if e["key"] == key)


def _side(entry: dict, name: str) -> dict:
    return next(s for s in entry["sides"] if s["side"] == name)


def test_toy_ledger_by_hand(toy_machine):
    """Variants offload+0 (all KV over PCIe each step, the baseline) and gpu (the winner while it fits).

    * PCIe host-to-device rate: offload+0 sends the whole KV cache, B = 4 x 65536 tokens x 128 KiB = 32 GiB, over
      it each step and waits for it, so its step is T + B/bw at half the rate and T - B/(2 bw) at double; gpu does
      not use the link. The speedup (gpu over offload+0) moves by the same factors, its swing is 1.5 B / (bw T).
    * PCIe energy per byte: energy never enters time: no swing.
    * CUDA graphs (false): flipped, one run.
    * GPU bandwidth efficiency 0.85: doubled past 1, clipped to 1.
    * GPU memory 80 GiB: at half (40 GiB), weights 15 GiB + KV 32 GiB no longer fit: offload+0 wins, flagged.
    """
    pairs = _toy_pairs(toy_machine)
    ledger = build_ledger(pairs, jobs=1)
    assert sorted(e["key"] for e in ledger["entries"]) == sorted(f"hardware.{s}.{k}" for s, k in TOY_TAGS)
    # the shipped runs are the plain simulations of the configurations
    plain = {lab: simulate(cfg) for lab, cfg in pairs}
    assert {v["label"]: v["tokens_per_s"] for v in ledger["variants"]} == \
        {lab: r.tokens_per_s for lab, r in plain.items()}
    head = ledger["headline"]["speedup"]
    assert (head["winner"], head["over"]) == ("gpu", "offload+0")
    s0 = plain["gpu"].tokens_per_s / plain["offload+0"].tokens_per_s
    assert head["value"] == pytest.approx(s0, rel=1e-12)

    t = plain["offload+0"].mean_step_latency_s
    b = 4 * 65536 * load_model("llama-3.1-8b").kv_bytes_per_token
    assert b == 32 * 2**30
    bw = _entry(ledger, "hardware.pcie.h2d_bw_bytes_per_s")
    assert _side(bw, "half")["value"] == PCIE_BW / 2 and _side(bw, "double")["value"] == PCIE_BW * 2
    assert _side(bw, "half")["metrics"]["speedup"]["value"] == pytest.approx(s0 * (t + b / PCIE_BW) / t, rel=1e-9)
    assert _side(bw, "double")["metrics"]["speedup"]["value"] == \
        pytest.approx(s0 * (t - b / (2 * PCIE_BW)) / t, rel=1e-9)
    assert bw["swing"]["speedup"] == pytest.approx(1.5 * b / (PCIE_BW * t), rel=1e-9)
    assert ledger["entries"][0]["key"] == "hardware.pcie.h2d_bw_bytes_per_s"  # the largest swing comes first

    energy = _entry(ledger, "hardware.pcie.energy_per_byte_j")
    assert energy["swing"]["speedup"] == 0.0 and not energy["flags"]

    graphs = _entry(ledger, "hardware.gpu.cuda_graphs")
    assert [(s["side"], s["value"]) for s in graphs["sides"]] == [("flip", True)]
    assert graphs["swing"]["speedup"] > 0  # launches cost less with graphs, and both variants launch kernels

    eff = _entry(ledger, "hardware.gpu.bw_efficiency")
    double = _side(eff, "double")
    assert double["value"] == 1.0 and double["note"].startswith("clipped to 1 (") and "(0, 1]" in double["note"]
    assert double["metrics"] is not None

    cap = _entry(ledger, "hardware.gpu.mem_capacity_bytes")
    assert _side(cap, "half")["metrics"]["speedup"]["winner"] == "offload+0"
    assert cap["flags"] == ["half: offload+0 wins"]
    assert [e["key"] for e in ledger["entries"] if e["flags"]] == ["hardware.gpu.mem_capacity_bytes"]


def test_the_ledger_is_the_same_whatever_the_jobs(toy_machine):
    pairs = _toy_pairs(toy_machine)
    assert ledger_json(build_ledger(pairs, jobs=1)) == ledger_json(build_ledger(pairs, jobs=2))


def test_only_the_variants_that_read_a_changed_block_run_again():
    ran = []

    def runner(tasks, jobs):
        ran.extend(t[0].system for t in tasks)
        return run_tasks(tasks, jobs)

    pairs = variant_configs({**TOY, "context": 4096}, ["offload+0", "pim"])
    ledger = build_ledger(pairs, runner=runner)
    pim_entries = [e for e in ledger["entries"] if e["root"] == "pim"]
    hw_entries = [e for e in ledger["entries"] if e["root"] == "hardware"]
    pim_sides = sum(1 for e in pim_entries for s in e["sides"] if s["value"] is not None)
    hw_sides = sum(1 for e in hw_entries for s in e["sides"] if s["value"] is not None)
    assert ran.count("offload") == 1 + hw_sides  # never rerun for a PIM value
    assert ran.count("pim") == 1 + hw_sides + pim_sides


# ---------------------------------------------------------------------------- a tagged system option

@dataclass(frozen=True)
class LedgerToyOptions(Options):
    ledger_toy_bw_bytes_per_s: float = option(1e12, "rate the toy reads its KV cache at (I)", unit="B/s",
                                              minimum=1.0)


class LedgerToySystem(System):
    """KV in GPU memory read at an assumed rate, one kernel per layer: its step is known in closed form."""

    name = "ledgertoy"
    Options = LedgerToyOptions

    def plan(self, batch):
        m = self.model
        kv = batch.kv_tokens * m.kv_bytes_per_token_per_layer
        seconds = self.machine.params.gpu.kernel_launch_s + kv / self.options.ledger_toy_bw_bytes_per_s
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
def ledger_toy():
    register(LedgerToySystem)
    yield LedgerToySystem
    unregister("ledgertoy")


def test_an_option_tagged_in_its_help_is_perturbed(ledger_toy, toy_machine):
    """The toy's attention reads B = 4 x 4096 tokens x 4 KiB per layer at the assumed rate r, 32 layers: halving r
    adds 32 B / r to its step, the offload baseline does not move."""
    pairs = variant_configs({**TOY, "context": 4096, "hardware": str(toy_machine)}, ["offload+0", "ledgertoy"])
    ledger = build_ledger(pairs)
    e = _entry(ledger, "option.ledger_toy_bw_bytes_per_s")
    assert e["preset"] == "ledgertoy option" and e["value"] == 1e12
    t = simulate(make_config(system="ledgertoy", batch=4, context=4096, steps=1)).mean_step_latency_s
    s0 = ledger["headline"]["speedup"]["value"]
    extra = 32 * 4 * 4096 * 4096 / 1e12
    assert _side(e, "half")["metrics"]["speedup"]["value"] == pytest.approx(s0 * t / (t + extra), rel=1e-9)
    assert _side(e, "double")["metrics"]["speedup"]["value"] == pytest.approx(s0 * t / (t - extra / 2), rel=1e-9)


# ------------------------------------------------------------------------------------------- the CLI

def test_cli_end_to_end(toy_machine, tmp_path, capsys):
    out = tmp_path / "ledger"
    argv = ["assumptions", "--hardware", str(toy_machine), "--variants", "offload+0,gpu", "--batch", "4",
            "--context", "65536", "--steps", "1", "--jobs", "1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "headline speedup: gpu over the best fitting baseline (offload+0)" in text
    assert "1 flip the winner: hardware.gpu.mem_capacity_bytes" in text
    assert "FLIPS THE WINNER (half: offload+0 wins)" in text
    assert sorted(p.name for p in out.iterdir()) == ["ledger.csv", "ledger.json", "ledger.txt", "tornado.png"]
    assert (out / "tornado.png").read_bytes().startswith(b"\x89PNG")
    ledger = json.loads((out / "ledger.json").read_text())
    swings = [max(v or 0 for v in e["swing"].values()) for e in ledger["entries"]]
    assert swings == sorted(swings, reverse=True)
    rows = list(csv.DictReader(io.StringIO((out / "ledger.csv").read_text())))
    assert [r["key"] for r in rows] == [e["key"] for e in ledger["entries"]]
    assert {"half_value", "double_speedup", "flip_value", "swing_speedup", "flags", "source"} <= set(rows[0])
    assert (out / "ledger.txt").read_text().splitlines()[0] == text.splitlines()[0]
    # the figure again, through `plot tornado`
    assert main(["plot", "tornado", str(out / "ledger.json"), "--out", str(tmp_path / "t.svg"), "--top", "2"]) == 0
    # refused before anything runs: the folder holds a ledger
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_list_runs_nothing(capsys):
    assert main(["assumptions", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = int(lines[-1].split()[0])
    assert n == len(lines) - 1 and n > 20
    assert any(line.startswith("pim.channel.aqpim_unit.lut_bytes ") for line in lines)


def test_a_tagged_block_is_listed_by_name_and_a_ledger_without_baseline_has_no_speedup(tmp_path):
    """hbm-pim-aquabolt tags its channel's DRAM timing (I) as a whole: listed by name, not perturbed, its values
    listed apart. Without an offload variant there is no speedup, only the pair; with neither, nothing to move."""
    pairs = variant_configs({"batch": 1, "context": 2048, "steps": 1, "trace_steps": 0, "pim": "hbm-pim-aquabolt"},
                            ["pim+limit", "aqpim"])
    ledger = json.loads(ledger_json(build_ledger(pairs)))
    timing = _entry(ledger, "pim.channel.timing")
    assert timing["value"] == "HBM2 x128 (legacy channel)"
    assert timing["skipped"].startswith("a block of its own") and timing["sides"] == []
    assert any(e["key"].startswith("pim.channel.timing.") for e in ledger["entries"])
    assert ledger["headline"]["speedup"]["value"] is None
    # at 2K tokens the PQ path's fixed costs dominate: pim+limit wins (the crossover of DESIGN.md)
    assert ledger["headline"]["speedup"]["winner"] == "pim+limit"
    assert 0 < ledger["headline"]["aqpim/pim+limit"]["value"] < 1
    with pytest.raises(ConfigError, match="no headline ratio to move: pim\\+limit wins"):
        build_ledger(pairs[:1])
