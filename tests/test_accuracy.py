"""Accuracy evaluation on the SmolLM2 capture shipped with the package and on Gaussian data; the CLI; the perplexity
hook."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli import main
from workloads import pq
from workloads.accuracy import EvalConfig, evaluate, format_table, view_fn_for
from workloads.activations import apply_rope, bundled_path, load_activations, synthetic_activations
from workloads.errors import WorkloadError
from workloads.kvformats import parse_format
from workloads.perplexity import coded_hook, have_torch_stack

FIXTURE = bundled_path()
REQUIRED = ("data", "setting", "code_bits_per_element", "compression", "out_cos_mean", "out_cos_min")


@pytest.fixture(scope="module")
def real():
    return load_activations(FIXTURE)


def fmts(*texts):
    return [parse_format(t) for t in texts]


def test_fixture_is_smollm2_with_gqa_and_small():
    acts = load_activations(FIXTURE)
    assert FIXTURE.stat().st_size < 5e6
    assert FIXTURE.parts[-3:] == ("workloads", "data", "smollm2_gpl3_2k.npz")  # package data, not a test file
    assert (acts.n_tokens, acts.n_kv_heads, acts.group, acts.head_dim) == (2048, 3, 3, 64)
    assert acts.model.n_layers == 30 and len(acts.layers) == 3 and acts.rope_theta == 1e5
    assert acts.q_pos.tolist() == list(range(1920, 2048))


def test_rope_is_a_rotation_that_only_sees_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 64)), rng.standard_normal((1, 64))
    dot = lambda p, r: float((apply_rope(q, np.array([p]), 1e5) * apply_rope(k, np.array([r]), 1e5)).sum())  # noqa: E731
    assert dot(10, 3) == pytest.approx(dot(1007, 1000), rel=1e-9)
    x = rng.standard_normal((5, 2, 64))
    back = apply_rope(apply_rope(x, np.arange(5), 1e5), np.arange(5), 1e5, inverse=True)
    np.testing.assert_allclose(back, x, atol=1e-12)


def test_real_keys_have_a_sink_and_outlier_channels_that_gaussian_data_lacks(real):
    syn = synthetic_activations(np.random.default_rng(0), n_tokens=1024, n_queries=32, n_layers=1)

    def sink_mass_and_outlier_ratio(acts, layer):
        q = acts.q[layer, -1, 0] * acts.head_dim ** -0.5
        w = np.exp(acts.k[layer, :, 0] @ q - (acts.k[layer, :, 0] @ q).max())
        rms = np.sqrt((acts.k[layer, :, 0] ** 2).mean(0))
        return w[0] / w.sum(), rms.max() / np.median(rms)

    mass_real, ratio_real = sink_mass_and_outlier_ratio(real, -1)  # layer 27
    mass_syn, ratio_syn = sink_mass_and_outlier_ratio(syn, 0)
    assert mass_real > 0.1 > 0.01 > mass_syn
    assert ratio_real > 3.0 > 1.5 > ratio_syn


def test_exact_tokens_and_more_centroids_improve_real_attention(real):
    cfg = EvalConfig(n_queries=16, iters=8)
    rows = evaluate(real, fmts("fp16", "pq:m=16,k=16", "pq:m=16,k=16,sinks=4,recent=64", "pq:m=16,k=64,sinks=4,"
                               "recent=64"), cfg)
    for r in rows:
        assert all(k in r for k in REQUIRED) and r["data"] == "real"
    fp16, bare, window, more = rows
    assert fp16["out_cos_min"] == pytest.approx(1.0) and fp16["compression"] == 1.0
    assert window["out_cos_mean"] > bare["out_cos_mean"] and window["out_cos_min"] > bare["out_cos_min"]
    assert more["key_rel_err"] < window["key_rel_err"] and more["code_bits_per_element"] == 1.5
    assert 0.0 < more["topk_overlap"] <= 1.0
    assert "setting" in format_table(rows) and "pq:m=16,k=64,sinks=4,recent=64" in format_table(rows)


def test_codebooks_trained_on_an_early_prefill_code_held_out_tokens_and_refresh_reduces_that(real):
    cfg = EvalConfig(n_queries=8, prefill=256, iters=4)
    fixed, refreshed = evaluate(real, fmts("pq:m=16,k=16", "pq:m=16,k=16,refresh=256"), cfg)
    assert fixed["prefill"] == 256 and fixed["heldout_frac"] > 0.5
    assert refreshed["heldout_frac"] < fixed["heldout_frac"]
    default = evaluate(real, fmts("pq:m=16,k=16,recent=8"), EvalConfig(n_queries=8, iters=4))[0]
    assert default["heldout_frac"] == 0.0  # decode tokens all inside the recent window


def test_rope_augmented_key_codebooks_code_later_positions_better(real):
    """Codebooks trained on the first 512 tokens code keys up to position 2,047: with rotated copies of the
    training keys (rope_aug) the later keys' error and the attention output improve (the fix's mechanism on the
    fixture; docs/accuracy.md gives the held-out layers' figures)."""
    acts = real.select_layers([real.layers[0]])
    cfg = EvalConfig(n_queries=16, prefill=512, iters=6)
    plain, aug = evaluate(acts, fmts("pq:m=8,k=64,sinks=4,recent=16", "pq:m=8,k=64,sinks=4,recent=16,rope_aug=1"),
                          cfg)
    assert aug["setting"].endswith("rope_aug=1") and aug["code_bits_per_element"] == plain["code_bits_per_element"]
    assert aug["key_rel_err"] < plain["key_rel_err"]
    assert aug["out_cos_mean"] > plain["out_cos_mean"]
    assert aug["value_rel_err"] == plain["value_rel_err"]  # values are trained as before


def test_exact_rerank_attends_the_selected_tokens_exactly(real):
    """Re-rank's exact tokens: more of them bring the output closer to FP16, and when every coded token is
    selected the output is FP16 attention (cosine 1); the selection does not touch the codes (same key error)."""
    acts = real.select_layers([real.layers[0]])
    cfg = EvalConfig(n_queries=8, iters=4)
    base = "pq:m=8,k=16,sinks=4,recent=16"
    plain, few, all_ = evaluate(acts, fmts(base, f"{base},rerank=8", f"{base},rerank=4096"), cfg)
    assert few["out_cos_mean"] > plain["out_cos_mean"] and few["out_cos_min"] > plain["out_cos_min"]
    assert all_["out_cos_min"] == pytest.approx(1.0, abs=1e-9)
    assert few["key_rel_err"] == plain["key_rel_err"] and few["code_bits_per_element"] == plain["code_bits_per_element"]
    with pytest.raises(WorkloadError, match="perplexity with rerank"):
        view_fn_for(parse_format(f"{base},rerank=8"), 200, cfg)


@settings(max_examples=40, deadline=None)
@given(positions=st.integers(1, 4), group=st.integers(1, 4), n=st.integers(1, 40), r=st.integers(0, 50),
       seed=st.integers(0, 2**16))
def test_rerank_mask_picks_the_top_coded_tokens_of_each_position(positions, group, n, r, seed):
    """Per position: the same tokens for every query head of the group, min(r, coded) of them, all coded, and none
    unselected scores above a selected one (scores: the largest over the group)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((positions * group, n))
    coded = np.repeat(rng.random((positions, n)) < 0.7, group, axis=0)
    mask = pq.rerank_mask(scores, coded, r, group)
    assert not (mask & ~coded).any()
    best = np.where(coded, scores, -np.inf).reshape(positions, group, n).max(axis=1)
    for t in range(positions):
        rows = mask[t * group:(t + 1) * group]
        assert (rows == rows[0]).all()
        sel, c = rows[0], coded[t * group]
        assert sel.sum() == min(r, c.sum())
        if sel.any() and (c & ~sel).any():
            assert best[t][sel].min() >= best[t][c & ~sel].max()


def test_rope_aug_changes_nothing_without_rope():
    acts = synthetic_activations(np.random.default_rng(1), n_tokens=256, n_queries=16, n_layers=1)
    cfg = EvalConfig(n_queries=16, iters=5, seed=3)
    plain, aug = evaluate(acts, fmts("pq:m=8,k=16", "pq:m=8,k=16,rope_aug=2"), cfg, data="synthetic")
    assert {k: v for k, v in aug.items() if k != "setting"} == {k: v for k, v in plain.items() if k != "setting"}


def test_the_perplexity_view_trains_rope_aug_key_codebooks_too():
    """The K/V the perplexity hook sees (``view_fn_for``): rope_aug changes the keys' codebooks only where there is
    RoPE to undo, and never the values."""
    rng = np.random.default_rng(5)
    k, v = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    cfg = EvalConfig(iters=3)
    views = {(text, theta): view_fn_for(fmts(text)[0], 200, cfg, theta)(0, 0, k, v)
             for text in ("pq:m=4,k=8,sinks=2", "pq:m=4,k=8,sinks=2,rope_aug=1") for theta in (0.0, 1e4)}
    plain, aug = views[("pq:m=4,k=8,sinks=2", 0.0)], views[("pq:m=4,k=8,sinks=2,rope_aug=1", 0.0)]
    np.testing.assert_array_equal(plain[0], aug[0])
    plain, aug = views[("pq:m=4,k=8,sinks=2", 1e4)], views[("pq:m=4,k=8,sinks=2,rope_aug=1", 1e4)]
    assert not np.array_equal(plain[0], aug[0])
    np.testing.assert_array_equal(plain[1], aug[1])


def test_synthetic_rows_deterministic_and_int8_nearly_exact():
    acts = synthetic_activations(np.random.default_rng(1), n_tokens=256, n_queries=16, n_layers=1)
    cfg = EvalConfig(n_queries=16, iters=5, seed=3)
    a = evaluate(acts, fmts("int:bits=8", "pq:m=8,k=16"), cfg, data="synthetic")
    b = evaluate(acts, fmts("int:bits=8", "pq:m=8,k=16"), cfg, data="synthetic")
    assert a == b
    assert a[0]["out_cos_min"] > 0.999 and a[0]["data"] == "synthetic"
    assert a[1]["out_cos_mean"] < a[0]["out_cos_mean"]


def test_evaluation_rejects_too_few_training_tokens(real):
    with pytest.raises(WorkloadError, match="training tokens"):
        evaluate(real, fmts("pq:m=16,k=256"), EvalConfig(prefill=100))


def test_cli_writes_rows_atomically_and_reports_bad_settings(tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert main(["accuracy", "--data", "synthetic", "--context", "192", "--queries", "8", "--iters", "3",
                 "--settings", "fp16", "pq:m=8,k=16,sinks=2,recent=8", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["fp16", "pq:m=8,k=16,sinks=2,recent=8"]
    assert all(k in r for r in rows for k in REQUIRED)
    assert [p.name for p in tmp_path.iterdir()] == ["acc.json"]  # no temp file left
    assert "pq:m=8,k=16,sinks=2,recent=8" in capsys.readouterr().out
    assert main(["accuracy", "--data", "synthetic", "--settings", "pq:m=8,kk=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'k'" in err and "\n" not in err


def test_coded_hook_with_exact_view_is_causal_attention_and_leaves_prefill_exact():
    rng = np.random.default_rng(0)
    Hq, Hkv, N, D = 4, 2, 24, 8
    q, k, v = rng.standard_normal((Hq, N, D)), rng.standard_normal((Hkv, N, D)), rng.standard_normal((Hkv, N, D))
    causal = np.tril(np.ones((N, N), bool))
    exact = coded_hook(lambda li, h, kk, vv: (kk, vv), prefill=16, sinks=1, recent=2)(0, q, k, v, D ** -0.5)
    for qi in range(Hq):
        ref = pq.exact_partial(q[qi] * D ** -0.5, k[qi // 2], v[qi // 2], causal).out
        np.testing.assert_allclose(exact[:, qi], ref, rtol=1e-5, atol=1e-6)
    noisy = coded_hook(lambda li, h, kk, vv: (kk + 1.0, vv + 1.0), prefill=16, sinks=1, recent=2)(0, q, k, v, 0.3)
    exact = coded_hook(lambda li, h, kk, vv: (kk, vv), prefill=16, sinks=1, recent=2)(0, q, k, v, 0.3)
    np.testing.assert_array_equal(noisy[:16], exact[:16])
    assert not np.allclose(noisy[16:], exact[16:])


@pytest.mark.skipif(not have_torch_stack(), reason="needs the optional 'real' extra (torch, transformers, ...)")
def test_smollm2_perplexity_hook_with_fp16_view_matches_the_plain_model():
    from workloads import perplexity as px

    lm = px.load_smollm2()
    ids = px.tokenize(lm, "gpl-3", 96)
    plain = px.perplexity(lm, ids, 64, None)
    hooked = px.perplexity(lm, ids, 64, px.coded_hook(lambda li, h, k, v: (k, v), 64, 0, 0))
    assert 1.0 < plain < 1000.0
    assert hooked == pytest.approx(plain, rel=1e-4)


def test_worst_queries_explain_the_lowest_cosines(tmp_path, capsys):
    """``--worst N``: per setting the N queries of lowest output cosine, lowest first, the first of them the row's
    ``out_cos_min``; each with its exact and coded attention weights (distributions over the visible tokens),
    its most-attended tokens in exact order, and exact tokens seen unchanged by the format."""
    out = tmp_path / "acc.json"
    assert main(["accuracy", "--data", "synthetic", "--context", "192", "--queries", "8", "--iters", "3",
                 "--settings", "fp16", "pq:m=8,k=16,sinks=2,recent=8", "--worst", "3", "--json-out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert "worst queries, synthetic, pq:m=8,k=16,sinks=2,recent=8:" in text
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    for row in rows.values():
        worst = row["worst_queries"]
        assert len(worst) == 3 and worst[0]["cos"] == row["out_cos_min"]
        assert [w["cos"] for w in worst] == sorted(w["cos"] for w in worst)
        for w in worst:
            assert 0.0 <= w["coded_mass"] <= 1.0 + 1e-12 and 0.0 <= w["coded_mass_coded"] <= 1.0 + 1e-12
            weights = [t["weight"] for t in w["top_tokens"]]
            assert len(weights) == 3 and weights == sorted(weights, reverse=True) and sum(weights) <= 1 + 1e-12
            assert all(t["token"] <= w["position"] for t in w["top_tokens"])  # causal
            for t in w["top_tokens"]:
                if not t["coded"]:
                    assert t["score_coded"] == t["score"]
    fp16 = rows["fp16"]["worst_queries"][0]
    assert fp16["cos"] == pytest.approx(1.0)  # FP16 "codes" every token exactly
    assert fp16["coded_mass_coded"] == pytest.approx(fp16["coded_mass"])
    assert all(t["weight_coded"] == pytest.approx(t["weight"]) and t["score_coded"] == t["score"]
               for t in fp16["top_tokens"])
