"""The explorer's handlers in-process (no browser): the schema lists every option, the closed form it shows is the
one a simulation reports, bad input is a 400 with the one-line error and the server keeps serving."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from sim.config import SHARED, from_mapping
from sim.explore import api
from sim.explore.server import App, make_server
from sim.options import specs
from sim.run import simulate
from sim.systems import SYSTEMS


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return App(str(tmp_path_factory.mktemp("explore")))


def call(app, path, state=None, method="POST"):
    status, kind, data = app.dispatch(method, path, json.dumps(state or {}).encode())
    assert kind.startswith("application/json")
    return status, json.loads(data)


def test_schema_lists_every_option(app):
    status, schema = call(app, "/api/schema", method="GET")
    assert status == 200
    shown = {r["key"] for r in schema["shared"]}
    assert shown == set(SHARED) - set(api.HIDDEN_SHARED)
    options = {r["key"]: r for r in schema["options"]}
    for name, cls in SYSTEMS.items():
        for key, (base, _, default, spec) in specs(cls.Options).items():
            row = options[key]
            assert name in row["systems"]
            assert row["help"] == spec.help and row["unit"] == spec.unit and row["type"] == base.__name__
            assert row["declared_default"] == default
    assert options["capacity_policy"]["choices"] == ["spill", "limit"]
    assert {v["label"] for v in schema["variants"]} >= set(api.DEFAULT_VARIANTS)
    assert "llama-3.1-8b" in schema["presets"]["model"]


def test_estimate_equals_the_simulations_closed_form(app):
    state = {"batch": "4", "context": "8192", "steps": "2", "channels": "320",
             "variants": "offload+cpu-attention+bandwidth,pim,pim+limit,aqpim,gpu"}
    status, est = call(app, "/api/estimate", state)
    assert status == 200
    table = api._variant_table()
    for row in est["rows"]:
        system, opts = table[row["label"]]
        settings = {"batch": 4, "context": 8192, "steps": 2, **opts, "system": system}
        if system in ("pim", "aqpim"):
            settings["channels"] = 320
        result = simulate(from_mapping(settings))
        assert row["step_latency_s"] == pytest.approx(result.analytic_mean_step_latency_s, rel=1e-12)
        assert row["fits"] == result.fits
        assert row["command"].startswith(f"aqpim-sim run --system {system}")


def test_run_returns_what_the_page_draws(app):
    status, out = call(app, "/api/run", {"batch": "2", "context": "4096", "variants": "pim,aqpim"})
    assert status == 200
    pim, aqpim = out["rows"]
    assert pim["step_latency_s"] > 0 and pim["timeline"]["lanes"] and pim["timeline"]["spans"]
    assert "compute" in pim["breakdown_s"] and pim["energy_j"]
    # the measured accuracy at aqpim's geometry, on the tuned and on the held-out layers; FP16 is exact
    assert "tuned layers cos" in aqpim["accuracy"] and "held-out layers cos" in aqpim["accuracy"]
    assert pim["accuracy"].startswith("exact")
    assert aqpim["explain"].startswith("aqpim | llama-3.1-8b")


@pytest.mark.parametrize("state, message", [
    ({"batch": "-3"}, "page: batch must be a positive integer, got -3"),
    ({"context": "abc"}, "page: context must be an integer, got 'abc'"),
    ({"model": "llama-9"}, "page: unknown model preset 'llama-9'"),
    ({"hardware": "/etc/passwd"}, "page: unknown machine preset '/etc/passwd'"),
    ({"pim": "../x.toml"}, "page: unknown PIM device preset"),
    ({"steps": "9"}, "page: steps must be at most 8 in the explorer"),
    ({"variants": "pim,foo"}, "page: unknown variant 'foo'"),
    ({"frobnicate": "1"}, "page: unknown setting 'frobnicate'"),
    ({"trace": "x.csv"}, "page: 'trace' is not a setting of the explorer"),
    ({"pcie_gbps": "-1"}, "page: pcie_gbps must be a number of GB/s"),
    ({"model_json": "{bad"}, "uploaded config.json is not JSON"),
    ({"model_json": '{"model_type": "llama"}'}, "uploaded config.json: "),
    ({"capacity_policy": "maybe"}, "page: capacity_policy must be one of spill, limit"),
])
def test_bad_input_is_a_400_with_the_message(app, state, message):
    status, out = call(app, "/api/estimate", state)
    assert status == 400
    assert out["error"].startswith(message), out["error"]
    assert "\n" not in out["error"] and str(app.workspace.folder) not in out["error"]


def test_malformed_bodies_and_paths(app):
    assert app.dispatch("POST", "/api/estimate", b"{nope")[0] == 400
    assert app.dispatch("POST", "/api/estimate", b"[1, 2]")[0] == 400
    assert app.dispatch("GET", "/api/nothing")[0] == 404
    assert app.dispatch("GET", "/")[0] == 200
    status, _, data = app.dispatch("GET", "/api/estimate?batch=-1")
    assert status == 400 and b"positive integer" in data


def test_uploaded_model_and_pcie_stay_in_the_temporary_folder(app, tmp_path):
    text = api.model_presets.PRESETS.resolve("llama-2-7b").read_text()
    status, out = call(app, "/api/estimate", {"model_json": text, "pcie_gbps": "100", "variants": "offload,gpu"})
    assert status == 200, out
    files = sorted(p.name for p in app.workspace.folder.iterdir())
    assert any(f.startswith("model-") for f in files) and any(f.startswith("machine-") for f in files)
    assert "--hardware a100-pcie4-ddr5-pcie100.toml" in out["rows"][0]["command"]
    assert "--model config.json" in out["rows"][0]["command"]
    assert set(out["files"]) == {"config.json", "a100-pcie4-ddr5-pcie100.toml"}
    # a faster link makes the offload step shorter
    _, slow = call(app, "/api/estimate", {"model_json": text, "variants": "offload"})
    assert out["rows"][0]["step_latency_s"] < slow["rows"][0]["step_latency_s"]


def test_sweep_marks_where_the_winner_changes(app):
    status, sw = call(app, "/api/sweep", {"variants": "pim,aqpim", "sweep_x": "context", "sweep_from": "512",
                                          "sweep_to": "65536", "sweep_points": "8"})
    assert status == 200
    assert len(sw["values"]) == 8 and sw["changes"], sw["winners"]
    assert sw["winners"][0] == "pim" and sw["winners"][-1] == "aqpim"
    status, sw = call(app, "/api/sweep", {"variants": "aqpim", "sweep_x": "pq_m", "sweep_from": "2",
                                          "sweep_to": "8", "sweep_points": "7", "sweep_scale": "linear"})
    assert status == 200 and sw["series"]["aqpim"][1] is None and "not divisible" in sw["notes"]["aqpim"]
    status, out = call(app, "/api/sweep", {"sweep_points": "500"})
    assert status == 400 and "sweep_points" in out["error"]


def test_real_server_keeps_serving_after_errors(tmp_path):
    server = make_server(0, str(tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert server.server_address[0] == "127.0.0.1"
        big = urllib.request.Request(base + "/api/estimate", data=b" " * (api.LIMITS["body_bytes"] + 1))
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big, timeout=10)
        assert e.value.code == 413
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/api/estimate?batch=0", timeout=10)
        assert e.value.code == 400 and "positive integer" in json.loads(e.value.read())["error"]
        with urllib.request.urlopen(base + "/api/estimate?variants=gpu", timeout=30) as r:
            assert json.loads(r.read())["rows"][0]["label"] == "gpu"
        with urllib.request.urlopen(base + "/app.js", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/javascript") and b"api/schema" in r.read()
    finally:
        server.shutdown()
        server.server_close()
