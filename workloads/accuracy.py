"""How much attention a KV format loses: PQ settings and the uniform INT-k baseline, on real and synthetic data.

Protocol (per captured layer and KV head, all query heads of its GQA group):
- the last ``n_queries`` captured positions are the decode queries; position p attends causally to tokens 0..p;
- codebooks are trained on the *prefill*, tokens [sinks, prefill) with prefill = context - n_queries by default
  (in deployment the prompt's own K/V train the codebooks that then code it: training tokens are coded too);
  decode tokens, and every token at or after ``prefill``, are coded with codebooks that never saw them. The row
  field ``heldout_frac`` says which share of the coded (query, token) pairs was such held-out data; choose an
  earlier ``prefill`` to measure codebook staleness (``refresh`` re-fits them every so many tokens);
- a query sees token j exactly (FP16) when j < sinks or j > p - recent, otherwise as the format stores it; for PQ the
  coded part runs as attention on codes (score tables + per-centroid value bins) and is merged with the exact part
  through its softmax statistics, i.e. exactly the computation AQPIM does.

Metrics (one row per format and data set; docs/accuracy.md gives each formula):
code/codebook/total bits per element and compression (from ``workloads.kvformats`` at the data's context and model),
key/value relative error of the coded tokens, RMS score (logit) error, attention-output cosine (mean and worst over
layers, heads and queries), top-k overlap of the attended tokens, and perplexity when measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from workloads import pq
from workloads.activations import Activations
from workloads.errors import WorkloadError
from workloads.kvformats import (
    Fp16Settings,
    IntSettings,
    KvFormat,
    PqSettings,
    bits_per_element,
    code_bits_per_element,
    compression,
    kv_bytes,
)
from workloads.quant import kivi_keys, kivi_values


@dataclass(frozen=True)
class EvalConfig:
    """How the evaluation splits and measures; every random choice derives from ``seed``."""

    n_queries: int = 128  # decode queries: the last captured positions
    prefill: int | None = None  # tokens that train the codebooks; None = context - n_queries
    iters: int = 20  # k-means iterations
    topk: int = 32  # top-k overlap of attended tokens
    seed: int = 0
    worst: int = 0  # queries of lowest output cosine described per format (``worst_queries``); 0: none
    worst_tokens: int = 3  # most-attended tokens shown per worst query

    def __post_init__(self):
        for f in ("n_queries", "iters", "topk", "worst_tokens"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                raise WorkloadError(f"evaluation: {f} must be a positive integer, got {getattr(self, f)!r}")
        if not isinstance(self.worst, int) or self.worst < 0:
            raise WorkloadError(f"evaluation: worst must be a non-negative integer, got {self.worst!r}")
        if self.prefill is not None and self.prefill <= 0:
            raise WorkloadError(f"evaluation: prefill must be positive, got {self.prefill}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise WorkloadError(f"evaluation: seed must be a non-negative integer, got {self.seed!r}")


# k-means seeding per tensor, measured on SmolLM2 (docs/accuracy.md): k-means++ gives keys a lower error and score
# error; for values it lowers the relative error too but *hurts* the attention output (layer 3 of the fixture: cosine
# 0.952 vs 0.992 with random seeding), since it spends centroids on rare large values while diffuse attention
# averages the common ones. So keys use k-means++ and values random seeding.
KEY_SEEDING = "kmeans++"
VALUE_SEEDING = "random"


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator per (layer, head, tensor, ...): results do not depend on evaluation order."""
    return np.random.default_rng([seed, *key])


@dataclass
class _Acc:
    """Running sums for one format over layers and heads (local to one evaluate call)."""

    cos: list
    worst: list = field(default_factory=list)  # ``_worst_queries`` entries of each head, trimmed at the end
    k_err: float = 0.0
    k_ref: float = 0.0
    v_err: float = 0.0
    v_ref: float = 0.0
    s_sq: float = 0.0
    s_n: int = 0
    topk: float = 0.0
    topk_n: int = 0
    coded_pairs: int = 0
    heldout_pairs: int = 0


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-30)


def _topk_overlap(s_ref: np.ndarray, s_hat: np.ndarray, visible: np.ndarray, k: int) -> np.ndarray:
    """Per row: share of the exact top-k tokens (by score) that are also in the approximate top-k."""
    n_vis = visible.sum(axis=1)
    kk = int(min(k, n_vis.min()))
    a = np.argpartition(-np.where(visible, s_ref, -np.inf), kk - 1, axis=1)[:, :kk]
    b = np.argpartition(-np.where(visible, s_hat, -np.inf), kk - 1, axis=1)[:, :kk]
    return np.array([len(np.intersect1d(x, y, assume_unique=True)) / kk for x, y in zip(a, b, strict=True)])


def _versions(fmt: PqSettings, q_rows_pos: np.ndarray, prefill: int, n_tokens: int) -> np.ndarray:
    """End token (exclusive) of the training data of the codebooks each query row uses."""
    if fmt.refresh <= 0:
        return np.full(q_rows_pos.shape, prefill)
    step = np.maximum(q_rows_pos - prefill, 0) // fmt.refresh
    return np.minimum(prefill + step * fmt.refresh, n_tokens)


def evaluate(acts: Activations, formats: Sequence[KvFormat], cfg: EvalConfig = EvalConfig(),
             data: str = "real", by_layer: bool = False) -> list[dict]:
    """One result row per format (and per layer too when ``by_layer``); see the module docstring."""
    N, H, D, g = acts.n_tokens, acts.n_kv_heads, acts.head_dim, acts.group
    nq = min(cfg.n_queries, len(acts.q_pos))
    if nq == 0:
        raise WorkloadError(f"evaluation: the activations hold no query position below context {N} (a capture "
                            f"with queries at every position allows any context: scripts/capture_activations.py "
                            f"--queries all)")
    prefill = N - nq if cfg.prefill is None else cfg.prefill
    if not 0 < prefill <= N:
        raise WorkloadError(f"evaluation: prefill {prefill} must lie in 1..{N} (context {N})")
    for fmt in formats:
        fmt.check(acts.model)
        sinks = getattr(fmt, "sinks", 0)
        if isinstance(fmt, PqSettings) and prefill - sinks < fmt.k:
            raise WorkloadError(f"{fmt.name}: {prefill - sinks} training tokens for k={fmt.k} centroids; "
                                f"need at least k (longer context or fewer centroids)")
    q_pos = acts.q_pos[-nq:]
    rows_pos = np.repeat(q_pos, g)  # (G,) position of each query row (T positions x g heads)
    j = np.arange(N)[None, :]
    causal = j <= rows_pos[:, None]  # (G, N)
    accs = {(li, i): _Acc(cos=[]) for li in range(len(acts.layers)) for i in range(len(formats))}

    for li in range(len(acts.layers)):
        for h in range(H):
            K = acts.k[li, :, h].astype(np.float64)  # (N, D)
            V = acts.v[li, :, h].astype(np.float64)
            q = pq.gqa_rows(acts.q[li, -nq:, h * g:(h + 1) * g].astype(np.float64)) * D ** -0.5  # (G, D)
            ref = pq.exact_partial(q, K, V, causal)
            s_ref = q @ K.T  # (G, N)
            books: dict = {"theta": acts.rope_theta}  # codebooks shared by formats that differ only in the window
            if any(getattr(f, "pre_rope", False) for f in formats):
                books["k_pre"] = (acts.k_pre[li, :, h].astype(np.float64) if acts.k_pre is not None
                                  else pq.rope(K, np.arange(N), acts.rope_theta, inverse=True))
            for fi, fmt in enumerate(formats):
                acc = accs[(li, fi)]
                sinks, recent = getattr(fmt, "sinks", 0), getattr(fmt, "recent", 0)
                exact_m = causal & ((j < sinks) | (j > rows_pos[:, None] - recent))
                coded_m = causal & ~exact_m
                out, s_hat, k_hat, v_hat, train_end = _coded(fmt, q, K, V, rows_pos, coded_m, exact_m, prefill,
                                                              cfg, (li, h), books, g)
                s_hat = np.where(exact_m, s_ref, s_hat)
                cos = _cosine(out, ref.out)
                acc.cos.append(cos)
                if cfg.worst:
                    acc.worst += _worst_queries(cfg, cos, out, ref.out, s_ref, s_hat, causal, coded_m, rows_pos,
                                                acts.layers[li], h, g)
                acc.s_sq += float(((s_hat - s_ref)[causal] ** 2).sum())
                acc.s_n += int(causal.sum())
                ov = _topk_overlap(s_ref, s_hat, causal, cfg.topk)
                acc.topk += float(ov.sum())
                acc.topk_n += ov.size
                last = coded_m[-1]  # the tokens the latest query sees coded
                acc.k_err += float(((k_hat - K)[last] ** 2).sum())
                acc.k_ref += float((K[last] ** 2).sum())
                acc.v_err += float(((v_hat - V)[last] ** 2).sum())
                acc.v_ref += float((V[last] ** 2).sum())
                acc.coded_pairs += int(coded_m.sum())
                acc.heldout_pairs += int((coded_m & (j >= train_end[:, None])).sum())

    rows = []
    for fi, fmt in enumerate(formats):
        groups = [list(range(len(acts.layers)))]
        if by_layer:
            groups += [[li] for li in range(len(acts.layers))]
        for layer_ids in groups:
            rows.append(_row(acts, fmt, [accs[(li, fi)] for li in layer_ids], data, prefill, nq,
                             None if len(layer_ids) > 1 or len(acts.layers) == 1 and not by_layer
                             else acts.layers[layer_ids[0]], cfg.worst))
    return rows


def _worst_queries(cfg: EvalConfig, cos, out, ref, s_ref, s_hat, causal, coded_m, rows_pos, layer: int, head: int,
                   group: int) -> list[dict]:
    """The ``cfg.worst`` query rows of lowest output cosine of one KV head, each with what explains it: the norms
    of the exact and coded outputs, the attention mass on coded tokens exactly and as coded, and its most-attended
    tokens (exact attention) with their weights and scores both ways."""
    rows = np.argsort(cos, kind="stable")[:cfg.worst]
    visible = causal[rows]
    p_ref = pq._softmax_part(np.where(visible, s_ref[rows], -np.inf))[0]
    p_hat = pq._softmax_part(np.where(visible, s_hat[rows], -np.inf))[0]
    found = []
    for i, r in enumerate(rows.tolist()):
        top = np.argsort(-p_ref[i], kind="stable")[:cfg.worst_tokens]
        coded = coded_m[r]
        found.append({
            "cos": float(cos[r]), "layer": int(layer), "kv_head": int(head), "query_head": int(head * group + r % group),
            "position": int(rows_pos[r]), "out_norm": float(np.linalg.norm(ref[r])),
            "out_norm_coded": float(np.linalg.norm(out[r])),
            "coded_mass": float(p_ref[i][coded].sum()), "coded_mass_coded": float(p_hat[i][coded].sum()),
            "top_tokens": [{"token": int(t), "coded": bool(coded[t]), "weight": float(p_ref[i, t]),
                            "weight_coded": float(p_hat[i, t]), "score": float(s_ref[r, t]),
                            "score_coded": float(s_hat[r, t])} for t in top.tolist()]})
    return found


def _coded(fmt, q, K, V, rows_pos, coded_m, exact_m, prefill, cfg, lh, books, group: int = 1):
    """Attention of one head's query rows through ``fmt``: output (G, D), the scores attention used (G, N; coded
    ones, exact for the tokens ``rerank`` attends exactly), the decoded K and V the latest query sees, and per row
    the end of the codebook training data (N+1 when nothing is trained). ``group``: query rows per position (the
    GQA group, ``rerank`` selects per position)."""
    G, N = coded_m.shape
    exact = pq.exact_partial(q, K, V, exact_m)
    no_train = np.full(G, N + 1)
    if isinstance(fmt, Fp16Settings) or not coded_m.any():
        return pq.exact_partial(q, K, V, exact_m | coded_m).out, q @ K.T, K, V, no_train
    if isinstance(fmt, IntSettings):
        k_hat, v_hat = kivi_keys(K, fmt.bits, fmt.group), kivi_values(V, fmt.bits, fmt.group)
        coded = pq.exact_partial(q, k_hat, v_hat, coded_m)
        return pq.merge(exact, coded).out, q @ k_hat.T, k_hat, v_hat, no_train
    assert isinstance(fmt, PqSettings)
    ends = _versions(fmt, rows_pos, prefill, N)
    out = np.empty_like(q)
    s_hat = np.empty((G, N))
    k_hat = v_hat = None
    for end in np.unique(ends):
        sel = ends == end
        kc, vc = _pq_streams(fmt, K, V, int(end), cfg, lh, books)
        if fmt.pre_rope:
            s = pq.rope_pq_scores(q[sel], kc, np.arange(N), books["theta"])
        else:
            s = pq.pq_scores(q[sel], kc)
        coded_sel = coded_m[sel]
        ex = pq.Partial(out=exact.out[sel], lse=exact.lse[sel])
        if fmt.rerank:  # sel holds whole positions (every row of a position has the same codebooks)
            top = pq.rerank_mask(s, coded_sel, fmt.rerank, group)
            coded_sel = coded_sel & ~top
            ex = pq.exact_partial(q[sel], K, V, exact_m[sel] | top)
            s = np.where(top, q[sel] @ K.T, s)
        part = pq.pq_partial(q[sel], kc, vc, coded_sel, scores=s)
        out[sel] = pq.merge(ex, part).out
        s_hat[sel] = s
        if sel[-1]:
            k_hat, v_hat = kc.decoded(), vc.decoded()
            if fmt.pre_rope:
                k_hat = pq.rope(k_hat, np.arange(N), books["theta"])
    return out, s_hat, k_hat, v_hat, ends


def _pq_streams(fmt: PqSettings, K, V, end: int, cfg: EvalConfig, lh, books) -> tuple:
    """Keys and values of one head coded with codebooks trained on tokens [sinks, end) (cached per call)."""
    li, h = lh
    kk = fmt.keys_k
    kkey = ("k", fmt.m, kk, fmt.sinks, fmt.outliers, fmt.scale_keys, fmt.pre_rope, fmt.stages, fmt.rope_aug, end)
    vkey = ("v", fmt.m, fmt.k, fmt.sinks, fmt.stages, end)
    if fmt.stages > 1:
        return _residual_streams(fmt, K, V, end, cfg, lh, books, kkey, vkey)
    if kkey not in books:
        keys = books["k_pre"] if fmt.pre_rope else K
        order = pq.rope_pair_order(K.shape[1], fmt.m) if fmt.pre_rope else None
        cb = pq.train_codebook(_key_training(fmt, keys, end, cfg, lh, books["theta"]), fmt.m, kk,
                               _rng(cfg.seed, li, h, 0, fmt.m, kk, end),
                               iters=cfg.iters, outliers=fmt.outliers, scale_channels=fmt.scale_keys,
                               seeding=KEY_SEEDING, order=order)
        books[kkey] = pq.CodedTensor.of(cb, keys)
    if vkey not in books:
        cb = pq.train_codebook(V[fmt.sinks:end], fmt.m, fmt.k, _rng(cfg.seed, li, h, 1, fmt.m, fmt.k, end),
                               iters=cfg.iters, seeding=VALUE_SEEDING)
        books[vkey] = pq.CodedTensor.of(cb, V)
    return books[kkey], books[vkey]


def _key_training(fmt: PqSettings, keys: np.ndarray, end: int, cfg: EvalConfig, lh, theta: float) -> np.ndarray:
    """The key codebooks' training set: tokens [sinks, end), with ``rope_aug`` rotated copies over the whole
    evaluated context (``workloads.pq.rope_augmented``; its own generator per layer, head and training end)."""
    li, h = lh
    train = keys[fmt.sinks:end]
    if not fmt.rope_aug:
        return train
    return pq.rope_augmented(train, np.arange(fmt.sinks, end), theta, fmt.rope_aug, len(keys),
                             _rng(cfg.seed, li, h, 2, fmt.rope_aug, end))


def _residual_streams(fmt: PqSettings, K, V, end: int, cfg: EvalConfig, lh, books, kkey, vkey) -> tuple:
    """``_pq_streams`` with residual stages (``workloads.pq.train_residual``); stage s of a tensor has its own
    generator (seed, layer, head, tensor, m, K, training end, stages, s)."""
    li, h = lh
    kk, st = fmt.keys_k, fmt.stages
    if kkey not in books:
        keys = books["k_pre"] if fmt.pre_rope else K
        cbs = pq.train_residual(_key_training(fmt, keys, end, cfg, lh, books["theta"]), fmt.m, kk, st,
                                lambda s: _rng(cfg.seed, li, h, 0, fmt.m, kk, end, st, s), iters=cfg.iters,
                                outliers=fmt.outliers, scale_channels=fmt.scale_keys, seeding=KEY_SEEDING,
                                rope_pairs=fmt.pre_rope)
        books[kkey] = pq.ResidualCoded.of(cbs, keys)
    if vkey not in books:
        cbs = pq.train_residual(V[fmt.sinks:end], fmt.m, fmt.k, st,
                                lambda s: _rng(cfg.seed, li, h, 1, fmt.m, fmt.k, end, st, s), iters=cfg.iters,
                                seeding=VALUE_SEEDING)
        books[vkey] = pq.ResidualCoded.of(cbs, V)
    return books[kkey], books[vkey]


def _row(acts: Activations, fmt: KvFormat, accs: list[_Acc], data: str, prefill: int, nq: int,
         layer: int | None, worst: int = 0) -> dict:
    model, N = acts.model, acts.n_tokens
    cos = np.concatenate([c for a in accs for c in a.cos])
    tot = lambda f: sum(getattr(a, f) for a in accs)  # noqa: E731
    parts = kv_bytes(model, fmt, N)
    elements = 2 * model.n_layers * model.n_kv_heads * model.kv_tokens(N) * model.head_dim
    row = {
        "data": data,
        "source": acts.source,
        "setting": fmt.name,
        "context": N,
        "prefill": prefill,
        "queries": nq,
        "code_bits_per_element": code_bits_per_element(model, fmt),
        "codebook_bits_per_element": 8.0 * parts.codebooks / elements,
        "bits_per_element": bits_per_element(model, fmt, N),
        "compression": compression(model, fmt, N),
        "key_rel_err": float(np.sqrt(tot("k_err") / tot("k_ref"))) if tot("k_ref") else 0.0,
        "value_rel_err": float(np.sqrt(tot("v_err") / tot("v_ref"))) if tot("v_ref") else 0.0,
        "score_rmse": float(np.sqrt(tot("s_sq") / max(tot("s_n"), 1))),
        "out_cos_mean": float(cos.mean()),
        "out_cos_min": float(cos.min()),
        "topk_overlap": tot("topk") / max(tot("topk_n"), 1),
        "heldout_frac": tot("heldout_pairs") / tot("coded_pairs") if tot("coded_pairs") else 0.0,
    }
    if worst:  # lowest cosine first; ties in layer, head, query order
        row["worst_queries"] = sorted((w for a in accs for w in a.worst), key=lambda w: w["cos"])[:worst]
    if layer is not None:
        row["layer"] = layer
    return row


# --- perplexity (optional "real" extra) -------------------------------------------------------------------------------
def view_fn_for(fmt: KvFormat, prefill: int, cfg: EvalConfig, theta: float = 0.0):
    """The K/V a format stores, decoded, for ``workloads.perplexity.coded_hook``; codebooks fit on [sinks, prefill).
    ``theta``: the model's RoPE base (pre-RoPE key coding undoes RoPE on the hooked keys, codes, and redoes it)."""
    if isinstance(fmt, PqSettings) and fmt.refresh:
        raise WorkloadError(f"{fmt.name}: perplexity with codebook refresh is not implemented (fixed codebooks only)")
    if isinstance(fmt, PqSettings) and fmt.rerank:
        raise WorkloadError(f"{fmt.name}: perplexity with rerank is not implemented (the hook substitutes one decoded "
                            f"K/V for every query; re-rank's exact tokens differ per query)")

    def view(layer: int, head: int, k: np.ndarray, v: np.ndarray):
        if isinstance(fmt, Fp16Settings):
            return k, v
        if isinstance(fmt, IntSettings):
            return (kivi_keys(k, fmt.bits, fmt.group).astype(np.float32),
                    kivi_values(v, fmt.bits, fmt.group).astype(np.float32))
        kk, pos = fmt.keys_k, np.arange(len(k))
        keys = pq.rope(k, pos, theta, inverse=True) if fmt.pre_rope else k
        train = _key_training(fmt, keys, prefill, cfg, (layer, head), theta)
        if fmt.stages > 1:
            st = fmt.stages
            kcbs = pq.train_residual(train, fmt.m, kk, st,
                                     lambda s: _rng(cfg.seed, layer, head, 0, fmt.m, kk, st, s), iters=cfg.iters,
                                     outliers=fmt.outliers, scale_channels=fmt.scale_keys, seeding=KEY_SEEDING,
                                     rope_pairs=fmt.pre_rope)
            vcbs = pq.train_residual(v[fmt.sinks:prefill], fmt.m, fmt.k, st,
                                     lambda s: _rng(cfg.seed, layer, head, 1, fmt.m, fmt.k, st, s), iters=cfg.iters,
                                     seeding=VALUE_SEEDING)
            k_hat = pq.ResidualCoded.of(kcbs, keys).decoded()
            if fmt.pre_rope:
                k_hat = pq.rope(k_hat, pos, theta)
            return k_hat.astype(np.float32), pq.ResidualCoded.of(vcbs, v).decoded().astype(np.float32)
        kcb = pq.train_codebook(train, fmt.m, kk, _rng(cfg.seed, layer, head, 0, fmt.m, kk),
                                iters=cfg.iters, outliers=fmt.outliers, scale_channels=fmt.scale_keys,
                                seeding=KEY_SEEDING,
                                order=pq.rope_pair_order(k.shape[1], fmt.m) if fmt.pre_rope else None)
        vcb = pq.train_codebook(v[fmt.sinks:prefill], fmt.m, fmt.k, _rng(cfg.seed, layer, head, 1, fmt.m, fmt.k),
                                iters=cfg.iters, seeding=VALUE_SEEDING)
        k_hat = pq.CodedTensor.of(kcb, keys).decoded()
        if fmt.pre_rope:
            k_hat = pq.rope(k_hat, pos, theta)
        return k_hat.astype(np.float32), pq.CodedTensor.of(vcb, v).decoded().astype(np.float32)

    return view


def measure_perplexity(formats: Sequence[KvFormat], text: str, n_tokens: int, prefill: int,
                       cfg: EvalConfig = EvalConfig(), log=print) -> dict[str, tuple[float, float]]:
    """SmolLM2 perplexity of tokens prefill+1..n_tokens-1 of ``text`` with the cache in each format (codebooks
    trained on the first ``prefill`` tokens): {format name: (ppl, ppl_fp16)}. Needs the optional "real" extra."""
    from workloads import perplexity as px

    if not 0 < prefill < n_tokens - 1:
        raise WorkloadError(f"perplexity: prefill {prefill} must lie in 1..{n_tokens - 2}")
    lm = px.load_smollm2()
    ids = px.tokenize(lm, text, n_tokens)
    base = px.perplexity(lm, ids, prefill, None)
    log(f"perplexity FP16 over tokens {prefill + 1}..{n_tokens - 1} of {text}: {base:.3f}")
    result = {}
    for fmt in formats:
        sinks, recent = getattr(fmt, "sinks", 0), getattr(fmt, "recent", 0)
        hook = px.coded_hook(view_fn_for(fmt, prefill, cfg, float(lm.hf_config["rope_theta"])), prefill, sinks,
                             recent)
        result[fmt.name] = (px.perplexity(lm, ids, prefill, hook), base)
        log(f"perplexity {fmt.name}: {result[fmt.name][0]:.3f}")
    return result


# --- presentation ---------------------------------------------------------------------------------------------------
COLUMNS = (("data", "data", "{}"), ("setting", "setting", "{}"), ("layer", "layer", "{}"),
           ("code_bits_per_element", "code b/el", "{:.3f}"), ("bits_per_element", "all b/el", "{:.2f}"),
           ("compression", "compr", "{:.2f}x"), ("key_rel_err", "K err", "{:.3f}"),
           ("value_rel_err", "V err", "{:.3f}"), ("score_rmse", "score rmse", "{:.3f}"),
           ("out_cos_mean", "cos mean", "{:.4f}"), ("out_cos_min", "cos min", "{:.4f}"),
           ("topk_overlap", "top-k", "{:.3f}"), ("heldout_frac", "held-out", "{:.2f}"),
           ("ppl", "ppl", "{:.3f}"), ("ppl_fp16", "ppl fp16", "{:.3f}"))


def format_worst(rows: Sequence[dict]) -> str:
    """The rows' ``worst_queries`` as text: per setting and data set, each query and its most-attended tokens, with
    "exact -> coded" for the quantities the format changes."""
    lines = []
    for r in rows:
        if not r.get("worst_queries") or "layer" in r:
            continue
        lines.append(f"worst queries, {r['data']}, {r['setting']}:")
        for w in r["worst_queries"]:
            lines.append(f"  cos {w['cos']:.4f}  layer {w['layer']}  kv head {w['kv_head']}  query head "
                         f"{w['query_head']}  position {w['position']}  |out| {w['out_norm']:.3g} -> "
                         f"{w['out_norm_coded']:.3g}  weight on coded tokens {w['coded_mass']:.3f} -> "
                         f"{w['coded_mass_coded']:.3f}")
            for t in w["top_tokens"]:
                lines.append(f"    token {t['token']:>6} {'coded' if t['coded'] else 'exact'}  weight "
                             f"{t['weight']:.3f} -> {t['weight_coded']:.3f}  score {t['score']:.2f} -> "
                             f"{t['score_coded']:.2f}")
    return "\n".join(lines)


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of result rows (columns that no row has are left out)."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append(["" if r.get(k) is None else f.format(r[k]) for k, _, f in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
