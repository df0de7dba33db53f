"""The golden set: the numbers of every compare variant, example sweep point and experiment operating point stay
what they were when ``scripts/golden.py`` last wrote them (to 1e-9 relative).

A failure here means a change moved results. If that was intended, regenerate with ``python3 scripts/golden.py``
and give the reason in the commit message.
"""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("golden_script", ROOT / "scripts" / "golden.py")
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)


def _here(config: dict) -> dict:
    """Stored example paths name the checkout that wrote the file; use this checkout's copies."""
    return {k: str(ROOT / v[v.rindex("/examples/") + 1:]) if isinstance(v, str) and "/examples/" in v else v
            for k, v in config.items()}


STORED = [{**entry, "config": _here(entry["config"])} for entry in json.loads(golden.GOLDEN.read_text())]


def test_the_set_is_the_scripts_set():
    assert [e["config"] for e in STORED] == golden.golden_configs()


@pytest.mark.parametrize("chunk", range(8))
def test_numbers_unchanged(chunk):
    bad = []
    for entry in STORED[chunk::8]:
        diff = golden.differences(entry["measured"], golden.measure(entry["config"]))
        if diff:
            bad.append((entry["config"], diff[:3]))
    assert not bad, bad[:5]


def test_differences_catches_a_change():
    want = {"a": [1.0, 2.0], "b": "x"}
    assert golden.differences(want, {"a": [1.0, 2.0], "b": "x"}) == []
    assert golden.differences(want, {"a": [1.0, 2.0 * (1 + 1e-8)], "b": "x"})
    assert golden.differences(want, {"a": [1.0], "b": "x"})
    assert golden.differences(want, {"a": [1.0, 2.0], "b": "y"})
