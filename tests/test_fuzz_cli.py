"""A property-based fuzzer of the CLI: random flags and values for every subcommand, and damaged input files.

Whatever it is given, ``aqpim-sim`` either succeeds (exit 0, every number it wrote finite) or refuses with one
line (exit 2): never a traceback, a NaN or inf in a result, or a hang (each case has a time limit). Generated
values mix valid ones (kept small, so that accepted cases run in a fraction of a second) with the kinds of bad
value users type: negatives, zero, huge integers, NaN, inf, words, empty strings, paths to damaged files.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

from corpus import LLAMA, MACHINE, PIM, Case, run_case  # tests/corpus.py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import SHARED
from sim.options import flag_of, specs
from sim.systems import SYSTEMS

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 120)), deadline=None, suppress_health_check=list(HealthCheck))
SUBCOMMANDS = ("run", "explain", "compare")
# Valid values are kept small so that an accepted case is cheap to simulate.
SMALL_INT = {"batch": (1, 8), "context": (1, 8192), "steps": (1, 2), "requests": (1, 6), "output_tokens": (1, 3),
             "max_batch": (1, 8), "trace_steps": (0, 2), "channels": (1, 256), "sub_batches": (1, 2),
             "link_chunks": (1, 3), "trace_channels": (0, 4), "pq_m": (1, 32), "pq_k": (2, 512), "sinks": (0, 16),
             "recent": (0, 256), "outliers": (0, 8), "lut_bytes": (256, 65536), "kmeans_iters": (1, 20),
             "seed": (0, 1000)}
JUNK = ["", "abc", "-1", "0", "1e400", "nan", "inf", "-inf", "1.5", "99999999999999999999999", "\u00e9", "--", "0x10"]
TEXT = {"model": ["llama-2-7b", "llama-3.1-8b", "mistral-7b", "opt-30b", "lama", "{d}/config.json", "{d}/bad.json"],
        "hardware": ["a100-pcie4-ddr5", "h100-pcie5-ddr5", "a100", "{d}/m.toml", "{d}/bad.toml"],
        "pim": ["attacc-hbm3", "upmem", "gddr6-aim", "ddr5-dimm-pim", "attac", "{d}/p.toml", "{d}/bad.toml"],
        "trace": ["{d}/t.csv", "{d}/t.jsonl", "{d}/bad.csv", "{d}/none.csv"],
        "kv_format": ["fp16", "int4", "int8", "int2", "int:bits=3,group=16", "pq:m=8,k=256", "int9", "x"],
        "system": list(SYSTEMS) + ["pimm", ""]}
FILES = {"config.json": LLAMA, "bad.json": "{\"model_type\": \"llama\", ", "m.toml": MACHINE, "p.toml": PIM,
         "bad.toml": "[gpu\n", "t.csv": "arrival_s,prompt_tokens,output_tokens\n0,100,2\n0.001,200,1\n",
         "t.jsonl": '{"arrival_s": 0, "prompt_tokens": 50, "output_tokens": 2}\n',
         "bad.csv": "arrival_s,prompt_tokens,output_tokens\n0,1e9,x\n"}


def _flags() -> dict[str, tuple[str, type, tuple]]:
    """key -> (flag, base type, choices) for every shared setting and system option."""
    out = {}
    for key, (base, _, _, spec) in SHARED.items():
        out[key] = (flag_of(key, spec), base, spec.choices)
    for cls in SYSTEMS.values():
        for key, (base, _, _, spec) in specs(cls.Options).items():
            out.setdefault(key, (flag_of(key, spec), base, spec.choices))
    out.pop("allow_large")
    return out


FLAGS = _flags()


@st.composite
def value_for(draw, key: str) -> list[str]:
    flag, base, choices = FLAGS[key]
    if base is bool:
        return [draw(st.sampled_from([flag, "--no-" + flag[2:]]))]
    if draw(st.integers(0, 3)) == 0:
        return [flag, draw(st.sampled_from(JUNK))]
    if key in TEXT:
        return [flag, draw(st.sampled_from(TEXT[key]))]
    if choices:
        return [flag, draw(st.sampled_from(list(choices) + ["x"]))]
    if base is float:
        return [flag, repr(draw(st.floats(0, 50)))]
    lo, hi = SMALL_INT.get(key, (0, 100))
    return [flag, str(draw(st.integers(lo - 1, hi)))]


@st.composite
def command_lines(draw) -> list[str]:
    sub = draw(st.sampled_from(SUBCOMMANDS))
    argv = [sub, "--steps", "1", "--batch", "2", "--context", "2048"]  # defaults kept cheap; draws may override
    for key in draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=6, unique=True)):
        argv += draw(value_for(key))
    if sub == "run":
        argv += ["--json-out", "{d}/r.json"]
    elif sub == "compare":
        argv += ["--variants", draw(st.sampled_from(["offload", "pim+limit", "aqpim", "gpu", "pim+int4"])),
                 "--out", "{d}/c"]
    return argv


def _finite(obj, path="result") -> list[str]:
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _finite(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _finite(v, f"{path}[{i}]")]
    return []


def _check(argv: list[str], files: dict, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    outcome, line = run_case(Case("fuzz", tuple(argv), files), folder)
    assert outcome in ("error", "warning") or (outcome == "nonsense" and line.startswith("exit 0")), \
        f"{argv}: {outcome}: {line}"
    for name in ("r.json", "c/results.json"):
        p = folder / name
        if p.exists():
            bad = _finite(json.loads(p.read_text()))
            assert not bad, f"{argv}: non-finite {bad[:3]}"


@FUZZ
@given(argv=command_lines())
def test_random_command_lines(argv, tmp_path_factory):
    _check(argv, FILES, tmp_path_factory)


@st.composite
def damaged(draw, text: str) -> bytes:
    """A file's text with a few random edits (characters deleted, replaced, inserted, or raw bytes)."""
    data = bytearray(text.encode())
    rnd = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 6))):
        i = rnd.randrange(len(data) + 1)
        kind = rnd.randrange(4)
        if kind == 0 and i < len(data):
            del data[i]
        elif kind == 1 and i < len(data):
            data[i] = rnd.randrange(256)
        elif kind == 2:
            data[i:i] = rnd.choice([b"=", b"[", b"}", b",", b"\"", b"\n", b"-", b"9999999999999999999999", b"nan",
                                    b"inf", b"\xff", b"\x00", b" = 1"])
        else:
            data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
    return bytes(data)


TARGETS = {
    "config.json": (LLAMA, ["run", "--model", "{d}/x", "--steps", "1", "--batch", "1", "--context", "512"]),
    "m.toml": (MACHINE, ["run", "--hardware", "{d}/x", "--steps", "1", "--batch", "1", "--context", "512"]),
    "p.toml": (PIM, ["run", "--system", "pim", "--pim", "{d}/x", "--steps", "1", "--batch", "1", "--context", "512"]),
    "t.csv": (FILES["t.csv"], ["run", "--trace", "{d}/x", "--steps", "2"]),
    "t.jsonl": (FILES["t.jsonl"], ["run", "--trace", "{d}/x", "--steps", "2"]),
    "r.toml": ('system = "aqpim"\nmodel = "llama-2-7b"\nbatch = 2\ncontext = 4096\nsteps = 1\npq_m = 16\n',
               ["run", "{d}/x"]),
    "s.toml": ('[base]\nbatch = 1\nsteps = 1\ncontext = 1024\n[factors]\nsystem = ["offload", "pim"]\n'
               'context = [1024, 2048]\n', ["sweep", "{d}/x", "--dry-run"]),
}


@FUZZ
@given(name=st.sampled_from(sorted(TARGETS)), data=st.data())
def test_damaged_input_files(name, data, tmp_path_factory):
    text, argv = TARGETS[name]
    content = data.draw(damaged(text))
    suffix = Path(name).suffix
    _check([a.replace("{d}/x", "{d}/x" + suffix) for a in argv], {"x" + suffix: content}, tmp_path_factory)


if __name__ == "__main__":  # python3 tests/test_fuzz_cli.py: one random command line, printed
    print(command_lines().example(), file=sys.stderr)
