"""The golden set: configurations whose numbers must not change when the code is restructured.

    python3 scripts/golden.py            (re-run the set and write tests/golden/golden.json)
    python3 scripts/golden.py --check    (re-run and compare with the file; exit 1 on any difference)

The set covers every variant of the default `compare`, the points of the example sweeps, and the operating points
of the experiments' tables (offload communication share, capacity wall, system comparison, sensitivity). Each
entry keeps every step's latency, closed form and batch (the run's per-step rows, ``simulate(on_step=...)``, the
rows its step log would hold), bytes per link, energy per component and busy time per component (or, for a
configuration the simulator refuses with a one-line input error, that error); ``tests/test_golden.py`` re-runs a
sample and compares to 1e-9 relative. Regenerate the file only when
a change of numbers is intended, and say why in the commit message.

Configurations are flat mappings (the keys of a TOML run file) holding only options of their own system, so the
same file reads before and after a change of the configuration's internal shape.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.config import from_mapping  # noqa: E402
from sim.errors import INPUT_ERRORS  # noqa: E402
from sim.run import simulate  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "golden.json"
REL_TOL = 1e-9


def _compare_variants() -> list[dict]:
    scenario = {"context": 65536, "steps": 4, "trace_steps": 2}
    variants = [{"system": "offload"}, {"system": "offload", "prefetch": True},
                {"system": "offload", "cpu_attention": True},
                {"system": "offload", "cpu_attention": True, "cpu_kernel": "bandwidth"},
                {"system": "pim", "capacity_policy": "spill"},
                {"system": "pim", "capacity_policy": "limit"}, {"system": "aqpim"}, {"system": "gpu"}]
    return [{**scenario, **v} for v in variants]


def _example_sweeps() -> list[dict]:
    out = []
    for system, batch, context in itertools.product(("offload", "gpu", "pim", "aqpim"), (1, 4, 16, 64),
                                                    (4096, 16384, 65536, 131072)):
        out.append({"model": "llama-3.1-8b", "steps": 2, "system": system, "batch": batch, "context": context})
    for system, channels in itertools.product(("pim", "aqpim"), (4, 8, 16, 32, 64, 128, 160, 256)):
        out.append({"model": "llama-3.1-8b", "batch": 16, "context": 32768, "steps": 2, "system": system,
                    "channels": channels})
    variants = [{"system": "offload"}, {"system": "offload", "prefetch": True},
                {"system": "offload", "cpu_attention": True}, {"system": "pim", "capacity_policy": "spill"},
                {"system": "pim", "capacity_policy": "limit"}, {"system": "aqpim"}]
    for v, context in itertools.product(variants, (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)):
        out.append({"model": "llama-3.1-8b", "batch": 8, "steps": 2, "context": context, **v})
    # Machine files relative to the repository root, resolved in ``measure`` (the set is the same in any clone).
    links = ["examples/machines/a100-pcie3-ddr5.toml", "a100-pcie4-ddr5", "examples/machines/a100-pcie5-ddr5.toml",
             "examples/machines/a100-pcie6-ddr5.toml"]
    for hw, v, context in itertools.product(links, variants[:3], (4096, 32768)):
        out.append({"model": "llama-3.1-8b", "batch": 8, "steps": 2, "hardware": hw, "context": context, **v})
    return out


def _experiments() -> list[dict]:
    out = []
    for model, batch, context in itertools.product(("llama-2-7b", "llama-3-8b"), (1, 4, 16, 64),
                                                   (4096, 16384, 65536, 131072)):
        common = {"model": model, "batch": batch, "context": context, "steps": 2, "trace_steps": 0}
        out += [{**common, "system": "offload"}, {**common, "system": "offload", "prefetch": True},
                {**common, "system": "pim", "capacity_policy": "spill"},
                {**common, "system": "pim", "capacity_policy": "limit"}, {**common, "system": "aqpim"}]
    for point in ({"model": "llama-3-8b"}, {"model": "llama-2-7b"}):
        common = {**point, "batch": 16, "context": 32768, "steps": 2, "trace_steps": 0, "capacity_policy": "limit"}
        for aq in ([{"pq_m": m} for m in (8, 16, 32)] + [{"pq_k": k} for k in (16, 64, 256, 1024)]
                   + [{"lut_bytes": b} for b in (4096, 16384, 65536)]
                   + [{"sinks": 0, "recent": 0}, {"outliers": 4}, {"softmax": "near"}, {"softmax": "host"}]):
            out.append({**common, "system": "aqpim", **aq})
        for channels in (40, 80, 320, 640):
            out += [{**common, "system": "aqpim", "channels": channels},
                    {**common, "system": "pim", "channels": channels}]
        for extra in ({"softmax": "near"}, {"softmax": "host"}, {"placement": "head"}, {"placement": "token"},
                      {"sub_batches": 2}, {"link_chunks": 4}, {"pim": "ddr5-dimm-pim"}, {"pim": "gddr6-aim"},
                      {"pim": "hbm-pim-aquabolt"}, {"pim": "upmem"}):
            out.append({**common, "system": "pim", **extra})
    for model in ("mistral-7b", "opt-30b", "llama-2-70b"):
        common = {"model": model, "batch": 4, "context": 16384, "steps": 3}
        out += [{**common, "system": s} for s in ("offload", "pim", "aqpim", "gpu")]
        out.append({**common, "system": "offload", "cpu_attention": True})
    out.append({"system": "offload", "requests": 6, "output_tokens": 5, "arrival_rate_per_s": 50.0, "context": 4096,
                "max_batch": 4, "seed": 3})
    out.append({"system": "pim", "requests": 6, "output_tokens": 5, "arrival_rate_per_s": 50.0, "context": 8192,
                "max_batch": 4, "capacity_policy": "limit", "seed": 1})
    return out


def golden_configs() -> list[dict]:
    seen, out = set(), []
    for cfg in _compare_variants() + _example_sweeps() + _experiments():
        key = json.dumps(cfg, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def measure(cfg: dict) -> dict:
    cfg = dict(cfg)
    if str(cfg.get("hardware", "")).endswith(".toml"):
        cfg["hardware"] = str(ROOT / cfg["hardware"])
    steps = []
    try:
        r = simulate(from_mapping(cfg, where="golden"), on_step=steps.append)
    except INPUT_ERRORS as e:  # a configuration refused with a one-line error is an outcome too
        return {"error": str(e)}
    return {"step_latency_s": [s.latency_s for s in steps], "analytic_step_latency_s": [s.analytic_s for s in steps],
            "step_batch": [s.n_seqs for s in steps], "bytes_by_link": r.bytes_by_link, "energy_j": r.energy_j,
            "busy_s": r.busy_s, "kv_bytes": r.kv_bytes, "fits": r.fits}


def differences(want, got, path: str = "") -> list[str]:
    """Every place where ``got`` differs from ``want`` beyond REL_TOL (numbers) or at all (other values)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}.{k}: missing" for k in want if k not in got]
        out += [f"{path}.{k}: unexpected" for k in got if k not in want]
        for k in want:
            if k in got:
                out += differences(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [d for i, (a, b) in enumerate(zip(want, got, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(want, bool) or isinstance(got, bool) or not isinstance(want, int | float):
        return [] if want == got else [f"{path}: {got!r} != {want!r}"]
    if not isinstance(got, int | float) or not math.isclose(got, want, rel_tol=REL_TOL, abs_tol=1e-300):
        return [f"{path}: {got!r} != {want!r}"]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored file instead of writing it")
    args = ap.parse_args()
    configs = golden_configs()
    entries = [{"config": cfg, "measured": measure(cfg)} for cfg in configs]
    if args.check:
        stored = json.loads(GOLDEN.read_text())
        bad = 0
        for want, got in zip(stored, entries, strict=True):
            diff = differences(want["measured"], got["measured"])
            if diff:
                bad += 1
                print(f"{want['config']}: {diff[:3]}")
        print(f"{len(entries)} configurations, {bad} differ")
        return 1 if bad else 0
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(entries, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"wrote {GOLDEN}: {len(entries)} configurations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
