"""PQ math: k-means, encode/decode, and attention on codes equal to ordinary attention over the decoded cache."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import pq


@st.composite
def pq_case(draw):
    m = draw(st.sampled_from([1, 2, 4]))
    dsub = draw(st.sampled_from([1, 2, 3]))
    k = draw(st.sampled_from([2, 4, 16]))
    n = draw(st.integers(1, 40))
    t, g = draw(st.integers(1, 3)), draw(st.integers(1, 3))  # query positions x query heads per KV head (GQA)
    d = m * dsub
    outliers = draw(st.integers(0, d - 1))
    scale = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return m, k, n, t, g, d, outliers, scale, seed


def _data(seed, n, t, g, d):
    rng = np.random.default_rng(seed)
    chan = np.exp(rng.normal(0, 1, d))  # uneven channel magnitudes, like real keys
    k = rng.standard_normal((n, d)) * chan
    v = rng.standard_normal((n, d))
    q = rng.standard_normal((t, g, d))
    mask = rng.random((t * g, n)) < 0.7
    return rng, k, v, q, mask


@given(pq_case())
def test_attention_on_codes_equals_attention_over_decoded_cache(case):
    m, k, n, t, g, d, outliers, scale, seed = case
    rng, K, V, q, mask = _data(seed, n, t, g, d)
    rows = pq.gqa_rows(q) * d ** -0.5
    assert rows.shape == (t * g, d)
    kc = pq.CodedTensor.of(pq.train_codebook(K, m, k, rng, iters=5, outliers=outliers, scale_channels=scale), K)
    vc = pq.CodedTensor.of(pq.train_codebook(V, m, k, rng, iters=5, outliers=outliers), V)
    on_codes = pq.pq_partial(rows, kc, vc, mask)
    dense = pq.exact_partial(rows, kc.decoded(), vc.decoded(), mask)
    np.testing.assert_allclose(on_codes.out, dense.out, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(on_codes.lse, dense.lse, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pq.pq_scores(rows, kc), rows @ kc.decoded().T, rtol=1e-9, atol=1e-9)


@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_merging_disjoint_parts_equals_attention_over_their_union(n, d, seed):
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((3, d)), rng.standard_normal((n, d)) * 3, rng.standard_normal((n, d))
    part_a = rng.random((3, n)) < 0.5
    part_a[0] = False  # one row whose first part is empty: its merge must be the other part alone
    whole = pq.exact_partial(q, k, v)
    merged = pq.merge(pq.exact_partial(q, k, v, part_a), pq.exact_partial(q, k, v, ~part_a))
    np.testing.assert_allclose(merged.out, whole.out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(merged.lse, whole.lse, rtol=1e-10)


def test_value_bins_collect_each_tokens_weight_once_per_subspace():
    codes = np.array([[0, 3], [2, 3], [0, 1]])  # 3 tokens, M=2
    w = np.array([[0.5, 0.2, 0.3]])
    bins = pq.value_bins(w, codes, 4)
    assert bins.shape == (1, 2, 4)
    np.testing.assert_allclose(bins[0, 0], [0.8, 0.0, 0.2, 0.0])  # tokens 0 and 2 share centroid 0
    np.testing.assert_allclose(bins[0, 1], [0.0, 0.3, 0.0, 0.7])


def test_encode_picks_the_nearest_centroid_in_every_subspace():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 8))
    cb = pq.train_codebook(x, m=4, k=8, rng=rng, iters=3)
    codes = encode_brute(cb, x)
    np.testing.assert_array_equal(pq.encode(cb, x), codes)


def encode_brute(cb, x):
    sub = x.reshape(len(x), cb.m, -1)
    return np.stack([[np.argmin(((cb.centroids[m] - s[m]) ** 2).sum(1)) for m in range(cb.m)] for s in sub])


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centers[rng.integers(0, 4, 400)] + rng.normal(0, 0.1, (400, 2)))[None]  # one sub-space
    a = pq.kmeans(x, 4, np.random.default_rng(5), iters=10)
    b = pq.kmeans(x, 4, np.random.default_rng(5), iters=10)
    np.testing.assert_array_equal(a, b)
    found = np.sort(np.round(a[0] / 10).astype(int), axis=0)
    np.testing.assert_array_equal(np.unique(np.round(a[0] / 10), axis=0), np.unique(centers / 10, axis=0))
    assert found.shape == (4, 2)


def test_kmeans_leaves_no_empty_centroid_when_points_allow():
    x = np.repeat(np.arange(16.0), 4)[None, :, None]  # 16 distinct values, 4 copies each
    c = pq.kmeans(x, 16, np.random.default_rng(1), iters=15)
    assert len(np.unique(c[0, :, 0])) == 16


def test_more_centroids_code_better_and_outlier_channels_are_exact():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 16))
    x[:, 5] *= 30.0
    errs = []
    for k in (4, 16, 64):
        cb = pq.train_codebook(x, 4, k, np.random.default_rng(0))
        errs.append(np.linalg.norm(pq.CodedTensor.of(cb, x).decoded() - x))
    assert errs[0] > errs[1] > errs[2]
    cb = pq.train_codebook(x, 4, 16, np.random.default_rng(0), outliers=1)
    assert cb.outliers.tolist() == [5]
    np.testing.assert_array_equal(pq.CodedTensor.of(cb, x).decoded()[:, 5], x[:, 5])


def test_codes_use_the_smallest_integer_type():
    x = np.random.default_rng(0).standard_normal((300, 4))
    assert pq.encode(pq.train_codebook(x, 2, 256, np.random.default_rng(0), iters=1), x).dtype == np.uint8
    assert pq.encode(pq.train_codebook(x, 2, 512, np.random.default_rng(0), iters=1), x).dtype == np.uint16


def test_shape_mismatch_is_caught():
    x = np.zeros((10, 8))
    cb = pq.train_codebook(x + np.arange(10)[:, None], 2, 2, np.random.default_rng(0), iters=1)
    with pytest.raises(AssertionError):
        pq.score_table(cb, np.zeros((1, 6)))


# --- keys coded before RoPE, RoPE applied through the complex query table -------------------------------------------
@given(st.sampled_from([1, 2, 4]), st.sampled_from([2, 4]), st.integers(1, 30), st.integers(0, 3), st.booleans(),
       st.sampled_from([0.0, 10000.0, 100.0]), st.integers(0, 2**31 - 1))
def test_rope_table_scores_equal_queries_against_rotated_decoded_keys(m, dsub, n, outliers, scale, theta, seed):
    d = m * dsub
    rng, K, _, q, _ = _data(seed, n, 2, 2, d)
    pos = rng.integers(0, 5000, n)  # any positions, not only 0..n-1
    cb = pq.train_codebook(K, m, 4, rng, iters=3, outliers=min(outliers, d - 1), scale_channels=scale,
                           order=pq.rope_pair_order(d, m))
    kc = pq.CodedTensor.of(cb, K)
    rows = pq.gqa_rows(q)
    np.testing.assert_allclose(pq.rope_pq_scores(rows, kc, pos, theta), rows @ pq.rope(kc.decoded(), pos, theta).T,
                               rtol=1e-9, atol=1e-9)


def test_rope_matches_the_capture_convention_and_inverts():
    from workloads.activations import apply_rope

    x = np.random.default_rng(4).standard_normal((20, 16))
    pos = np.arange(100, 120)
    np.testing.assert_allclose(pq.rope(x, pos, 10000.0), apply_rope(x, pos, 10000.0), atol=1e-12)
    np.testing.assert_allclose(pq.rope(pq.rope(x, pos, 5e5), pos, 5e5, inverse=True), x, atol=1e-12)


def test_rope_pair_order_keeps_each_pair_in_one_sub_vector():
    order = pq.rope_pair_order(16, 2).reshape(2, 8)
    for sub in order:
        assert sorted(set(sub % 8)) == sorted(sub[:4]) and set(sub[4:]) == set(sub[:4] + 8)
    with pytest.raises(ValueError, match="even"):
        pq.rope_pair_order(12, 4)  # 3-dim sub-vectors cannot hold whole pairs


def test_channel_order_does_not_change_what_attention_on_codes_computes():
    rng, K, V, q, mask = _data(7, 60, 2, 3, 8)
    order = rng.permutation(8)
    kc = pq.CodedTensor.of(pq.train_codebook(K, 2, 4, rng, iters=3, order=order), K)
    vc = pq.CodedTensor.of(pq.train_codebook(V, 2, 4, rng, iters=3, order=order), V)
    rows = pq.gqa_rows(q)
    dense = pq.exact_partial(rows, kc.decoded(), vc.decoded(), mask)
    np.testing.assert_allclose(pq.pq_partial(rows, kc, vc, mask).out, dense.out, rtol=1e-9, atol=1e-9)


# --- residual stages (format option ``stages``) ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.sampled_from([(4, 1), (4, 2), (4, 4), (2, 2)]), st.sampled_from([2, 4]), st.integers(1, 40),
       st.integers(0, 2), st.booleans(), st.booleans(), st.sampled_from([0.0, 100.0]), st.integers(0, 2**31 - 1))
def test_residual_stages_decode_to_the_sum_of_their_stages_and_attention_on_codes_is_exact(
        m_st, k, n, outliers, scale, pre_rope, theta, seed):
    m, stages = m_st
    d = 8
    rng, K, V, q, mask = _data(seed, n, 2, 3, d)
    cbs = pq.train_residual(K, m, k, stages, lambda s: np.random.default_rng([seed, s]), iters=3,
                            outliers=outliers, scale_channels=scale, rope_pairs=pre_rope)
    assert len(cbs) == stages and all(cb.m == m // stages for cb in cbs)
    assert all(cb.outliers.size == 0 for cb in cbs[1:])  # only stage 0 keeps outlier channels
    kc = pq.ResidualCoded.of(cbs, K)
    vc = pq.ResidualCoded.of(pq.train_residual(V, m, k, stages, lambda s: np.random.default_rng([seed, 9, s]),
                                               iters=3), V)
    # decode = sum of the stage decodes; stage s codes what the stages before it left
    np.testing.assert_allclose(kc.decoded(), sum(st_.decoded() for st_ in kc.stages), rtol=0, atol=1e-12)
    rest = K.astype(np.float64)
    for cb, part in zip(cbs, kc.stages, strict=True):
        np.testing.assert_array_equal(part.codes, pq.encode(cb, rest))
        rest = rest - part.decoded()
    assert kc.codes.shape == (n, m)  # a token's codes: m of them whatever the stages
    rows = pq.gqa_rows(q) * d ** -0.5
    if pre_rope:
        pos = rng.integers(0, 3000, n)
        s = pq.rope_pq_scores(rows, kc, pos, theta)
        np.testing.assert_allclose(s, rows @ pq.rope(kc.decoded(), pos, theta).T, rtol=1e-9, atol=1e-9)
        k_dense = pq.rope(kc.decoded(), pos, theta)
    else:
        s = pq.pq_scores(rows, kc)
        np.testing.assert_allclose(s, rows @ kc.decoded().T, rtol=1e-9, atol=1e-9)
        k_dense = kc.decoded()
    on_codes = pq.pq_partial(rows, kc, vc, mask, scores=s)
    dense = pq.exact_partial(rows, k_dense, vc.decoded(), mask)
    np.testing.assert_allclose(on_codes.out, dense.out, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(on_codes.lse, dense.lse, rtol=1e-9, atol=1e-9)


def test_more_residual_stages_fit_the_training_data_closer_at_the_same_code_bits():
    x = np.random.default_rng(3).standard_normal((400, 8))
    err = [np.linalg.norm(pq.ResidualCoded.of(pq.train_residual(x, 4, 16, s, lambda i: np.random.default_rng(i)),
                                              x).decoded() - x) for s in (1, 2, 4)]
    assert err[2] < err[0]  # four 8-dim stages of 16 centroids beat four 2-dim sub-spaces (same 16 code bits)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.sampled_from([2, 4, 8]), st.integers(0, 3), st.sampled_from([0.0, 1e4, 5e5]),
       st.integers(0, 2**31 - 1))
def test_rope_augmented_keys_are_the_keys_then_their_rotations_to_drawn_positions(n, d, copies, theta, seed):
    rng = np.random.default_rng(seed)
    pos = np.arange(7, 7 + n)
    x = pq.rope(rng.standard_normal((n, d)), pos, theta)  # post-RoPE keys at their positions
    out = pq.rope_augmented(x, pos, theta, copies, 64, np.random.default_rng(seed))
    if theta == 0.0 or copies == 0:  # no RoPE to undo, or nothing asked: the keys themselves
        np.testing.assert_array_equal(out, x)
        return
    assert out.shape == ((1 + copies) * n, d)
    np.testing.assert_array_equal(out[:n], x)
    drawn = np.random.default_rng(seed)
    pre = pq.rope(x, pos, theta, inverse=True)
    for c in range(copies):
        at = drawn.integers(0, 64, n)
        np.testing.assert_allclose(pq.rope(out[(c + 1) * n:(c + 2) * n], at, theta, inverse=True), pre, atol=1e-9)
        # a rotation: every RoPE pair keeps its length
        half = d // 2
        np.testing.assert_allclose(np.hypot(out[(c + 1) * n:(c + 2) * n, :half], out[(c + 1) * n:(c + 2) * n, half:]),
                                   np.hypot(x[:, :half], x[:, half:]), atol=1e-9)
