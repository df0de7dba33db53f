"""End-to-end through the CLI: output, JSON keys, traces, determinism and one-line errors."""

import json

import pytest

from sim.cli import main

SMALL = ["--batch", "2", "--context", "4096", "--steps", "2"]
REQUIRED_KEYS = {"system", "model", "batch", "context", "steps", "peak_batch", "mean_step_latency_s",
                 "tokens_per_s", "breakdown_s", "comm_share", "kv_bytes", "fits", "energy_j",
                 "analytic_mean_step_latency_s"}


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_summary_and_writes_json_and_trace(tmp_path, capsys):
    j, t = tmp_path / "r.json", tmp_path / "t.json"
    code, out, _ = run_cli(capsys, "run", "--system", "offload", "--model", "llama-2-7b", *SMALL,
                           "--json-out", str(j), "--trace-out", str(t))
    assert code == 0 and "mean step latency" in out and "communication share" in out
    r = json.loads(j.read_text())
    assert REQUIRED_KEYS <= set(r)
    assert len(r["traced_step_latency_s"]) == r["steps"] == 2 and 0 <= r["comm_share"] <= 1
    trace = json.loads(t.read_text())
    x = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"gpu", "pcie"} <= names and x and all(e["dur"] >= 0 and isinstance(e["tid"], int) for e in x)
    busy_from_trace = sum(e["dur"] for e in x if e["cat"] == "pcie") * 1e-6
    assert busy_from_trace == pytest.approx(r["busy_s"]["pcie.h2d"] + r["busy_s"]["pcie.d2h"], rel=1e-9)


def test_same_config_and_seed_give_identical_bytes(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        assert main(["run", *SMALL, "--prefetch", "--requests", "5", "--arrival-rate", "3", "--seed", "4",
                     "--json-out", str(p)]) == 0
    capsys.readouterr()
    assert a.read_bytes() == b.read_bytes()


def test_config_file_with_flag_override(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    trace = tmp_path / "reqs.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,1000,3\n0,2000,2\n")
    cfg.write_text('system = "offload"\nmodel = "llama-3-8b"\ntrace = "reqs.csv"\nmax_batch = 2\n')
    j = tmp_path / "r.json"
    assert main(["run", str(cfg), "--cpu-attention", "--json-out", str(j)]) == 0
    r = json.loads(j.read_text())
    # steps of 2, 2 and 1 sequences
    assert (r["steps"], r["peak_batch"], r["tokens"]) == (3, 2, 5) and r["config"]["cpu_attention"] is True


def test_presets_lists_models_and_machines(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0 and "llama-3-70b" in out and "a100-pcie4-ddr5" in out
    code, out, _ = run_cli(capsys, "presets", "--json")
    presets = json.loads(out)
    assert code == 0 and presets["machines"]["h100-pcie5-ddr5"]["pcie"]["generation"] == 5
    assert presets["pim"]["attacc-hbm3"]["channels"] == 160


@pytest.mark.parametrize("argv,match", [
    (["run", "--model", "lama-2-7b"], "did you mean 'llama-2-7b'"),
    (["run", "--hardware", "a100"], "valid presets: a100-pcie4-ddr5"),
    (["run", "--batch", "0"], "batch must be a positive integer"),
    (["run", "--context", "-5"], "context must be a positive integer"),
    (["run", "--prefetch", "--cpu-attention"], "cannot be combined"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, match):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_files_name_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "llama-2-7b"\nbatch = = 4\n')
    code, _, err = run_cli(capsys, "run", str(bad))
    assert code == 2 and "bad.toml: malformed TOML" in err and "line 2" in err
    typo = tmp_path / "typo.toml"
    typo.write_text('modle = "llama-2-7b"\n')
    code, _, err = run_cli(capsys, "run", str(typo))
    assert code == 2 and "unknown key 'modle' (did you mean 'model'?)" in err
    csv = tmp_path / "t.csv"
    csv.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,x\n")
    code, _, err = run_cli(capsys, "run", "--trace", str(csv))
    assert code == 2 and "t.csv:2: output_tokens must be a whole number" in err


def test_kv_that_fits_nowhere_is_reported_not_a_crash(tmp_path, capsys):
    j = tmp_path / "r.json"
    code, out, _ = run_cli(capsys, "run", "--model", "llama-2-7b", "--batch", "64", "--context", "131072",
                           "--steps", "1", "--json-out", str(j))
    r = json.loads(j.read_text())
    assert code == 0 and r["fits"] is False and "exceeds host DRAM" in r["fit_reasons"][0] and "NO:" in out


def test_context_beyond_model_limit_is_a_warning(capsys):
    code, out, _ = run_cli(capsys, "run", "--model", "llama-2-7b", *SMALL)
    assert code == 0 and "warning: context up to 4098 tokens exceeds" in out
