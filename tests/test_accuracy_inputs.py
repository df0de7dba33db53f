"""Every bad input of `aqpim-sim accuracy` is one line on stderr naming its flag or file, exit 2, no traceback.

The cases run through ``sim.cli.main`` as a user would. The activations files are small variants of one valid capture
(64 tokens, SmolLM2's shapes, one layer) written here; each breaks one thing. The checks run before any k-means, so
each case takes milliseconds; warnings are errors here, since a warning would be a second line on stderr.
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sim.cli import main
from workloads.activations import FORMAT_VERSION, bundled_path, load_activations
from workloads.errors import WorkloadError

TOKENS, QUERIES = 64, 4
NOT_CAPTURE = "not an activations file (.npz written by scripts/capture_activations.py)"


def _hf_config() -> dict:
    with np.load(bundled_path()) as z:
        return json.loads(str(z["meta"]))["hf_config"]


def _valid_arrays() -> dict:
    rng = np.random.default_rng(0)
    meta = {"format_version": FORMAT_VERSION, "hf_config": _hf_config(), "source": "gpl-3", "rope_theta": 1e5,
            "model_name": "SmolLM2-135M-Instruct"}
    return {"q": rng.standard_normal((1, QUERIES, 9, 64)).astype(np.float16),
            "q_pos": np.arange(TOKENS - QUERIES, TOKENS, dtype=np.int32),
            "k": rng.standard_normal((1, TOKENS, 3, 64)).astype(np.float16),
            "v": rng.standard_normal((1, TOKENS, 3, 64)).astype(np.float16),
            "layers": np.array([3], dtype=np.int32), "meta": np.array(json.dumps(meta))}


def _meta(**change) -> np.ndarray:
    meta = json.loads(str(_valid_arrays()["meta"]))
    meta.update(change)
    return np.array(json.dumps(meta))


def _with(**change):
    """A capture with some arrays replaced (None: left out)."""
    def make(path: Path):
        arrays = {**_valid_arrays(), **change}
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return make


def _poked(name, fn):
    """A capture with one array changed by ``fn``."""
    def make(path: Path):
        arrays = _valid_arrays()
        arrays[name] = fn(arrays[name])
        np.savez(path, **arrays)
    return make


def _cut(keep):
    def make(path: Path):
        _with()(path)
        data = path.read_bytes()
        path.write_bytes(data[:keep(len(data))])
    return make


def _text(path: Path):
    path.write_text("these are not activations\n")


def _npy(path: Path):
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 4)))


def _zip_of_text(path: Path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


def _folder(path: Path):
    path.mkdir()


def _nan(x):
    x = x.copy()
    x[0, 0, 0, 0] = np.nan
    return x


FILES = {
    "missing": (None, "activations file not found"),
    "folder": (_folder, "is a folder, not an activations file"),
    "text": (_text, NOT_CAPTURE),
    "truncated-half": (_cut(lambda n: n // 2), NOT_CAPTURE),
    "truncated-tail": (_cut(lambda n: n - 40), NOT_CAPTURE),
    "empty": (_cut(lambda n: 0), NOT_CAPTURE),
    "npy": (_npy, "holds one array"),
    "zip-of-text": (_zip_of_text, "missing arrays k, layers, meta, q, q_pos, v"),
    "no-k": (_with(k=None), "missing arrays k"),
    "no-meta": (_with(meta=None), "missing arrays meta"),
    "pickled-meta": (_with(meta=np.array([{"a": 1}], dtype=object)), "array 'meta' is unreadable"),
    "meta-not-json": (_with(meta=np.array("{nope")), "'meta' is not valid JSON"),
    "meta-a-list": (_with(meta=np.array("[1, 2]")), "must be a JSON object"),
    "meta-a-number": (_with(meta=np.array(3.0)), "'meta' must be one JSON string"),
    "format-version": (_with(meta=_meta(format_version=7)), "activations format 7, expected 1"),
    "no-hf-config": (_with(meta=_meta(hf_config=None)), "lacks 'hf_config'"),
    "hf-config-bad-value": (_with(meta=_meta(hf_config={**_hf_config(), "hidden_size": "wide"})), "'hidden_size' must be a whole number"),
    "hf-config-unknown-model": (_with(meta=_meta(hf_config={**_hf_config(), "model_type": "rnn"})),
                                "model_type 'rnn' is not supported"),
    "rope-theta-text": (_with(meta=_meta(rope_theta="big")), "'rope_theta' must be a finite number"),
    "source-not-text": (_with(meta=_meta(source=[1])), "'source' must be a string"),
    "k-3d": (_poked("k", lambda x: x[0]), "array 'k' must be (layers, tokens, kv_heads, head_dim)"),
    "k-no-tokens": (_with(k=np.zeros((1, 0, 3, 64), np.float16), v=np.zeros((1, 0, 3, 64), np.float16)),
                    "all non-zero"),
    "v-shorter": (_poked("v", lambda x: x[:, :10]), "array 'v' has shape (1, 10, 3, 64)"),
    "q-8-heads": (_poked("q", lambda x: x[:, :, :8]), "array 'q' must be"),
    "q-ints": (_poked("q", lambda x: x.astype(np.int32)), "array 'q' must hold floats, got int32"),
    "q-complex": (_poked("q", lambda x: x.astype(np.complex64)), "array 'q' must hold floats"),
    "q_pos-floats": (_poked("q_pos", lambda x: x.astype(np.float32)), "'q_pos' must hold integers"),
    "q_pos-too-few": (_poked("q_pos", lambda x: x[:2]), "'q_pos' must have shape (4,)"),
    "q_pos-decreasing": (_poked("q_pos", lambda x: x[::-1].copy()), "query positions ('q_pos') must increase"),
    "q_pos-beyond-tokens": (_poked("q_pos", lambda x: x + 100), "lie in 0..63"),
    "layers-out-of-model": (_with(layers=np.array([30], np.int32)), "distinct layer indices in 0..29"),
    "layers-wrong-count": (_with(layers=np.array([3, 4], np.int32)), "'layers' must have shape (1,)"),
    "heads-unlike-model": (_with(q=np.zeros((1, QUERIES, 4, 64), np.float16), k=np.zeros((1, TOKENS, 2, 64),
                                 np.float16), v=np.zeros((1, TOKENS, 2, 64), np.float16)),
                           "the model in meta has 3, 9"),
    "nan-in-q": (_poked("q", _nan), "array 'q' holds NaN or infinite values"),
    "inf-in-k": (_poked("k", lambda x: np.full_like(x, np.inf)), "array 'k' holds NaN or infinite values"),
    "v-beyond-float32": (_poked("v", lambda x: x.astype(np.float64) * 1e300), "array 'v' holds NaN or infinite"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("captures")
    _with()(folder / "valid.npz")
    for name, (make, _) in FILES.items():
        if make is not None:
            make(folder / f"{name}.npz")
    (folder / "a-file").write_text("in the way")
    return folder


def test_the_small_capture_is_valid_and_runs(files, capsys):
    acts = load_activations(files / "valid.npz")
    assert (acts.n_tokens, acts.n_kv_heads, acts.group, acts.layers) == (TOKENS, 3, 3, (3,))
    assert main(["accuracy", "--fixture", str(files / "valid.npz"), "--settings", "fp16", "int:bits=4",
                 "--queries", "4", "--topk", "8"]) == 0
    assert "int:bits=4" in capsys.readouterr().out


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(["accuracy", *argv])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_line(code, err, expect, prefix="aqpim-sim: error:"):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert expect in lines[0], lines[0]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", FILES)
def test_a_bad_activations_file_is_one_line_naming_it(name, files, capsys):
    path = files / f"{name}.npz"
    code, out, err = _run(["--fixture", str(path), "--settings", "fp16"], capsys)
    _assert_one_line(code, err, FILES[name][1])
    assert str(path) in err and out == ""


LONG = "1" + "0" * 20  # above any int64
REAL = []  # the shipped capture: 2048 tokens, queries at 1920..2047, layers 3, 15, 27
SYN = ["--data", "synthetic"]
FLAGS = [
    # numbers: ranges
    ("context-0", ["--context", "0"], "--context must be at least 2"),
    ("context-negative", ["--context", "-5"], "--context must be at least 2"),
    ("context-1", ["--context", "1"], "--context must be at least 2"),
    ("context-above-capture", ["--context", "3000"], "--context 3000 exceeds the 2048 tokens captured in"),
    ("context-below-queries", ["--context", "512"], "--context 512: "),
    ("context-above-synthetic", SYN + ["--context", "100000"], "--context 100000: synthetic data is generated up to"),
    ("context-huge", SYN + ["--context", LONG], f"--context {LONG}"),
    ("queries-0", ["--queries", "0"], "--queries must be at least 1"),
    ("queries-negative", ["--queries", "-3"], "--queries must be at least 1"),
    ("queries-above-captured", ["--queries", "500"], "--queries 500: "),
    ("queries-not-below-context", SYN + ["--context", "256", "--queries", "256"],
     "--queries 256 must be below the context of 256 tokens (synthetic data)"),
    ("queries-default-not-below-context", SYN + ["--context", "100"], "--queries 128 must be below the context"),
    ("queries-x-context-too-big", SYN + ["--context", "65536", "--queries", "1000"], "lower --queries or --context"),
    ("prefill-0", ["--prefill", "0"], "--prefill must be at least 1"),
    ("prefill-negative", ["--prefill", "-1"], "--prefill must be at least 1"),
    ("prefill-beyond-context", ["--prefill", "5000"], "--prefill 5000 exceeds the context of 2048 tokens"),
    ("prefill-beyond-synthetic-context", SYN + ["--context", "512", "--prefill", "513"],
     "--prefill 513 exceeds the context of 512 tokens (synthetic data)"),
    ("iters-0", ["--iters", "0"], "--iters must lie in 1..1000"),
    ("iters-1001", ["--iters", "1001"], "--iters must lie in 1..1000"),
    ("iters-huge", ["--iters", LONG], "--iters must lie in 1..1000"),
    ("topk-0", ["--topk", "0"], "--topk must be at least 1"),
    ("topk-negative", ["--topk", "-32"], "--topk must be at least 1"),
    ("topk-beyond-context", ["--topk", "5000"], "--topk 5000 exceeds the context of 2048 tokens"),
    ("ppl-scored-negative", ["--ppl-scored", "-5"], "--ppl-scored must be at least 1"),
    ("ppl-scored-negative-with-ppl", ["--ppl", "--ppl-scored", "-5"], "--ppl-scored must be at least 1"),
    ("ppl-scored-0", ["--ppl", "--ppl-scored", "0"], "--ppl-scored must be at least 1"),
    ("ppl-scored-without-ppl", ["--ppl-scored", "100"], "--ppl-scored needs --ppl"),
    ("ppl-scored-all-tokens", ["--ppl", "--ppl-scored", "2047"], "--ppl-scored 2047 must be at most 2046"),
    ("ppl-scored-beyond-context", ["--ppl", "--ppl-scored", "5000", "--context", "2000"],
     "--ppl-scored 5000 must be at most 1998 (context of 2000 tokens"),
    ("ppl-pq-too-few-training-tokens", ["--ppl", "--ppl-scored", "2000", "--settings", "pq:m=16,k=256"],
     "perplexity training tokens"),
    ("ppl-with-refresh", ["--ppl", "--settings", "pq:m=16,k=16,refresh=256"], "--ppl) with codebook refresh"),
    ("worst-negative", ["--worst", "-1"], "--worst must lie in 0..100"),
    ("worst-101", ["--worst", "101"], "--worst must lie in 0..100"),
    ("seed-negative", ["--seed", "-1"], "--seed must lie in 0..2**63-1"),
    ("seed-2-63", ["--seed", str(2**63)], "--seed must lie in 0..2**63-1"),
    # flags that need real data
    ("fixture-with-synthetic", SYN + ["--fixture", "x.npz"], "--fixture applies to real data"),
    ("layers-with-synthetic", SYN + ["--layers", "3"], "--layers applies to real data"),
    ("ppl-with-synthetic", SYN + ["--ppl"], "--ppl applies to real data"),
    # --settings
    ("settings-missing-k", ["--settings", "pq:m=16"], "--settings pq:m=16: missing k"),
    ("settings-k-not-power-of-two", ["--settings", "pq:m=16,k=100"], "--settings pq:m=16,k=100: pq format: k must "
                                                                      "be a power of two"),
    ("settings-m-not-dividing-head", ["--settings", "pq:m=7,k=16"], "--settings: pq format pq:m=7,k=16: head_dim 64"),
    ("settings-unknown-kind", ["--settings", "foo"], "--settings foo: unknown kind 'foo'"),
    ("settings-misspelt-option", ["--settings", "pq:m=16,kk=256"], "did you mean 'k'"),
    ("settings-int-bits-9", ["--settings", "int:bits=9"], "--settings int:bits=9: int format: bits must be an "
                                                          "integer in 1..8"),
    ("settings-int-group-0", ["--settings", "int:bits=4,group=0"], "group must be an integer >= 1"),
    ("settings-negative-sinks", ["--settings", "pq:m=16,k=256,sinks=-1"], "sinks must be an integer >= 0"),
    ("settings-huge-recent", ["--settings", f"int:bits=2,recent={LONG}"], "recent must be at most"),
    ("settings-huge-refresh", ["--settings", f"pq:m=8,k=16,refresh={LONG}"], "refresh must be at most"),
    ("settings-bad-bool", ["--settings", "pq:m=16,k=256,scale_keys=maybe"], "scale_keys must be true or false"),
    ("settings-not-an-integer", ["--settings", "pq:m=16,k=2.5"], "k must be an integer"),
    ("settings-empty", ["--settings", ""], "unknown kind ''"),
    ("settings-twice", ["--settings", "fp16", "fp16"], "--settings: 'fp16' given twice"),
    ("settings-twice-spelt-apart", ["--settings", "pq:m=16,k=256", "pq:k=256,m=16"], "the same format"),
    ("settings-too-few-training-tokens", ["--settings", "pq:m=16,k=4096"], "training tokens"),
    ("settings-too-much-kmeans", SYN + ["--context", "65536", "--settings", "pq:m=64,k=16384"],
     "distances per k-means step"),
    # --layers
    ("layers-not-captured", ["--layers", "5"], "--layers: layer 5 not captured in"),
    ("layers-negative", ["--layers", "-1"], "--layers: layer -1 not captured"),
    ("layers-text", ["--layers", "3,abc"], "--layers takes comma-separated integers"),
    ("layers-twice", ["--layers", "3,3"], "--layers: layer 3 given twice"),
    ("layers-empty", ["--layers", ""], "--layers takes comma-separated integers"),
    ("layers-empty-item", ["--layers", "3,,15"], "--layers takes comma-separated integers"),
    ("layers-fraction", ["--layers", "3.5"], "--layers takes comma-separated integers"),
]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("argv, expect", [pytest.param(a, e, id=i) for i, a, e in FLAGS])
def test_a_bad_flag_is_one_line_naming_it(argv, expect, capsys):
    code, out, err = _run(argv, capsys)
    _assert_one_line(code, err, expect)
    assert out == ""


# Usage errors are argparse's, reported by sim.cli's parser as one line prefixed with the subcommand's name
# (the top-level parser's for an unknown flag).
USAGE = [
    ("iters-text", ["--iters", "abc"], "argument --iters: invalid int value: 'abc'"),
    ("context-fraction", ["--context", "1.5"], "argument --context: invalid int value: '1.5'"),
    ("queries-empty", ["--queries", ""], "argument --queries: invalid int value: ''"),
    ("seed-text", ["--seed", "zero"], "argument --seed: invalid int value"),
    ("data-unknown", ["--data", "imaginary"], "argument --data: invalid choice"),
    ("settings-none", ["--settings"], "argument --settings: expected at least one argument"),
    ("flag-unknown", ["--contxt", "10"], "unrecognized arguments: --contxt"),
]


@pytest.mark.parametrize("argv, expect", [pytest.param(a, e, id=i) for i, a, e in USAGE])
def test_a_usage_error_is_one_line_naming_the_flag(argv, expect, capsys):
    code, out, err = _run(argv, capsys)
    _assert_one_line(code, err, expect, prefix=("aqpim-sim accuracy: error:", "aqpim-sim: error:"))


def test_there_are_at_least_forty_bad_inputs():
    assert len(FILES) + len(FLAGS) + len(USAGE) >= 40 and len(FLAGS) >= 40


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("where, expect", [
    ("folder", "it is a folder"),
    ("under-a-file", "a-file is a file, not a folder"),
    ("empty-name", "cannot write .: it is a folder"),
])
def test_an_unwritable_json_out_is_one_line_before_any_work(where, expect, files, capsys):
    target = {"folder": str(files), "under-a-file": str(files / "a-file" / "acc.json"), "empty-name": ""}[where]
    code, out, err = _run(["--json-out", target], capsys)
    _assert_one_line(code, err, expect)
    assert err.startswith("aqpim-sim: error: cannot write") and out == ""


def test_a_json_out_that_fails_at_the_write_is_one_line_after_the_table(files, capsys, monkeypatch):
    import sim.commands.accuracy as cmd

    monkeypatch.setattr(cmd, "check_output", lambda path: None)  # as if the folder vanished during the run
    target = files / "a-file" / "acc.json"
    code, out, err = _run(SYN + ["--context", "64", "--queries", "4", "--iters", "1", "--topk", "4",
                                 "--settings", "fp16", "--json-out", str(target)], capsys)
    _assert_one_line(code, err, f"cannot write {target}: {files / 'a-file'} is a file, not a folder")
    assert "fp16" in out


def test_the_command_keeps_no_atomic_writer_of_its_own():
    import sim.commands.accuracy as cmd

    assert not hasattr(cmd, "_write_json_atomic") and cmd.write_text_atomic.__module__ == "sim.io"


def test_ppl_without_the_real_extra_is_one_line(capsys, monkeypatch):
    import workloads.perplexity as px

    monkeypatch.setattr(px, "have_torch_stack", lambda: False)
    code, out, err = _run(["--ppl", "--settings", "fp16"], capsys)
    _assert_one_line(code, err, "--ppl needs the optional 'real' extra")


def test_the_loader_raises_workload_errors_only(files):
    for name in FILES:
        with pytest.raises(WorkloadError):
            load_activations(files / f"{name}.npz")
