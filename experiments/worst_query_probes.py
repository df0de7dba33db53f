"""Why the worst query stays low at 1 code bit per element: three probes on captured activations.

Run: python3 experiments/worst_query_probes.py --fixture FILE [--prefill N] [--observe 512] [--keep 0,0.01,0.05]

FILE: a capture from ``scripts/capture_activations.py`` (needs the optional "real" extra), for example 8,192 tokens
of held-out layers with 640 query positions (the last 128 are evaluated, the 512 before them are the observation
window of probe 2):

    HF_HUB_OFFLINE=1 python scripts/capture_activations.py --text pydoc --tokens 8192 --layers 1,6,11,16,21,26 \\
        --queries 640 --out ~/.cache/aqpim-sim/smollm2_pydoc_8k_heldout_q640.npz

Every probe codes keys pre-RoPE (``pre_rope=true``), keeps 4 sinks and a 128-token window exact and trains the
codebooks on tokens [4, prefill) (default: every token before the evaluated queries, the accuracy table's
protocol; a smaller ``--prefill`` makes the later tokens unseen by the codebooks). Output cosine against FP16
attention, per query row (a query head of a KV head), over every captured layer and KV head: mean, 1st
percentile and worst.

1. **Which side**: 1 bit (head_dim / 8 sub-spaces, K = 256) on both sides, then with exact keys, then with exact
   values: which coding error drives the worst query; and where the six worst rows put their attention weight.
2. **Exact heavy tokens** (SnapKV's selection, Li et al. 2024, arXiv:2404.14469): the fraction ``--keep`` of
   coded prompt tokens with the most attention from the last ``--observe`` prompt queries kept exact.
3. **Bits moved from values to keys**: keys at K = 1024 (1.25 bits) with values at K = 64 (0.75 bits), and keys
   at 2 bits with values at 0.25 bits: the same or slightly more bits in total.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads import pq  # noqa: E402
from workloads.accuracy import KEY_SEEDING, VALUE_SEEDING, _rng  # noqa: E402
from workloads.activations import load_activations  # noqa: E402

SINKS, RECENT, N_EVAL = 4, 128, 128


def code(k_pre, V, prefill: int, key: tuple, m_k: int, k_k: int, m_v: int, k_v: int):
    """Pre-RoPE keys and values coded with codebooks trained on tokens [SINKS, prefill)."""
    kcb = pq.train_codebook(k_pre[SINKS:prefill], m_k, k_k, _rng(*key, 0, m_k, k_k), seeding=KEY_SEEDING,
                            order=pq.rope_pair_order(k_pre.shape[1], m_k))
    vcb = pq.train_codebook(V[SINKS:prefill], m_v, k_v, _rng(*key, 1, m_v, k_v), seeding=VALUE_SEEDING)
    return pq.CodedTensor.of(kcb, k_pre), pq.CodedTensor.of(vcb, V)


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def summary(c: list[np.ndarray]) -> str:
    x = np.concatenate(c)
    return f"mean {x.mean():.4f}  p01 {np.quantile(x, 0.01):.4f}  worst {x.min():.4f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--prefill", type=int, help="codebook training end (default: the first evaluated query)")
    ap.add_argument("--observe", type=int, default=512, help="observation window of probe 2 (prompt queries)")
    ap.add_argument("--keep", default="0,0.005,0.01,0.02,0.05", help="probe 2: fractions of tokens kept exact")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    acts = load_activations(args.fixture)
    N, H, D, g = acts.n_tokens, acts.n_kv_heads, acts.head_dim, acts.group
    if len(acts.q_pos) < N_EVAL + args.observe:
        sys.exit(f"error: {args.fixture} has {len(acts.q_pos)} query positions; probe 2 needs "
                 f"{N_EVAL} + --observe {args.observe} (capture with --queries {N_EVAL + args.observe})")
    prefill = N - N_EVAL if args.prefill is None else args.prefill
    keeps = [float(x) for x in args.keep.split(",")]
    pos = np.arange(N)
    rows = np.repeat(acts.q_pos[-N_EVAL:], g)
    j = pos[None, :]
    causal = j <= rows[:, None]
    exact_m = causal & ((j < SINKS) | (j > rows[:, None] - RECENT))
    coded_m = causal & ~exact_m
    obs_rows = np.repeat(acts.q_pos[-N_EVAL - args.observe:-N_EVAL], g)
    out: dict[str, list] = {}
    worst_rows: list[tuple] = []

    def add(name, o, ref):
        out.setdefault(name, []).append(cos_rows(o, ref))

    for li in range(len(acts.layers)):
        for h in range(H):
            K = acts.k[li, :, h].astype(np.float64)
            V = acts.v[li, :, h].astype(np.float64)
            heads = slice(h * g, (h + 1) * g)
            q = pq.gqa_rows(acts.q[li, -N_EVAL:, heads].astype(np.float64)) * D ** -0.5
            ref = pq.exact_partial(q, K, V, causal).out
            k_pre = pq.rope(K, pos, acts.rope_theta, inverse=True)
            exact = pq.exact_partial(q, K, V, exact_m)

            def coded(m_k, k_k, m_v, k_v, k_pre=k_pre, V=V, key=(args.seed, li, h)):
                return code(k_pre, V, prefill, key, m_k, k_k, m_v, k_v)

            m1 = D // 8  # 8-dim sub-vectors: 1 bit per element at K = 256
            kc, vc = coded(m1, 256, m1, 256)
            k_hat = pq.rope(kc.decoded(), pos, acts.rope_theta)
            v_hat = vc.decoded()
            scores = pq.rope_pq_scores(q, kc, pos, acts.rope_theta)
            add("1. both coded (1 bit)", pq.merge(exact, pq.pq_partial(q, kc, vc, coded_m, scores=scores)).out, ref)
            c = out["1. both coded (1 bit)"][-1]
            i = int(np.argmin(c))  # this head's worst row: where its attention weight sits
            w_i = np.exp(np.where(causal[i], q[i] @ K.T, -np.inf) - np.max(q[i] @ K.T[:, causal[i]]))
            w_i /= w_i.sum()
            worst_rows.append((float(c[i]), acts.layers[li], h, float(np.sort(w_i)[-8:].sum()),
                               float(w_i[exact_m[i]].sum())))
            add("1. keys exact", pq.merge(exact, pq.exact_partial(q, K, v_hat, coded_m)).out, ref)
            add("1. values exact", pq.merge(exact, pq.exact_partial(q, k_hat, V, coded_m)).out, ref)

            w = pq.gqa_rows(acts.q[li, -N_EVAL - args.observe:-N_EVAL, heads].astype(np.float64)) * D ** -0.5
            s = np.where(j <= obs_rows[:, None], w @ K.T, -np.inf)
            p = np.exp(s - s.max(1, keepdims=True))
            mass = (p / p.sum(1, keepdims=True)).sum(0)
            mass[:SINKS] = mass[prefill:] = -1.0  # sinks are exact already; only prompt tokens are chosen
            ranked = np.argsort(-mass, kind="stable")
            for f in keeps:
                keep = np.zeros(N, bool)
                keep[ranked[:int(round(f * (prefill - SINKS)))]] = True
                ex_m = exact_m | (causal & keep[None, :])
                part = pq.pq_partial(q, kc, vc, causal & ~ex_m, scores=scores)
                add(f"2. heavy tokens exact, {f:.1%}", pq.merge(pq.exact_partial(q, K, V, ex_m), part).out, ref)

            for label, spec in (("3. keys 1.25 bits, values 0.75", (m1, 1024, m1, 64)),
                                ("3. keys 2 bits, values 0.25", (2 * m1, 256, m1, 4))):
                kc2, vc2 = coded(*spec)
                sc2 = pq.rope_pq_scores(q, kc2, pos, acts.rope_theta)
                add(label, pq.merge(exact, pq.pq_partial(q, kc2, vc2, coded_m, scores=sc2)).out, ref)

    print(f"{args.fixture}: {N} tokens, layers {list(acts.layers)}, codebooks on tokens [{SINKS}, {prefill}), "
          f"{N_EVAL} queries x {g} heads per KV head")
    for name, c in out.items():
        print(f"  {name:34s} {summary(c)}")
    print("  probe 1's worst rows (cosine, layer, KV head): weight of their top 8 tokens, weight on exact tokens")
    for c, layer, h, top8, on_exact in sorted(worst_rows)[:6]:
        print(f"    {c:.4f}  layer {layer:2d} head {h}: top 8 {top8:.2f}, exact {on_exact:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
