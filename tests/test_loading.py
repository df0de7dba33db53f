"""Loading inputs: file errors, presets by name or path, sources kept on parameters, provenance, `presets --show`."""

import dataclasses
import re
import shutil

import pytest

from hw_models import dram, machine, pim
from hw_models.errors import HardwareError
from hw_models.gpu import GpuParams
from hw_models.loading import PresetDir, did_you_mean, origin_of, read_json, read_toml, unit_of
from hw_models.params import build, override
from sim.cli import main
from sim.commands import presets as presets_cmd
from sim.config import from_mapping, make_config
from sim.errors import ConfigError
from sim.run import simulate
from sim.systems import SYSTEMS
from workloads import models
from workloads.errors import WorkloadError

EVERY_PRESET = [(kind, name) for kind, (presets, _, _) in presets_cmd.KINDS.items() for name in presets.names()]
ORIGIN = re.compile(r"^(?P<file>\S+) sha256:[0-9a-f]{16}$")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ reading files

@pytest.mark.parametrize("reader,error", [(read_toml, HardwareError), (read_toml, ConfigError),
                                          (read_json, WorkloadError), (read_json, HardwareError)])
def test_unreadable_files_name_the_file_and_raise_the_callers_error(tmp_path, reader, error):
    missing = tmp_path / "missing.x"
    with pytest.raises(error, match=r"missing.x: cannot read: No such file"):
        reader(missing, error=error)
    with pytest.raises(error, match=rf"{re.escape(str(tmp_path))}: cannot read: Is a directory"):
        reader(tmp_path, error=error)
    binary = tmp_path / "binary.x"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(error, match=r"binary.x: not UTF-8 text \(byte 0 is 0xff\)"):
        reader(binary, error=error)


def test_malformed_files_name_the_file_and_line(tmp_path):
    t = tmp_path / "bad.toml"
    t.write_text("a = 1\n\nb = = 2\n")
    with pytest.raises(HardwareError, match=r"bad.toml: malformed TOML: .*line 3"):
        read_toml(t)
    j = tmp_path / "bad.json"
    j.write_text('{\n  "a": 1,\n  "b": ,\n}')
    with pytest.raises(WorkloadError, match=r"bad.json:3: malformed JSON"):
        read_json(j, error=WorkloadError)


def test_loaders_report_non_utf8_files_in_their_layers_error(tmp_path, capsys):
    toml, cfg = tmp_path / "m.toml", tmp_path / "config.json"
    toml.write_bytes(b"\xff\xfe")
    cfg.write_bytes(b"\xff\xfe")
    with pytest.raises(HardwareError, match="m.toml: not UTF-8"):
        machine.load_machine(str(toml))
    with pytest.raises(WorkloadError, match="config.json: not UTF-8"):
        models.load_model(str(cfg))
    code, _, err = run_cli(capsys, "run", str(toml))
    assert code == 2 and "m.toml: not UTF-8" in err and err.count("\n") == 1


def test_did_you_mean():
    assert did_you_mean("attacc", ["attacc-hbm3", "upmem"]) == " (did you mean 'attacc-hbm3'?)"
    assert did_you_mean("zzz", ["attacc-hbm3", "upmem"]) == ""


def test_preset_dir_resolves_names_paths_and_folders(tmp_path):
    (tmp_path / "one.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{}")
    d = PresetDir(tmp_path, ".json", "thing", WorkloadError, folder_file="config.json")
    assert d.names() == ["one"]
    assert d.resolve("one") == d.resolve("ONE") == tmp_path / "one.json"
    assert d.resolve(str(tmp_path / "folder")) == tmp_path / "folder" / "config.json"
    with pytest.raises(WorkloadError, match=r"unknown thing preset 'on' \(did you mean 'one'\?\); valid presets: one"):
        d.resolve("on")
    with pytest.raises(WorkloadError, match="thing file not found: .*nope.json"):
        d.resolve(str(tmp_path / "nope.json"))


# ------------------------------------------------------------------ sources and overrides

def test_sources_survive_build_and_take_no_part_in_equality():
    gpu = machine.load_machine("a100-pcie4-ddr5").gpu
    assert gpu.sources["mem_bw_bytes_per_s"].startswith("NVIDIA A100 datasheet")
    dev = pim.load_pim("attacc-hbm3")
    assert dev.sources["channels"].startswith("AT config NUM_HBM")
    assert dev.channel.sources["timing"].startswith("AT attacc_bank.yaml")  # the nested timing keeps its source
    assert dev.channel.timing.sources["tRCD_cycles"] == "AT HBM3_5.2Gbps nRCDRD = 19 (V)"
    table = {f.name: getattr(gpu, f.name) for f in dataclasses.fields(gpu) if f.compare}
    plain = build(GpuParams, table, "plain")
    assert plain.sources == {} and plain == gpu and hash(plain) == hash(gpu)
    ch = dataclasses.replace(dev.channel, sources={})
    assert ch == dev.channel and pim.internal_bw_bytes_per_s(ch) == dev.channel.internal_bw_bytes_per_s


def test_bookkeeping_fields_are_not_file_keys():
    table = {f.name: getattr(machine.load_machine().gpu, f.name) for f in dataclasses.fields(GpuParams) if f.compare}
    with pytest.raises(HardwareError, match="unknown key 'sources'"):
        build(GpuParams, {**table, "sources": {}}, "t")


def test_an_override_marks_its_source_and_is_validated():
    dev = pim.load_pim("attacc-hbm3")
    changed = pim.with_channel(dev, unit_buffer_bytes=1024)
    assert changed.channel.unit_buffer_bytes == 1024
    assert changed.channel.sources["unit_buffer_bytes"] == "overridden: unit_buffer_bytes = 1024"
    assert changed.channel.sources["ranks"] == dev.channel.sources["ranks"]
    options = make_config(system="pim", channels=256).options
    assert SYSTEMS["pim"].devices(options).pim.sources["channels"] == "overridden: channels = 256"
    assert override(dev, placement="host").sources["placement"] == "overridden: placement = 'host'"
    with pytest.raises(HardwareError, match="channels must be a positive number"):
        override(dev, channels=0)


# ------------------------------------------------------------------ provenance

def test_origin_names_the_file_and_its_hash_and_changes_with_the_file(tmp_path):
    shipped = machine.load_machine("a100-pcie4-ddr5").origin
    assert ORIGIN.match(shipped)["file"] == "hw_models/presets/a100-pcie4-ddr5.toml"
    assert ORIGIN.match(models.load_model("llama-2-7b").origin)["file"] == "workloads/presets/models/llama-2-7b.json"
    assert models.load_model("llama-2-7b").source.startswith("huggingface.co/meta-llama/Llama-2-7b-hf")
    dev = pim.load_pim("attacc-hbm3")
    assert ORIGIN.match(dev.channel.timing.origin)["file"] == "hw_models/presets/dram/hbm3-5200.toml"

    mine = tmp_path / "m.toml"
    shutil.copy(machine.PRESET_DIR / "a100-pcie4-ddr5.toml", mine)
    before = machine.load_machine(str(mine))
    assert ORIGIN.match(before.origin)["file"] == mine.resolve().as_posix()
    assert before.origin.split()[1] == shipped.split()[1]  # same bytes, same hash
    mine.write_text(mine.read_text().replace("(R)", "(R, checked again)"))
    after = machine.load_machine(str(mine))
    assert after == before and after.origin != before.origin
    assert origin_of(mine) == after.origin


def test_results_carry_the_provenance_of_their_inputs():
    small = {"model": "llama-2-7b", "batch": 1, "context": 1024, "steps": 1, "trace_steps": 0}
    r = simulate(from_mapping({**small, "system": "pim"}))
    assert set(r.provenance) == {"model", "hardware", "pim", "dram_timing"}
    assert r.provenance["pim"] == pim.load_pim("attacc-hbm3").origin
    assert ORIGIN.match(r.provenance["dram_timing"])["file"] == "hw_models/presets/dram/hbm3-5200.toml"
    assert set(simulate(from_mapping({**small, "system": "offload"})).provenance) == {"model", "hardware"}
    assert type(r).from_json(r.to_json()) == r


# ------------------------------------------------------------------ presets --show

def test_units_by_hand():
    assert unit_of("mem_bw_bytes_per_s") == "B/s"
    assert unit_of("peak_flops_per_s") == "FLOP/s"
    assert unit_of("energy_per_byte_j") == unit_of("energy_per_array_byte_j") == unit_of("energy_per_io_byte_j") == "J/B"
    assert unit_of("energy_per_flop_j") == "J/FLOP"
    assert unit_of("capacity_bytes") == "B"
    assert unit_of("tRCD_cycles") == "cycles"
    assert unit_of("tCK_s") == unit_of("link_latency_s") == "s"
    assert unit_of("channels") == unit_of("bw_efficiency") == unit_of("placement") == ""
    assert presets_cmd.format_value(2.039e12, "B/s") == "2.039e12 B/s (2039 GB/s)"
    assert presets_cmd.format_value(85899345920.0, "B") == "8.589934592e10 B (80 GiB)"
    assert presets_cmd.format_value(5e-6, "s") == "5e-6 s (5 us)"
    assert presets_cmd.format_value(0.75e-12, "J/FLOP") == "7.5e-13 J/FLOP (0.75 pJ/FLOP)"
    assert presets_cmd.format_value(160, "") == "160"


@pytest.mark.parametrize("kind,name", EVERY_PRESET)
def test_show_prints_every_value_with_a_source(kind, name):
    (text,) = [t for t in presets_cmd.show(name) if t.startswith(kind)]
    params = presets_cmd.KINDS[kind][1](name)
    value_lines = [line for line in text.splitlines() if line.startswith("  ") and " = " in line]

    def count(p):  # values of a block and its nested blocks (names and descriptions head their sections)
        return sum(count(getattr(p, f.name)) if dataclasses.is_dataclass(getattr(p, f.name)) else 1
                   for f in dataclasses.fields(p) if f.compare and f.name not in ("name", "description"))

    assert len(value_lines) == count(params)
    for line in value_lines:
        assert re.search(r"  source: \S", line) and "(not given)" not in line, line
    assert f"file: {params.origin}" in text


def test_show_by_hand(capsys):
    code, out, _ = run_cli(capsys, "presets", "--show", "a100-pcie4-ddr5")
    assert code == 0
    assert "file: hw_models/presets/a100-pcie4-ddr5.toml sha256:" in out
    assert ("  mem_bw_bytes_per_s = 2.039e12 B/s (2039 GB/s)  source: NVIDIA A100 datasheet: 2,039 GB/s HBM2e, "
            "80GB SXM (V)") in out.splitlines()
    assert "[gpu]  NVIDIA A100-80GB SXM" in out and "[pcie]  PCIe 4.0 x16" in out
    code, out, _ = run_cli(capsys, "presets", "--show", "attacc-hbm3")
    lines = out.splitlines()
    assert code == 0 and lines[2] == "[device]" and "[channel.timing]  HBM3 5.2 Gb/s pseudo-channel  source: AT" in out
    assert "  tRCD_cycles = 19 cycles  source: AT HBM3_5.2Gbps nRCDRD = 19 (V)" in lines
    assert "  file: hw_models/presets/dram/hbm3-5200.toml sha256:" in out


def test_show_a_file_and_a_name_of_several_kinds(tmp_path, monkeypatch):
    mine = tmp_path / "mine.toml"
    shutil.copy(dram.DRAM_PRESET_DIR / "hbm3-5200.toml", mine)
    (text,) = presets_cmd.show(str(mine))
    assert text.startswith("DRAM timing") and f"file: {mine.resolve().as_posix()} sha256:" in text
    shutil.copy(dram.DRAM_PRESET_DIR / "hbm3-5200.toml", tmp_path / "attacc-hbm3.toml")
    kinds = dict(presets_cmd.KINDS)
    kinds["DRAM timing"] = (PresetDir(tmp_path, ".toml", "DRAM timing"),
                            lambda n: dram.load_dram_timing(str(tmp_path / f"{n}.toml")), "timing")
    monkeypatch.setattr(presets_cmd, "KINDS", kinds)
    blocks = presets_cmd.show("attacc-hbm3")
    assert [b.split()[0] for b in blocks] == ["PIM", "DRAM"]


def test_show_unknown_name_is_one_line_with_suggestion_and_valid_names(capsys):
    code, out, err = run_cli(capsys, "presets", "--show", "attacc-hbm")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "unknown preset 'attacc-hbm' (did you mean 'attacc-hbm3'?)" in err
    assert all(n in err for n in ("a100-pcie4-ddr5", "upmem", "hbm3-5200", "llama-2-7b"))
