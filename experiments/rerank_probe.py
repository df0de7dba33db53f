"""Exact re-rank of the tokens the codes single out: does the 1-bit worst query reach 0.9 where codebooks generalize?

Run: OMP_NUM_THREADS=1 python3 experiments/rerank_probe.py [--fixture FILE] [--prefill 1024] [--top 0,4,16,64]
     [--format pq:m=8,k=256,sinks=4,recent=128,rope_aug=1] [--shared]

A probe beside the simulated option (format option ``rerank``, which selects per position and KV head as
``--shared`` does; docs/accuracy.md, "Exact re-rank as a simulated option"): PIM scores every coded token from its
codes as AQPIM does; the ``--top`` coded tokens of highest coded score per query row are then attended exactly
(their FP16 K and V from a full copy in host memory) and the others stay coded, the two parts merged through their
softmax statistics (``workloads.pq.merge``). ``--shared``: one selection per position and KV head (the largest
coded score over the GQA group's query heads, ``workloads.pq.rerank_mask``), the cheaper fetch. Codebooks are trained as the accuracy
table trains them (``workloads.accuracy``) on tokens [sinks, ``--prefill``); the last 128 captured positions are the
queries. Prints output cosine against FP16 attention over every layer, KV head and query row: mean, 1st percentile
and worst.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads import accuracy as acc  # noqa: E402
from workloads import pq  # noqa: E402
from workloads.activations import bundled_path, load_activations  # noqa: E402
from workloads.errors import WorkloadError  # noqa: E402
from workloads.kvformats import PqSettings, parse_format  # noqa: E402

QUERIES = 128


def probe(acts, fmt: PqSettings, prefill: int, tops: list[int], shared: bool) -> dict[int, np.ndarray]:
    N, H, D, g = acts.n_tokens, acts.n_kv_heads, acts.head_dim, acts.group
    cfg = acc.EvalConfig(prefill=prefill)
    rows_pos = np.repeat(acts.q_pos[-QUERIES:], g)
    j = np.arange(N)[None, :]
    causal = j <= rows_pos[:, None]
    exact_m = causal & ((j < fmt.sinks) | (j > rows_pos[:, None] - fmt.recent))
    coded_m = causal & ~exact_m
    cos: dict[int, list] = {k: [] for k in tops}
    for li in range(len(acts.layers)):
        for h in range(H):
            K = acts.k[li, :, h].astype(np.float64)
            V = acts.v[li, :, h].astype(np.float64)
            q = pq.gqa_rows(acts.q[li, -QUERIES:, h * g:(h + 1) * g].astype(np.float64)) * D ** -0.5
            ref = pq.exact_partial(q, K, V, causal).out
            kc, vc = acc._pq_streams(fmt, K, V, prefill, cfg, (li, h), {"theta": acts.rope_theta})
            s = pq.pq_scores(q, kc)
            for k in tops:
                top = pq.rerank_mask(s, coded_m, k, g if shared else 1)  # a group of 1: per query row
                out = pq.merge(pq.exact_partial(q, K, V, exact_m | top),
                               pq.pq_partial(q, kc, vc, coded_m & ~top, scores=s)).out
                cos[k].append(acc._cosine(out, ref))
    return {k: np.concatenate(v) for k, v in cos.items()}


def whole_numbers(text: str) -> list[int]:
    """``--top``: comma-separated whole numbers >= 0 (argparse turns the ValueError into one line, exit 2)."""
    values = [int(x) for x in text.split(",")]
    if any(v < 0 for v in values):
        raise ValueError(text)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=str(bundled_path().with_name("smollm2_gpl3_2k_heldout.npz")))
    ap.add_argument("--prefill", type=int, default=1024, help="codebooks trained on tokens [sinks, prefill)")
    ap.add_argument("--top", type=whole_numbers, default=[0, 4, 16, 64],
                    help="exact tokens per query row, comma-separated whole numbers")
    ap.add_argument("--format", default="pq:m=8,k=256,sinks=4,recent=128,rope_aug=1")
    ap.add_argument("--shared", action="store_true", help="one selection per position and KV head")
    args = ap.parse_args()
    try:
        fmt = parse_format(args.format)
        acts = load_activations(args.fixture)
        fmt.check(acts.model)
    except WorkloadError as e:
        ap.error(str(e))
    if not isinstance(fmt, PqSettings) or fmt.pre_rope or fmt.stages > 1:
        ap.error("--format: a post-RoPE PQ format without stages (pq:m=...,k=...)")
    if not fmt.sinks + fmt.k <= args.prefill <= acts.n_tokens - QUERIES:
        ap.error(f"--prefill must lie in {fmt.sinks + fmt.k}..{acts.n_tokens - QUERIES} (k training tokens after "
                 f"the sinks, before the {QUERIES} evaluated queries), got {args.prefill}")
    for k, c in probe(acts, fmt, args.prefill, args.top, args.shared).items():
        print(f"{'shared ' if args.shared else ''}{fmt.name}, top {k} exact: cos mean {c.mean():.4f}, "
              f"p01 {np.quantile(c, 0.01):.4f}, worst {c.min():.4f}", flush=True)


if __name__ == "__main__":
    main()
