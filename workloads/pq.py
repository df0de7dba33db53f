"""Product Quantization of a KV cache, and attention computed directly on the codes (numpy reference math).

A head's key (or value) vector of ``D`` dims is cut into ``M`` sub-vectors of ``D/M`` dims; each sub-space has its own
codebook of ``K`` centroids, so a token stores ``M`` codes of log2(K) bits instead of ``D`` FP16 numbers. Codebooks
are per layer, per KV head and per tensor (K and V separately), trained by k-means on the prefill's own keys/values.

Attention on codes never decodes the cache (this is what AQPIM runs inside PIM):
- scores: per sub-space m the table ``T[m, c] = q_m . C_m[c]`` (M x K entries); a token's score is
  ``sum_m T[m, code_m]``: M gathers and adds per token instead of D multiply-adds;
- values: the softmax weights are summed per (sub-space, centroid) bin, ``B[m, c] = sum_{n: code_m(n)=c} w_n``, and the
  output's sub-vector m is ``B[m] @ C_m`` (K x D/M MACs): the per-token work is M scatter-adds.
Both are exact rewrites of ordinary attention over the decoded K/V (``tests/test_pq.py`` checks that property).

Accuracy options live here as data on the ``Codebook``: outlier channels (kept exact, zeroed inside the PQ part so
the M sub-spaces still tile all D dims), a per-channel scale applied before clustering and a channel order (which
channels each sub-vector holds). Sink and recent-window tokens are exact attention parts merged with the PQ part
through softmax statistics (``merge``).

Pre-RoPE keys (``rope_pq_scores``): keys may be coded *before* RoPE (their channels keep one distribution at every
position, so codebooks trained on the prefill fit later tokens too) while queries stay post-RoPE. RoPE rotates the
channel pairs (i, i + D/2) by angle p theta_i, so with sub-vectors that hold whole pairs (``rope_pair_order``) the
score is sum over sub-spaces m and pairs t of Re(A[m, code_m, t] e^{j p theta_t}) with the complex query table
A[m, c, t] = conj(q_t) C_m[c]_t: the table has K x D/M complex entries per sub-space instead of K reals, and each
token rotates the D/2 complex entries it gathers by its position (the rotation factors depend on the position only,
shared by every head and layer). Exactly equal to ordinary attention over RoPE(decoded pre-RoPE keys).

RoPE-augmented key codebooks (``rope_augmented``, format option ``rope_aug``): post-RoPE keys carry their position in
the low-frequency channel pairs, whose angle p theta_i a prompt of P tokens covers only up to P theta_i, so a key of a
later position can land where no training key was (SmolLM2 layer 21: codebooks trained on every other token of the
first 1,024 code the other half with a median key error of 5.5, positions 1,024-2,047 with 8.6). The codebooks are
therefore trained on the prompt's keys plus copies of them rotated to other positions (the prompt's pre-RoPE keys
are RoPE-rotated again to positions drawn uniformly over the context the codebooks will serve). The codes, the
tables and the attention on codes are those of plain PQ: only the k-means training set grows.

Residual stages (``ResidualCoded``, format option ``stages``): the M codes of a token may be spent as S stages of
M/S sub-spaces each (sub-vectors of D S/M dims), stage s coding what stages 0..s-1 left (``train_residual``;
greedy: each stage is trained and encoded on the previous stages' residuals). The code bits per token are the same
as plain PQ with M sub-spaces; the codebooks are S times larger (S x K x D per tensor). A score is the sum of the
stages' table gathers and the output the sum of the stages' bins x centroids: still attention on codes, exactly
equal to attention over the summed decoded stages (property tests in ``tests/test_pq.py``).

Shapes: N tokens, D head dim, M sub-spaces, K centroids, G query rows (query heads of a GQA group x positions).

k-means backend: a numpy Lloyd loop batched over the M sub-spaces. Measured at N=2048, D=64, one thread: as fast as
faiss-cpu for PQ shapes (M=8..32) and 1.5-6x faster than scipy's kmeans2 at K=256 (docs/accuracy.md), so there is
no optional dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


# --- k-means -------------------------------------------------------------------------------------------------------
def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20,
           init: np.ndarray | None = None, seeding: str = "kmeans++") -> np.ndarray:
    """Lloyd's k-means on M independent problems at once: x (M, N, d) -> centroids (M, k, d).

    Deterministic given ``rng``. Initial centroids by k-means++ (or ``init``, to refresh a codebook from the previous
    one); an emptied cluster is re-seeded with the point that is worst represented, so no centroid is dead.
    """
    M, N, d = x.shape
    assert N >= 1 and k >= 1, (N, k)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if init is not None:
        assert init.shape == (M, k, d), (init.shape, (M, k, d))
        c = init.astype(np.float32, copy=True)
    elif seeding == "kmeans++":
        c = _kmeans_pp(x, k, rng)
    else:
        assert seeding == "random", seeding
        idx = np.stack([rng.choice(N, k, replace=N < k) for _ in range(M)])  # (M, k) distinct points
        c = np.take_along_axis(x, idx[:, :, None], axis=1)
    off = (np.arange(M) * k)[:, None]  # flat bin index per sub-space
    xf = x.reshape(M * N, d)
    for _ in range(iters):
        a, err = _assign(x, c)  # (M, N), (M, N)
        flat = (a + off).ravel()
        cnt = np.bincount(flat, minlength=M * k).reshape(M, k)
        sums = np.stack([np.bincount(flat, weights=xf[:, j], minlength=M * k) for j in range(d)], axis=-1)
        new = (sums.reshape(M, k, d) / np.maximum(cnt, 1)[..., None]).astype(np.float32)
        c = np.where(cnt[..., None] > 0, new, c)
        for m in np.flatnonzero((cnt == 0).any(axis=1)):  # rare: re-seed empty clusters
            empty = np.flatnonzero(cnt[m] == 0)
            worst = np.argsort(err[m])[::-1][:len(empty)]
            c[m, empty[:len(worst)]] = x[m, worst]
    return c


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding, batched over sub-spaces: each next centroid is a point drawn with probability
    proportional to its squared distance to the nearest centroid so far (Forgy seeding can merge clusters)."""
    M, N, d = x.shape
    rows = np.arange(M)
    c = np.empty((M, k, d), dtype=x.dtype)
    xx = (x * x).sum(-1)  # (M, N)
    pick = rng.integers(0, N, M)
    best = np.full((M, N), np.inf, dtype=x.dtype)  # squared distance to the nearest chosen centroid
    for i in range(k):
        c[:, i] = x[rows, pick]
        dist = xx - 2.0 * np.einsum("mnd,md->mn", x, c[:, i]) + xx[rows, pick][:, None]
        np.minimum(best, np.maximum(dist, 0.0), out=best)
        if i + 1 < k:
            cum = np.cumsum(best, axis=1)
            u = rng.random(M) * cum[:, -1]
            pick = np.minimum((cum < u[:, None]).sum(axis=1), N - 1)  # all distances zero: any point will do
    return c


def _assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid per point, batched: x (M, N, d), c (M, K, d) -> codes (M, N), squared error (M, N)."""
    dist = np.matmul(x, c.transpose(0, 2, 1))  # (M, N, K)
    dist *= -2.0
    dist += (c * c).sum(-1)[:, None, :]
    a = dist.argmin(-1)
    err = np.take_along_axis(dist, a[..., None], -1)[..., 0] + (x * x).sum(-1)
    return a, np.maximum(err, 0.0)


# --- codebooks -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Codebook:
    """PQ codebook of one tensor (K or V) of one KV head in one layer, with its accuracy options."""

    centroids: np.ndarray  # (M, K, D/M) float32, in the scaled space, channels in ``order``
    scale: np.ndarray  # (D,) positive: vectors are divided by it before clustering (ones = no scaling)
    outliers: np.ndarray  # (n_out,) int channel indices kept exact outside the PQ part (empty = none)
    order: np.ndarray | None = None  # (D,) channel permutation: sub-vector m holds order[m*D/M:(m+1)*D/M]

    def __post_init__(self):
        M, K, dsub = self.centroids.shape
        assert self.scale.shape == (M * dsub,), (self.scale.shape, self.centroids.shape)
        assert np.all(self.scale > 0), "channel scales must be positive"
        assert self.outliers.ndim == 1 and np.all((self.outliers >= 0) & (self.outliers < M * dsub))
        if self.order is None:
            object.__setattr__(self, "order", np.arange(M * dsub))
        assert np.array_equal(np.sort(self.order), np.arange(M * dsub)), "order must be a permutation of channels"

    @property
    def m(self) -> int:
        return self.centroids.shape[0]

    @property
    def k(self) -> int:
        return self.centroids.shape[1]

    @property
    def dim(self) -> int:
        return self.centroids.shape[0] * self.centroids.shape[2]

    @property
    def code_dtype(self):
        return np.uint8 if self.k <= 256 else np.uint16

    def _to_pq_space(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (M, N, D/M): scaled, outlier channels zeroed (they are stored exactly instead)."""
        N, D = x.shape
        assert D == self.dim, (D, self.dim)
        y = x / self.scale
        if self.outliers.size:
            y = y.copy()
            y[:, self.outliers] = 0.0
        y = y[:, self.order]
        return np.ascontiguousarray(y.reshape(N, self.m, D // self.m).transpose(1, 0, 2), dtype=np.float32)

    def _from_order(self, y: np.ndarray) -> np.ndarray:
        """(..., D) in the sub-vector channel order -> (..., D) in the model's channel order."""
        out = np.empty_like(y)
        out[..., self.order] = y
        return out


def top_rms_channels(x: np.ndarray, n: int) -> np.ndarray:
    """The n channels of x (N, D) with the largest RMS over tokens, sorted by index."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rms = np.sqrt((x.astype(np.float64) ** 2).mean(axis=0))
    return np.sort(np.argsort(-rms, kind="stable")[:n])


def rope_pair_order(dim: int, m: int) -> np.ndarray:
    """Channel order whose M sub-vectors each hold whole RoPE pairs (i, i + dim/2), Hugging Face's rotate_half
    convention: sub-vector s holds pairs s*P .. (s+1)*P - 1 (P = dim/(2m)), first their channels i, then i + dim/2."""
    if dim % m or (dim // m) % 2:
        raise ValueError(f"RoPE-pair sub-vectors need an even sub-vector dimension, got head dim {dim}, M={m}")
    per, half = dim // m // 2, dim // 2
    return np.concatenate([np.r_[np.arange(s * per, (s + 1) * per), half + np.arange(s * per, (s + 1) * per)]
                           for s in range(m)])


def train_codebook(x: np.ndarray, m: int, k: int, rng: np.random.Generator, *, iters: int = 20,
                   outliers: int = 0, scale_channels: bool = False, init: Codebook | None = None,
                   seeding: str = "kmeans++", order: np.ndarray | None = None) -> Codebook:
    """Fit a codebook to training vectors x (N, D): the prefill's keys or values of one head.

    ``outliers``: the top channels by RMS are taken out of the PQ part (kept exact). ``scale_channels``: divide
    each channel by its RMS before clustering so that k-means does not spend its centroids on the largest channels.
    ``init``: the previous codebook, to refresh it with a warm start (its outliers and scales are kept).
    ``seeding``: "kmeans++" or "random" (k distinct training points); see ``workloads.accuracy`` for which wins where.
    ``order``: which channels each sub-vector holds (default: consecutive; ``rope_pair_order`` for pre-RoPE keys).
    """
    N, D = x.shape
    assert D % m == 0, f"head dim {D} not divisible by M={m}"
    if init is not None:
        scale, out, order = init.scale, init.outliers, init.order
    else:
        out = top_rms_channels(x, outliers)
        if scale_channels:
            rms = np.sqrt((x.astype(np.float64) ** 2).mean(axis=0))
            scale = np.where(rms > 0, rms / max(float(np.median(rms)), 1e-12), 1.0)
            scale = np.maximum(scale, 1e-6)
        else:
            scale = np.ones(D)
    proto = Codebook(centroids=np.zeros((m, k, D // m), np.float32), scale=np.asarray(scale, np.float64),
                     outliers=np.asarray(out, np.int64), order=None if order is None else np.asarray(order, np.int64))
    c = kmeans(proto._to_pq_space(x), k, rng, iters, init=None if init is None else init.centroids, seeding=seeding)
    return Codebook(centroids=c, scale=proto.scale, outliers=proto.outliers, order=proto.order)


def encode(cb: Codebook, x: np.ndarray) -> np.ndarray:
    """Nearest centroid per sub-space: x (N, D) -> codes (N, M) (uint8 for K <= 256)."""
    a, _ = _assign(cb._to_pq_space(x), cb.centroids)  # (M, N)
    return np.ascontiguousarray(a.T.astype(cb.code_dtype))


def decode(cb: Codebook, codes: np.ndarray, exact: np.ndarray | None = None) -> np.ndarray:
    """codes (N, M) -> vectors (N, D); ``exact`` (N, n_out) fills the outlier channels (zeros when None)."""
    N, M = codes.shape
    assert M == cb.m, (M, cb.m)
    sub = cb.centroids[np.arange(M)[None, :], codes.astype(np.int64)]  # (N, M, D/M)
    y = cb._from_order(sub.reshape(N, cb.dim).astype(np.float64)) * cb.scale
    if cb.outliers.size:
        y[:, cb.outliers] = 0.0 if exact is None else exact
    return y


# --- attention on codes --------------------------------------------------------------------------------------------
def score_table(cb: Codebook, q: np.ndarray) -> np.ndarray:
    """T[g, m, c] = q_m . C_m[c] in the scaled space: q (G, D) -> (G, M, K)."""
    G, D = q.shape
    assert D == cb.dim, (D, cb.dim)
    qs = q * cb.scale  # (q / s^-1): q . (s * y) == (q * s) . y
    if cb.outliers.size:
        qs = qs.copy()
        qs[:, cb.outliers] = 0.0  # the outlier channels are added exactly elsewhere
    qm = qs[:, cb.order].reshape(G, cb.m, D // cb.m).transpose(1, 0, 2)  # (M, G, D/M)
    t = np.matmul(qm, cb.centroids.transpose(0, 2, 1).astype(qm.dtype))  # (M, G, K)
    return t.transpose(1, 0, 2)


def scores_from_codes(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Score of every token: sum over sub-spaces of the table entry its code selects. (G, M, K), (N, M) -> (G, N)."""
    G, M, _ = table.shape
    N, M2 = codes.shape
    assert M == M2, (M, M2)
    s = np.zeros((G, N), dtype=table.dtype)
    for m in range(M):
        s += table[:, m, codes[:, m]]
    return s


def value_bins(w: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Softmax weight summed per (sub-space, centroid): w (G, N), codes (N, M) -> bins (G, M, K)."""
    G, N = w.shape
    N2, M = codes.shape
    assert N == N2, (N, N2)
    bins = np.zeros((G, M, k), dtype=w.dtype)
    if N == 0:
        return bins
    for m in range(M):
        c = codes[:, m]
        order = np.argsort(c, kind="stable")
        cs = c[order]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])  # first token of each present code
        bins[:, m, cs[starts]] = np.add.reduceat(w[:, order], starts, axis=1)
    return bins


def output_from_bins(cb: Codebook, bins: np.ndarray) -> np.ndarray:
    """Weighted sum of values from the bins: out_m = B[m] @ C_m, rescaled. (G, M, K) -> (G, D); outlier
    channels come out zero (the caller adds their exact part)."""
    G, M, K = bins.shape
    assert (M, K) == (cb.m, cb.k), (bins.shape, cb.centroids.shape)
    out = np.matmul(bins.transpose(1, 0, 2), cb.centroids.astype(bins.dtype))  # (M, G, D/M)
    return cb._from_order(out.transpose(1, 0, 2).reshape(G, cb.dim)) * cb.scale


@dataclass(frozen=True, eq=False)
class Partial:
    """Attention over a subset of tokens, normalised within it, with its log-sum-exp of scores.

    Two disjoint parts combine exactly (``merge``): this is how exact sink/window tokens and the PQ part meet,
    and how banks holding different tokens reduce their results (DESIGN step 3).
    """

    out: np.ndarray  # (G, D)
    lse: np.ndarray  # (G,) log sum exp of the part's scores (-inf for an empty part)


def _softmax_part(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked scores (-inf = absent) -> weights normalised per row, log-sum-exp per row (-inf if empty)."""
    mx = s.max(axis=1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(s - mx)
    tot = e.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (np.log(tot) + mx)[:, 0]
    return e / np.where(tot > 0, tot, 1.0), lse


def merge(a: Partial, b: Partial) -> Partial:
    """Attention over the union of two disjoint token sets from the two parts' results."""
    lse = np.logaddexp(a.lse, b.lse)
    safe = np.where(np.isfinite(lse), lse, 0.0)
    wa = np.where(np.isfinite(a.lse), np.exp(a.lse - safe), 0.0)[:, None]
    wb = np.where(np.isfinite(b.lse), np.exp(b.lse - safe), 0.0)[:, None]
    return Partial(out=wa * a.out + wb * b.out, lse=lse)


def exact_partial(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> Partial:
    """Ordinary attention of q (G, D) over k, v (N, D), restricted per row to ``mask`` (G, N) when given.

    q is already multiplied by the softmax scale (1/sqrt(D))."""
    G, D = q.shape
    assert k.shape == v.shape and k.shape[1] == D, (q.shape, k.shape, v.shape)
    s = q @ k.T  # (G, N)
    if mask is not None:
        assert mask.shape == s.shape, (mask.shape, s.shape)
        s = np.where(mask, s, -np.inf)
    w, lse = _softmax_part(s)
    return Partial(out=w @ v, lse=lse)


@dataclass(frozen=True, eq=False)
class CodedTensor:
    """A stored K or V stream of one head: codes plus the exact outlier channels."""

    cb: Codebook
    codes: np.ndarray  # (N, M)
    exact: np.ndarray  # (N, n_out) the outlier channels' values

    @classmethod
    def of(cls, cb: Codebook, x: np.ndarray) -> CodedTensor:
        return cls(cb=cb, codes=encode(cb, x), exact=np.asarray(x[:, cb.outliers], dtype=np.float64))

    def decoded(self) -> np.ndarray:
        return decode(self.cb, self.codes, self.exact)


@dataclass(frozen=True, eq=False)
class ResidualCoded:
    """A K or V stream coded in residual stages: stage s codes what stages 0..s-1 left. Only stage 0 may keep
    outlier channels (their residual is zero afterwards). ``codes`` (N, sum of the stages' M) are a token's codes,
    ``cb``/``exact`` stage 0's (its outliers and scales)."""

    stages: tuple[CodedTensor, ...]

    def __post_init__(self):
        assert self.stages and all(st.codes.shape[0] == self.stages[0].codes.shape[0] for st in self.stages)
        assert all(st.cb.dim == self.stages[0].cb.dim and not st.cb.outliers.size for st in self.stages[1:])

    @classmethod
    def of(cls, cbs: Sequence[Codebook], x: np.ndarray) -> ResidualCoded:
        """Greedy residual encoding of x (N, D) with one codebook per stage."""
        parts, r = [], np.asarray(x, np.float64)
        for cb in cbs:
            part = CodedTensor.of(cb, r)
            parts.append(part)
            r = r - part.decoded()
        return cls(stages=tuple(parts))

    @property
    def cb(self) -> Codebook:
        return self.stages[0].cb

    @property
    def exact(self) -> np.ndarray:
        return self.stages[0].exact

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate([st.codes.astype(np.int64) for st in self.stages], axis=1)

    def decoded(self) -> np.ndarray:
        return sum(st.decoded() for st in self.stages)


def train_residual(x: np.ndarray, m: int, k: int, stages: int, rng_of, *, iters: int = 20, outliers: int = 0,
                   scale_channels: bool = False, seeding: str = "kmeans++", rope_pairs: bool = False
                   ) -> tuple[Codebook, ...]:
    """Codebooks of ``stages`` residual stages of ``m / stages`` sub-spaces and ``k`` centroids each, trained on
    x (N, D): stage 0 on x (with the outlier channels and scales of ``train_codebook``), stage s on what stages
    0..s-1 leave of x. ``rng_of(s)``: the generator of stage s. ``rope_pairs``: every stage's sub-vectors hold whole
    RoPE pairs (``rope_pair_order``), for pre-RoPE keys."""
    N, D = x.shape
    assert stages >= 1 and m % stages == 0, (m, stages)
    ms = m // stages
    order = rope_pair_order(D, ms) if rope_pairs else None
    cbs, r = [], np.asarray(x, np.float64)
    for s in range(stages):
        cb = train_codebook(r, ms, k, rng_of(s), iters=iters, outliers=outliers if s == 0 else 0,
                            scale_channels=scale_channels and s == 0, seeding=seeding, order=order)
        cbs.append(cb)
        r = r - CodedTensor.of(cb, r).decoded()
    return tuple(cbs)


def rope_augmented(x: np.ndarray, positions: np.ndarray, theta: float, copies: int, horizon: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Training keys (N, D) at token ``positions`` (post-RoPE) followed by ``copies`` copies of them rotated to
    positions drawn uniformly from [0, ``horizon``): each key's RoPE undone at its own position and redone at the
    drawn one (``rope``). theta 0 (no RoPE: synthetic data) or no copies: x itself."""
    x = np.asarray(x, np.float64)
    if copies <= 0 or theta <= 0 or len(x) == 0:
        return x
    pre = rope(x, positions, theta, inverse=True)
    return np.concatenate([x, *(rope(pre, rng.integers(0, horizon, len(x)), theta) for _ in range(copies))])


def pq_scores(q: np.ndarray, kc: CodedTensor | ResidualCoded) -> np.ndarray:
    """Scores on codes (table + gather) plus the exact outlier-channel part: (G, D) -> (G, N). A
    ``ResidualCoded`` stream sums its stages' scores."""
    if isinstance(kc, ResidualCoded):
        return sum(pq_scores(q, st) for st in kc.stages)
    s = scores_from_codes(score_table(kc.cb, q), kc.codes)
    if kc.cb.outliers.size:
        s = s + q[:, kc.cb.outliers] @ kc.exact.T
    return s


def rope_score_table(cb: Codebook, q: np.ndarray) -> np.ndarray:
    """Complex query table of pre-RoPE key codes: A[g, m, c, t] = conj(q~_t) C~_m[c]_t over the P = D/(2M) RoPE
    pairs t of sub-space m (x~ = x_i + j x_{i+D/2}); needs ``rope_pair_order``. (G, D) -> (G, M, K, P) complex.
    Outlier channels are zero in the centroids, so q is used whole (RoPE mixes an outlier with its partner)."""
    G, D = q.shape
    M, K, dsub = cb.centroids.shape
    per = dsub // 2
    assert np.array_equal(cb.order, rope_pair_order(D, M)), "pre-RoPE tables need RoPE-pair sub-vectors"
    qo = q[:, cb.order].reshape(G, M, dsub)
    c = cb.centroids.astype(np.float64) * cb.scale[cb.order].reshape(M, 1, dsub)
    qc = qo[..., :per] + 1j * qo[..., per:]  # (G, M, P)
    cc = c[..., :per] + 1j * c[..., per:]  # (M, K, P)
    return np.conj(qc)[:, :, None, :] * cc[None]


def rope_rotations(positions: np.ndarray, dim: int, m: int, theta: float) -> np.ndarray:
    """e^{j p theta_i} for every token position p and RoPE pair i, laid out as the table's (M, P): (N, M, P).
    theta 0 means no RoPE (synthetic data): all ones."""
    order = rope_pair_order(dim, m).reshape(m, -1)[:, : dim // m // 2]  # pair index i per (m, t)
    if theta <= 0:
        return np.ones((len(positions), *order.shape), dtype=np.complex128)
    inv_freq = float(theta) ** (-2.0 * order / dim)
    return np.exp(1j * np.asarray(positions, np.float64)[:, None, None] * inv_freq[None])


def rope(x: np.ndarray, positions: np.ndarray, theta: float, inverse: bool = False) -> np.ndarray:
    """RoPE (rotate_half convention) of x (N, D) at ``positions``; theta 0 = identity. float64."""
    if theta <= 0:
        return np.asarray(x, np.float64)
    N, D = x.shape
    half = D // 2
    inv_freq = float(theta) ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None]
    cos, sin = np.cos(ang), np.sin(ang) * (-1.0 if inverse else 1.0)
    a, b = np.asarray(x[:, :half], np.float64), np.asarray(x[:, half:], np.float64)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)


def rope_pq_scores(q: np.ndarray, kc: CodedTensor | ResidualCoded, positions: np.ndarray, theta: float) -> np.ndarray:
    """Scores of post-RoPE queries (G, D) on keys coded before RoPE, at token ``positions`` (N,): per token, the
    M x P complex table entries its codes select, each rotated by its position, real parts summed; plus the exact
    outlier channels rotated. Equal to q @ RoPE(decoded).T. -> (G, N). A ``ResidualCoded`` stream sums its
    stages' scores (each stage's sub-vectors hold whole RoPE pairs)."""
    if isinstance(kc, ResidualCoded):
        return sum(rope_pq_scores(q, st, positions, theta) for st in kc.stages)
    G, D = q.shape
    cb = kc.cb
    table = rope_score_table(cb, q)  # (G, M, K, P)
    rot = rope_rotations(positions, D, cb.m, theta)  # (N, M, P)
    s = np.zeros((G, kc.codes.shape[0]))
    for m in range(cb.m):
        t = table[:, m, kc.codes[:, m]]  # (G, N, P)
        s += (t.real * rot[None, :, m].real - t.imag * rot[None, :, m].imag).sum(-1)
    if cb.outliers.size:
        ex = np.zeros((kc.codes.shape[0], D))
        ex[:, cb.outliers] = kc.exact
        s += q @ rope(ex, positions, theta).T
    return s


def pq_partial(q: np.ndarray, kc: CodedTensor | ResidualCoded, vc: CodedTensor | ResidualCoded,
               mask: np.ndarray | None = None, scores: np.ndarray | None = None) -> Partial:
    """Attention of q (G, D) over coded keys and values without decoding them (restricted to ``mask`` (G, N)).

    ``scores`` may pass in ``pq_scores(q, kc)`` when the caller already has it."""
    G, D = q.shape
    N = kc.codes.shape[0]
    assert vc.codes.shape[0] == N and kc.cb.dim == vc.cb.dim == D
    s = pq_scores(q, kc) if scores is None else scores
    assert s.shape == (G, N), s.shape
    if mask is not None:
        assert mask.shape == (G, N), mask.shape
        s = np.where(mask, s, -np.inf)
    w, lse = _softmax_part(s)
    stages = vc.stages if isinstance(vc, ResidualCoded) else (vc,)
    out = np.zeros((G, D))
    for st in stages:  # (G, D) per stage, outlier channels zero; one stage without residual coding
        out += output_from_bins(st.cb, value_bins(w, st.codes, st.cb.k))
    if vc.cb.outliers.size:
        out[:, vc.cb.outliers] = w @ vc.exact
    return Partial(out=out, lse=lse)


def gqa_rows(q: np.ndarray) -> np.ndarray:
    """Queries (T, g, D) of the g query heads sharing one KV head at T positions -> rows (T*g, D)."""
    T, g, D = q.shape
    return q.reshape(T * g, D)


def rerank_mask(scores: np.ndarray, coded: np.ndarray, r: int, group: int) -> np.ndarray:
    """The coded tokens a query row attends exactly under exact re-rank: per position and KV head, the ``r`` coded
    tokens of highest coded score, scored by the largest over the ``group`` query heads sharing the KV head (one
    selection per (sequence, KV head) and step, so one fetch serves the whole group). ``scores``, ``coded``:
    (T*group, N), rows as ``gqa_rows`` orders them; returns a (T*group, N) mask within ``coded``."""
    G, N = scores.shape
    if r <= 0 or N == 0:
        return np.zeros_like(coded, dtype=bool)
    assert G % group == 0 and coded.shape == (G, N), (scores.shape, coded.shape, group)
    s = np.where(coded, scores, -np.inf).reshape(G // group, group, N).max(axis=1)  # (T, N)
    r = min(r, N)
    top = np.argpartition(-s, r - 1, axis=1)[:, :r]
    mask = np.zeros((G // group, N), dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return np.repeat(mask, group, axis=0) & coded
