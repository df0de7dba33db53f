"""The shipped accuracy table: what each KV format loses in attention, measured once, looked up by the simulator.

    OMP_NUM_THREADS=1 python3 scripts/accuracy_table.py     (writes workloads/presets/accuracy.json)

Runs the protocol of ``aqpim-sim accuracy`` (``workloads.accuracy.evaluate`` with its default ``EvalConfig``: the
last 128 positions are the decode queries, codebooks trained on the prefill before them, 20 k-means iterations,
seed 0) on the SmolLM2-135M capture shipped in ``workloads/data`` (real K/V, head_dim 64) and on the command's synthetic Gaussian data,
for the formats below. Each entry stores the format's canonical text, its geometry (PQ: sub-vector dimension
head_dim/m and K; INT-k: bits and group; the data's head_dim), its other options, the metrics, the data it was
measured on and the command that regenerates it. ``workloads.kvformats.accuracy_entry`` matches a simulated format
to an entry by geometry (docs/accuracy.md, "Accuracy in the simulator's results").

Run by hand, not by the tests (a few minutes on one core); ``--ppl`` adds SmolLM2 perplexity (needs the optional
"real" extra, about 10 more minutes per 6 formats).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.commands.accuracy import FIXTURE, SYNTHETIC_CONTEXT, synthetic_data  # noqa: E402
from sim.io import write_text_atomic  # noqa: E402
from workloads.accuracy import EvalConfig, evaluate, format_table, measure_perplexity  # noqa: E402
from workloads.activations import Activations, load_activations  # noqa: E402
from workloads.kvformats import (  # noqa: E402
    ACCURACY_TABLE,
    ACCURACY_TABLE_VERSION,
    IntSettings,
    KvFormat,
    PqSettings,
    parse_format,
)

WINDOW = "sinks=4,recent=128"
FORMATS = (
    "fp16",
    "int:bits=8", f"int:bits=8,{WINDOW}",
    "int:bits=4", f"int:bits=4,{WINDOW}",
    "int:bits=2", f"int:bits=2,{WINDOW}",
    # K=256 at sub-vector dims 4 (m=16 on head_dim 64) and 8 (m=8): LLaMA's head_dim 128 with m=32 / m=16
    "pq:m=16,k=256", f"pq:m=16,k=256,{WINDOW}", f"pq:m=16,k=256,{WINDOW},outliers=4",
    "pq:m=8,k=256", f"pq:m=8,k=256,{WINDOW}", f"pq:m=8,k=256,{WINDOW},outliers=4",
    # K=16 at sub-vector dims 2 (m=32) and 4 (m=16)
    "pq:m=32,k=16", f"pq:m=32,k=16,{WINDOW}",
    "pq:m=16,k=16", f"pq:m=16,k=16,{WINDOW}",
)
METRICS = ("out_cos_mean", "out_cos_min", "key_rel_err", "value_rel_err", "score_rmse", "topk_overlap",
           "bits_per_element", "code_bits_per_element", "codebook_bits_per_element", "compression", "heldout_frac",
           "ppl", "ppl_fp16")
DIGITS = 6  # decimals kept in the file (the metrics are averages over a few thousand queries)
FIXTURE_IN_PACKAGE = f"workloads/data/{FIXTURE.name}"  # an entry's data file, wherever the package is installed


def geometry(fmt: KvFormat, head_dim: int) -> dict:
    """What the lookup carries over by, as stored: PQ sub-vector dimension and K, INT bits and group."""
    g: dict = {"head_dim": head_dim}
    if isinstance(fmt, PqSettings):
        g.update(sub_dim=head_dim // fmt.m, k=fmt.k)
    elif isinstance(fmt, IntSettings):
        g.update(bits=fmt.bits, group=fmt.group)
    return g


def options(fmt: KvFormat) -> dict:
    """The format's options that are not geometry (window, outliers, ...), all of them, defaults included."""
    geo = {"m", "k", "bits", "group"}
    return {f.name: getattr(fmt, f.name) for f in fields(fmt) if f.name not in geo}


def data_description(acts: Activations, data: str, cfg: EvalConfig, fixture: str | None) -> dict:
    nq = min(cfg.n_queries, len(acts.q_pos))
    return {"kind": data, "model": acts.model.name, "text": acts.source, "file": fixture, "context": acts.n_tokens,
            "layers": list(acts.layers), "kv_heads": acts.n_kv_heads, "query_heads_per_kv_head": acts.group,
            "queries": nq, "prefill": acts.n_tokens - nq if cfg.prefill is None else cfg.prefill}


def table_rows(acts: Activations, formats: list[KvFormat], cfg: EvalConfig, data: str, command: str,
               fixture: str | None = None, ppl: dict | None = None) -> list[dict]:
    """Evaluate ``formats`` on ``acts`` and turn each result row into a table entry (``ppl``: {name: (ppl, fp16)})."""
    described = data_description(acts, data, cfg, fixture)
    entries = []
    for fmt, row in zip(formats, evaluate(acts, formats, cfg, data=data), strict=True):
        assert row["setting"] == fmt.name
        row = {**row, "ppl": None, "ppl_fp16": None}
        if ppl and fmt.name in ppl:
            row["ppl"], row["ppl_fp16"] = ppl[fmt.name]
        metrics = {k: None if row[k] is None else round(float(row[k]), DIGITS) for k in METRICS}
        bad = [k for k, v in metrics.items() if v is not None and not math.isfinite(v)]
        assert not bad, (fmt.name, bad)
        entries.append({"format": fmt.name, "kind": fmt.kind, "geometry": geometry(fmt, acts.head_dim),
                        "options": options(fmt), "metrics": metrics, "data": described, "command": command})
    return entries


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("real", "synthetic", "both"), default="both",
                   help="the fixture's captured K/V, the synthetic Gaussian set, or both (default: both)")
    p.add_argument("--ppl", action="store_true", help="also perplexity on real data (needs the 'real' extra)")
    p.add_argument("--ppl-scored", type=int, default=512, metavar="N",
                   help="perplexity over the last N tokens, codebooks trained on the tokens before (default: 512)")
    p.add_argument("--out", type=Path, default=ACCURACY_TABLE, help=f"output file (default: {ACCURACY_TABLE})")
    args = p.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 (k-means on 2 cores is many times slower with two threads)",
              file=sys.stderr)
    command = " ".join(["OMP_NUM_THREADS=1 python3 scripts/accuracy_table.py", *map(shlex.quote, argv)])
    formats = [parse_format(t) for t in FORMATS]
    cfg = EvalConfig()
    start = time.perf_counter()
    entries: list[dict] = []
    if args.data in ("real", "both"):
        acts = load_activations(FIXTURE)
        ppl = None
        if args.ppl:
            ppl = measure_perplexity(formats, acts.source, acts.n_tokens, acts.n_tokens - args.ppl_scored, cfg,
                                     log=lambda s: print(s, file=sys.stderr, flush=True))
        entries += table_rows(acts, formats, cfg, "real", command, FIXTURE_IN_PACKAGE, ppl)
        print(f"real data done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if args.data in ("synthetic", "both"):
        acts = synthetic_data(cfg.seed, SYNTHETIC_CONTEXT, cfg.n_queries)
        entries += table_rows(acts, formats, cfg, "synthetic", command)
    elapsed = time.perf_counter() - start
    doc = {"version": ACCURACY_TABLE_VERSION,
           "about": "Attention accuracy of KV formats (workloads.accuracy protocol); looked up by geometry with "
                    "workloads.kvformats.accuracy_entry. Regenerate with the command below.",
           "command": command,
           "protocol": {"queries": cfg.n_queries, "prefill": cfg.prefill, "iters": cfg.iters, "topk": cfg.topk,
                        "seed": cfg.seed},
           "entries": entries}
    write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(format_table([{"data": e["data"]["kind"], "setting": e["format"],
                        **{k: v for k, v in e["metrics"].items() if v is not None}} for e in entries]))
    print(f"wrote {len(entries)} entries to {args.out} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
