"""The closed-form sweep (`sweep --analytic`, sim.analytic_sweep) against the simulation it stands in for."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.analytic_sweep import (
    TABLE_FIELDS,
    Evaluator,
    compare_result,
    estimate_point,
    run_analytic_sweep,
    unsupported_reason,
)
from sim.cli import main
from sim.config import make_config
from sim.errors import ConfigError
from sim.results import RESULTS_CSV, RESULTS_JSONL
from sim.run import simulate
from sim.sweep import load_sweep, run_sweep
from workloads.traces import ContinuousBatcher, fixed_requests, fixed_waves

TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 512, "num_attention_heads": 8,
        "num_key_value_heads": 2, "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 65536,
        "torch_dtype": "float16"}

VARIANTS = [
    {"system": "gpu"},
    {"system": "offload"},
    {"system": "offload", "kv_gpu_fraction": "0"},
    {"system": "offload", "prefetch": True, "kv_gpu_fraction": "0"},
    {"system": "offload", "cpu_attention": True, "kv_gpu_fraction": "0.5"},
    {"system": "pim"},
    {"system": "pim", "channels": 4, "capacity_policy": "limit"},
    {"system": "pim", "channels": 4},
    {"system": "pim", "sub_batches": 2},
    {"system": "pim", "link_chunks": 3},
    {"system": "pim", "softmax": "host", "kv_format": "int4"},
    {"system": "aqpim"},
    {"system": "aqpim", "channels": 8, "pim": "ddr5-dimm-pim"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variant=st.sampled_from(VARIANTS), batch=st.integers(1, 6), context=st.integers(1, 3000),
       steps=st.integers(1, 3), max_batch=st.one_of(st.none(), st.integers(2, 6)))
def test_closed_form_equals_simulation(tiny, evaluator, variant, batch, context, steps, max_batch):
    """Exact points equal the simulation to 1e-9 in every timed field, energy and link bytes; bound points never
    exceed it; capacity and the schedule-independent totals are exact at both."""
    if variant.get("sub_batches", 1) > (max_batch or batch):
        max_batch = None
        batch = max(batch, variant["sub_batches"])
    cfg = make_config(model=tiny, batch=batch, context=context, steps=steps, max_batch=max_batch, **variant)
    sim = simulate(cfg).to_dict()
    ana = evaluator.point_dict(cfg)
    cmp = compare_result(ana, sim)
    assert cmp["ok"], (cmp, variant)
    assert ana["fits"] == sim["fits"] and ana["fit_reasons"] == sim["fit_reasons"]
    assert ana["kv_location"] == sim["kv_location"] and ana["warnings"] == sim["warnings"]
    assert ana["analytic_exact"] == sim["analytic_exact"]
    assert ana["config"] == sim["config"]
    if ana["analytic_exact"]:
        assert ana["energy_j"].keys() == sim["energy_j"].keys()
    else:
        assert sim["mean_step_latency_s"] >= ana["mean_step_latency_s"] * (1 - 1e-12)
        assert sim["step_latency_max_s"] >= ana["step_latency_max_s"] * (1 - 1e-12)
        assert ana["energy_j"] == {}  # static energy needs the wall time: omitted at a bound
        assert ana["energy_dynamic_per_token_j"] == pytest.approx(sim["energy_dynamic_per_token_j"], rel=1e-9)
    assert ana.keys() == sim.keys()
    for k, v in sim["details"].items():
        if isinstance(v, float):
            assert ana["details"][k] == pytest.approx(v, rel=1e-9, abs=1e-300), k
        else:
            assert ana["details"][k] == pytest.approx(v, rel=1e-9) if isinstance(v, list) else ana["details"][k] == v


def test_sliding_window_model(evaluator):
    """Contexts beyond the window attend the window: the memo keys on attended tokens and the longest context."""
    for system in ("gpu", "pim"):
        cfg = make_config(model="mistral-7b", system=system, batch=2, context=5000, steps=2)
        assert compare_result(evaluator.point_dict(cfg), simulate(cfg).to_dict())["ok"]


def test_estimate_point_is_a_result_marked_analytic(tiny):
    r = estimate_point(make_config(model=tiny, system="pim", batch=2, context=100, steps=2))
    assert r.details["method"] == "analytic" and "breakdown_s" in r.details["analytic_omitted"]
    assert r.analytic_exact and r.steps == 2 and r.tokens == 4


@pytest.mark.parametrize("settings_, reason", [
    ({"requests": 3, "arrival_rate_per_s": 2.0}, "Poisson arrivals"),
    ({"requests": 3}, None),
    ({"prefill": "first", "batch": 2, "context": 1024}, "prefill = 'first' is simulated in the timeline"),
])
def test_what_needs_the_engine_is_refused(settings_, reason):
    cfg = make_config(**settings_)
    got = unsupported_reason(cfg)
    assert (got is None) if reason is None else (reason in got)
    if reason:
        with pytest.raises(ConfigError, match="--analytic cannot evaluate"):
            estimate_point(cfg)


def _sweep_file(tmp_path, tiny) -> str:
    text = (f'[base]\nmodel = "{tiny}"\nsteps = 2\ncontext = 256\n[factors]\n'
            'system = ["gpu", "offload", "pim", "aqpim"]\nbatch = [1, 3]\n')
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


def test_analytic_sweep_equals_simulated_sweep(tmp_path, tiny):
    sweep = load_sweep(_sweep_file(tmp_path, tiny))
    run_sweep(sweep, tmp_path / "sim", jobs=1, quiet=True)
    s = run_analytic_sweep(sweep, tmp_path / "ana", jobs=1, chunk=3)
    assert (s.total, s.ran, s.failed) == (8, 8, 0)
    simulated = [json.loads(line) for line in (tmp_path / "sim" / RESULTS_JSONL).read_text().splitlines()]
    analytic = [json.loads(line) for line in (tmp_path / "ana" / RESULTS_JSONL).read_text().splitlines()]
    assert [r["key"] for r in simulated] == [r["key"] for r in analytic]
    for a, b in zip(analytic, simulated, strict=True):
        assert a["method"] == "analytic" and a["factors"] == b["factors"]
        assert compare_result(a["result"], b["result"])["ok"]
    header = (tmp_path / "ana" / RESULTS_CSV).read_text().splitlines()[0].split(",")
    assert "details.method" in header and "analytic_exact" in header


def test_pool_writes_chunks_in_point_order(tmp_path, tiny):
    """Chunks of one point over two workers finish in any order; the file is written in point order (a fresh
    folder is not reordered afterwards) and its CSV, made from the workers' columns in one pass, is the one
    rebuilt from the file in two."""
    sweep = load_sweep(_sweep_file(tmp_path, tiny))
    one = run_analytic_sweep(sweep, tmp_path / "one", jobs=1, chunk=1)
    two = run_analytic_sweep(sweep, tmp_path / "two", jobs=2, force_jobs=True, chunk=1)
    assert (one.ran, two.ran, two.jobs) == (8, 8, 2)
    lines = (tmp_path / "two" / RESULTS_JSONL).read_bytes()
    assert lines == (tmp_path / "one" / RESULTS_JSONL).read_bytes()
    assert [json.loads(line)["index"] for line in lines.splitlines()] == list(range(8))
    from sim.sweep import write_csv
    write_csv(tmp_path / "two" / RESULTS_JSONL, tmp_path / "rebuilt.csv", sweep.factor_names)
    assert (tmp_path / "two" / RESULTS_CSV).read_bytes() == (tmp_path / "rebuilt.csv").read_bytes()


def test_cli_end_to_end_resume_and_check(tmp_path, tiny, capsys):
    f, out = _sweep_file(tmp_path, tiny), tmp_path / "o"
    assert main(["sweep", f, "--analytic", "--out", str(out), "--jobs", "1", "--check-sample", "3"]) == 0
    text = capsys.readouterr().out
    assert "ran 8" in text and "check: 3 points re-simulated" in text and "passed" in text
    check = json.loads((out / "analytic_check.json").read_text())
    assert check["ok"] and check["sampled"] == 3 and check["max_rel_error_exact"] <= 1e-9
    first = (out / RESULTS_JSONL).read_bytes()
    # a torn last line is cut off and that point evaluated again; the file ends the same bytes
    (out / RESULTS_JSONL).write_bytes(first[:-40])
    assert main(["sweep", f, "--analytic", "--out", str(out), "--jobs", "1"]) == 0
    assert "ran 1, 7 already done" in capsys.readouterr().out
    assert (out / RESULTS_JSONL).read_bytes() == first
    # the same sweep in two processes gives the same bytes
    assert main(["sweep", f, "--analytic", "--out", str(tmp_path / "o2"), "--jobs", "2", "--force-jobs"]) == 0
    assert (tmp_path / "o2" / RESULTS_JSONL).read_bytes() == first
    # a simulated sweep does not resume an analytic folder
    assert main(["sweep", f, "--out", str(out), "--jobs", "1"]) == 2
    assert "holds an --analytic sweep" in capsys.readouterr().err


# --- the closed-form table (sweep --analytic --table, Evaluator.row) ---------------------------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variant=st.sampled_from(VARIANTS), batch=st.integers(1, 9), context=st.integers(1, 3000),
       steps=st.integers(1, 3), max_batch=st.one_of(st.none(), st.integers(2, 6)))
def test_table_row_equals_the_result(tiny, evaluator, variant, batch, context, steps, max_batch):
    """Every column of a table row is the whole Result's field of that name, bit for bit (fit_reasons joined),
    although the row's steps come from ``fixed_waves`` and its fit from ``System.fit``."""
    if variant.get("sub_batches", 1) > (max_batch or batch):
        max_batch = None
        batch = max(batch, variant["sub_batches"])
    cfg = make_config(model=tiny, batch=batch, context=context, steps=steps, max_batch=max_batch, **variant)
    full = evaluator.point_dict(cfg)
    row = evaluator.row(cfg)
    assert tuple(row) == TABLE_FIELDS
    for k, v in row.items():
        assert v == ("; ".join(full[k]) if k == "fit_reasons" else full[k]), (k, variant)
    assert compare_result(row, simulate(cfg).to_dict())["ok"]


@settings(max_examples=200, deadline=None)
@given(batch=st.integers(1, 40), context=st.integers(1, 50), steps=st.integers(1, 6), max_batch=st.integers(1, 12),
       budget=st.one_of(st.none(), st.integers(1, 400)))
def test_fixed_waves_are_the_batchers_steps(batch, context, steps, max_batch, budget):
    b = ContinuousBatcher(fixed_requests(batch, context, steps), max_batch)
    seen = []
    while not b.done:
        b.admit(0.0, budget)
        ctx = b.contexts()
        assert (ctx == ctx[0]).all()
        seen.append((int(ctx.size), int(ctx[0])))
        b.advance(0.0)
    assert list(fixed_waves(batch, context, steps, max_batch, budget)) == seen


def test_fit_is_capacity_without_details(tiny):
    """``System.fit``: the capacity report's location, bytes, fit and reasons, for every system (a spill, a
    budget, a format among them)."""
    from sim.analytic_sweep import Evaluator as Ev
    from sim.run import _capacity

    ev = Ev()
    fits = set()
    for model, batch, context in ((tiny, 4, 4000), ("llama-2-7b", 16, 200000), ("llama-2-7b", 16, 20000)):
        for variant in VARIANTS + [{"system": "pim", "channels": 2, "pim": "ddr5-dimm-pim"}]:
            cfg = make_config(model=model, batch=batch, context=context, steps=1, **variant)
            w = ev.walk(cfg)
            s = w.setup
            full = _capacity(s.system, s.model, w.peak)
            fit = s.system.fit(float((w.peak.kv_tokens + w.peak.n_seqs) * s.model.kv_bytes_per_token), w.peak)
            assert (fit.kv_location, fit.kv_bytes, fit.fits, fit.reasons) == \
                (full.kv_location, full.kv_bytes, full.fits, full.reasons), variant
            fits.add((fit.fits, fit.kv_location))
    assert {(True, "pim"), (False, "pim+host.dram"), (False, "gpu"), (True, "host.dram")} <= fits


def test_cli_table_resume_check_and_folders(tmp_path, tiny, capsys):
    f, out = _sweep_file(tmp_path, tiny), tmp_path / "t"
    assert main(["sweep", f, "--analytic", "--table", "--out", str(out), "--jobs", "1", "--check-sample", "4"]) == 0
    text = capsys.readouterr().out
    assert "ran 8" in text and "check: 4 points re-simulated" in text and "passed" in text
    records = [json.loads(line) for line in (out / RESULTS_JSONL).read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(8))
    assert all(r["method"] == "analytic-table" and tuple(r["row"]) == tuple(sorted(TABLE_FIELDS)) for r in records)
    header = (out / RESULTS_CSV).read_text().splitlines()[0].split(",")
    assert {"mean_step_latency_s", "tokens_per_s", "fits", "factor.system"} <= set(header)
    # the rows are those of a full analytic sweep
    assert main(["sweep", f, "--analytic", "--out", str(tmp_path / "full"), "--jobs", "1"]) == 0
    capsys.readouterr()
    full = [json.loads(line) for line in (tmp_path / "full" / RESULTS_JSONL).read_text().splitlines()]
    for r, g in zip(records, full, strict=True):
        assert all(v == ("; ".join(g["result"][k]) if k == "fit_reasons" else g["result"][k])
                   for k, v in r["row"].items())
    # resume after a torn line, the same bytes; two processes, the same bytes
    first = (out / RESULTS_JSONL).read_bytes()
    (out / RESULTS_JSONL).write_bytes(first[:-30])
    assert main(["sweep", f, "--analytic", "--table", "--out", str(out), "--jobs", "1"]) == 0
    assert "ran 1, 7 already done" in capsys.readouterr().out
    assert (out / RESULTS_JSONL).read_bytes() == first
    assert main(["sweep", f, "--analytic", "--table", "--out", str(tmp_path / "t2"), "--jobs", "2",
                 "--force-jobs"]) == 0
    assert (tmp_path / "t2" / RESULTS_JSONL).read_bytes() == first
    # the CSV of a fresh folder (columns gathered as the records were made) is the one rebuilt from the file
    assert (tmp_path / "t2" / RESULTS_CSV).read_bytes() == (out / RESULTS_CSV).read_bytes()
    # whole Results and table rows never share a folder, either way round; --table needs --analytic
    assert main(["sweep", f, "--analytic", "--out", str(out), "--jobs", "1"]) == 2
    assert "line 1 is an analytic table row of this sweep; --analytic writes its own folder" in capsys.readouterr().err
    assert main(["sweep", f, "--analytic", "--table", "--out", str(tmp_path / "full"), "--jobs", "1"]) == 2
    assert "is an analytic Result of this sweep; --analytic --table writes" in capsys.readouterr().err
    assert main(["sweep", f, "--table", "--out", str(tmp_path / "x")]) == 2
    assert "--table applies only with --analytic" in capsys.readouterr().err
    # the sweep and capacity figures read a table's rows as they read Results; a command that needs whole
    # Results says what the file holds
    for kind in ("sweep", "capacity"):
        assert main(["plot", kind, str(out / RESULTS_JSONL), "--out", str(tmp_path / f"{kind}.png")]) == 0
        assert (tmp_path / f"{kind}.png").stat().st_size > 0
    from sim.results import ResultsError, load_results
    with pytest.raises(ResultsError, match="closed-form table rows"):
        load_results(out / RESULTS_JSONL)


def test_a_points_numbers_do_not_depend_on_the_points_before_it(tiny):
    """PIM row costs interpolated from other points' rows could move a last digit: every point starts its memos
    afresh, so rows in forward order, reverse order and each point alone are the same bytes."""
    cfgs = [make_config(model=tiny, batch=b, context=c, steps=4, channels=ch, **v)
            for v in ({"system": "pim"}, {"system": "aqpim"}) for ch in (4, 8, 16)
            for b in (1, 2, 4) for c in (300, 600, 1200)]

    def rows(order):
        ev = Evaluator()
        return {i: json.dumps(ev.row(cfgs[i]), sort_keys=True) for i in order}

    forward = rows(range(len(cfgs)))
    assert forward == rows(reversed(range(len(cfgs))))
    assert all(json.dumps(Evaluator().row(cfgs[i]), sort_keys=True) == forward[i] for i in range(0, len(cfgs), 7))
