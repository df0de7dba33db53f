"""The shipped accuracy table: what each KV format loses in attention, measured once, looked up by the simulator.

    OMP_NUM_THREADS=1 python3 scripts/accuracy_table.py     (writes workloads/presets/accuracy.json)

Runs the protocol of ``aqpim-sim accuracy`` (``workloads.accuracy.evaluate`` with its default ``EvalConfig``: the
last 128 positions are the decode queries, codebooks trained on the prefill before them, 20 k-means iterations,
seed 0) on the SmolLM2-135M captures shipped in ``workloads/data`` (real K/V, head_dim 64: the layers the fixes were
tuned on, data "real", and held-out layers, data "real-heldout"; the held-out layers again with codebooks trained
on the first 1,024 tokens only, data "real-heldout-unseen") and on the command's synthetic Gaussian data,
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
from dataclasses import fields, replace
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
    UNSEEN_DATA,
    IntSettings,
    KvFormat,
    PqSettings,
    parse_format,
)

WINDOW = "sinks=4,recent=128"
# The accuracy fixes (docs/accuracy.md): each alone and the combinations that tuning on the fixture's layers kept.
FIXES = ("", "outliers=4", "scale_keys=true", "pre_rope=true", "pre_rope=true,outliers=4", "key_k=1024",
         "pre_rope=true,key_k=1024", "pre_rope=true,outliers=4,key_k=1024",
         # residual stages (same code bits, stages x the codebooks): post-RoPE (cheap in PIM) and pre-RoPE
         "stages=8", "pre_rope=true,stages=2", "pre_rope=true,stages=8", "pre_rope=true,outliers=4,stages=8",
         # post-RoPE key codebooks trained with rotated copies of the prompt's keys (decode work of plain PQ)
         "rope_aug=1", "rope_aug=1,outliers=4", "rope_aug=1,key_k=1024", "rope_aug=1,stages=8",
         # exact re-rank: the 32 coded tokens of highest coded score per position and KV head attended exactly from
         # a host FP16 copy (the PIM side unchanged)
         "rerank=32", "rope_aug=1,rerank=32", "rope_aug=1,rerank=64")


def _with_fixes(base: str) -> tuple[str, ...]:
    return (base, *(f"{base},{WINDOW}" + (f",{fix}" if fix else "") for fix in FIXES))


FORMATS = (
    "fp16",
    "int:bits=8", f"int:bits=8,{WINDOW}",
    "int:bits=4", f"int:bits=4,{WINDOW}",
    "int:bits=2", f"int:bits=2,{WINDOW}",
    # K=256 at sub-vector dims 4 (m=16 on head_dim 64) and 8 (m=8): LLaMA's head_dim 128 with m=32 / m=16,
    # with every fix
    *_with_fixes("pq:m=16,k=256"),
    *_with_fixes("pq:m=8,k=256"),
    # K=16 at sub-vector dims 2 (m=32) and 4 (m=16)
    "pq:m=32,k=16", f"pq:m=32,k=16,{WINDOW}",
    "pq:m=16,k=16", f"pq:m=16,k=16,{WINDOW}",
)
# Perplexity (--ppl) is measured for these only (about 100 s each on one core): FP16, the 2- and 1-bit baselines
# and the fixes that the tuned layers favour.
PPL_FORMATS = (
    "fp16", f"int:bits=2,{WINDOW}",
    f"pq:m=16,k=256,{WINDOW}", f"pq:m=16,k=256,{WINDOW},outliers=4", f"pq:m=16,k=256,{WINDOW},pre_rope=true",
    f"pq:m=16,k=256,{WINDOW},pre_rope=true,outliers=4",
    f"pq:m=8,k=256,{WINDOW}", f"pq:m=8,k=256,{WINDOW},outliers=4", f"pq:m=8,k=256,{WINDOW},pre_rope=true,outliers=4",
    f"pq:m=8,k=256,{WINDOW},pre_rope=true,key_k=1024", f"pq:m=8,k=256,{WINDOW},pre_rope=true,outliers=4,key_k=1024",
    f"pq:m=16,k=256,{WINDOW},stages=8", f"pq:m=16,k=256,{WINDOW},pre_rope=true,stages=8",
    f"pq:m=8,k=256,{WINDOW},stages=8", f"pq:m=8,k=256,{WINDOW},pre_rope=true,outliers=4,stages=8",
)
# Real data: the fixture's layers (3, 15, 27) are where the fixes were chosen ("real"); the held-out capture's layers
# (1, 6, 11, 16, 21, 26: every fifth from 1, none of the tuned ones; same text and tokens) were never looked at while
# choosing ("real-heldout").
HELDOUT_FIXTURE = FIXTURE.with_name("smollm2_gpl3_2k_heldout.npz")
# Held-out layers again with codebooks trained on the first UNSEEN_PREFILL tokens only ("real-heldout-unseen"): the
# tokens after it (45% of the coded pairs) are coded with codebooks that never saw them, as tokens generated long
# after the prompt are.
UNSEEN_PREFILL = 1024
METRICS = ("out_cos_mean", "out_cos_min", "key_rel_err", "value_rel_err", "score_rmse", "topk_overlap",
           "bits_per_element", "code_bits_per_element", "codebook_bits_per_element", "compression", "heldout_frac",
           "ppl", "ppl_fp16")
DIGITS = 6  # decimals kept in the file (the metrics are averages over a few thousand queries)
FIXTURE_IN_PACKAGE = f"workloads/data/{FIXTURE.name}"  # an entry's data file, wherever the package is installed
HELDOUT_IN_PACKAGE = f"workloads/data/{HELDOUT_FIXTURE.name}"


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


def markdown(doc: dict) -> str:
    """The real-data PQ/INT rows of a table file as markdown: tuned layers next to held-out layers, with the
    geometry the simulator's head_dim-128 models take them for and perplexity when measured."""
    by = {(e["format"], e["data"]["kind"]): e for e in doc["entries"]}
    lines = ["| format (head_dim 64) | on head_dim 128 | d_sub | K (keys) | code b/el | all b/el (2K) | tuned: cos mean "
             "| tuned: worst | held-out: cos mean | held-out: worst | unseen: cos mean | unseen: worst | ppl |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in doc["entries"]:
        if e["data"]["kind"] != "real":
            continue
        fmt, g, m = parse_format(e["format"]), e["geometry"], e["metrics"]
        h = by.get((e["format"], "real-heldout"), {}).get("metrics", {})
        u = by.get((e["format"], UNSEEN_DATA), {}).get("metrics", {})
        if isinstance(fmt, PqSettings):
            on128 = f"`{parse_format(e['format'].replace(f'm={fmt.m},', f'm={2 * fmt.m},', 1)).name}`"
            dsub, kk = str(g["sub_dim"]), f"{fmt.k}" + (f" ({fmt.key_k})" if fmt.key_k else "")
            dsub += f" ({fmt.stages} stages)" if fmt.stages > 1 else ""
        else:
            on128, dsub, kk = "same", "-", "-"
        cell = lambda d, k, f: "-" if d.get(k) is None else format(d[k], f)  # noqa: E731
        lines.append(f"| `{e['format']}` | {on128} | {dsub} | {kk} | {m['code_bits_per_element']:.3f} | "
                     f"{m['bits_per_element']:.2f} | {m['out_cos_mean']:.4f} | {m['out_cos_min']:.4f} | "
                     f"{cell(h, 'out_cos_mean', '.4f')} | {cell(h, 'out_cos_min', '.4f')} | "
                     f"{cell(u, 'out_cos_mean', '.4f')} | {cell(u, 'out_cos_min', '.4f')} | {cell(m, 'ppl', '.3f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("real", "synthetic", "both"), default="both",
                   help="the captured K/V (tuned and held-out layers), the synthetic Gaussian set, or both "
                        "(default: both)")
    p.add_argument("--ppl", action="store_true", help="also perplexity on real data (needs the 'real' extra)")
    p.add_argument("--ppl-scored", type=int, default=512, metavar="N",
                   help="perplexity over the last N tokens, codebooks trained on the tokens before (default: 512)")
    p.add_argument("--out", type=Path, default=ACCURACY_TABLE, help=f"output file (default: {ACCURACY_TABLE})")
    p.add_argument("--only", nargs="+", metavar="FORMAT",
                   help="evaluate only these formats (of the script's list) and keep every other entry of --out as "
                        "it is (each format's entries do not depend on the others')")
    p.add_argument("--show", action="store_true",
                   help="print the table file (--out) as markdown, tuned next to held-out layers, and exit")
    args = p.parse_args(argv)
    if args.show:
        print(markdown(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 (k-means on 2 cores is many times slower with two threads)",
              file=sys.stderr)
    # --only changes which entries are computed, not what they are: the command that regenerates them leaves it out
    shown = [a for a in argv if not a.startswith("--only=")]
    if args.only and "--only" in shown:
        at = shown.index("--only")
        shown = shown[:at] + shown[at + 1 + len(args.only):]
    command = " ".join(["OMP_NUM_THREADS=1 python3 scripts/accuracy_table.py", *map(shlex.quote, shown)])
    formats = [parse_format(t) for t in FORMATS]
    kept: list[dict] = []
    if args.only:
        try:
            wanted = {parse_format(t).name for t in args.only}
        except ValueError as e:  # WorkloadError: one line, exit 2
            p.error(f"--only: {e}")
        unknown = wanted - {f.name for f in formats}
        if unknown:
            p.error(f"--only: not in the script's list: {', '.join(sorted(unknown))}")
        if not args.out.exists():
            p.error(f"--only: {args.out} does not exist (run without --only first)")
        kept = [e for e in json.loads(args.out.read_text(encoding="utf-8"))["entries"] if e["format"] not in wanted]
        for e in kept:  # a format option added since they were measured is stored at its default, as a full run would
            e["options"] = options(parse_format(e["format"]))
        formats = [f for f in formats if f.name in wanted]
    cfg = EvalConfig()
    start = time.perf_counter()
    entries: list[dict] = []
    if args.data in ("real", "both"):
        acts = load_activations(FIXTURE)
        ppl = None
        if args.ppl:
            ppl = measure_perplexity([parse_format(t) for t in PPL_FORMATS], acts.source, acts.n_tokens,
                                     acts.n_tokens - args.ppl_scored, cfg,
                                     log=lambda s: print(s, file=sys.stderr, flush=True))
        entries += table_rows(acts, formats, cfg, "real", command, FIXTURE_IN_PACKAGE, ppl)
        print(f"real data done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        entries += table_rows(load_activations(HELDOUT_FIXTURE), formats, cfg, "real-heldout", command,
                              HELDOUT_IN_PACKAGE)
        print(f"held-out layers done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        entries += table_rows(load_activations(HELDOUT_FIXTURE), formats, replace(cfg, prefill=UNSEEN_PREFILL),
                              UNSEEN_DATA, command, HELDOUT_IN_PACKAGE)
        print(f"held-out layers, unseen tokens, done after {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
    if args.data in ("synthetic", "both"):
        acts = synthetic_data(cfg.seed, SYNTHETIC_CONTEXT, cfg.n_queries)
        entries += table_rows(acts, formats, cfg, "synthetic", command)
    elapsed = time.perf_counter() - start
    if args.only:  # the file's order: data kinds as written, formats in the script's order
        order = {f: i for i, f in enumerate(parse_format(t).name for t in FORMATS)}
        kinds = list(dict.fromkeys(e["data"]["kind"] for e in kept + entries))
        entries = sorted(kept + entries, key=lambda e: (kinds.index(e["data"]["kind"]), order[e["format"]]))
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
