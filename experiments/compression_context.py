"""Compression as the context grows: total stored bits per K/V element (codes + FP16 window + outlier channels +
codebooks) against context for three AQPIM settings on one model, and the context where each reaches 90% of its
nominal ratio (16 / code bits per element) and of its asymptotic ratio (infinite context).

Run: python3 experiments/compression_context.py [--model llama-3.1-8b] [--out compression_context.csv]
         [--figure compression_context.png]
Writes a CSV (one row per setting and context: bits by part and total, ratio) and prints the 90% table; with
--figure, ``plots.compression.plot_compression`` draws the CSV. Counts are ``workloads.kvformats.kv_bytes`` (one
sequence, all layers), the same as the run result's ``details["bits_per_element_by_context"]``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.kvformats import BITS_PARTS, compression_by_context, parse_format  # noqa: E402
from workloads.models import load_model  # noqa: E402

WINDOW = "sinks=4,recent=128"
SETTINGS = (  # on head_dim 128: 2 code bits (4-dim sub-vectors), 1 bit (8-dim), 1 bit with the chosen fixes
    f"pq:m=32,k=256,{WINDOW}",
    f"pq:m=16,k=256,{WINDOW}",
    f"pq:m=16,k=256,{WINDOW},outliers=4,pre_rope=true",
)
CONTEXTS = tuple(2 ** i for i in range(9, 21)) + (3 * 2 ** 15, 3 * 2 ** 16)  # 512 .. 1M, plus 96K and 192K


def rows(model_name: str, settings=SETTINGS, contexts=CONTEXTS) -> tuple[list[dict], list[dict]]:
    """CSV rows (setting, context, bits by part, total, ratio) and one summary per setting."""
    model = load_model(model_name)
    out, summary = [], []
    for text in settings:
        fmt = parse_format(text)
        ctxs = sorted(set(contexts))
        c = compression_by_context(model, fmt, ctxs)
        for i, n in enumerate(ctxs):
            row = {"model": model.name, "setting": fmt.name, "context": n}
            row.update({f"{p}_bits": round(c["bits_per_element_by_part"][p][i], 6) for p in BITS_PARTS})
            row["bits_per_element"] = round(c["bits_per_element"][i], 6)
            row["ratio"] = round(16.0 / c["bits_per_element"][i], 6)
            out.append(row)
        summary.append({k: c[k] for k in ("format", "nominal_bits_per_element", "nominal_ratio",
                                          "asymptotic_bits_per_element", "asymptotic_ratio",
                                          "context_for_share_of_nominal", "context_for_share_of_asymptotic")})
    return out, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out", type=Path, default=Path("compression_context.csv"), help="CSV to write")
    ap.add_argument("--figure", type=Path, default=None, help="also draw the CSV (PNG or SVG)")
    args = ap.parse_args(argv)
    data, summary = rows(args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)
    print(f"{args.model}: stored bits per K/V element; 90% contexts (one sequence, all layers)\n")
    print("| setting | code b/el | asymptotic b/el | 90% of nominal ratio at | 90% of asymptotic ratio at |")
    print("|---|---|---|---|---|")
    for s in summary:
        nom = s["context_for_share_of_nominal"]
        print(f"| `{s['format']}` | {s['nominal_bits_per_element']:.2f} ({s['nominal_ratio']:.1f}x) | "
              f"{s['asymptotic_bits_per_element']:.2f} ({s['asymptotic_ratio']:.1f}x) | "
              f"{'never' if nom is None else f'{nom:,}'} | {s['context_for_share_of_asymptotic']:,} |")
    print(f"\nwrote {args.out}")
    if args.figure:
        from plots.compression import plot_compression

        print(f"wrote {plot_compression(args.out, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
