"""The shipped accuracy table (workloads/presets/accuracy.json) and its lookup by geometry.

The table is written by ``scripts/accuracy_table.py`` (minutes on the real fixture; never run here). These tests
check the file as shipped, the matching rules of ``accuracy_entry``, and that the script's row function, run
briefly on synthetic data, still produces entries of the shape the file has.
"""

import configparser
import dataclasses
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from sim.commands.accuracy import synthetic_data
from workloads.accuracy import EvalConfig
from workloads.errors import WorkloadError
from workloads.kvformats import (
    ACCURACY_TABLE,
    UNSEEN_DATA,
    AccuracyEntry,
    accuracy_entry,
    accuracy_key,
    accuracy_summary,
    load_accuracy_table,
    parse_format,
)

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("accuracy_table_script", ROOT / "scripts" / "accuracy_table.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

DOC = json.loads(ACCURACY_TABLE.read_text())
WINDOW = "sinks=4,recent=128"


def lookup(text, head_dim, data="real"):
    return accuracy_entry(parse_format(text), head_dim, data)


# --- lookup by geometry ---------------------------------------------------------------------------------------------
def test_pq_on_head_dim_128_takes_the_entry_of_equal_sub_vector_dim_and_k():
    e = lookup(f"pq:m=16,k=256,{WINDOW}", 128)  # 8-dim sub-vectors
    assert e.format == f"pq:m=8,k=256,{WINDOW}" and e.head_dim == 64 and e.data == "real"
    assert lookup(f"pq:m=32,k=256,{WINDOW},outliers=4", 128).format == f"pq:m=16,k=256,{WINDOW},outliers=4"
    assert lookup("pq:m=64,k=16", 128).format == "pq:m=32,k=16"  # 2-dim sub-vectors


def test_pq_on_the_datas_own_head_dim_takes_its_own_entry():
    assert lookup(f"pq:m=16,k=256,{WINDOW}", 64).format == f"pq:m=16,k=256,{WINDOW}"
    assert lookup("pq:m=8,k=256", 64).format == "pq:m=8,k=256"


def test_unmeasured_geometry_or_options_give_none():
    assert lookup("pq:m=16,k=64", 128) is None  # K never measured
    assert lookup("pq:m=8,k=256", 128) is None  # 16-dim sub-vectors never measured
    assert lookup("pq:m=16,k=256,sinks=4,recent=64", 128) is None  # another window
    assert lookup(f"pq:m=16,k=256,{WINDOW},outliers=8", 128) is None
    assert lookup(f"pq:m=16,k=256,{WINDOW},refresh=1024", 128) is None
    assert lookup("int:bits=3", 128) is None
    assert lookup("int:bits=2,group=64", 128) is None


def test_every_fix_is_part_of_the_key_and_carries_over_by_sub_vector_dim():
    for fix in script.FIXES:
        if not fix:
            continue
        for m128, m64 in ((16, 8), (32, 16)):
            e = lookup(f"pq:m={m128},k=256,{WINDOW},{fix}", 128)
            assert e is not None and e.settings == parse_format(f"pq:m={m64},k=256,{WINDOW},{fix}"), fix
    assert lookup(f"pq:m=16,k=256,{WINDOW},pre_rope=true,key_k=512", 128) is None  # never measured
    assert "key K 1024" in lookup(f"pq:m=16,k=256,{WINDOW},key_k=1024", 128).geometry


def test_held_out_layers_are_measured_for_every_real_format_on_other_layers():
    tuned = {raw["format"]: raw for raw in DOC["entries"] if raw["data"]["kind"] == "real"}
    held = {raw["format"]: raw for raw in DOC["entries"] if raw["data"]["kind"] == "real-heldout"}
    assert held.keys() == tuned.keys()
    for name, raw in held.items():
        assert not set(raw["data"]["layers"]) & set(tuned[name]["data"]["layers"])
        assert raw["data"]["file"] == "workloads/data/smollm2_gpl3_2k_heldout.npz"


def test_unseen_tokens_are_measured_for_every_real_format_on_the_held_out_layers_from_an_early_prefill():
    held = {raw["format"]: raw for raw in DOC["entries"] if raw["data"]["kind"] == "real-heldout"}
    unseen = {raw["format"]: raw for raw in DOC["entries"] if raw["data"]["kind"] == UNSEEN_DATA}
    assert unseen.keys() == held.keys()
    for name, raw in unseen.items():
        assert raw["data"]["layers"] == held[name]["data"]["layers"] and raw["data"]["file"] == held[name]["data"]["file"]
        assert raw["data"]["prefill"] == script.UNSEEN_PREFILL < held[name]["data"]["prefill"]
        if raw["kind"] == "pq" and "refresh" not in name:  # codes of tokens after the prefill: unseen by k-means
            assert raw["metrics"]["heldout_frac"] > 0.4 > held[name]["metrics"]["heldout_frac"]


def test_summary_gives_tuned_and_held_out_layers_or_says_none_was_measured():
    s = accuracy_summary(parse_format(f"pq:m=16,k=256,{WINDOW},pre_rope=true"), 128)
    assert re.fullmatch(r"tuned layers cos \d\.\d{3} mean / -?\d\.\d{2} worst; held-out layers cos \d\.\d{3} mean / "
                        r"-?\d\.\d{2} worst; tokens the codebooks never saw cos \d\.\d{3} mean / -?\d\.\d{2} worst "
                        r"\(SmolLM2-135M-Instruct K/V, d_sub 8, K 256, measured as "
                        r"pq:m=8,k=256,sinks=4,recent=128,pre_rope=true\)", s), s
    none = accuracy_summary(parse_format("pq:m=16,k=64"), 128)
    assert none.startswith("not measured at this geometry and options (d_sub 8, K 64")


def test_int_matches_by_bits_group_and_window_fp16_exactly():
    e = lookup("int:bits=2,group=32", 128)
    assert e.format == "int:bits=2" and e.head_dim == 64
    assert lookup(f"int:bits=4,{WINDOW}", 128).format == f"int:bits=4,{WINDOW}"
    fp16 = lookup("fp16", 128)
    assert fp16.format == "fp16" and fp16.out_cos_min == pytest.approx(1.0) and fp16.bits_per_element == 16.0


def test_data_selects_real_or_synthetic_rows():
    real, syn = lookup(f"pq:m=16,k=256,{WINDOW}", 128), lookup(f"pq:m=16,k=256,{WINDOW}", 128, "synthetic")
    assert (real.data, syn.data) == ("real", "synthetic") and real.model != syn.model
    assert lookup("fp16", 64, "no-such-data") is None


def test_an_entry_measured_at_the_asked_head_dim_wins():
    carried = lookup(f"pq:m=16,k=256,{WINDOW}", 128)
    own = dataclasses.replace(carried, format=f"pq:m=16,k=256,{WINDOW}", head_dim=128, out_cos_mean=0.5)
    for entries in ([carried, own], [own, carried]):
        assert accuracy_entry(parse_format(f"pq:m=16,k=256,{WINDOW}"), 128, entries=entries) is own
    nearer = accuracy_entry(parse_format(f"pq:m=32,k=256,{WINDOW}"), 256, entries=[carried, own])
    assert nearer is own  # measured at 128, nearer 256 than the fixture's 64


def test_geometry_key_and_its_errors():
    pq = parse_format("pq:m=16,k=256")
    assert accuracy_key(pq, 128) == accuracy_key(parse_format("pq:m=8,k=256"), 64)
    assert accuracy_key(pq, 128) != accuracy_key(pq, 64)
    assert accuracy_key(parse_format("int:bits=4"), 64) == accuracy_key(parse_format("int:bits=4"), 128)
    with pytest.raises(WorkloadError, match="not divisible"):
        accuracy_key(parse_format("pq:m=48,k=256"), 128)
    with pytest.raises(WorkloadError, match="head_dim"):
        accuracy_key(pq, 0)


def test_summary_names_the_cosines_the_geometry_and_the_measured_format():
    s = lookup(f"pq:m=16,k=256,{WINDOW}", 128).summary()
    assert re.fullmatch(r"cos \d\.\d{3} mean / -?\d\.\d{2} worst \(SmolLM2-135M-Instruct K/V, d_sub 8, K 256, "
                        r"measured as pq:m=8,k=256,sinks=4,recent=128\)", s), s
    assert "INT2 group 32" in lookup("int:bits=2", 128).summary()
    assert "exact, measured as fp16" in lookup("fp16", 128).summary()


# --- the shipped file -----------------------------------------------------------------------------------------------
def test_every_entry_parses_back_to_its_stored_name_and_geometry():
    assert DOC["version"] == 1 and DOC["entries"]
    for raw in DOC["entries"]:
        fmt = parse_format(raw["format"])
        assert fmt.name == raw["format"] and fmt.kind == raw["kind"]
        assert raw["geometry"] == script.geometry(fmt, raw["geometry"]["head_dim"])
        assert raw["options"] == script.options(fmt)
        assert raw["command"].startswith("OMP_NUM_THREADS=1 python3 scripts/accuracy_table.py")
    keys = [(raw["format"], raw["data"]["kind"]) for raw in DOC["entries"]]
    assert len(keys) == len(set(keys)), "one entry per (format, data)"
    assert [e.format for e in load_accuracy_table()] == [raw["format"] for raw in DOC["entries"]]


def test_the_file_is_valid_json_with_finite_numbers_only():
    def walk(x, where):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
        elif isinstance(x, float):
            assert math.isfinite(x), where
        elif x is None:
            assert where.rsplit(".", 1)[-1] in ("ppl", "ppl_fp16", "file", "prefill"), where

    json.loads(ACCURACY_TABLE.read_text(), parse_constant=lambda c: pytest.fail(f"non-finite {c}"))
    walk(DOC, "doc")
    for e in load_accuracy_table():
        assert -1.0 <= e.out_cos_min <= e.out_cos_mean <= 1.0 + 1e-9 and 0 < e.bits_per_element
        # only residual stages (S codebooks per tensor) store more than FP16 at the table's 2K tokens
        assert e.bits_per_element <= 16 or getattr(e.settings, "stages", 1) > 1, e.format


def test_the_script_measures_the_formats_the_table_must_have():
    real = {raw["format"] for raw in DOC["entries"] if raw["data"]["kind"] == "real"}
    assert real == {parse_format(t).name for t in script.FORMATS}
    for text in ("fp16", "int:bits=8", "int:bits=4", "int:bits=2", "pq:m=16,k=256", "pq:m=8,k=256",
                 "pq:m=32,k=16", "pq:m=16,k=16"):
        assert text in real
        if text != "fp16":
            assert f"{text},{WINDOW}" in real
    assert f"pq:m=16,k=256,{WINDOW},outliers=4" in real and f"pq:m=8,k=256,{WINDOW},outliers=4" in real
    assert {parse_format(t).name for t in script.PPL_FORMATS} <= real


def test_the_table_ships_with_the_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "presets/accuracy.json" in cfg["options.package_data"]["workloads"]


def test_a_malformed_or_foreign_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "entries": [{"format": "pq:m=8,k=256"}]}))
    with pytest.raises(WorkloadError, match="malformed accuracy entry"):
        load_accuracy_table(bad)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"version": 0, "entries": []}))
    with pytest.raises(WorkloadError, match="version"):
        load_accuracy_table(old)
    with pytest.raises(WorkloadError, match="cannot read"):
        load_accuracy_table(tmp_path / "missing.json")


# --- the script's row function, briefly, on synthetic data ----------------------------------------------------------
def test_the_scripts_rows_have_the_files_shape():
    acts = synthetic_data(seed=0, context=320, queries=16)
    texts = ["fp16", f"int:bits=2,{WINDOW}", f"pq:m=8,k=256,{WINDOW},outliers=4"]
    rows = script.table_rows(acts, [parse_format(t) for t in texts], EvalConfig(n_queries=16, iters=2), "synthetic",
                             "OMP_NUM_THREADS=1 python3 scripts/accuracy_table.py")
    stored = {raw["kind"]: raw for raw in DOC["entries"]}
    assert [r["format"] for r in rows] == texts
    for row in rows:
        want = stored[row["kind"]]
        assert row.keys() == want.keys()
        for part in ("geometry", "options", "metrics", "data"):
            assert row[part].keys() == want[part].keys(), (row["format"], part)
        entry = script_entry_roundtrip(row)
        assert entry.format == row["format"] and entry.context == 320 and entry.data == "synthetic"


def script_entry_roundtrip(row) -> AccuracyEntry:
    """A freshly made row reads back through the same loader as the shipped file."""
    from workloads.kvformats import _entry_from_json

    return _entry_from_json(json.loads(json.dumps(row)), "test")


@pytest.mark.parametrize("only, says", [(["pq:m=8,k=7"], "power of two"),
                                        (["pq:m=8,k=256,rerank=5"], "not in the script's list")])
def test_only_refuses_a_format_it_cannot_measure_in_one_line(only, says, tmp_path, capsys):
    """--only evaluates formats of the script's list: a malformed one or one not in the list is one line, exit 2,
    and nothing is written."""
    out = tmp_path / "table.json"
    with pytest.raises(SystemExit) as e:
        script.main(["--only", *only, "--out", str(out)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert e.value.code == 2 and "error: --only: " in last and says in last
    assert not out.exists()
