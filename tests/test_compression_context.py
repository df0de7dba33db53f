"""Compression as the context grows: bits per element by part, the asymptote, the 90% contexts, the run details
entry and the figure's script (workloads.kvformats.compression_by_context, experiments/compression_context.py)."""

import csv
import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads.kvformats import (
    PqSettings,
    asymptotic_bits_per_element,
    bits_per_element,
    bits_per_element_by_part,
    compression,
    compression_by_context,
    context_for_ratio,
    parse_format,
)
from workloads.models import ModelSpec, load_model

ROOT = Path(__file__).resolve().parents[1]
LLAMA = load_model("llama-3.1-8b")


def _model(head_dim: int, layers: int, kv_heads: int) -> ModelSpec:
    return ModelSpec(name="m", family="llama", n_layers=layers, hidden_size=kv_heads * head_dim, n_heads=kv_heads,
                     n_kv_heads=kv_heads, head_dim=head_dim, ffn_size=4 * head_dim, vocab_size=1000,
                     max_context=2**20)


pq_formats = st.builds(
    lambda m, lk, kk, sinks, recent, outliers, pre: PqSettings(m=m, k=2**lk, key_k=kk and 2**kk, sinks=sinks,
                                                               recent=recent, outliers=outliers, pre_rope=pre),
    st.sampled_from([8, 16, 32]), st.integers(2, 10), st.sampled_from([0, 4, 10]), st.integers(0, 8),
    st.integers(0, 256), st.integers(0, 4), st.booleans())


@settings(max_examples=60, deadline=None)
@given(pq_formats, st.sampled_from([64, 128]), st.integers(1, 4), st.integers(1, 8),
       st.lists(st.integers(1, 2**22), min_size=2, max_size=6))
def test_bits_per_element_fall_with_context_towards_the_asymptote(fmt, head_dim, layers, kv_heads, contexts):
    model = _model(head_dim, layers, kv_heads)
    asym = asymptotic_bits_per_element(model, fmt)
    assert asym == pytest.approx(fmt.code_bits_per_element(model) + 16 * fmt.outliers / (2 * head_dim))
    # code packing rounds each stream up to a whole byte: at most 8 bits per stream over the sequence's elements
    slack = lambda n: 8.0 * 2 / (2 * n * head_dim)  # noqa: E731
    window = fmt.sinks + fmt.recent
    prev = None
    for n in sorted(c for c in contexts if c >= window):
        b = bits_per_element(model, fmt, n)
        assert b >= asym - 1e-9 and b == pytest.approx(bits_per_element_by_part(model, fmt, n)["total"])
        if prev is not None:
            assert b <= prev[1] + slack(n)
        prev = (n, b)


@settings(max_examples=40, deadline=None)
@given(pq_formats, st.floats(0.3, 0.99))
def test_the_context_for_a_ratio_is_the_first_that_reaches_it(fmt, share):
    model = _model(64, 2, 2)
    target = share * 16.0 / asymptotic_bits_per_element(model, fmt)
    n = context_for_ratio(model, fmt, target)
    assert n is not None and compression(model, fmt, n) >= target
    assert n == 1 or compression(model, fmt, n - 1) < target


def test_ninety_percent_contexts_of_the_shipped_settings_by_hand():
    fmt = parse_format("pq:m=16,k=256,sinks=4,recent=128")
    c = compression_by_context(LLAMA, fmt)
    assert c["nominal_bits_per_element"] == c["asymptotic_bits_per_element"] == 1.0
    # per layer and KV head: 132 FP16 tokens (2 x 128 x 2 bytes each), 2 codebooks of 256 x 128 x 2 bytes,
    # 32 code bytes per coded token; 16x at 90% means 32 bytes x n / 0.9 / 16 ... solve for n:
    # 512 n / (512 x 132 + 32 (n - 132) + 131072) >= 14.4  ->  n >= (14.4 x (67584 - 4224 + 131072)) / (512 - 460.8)
    n = c["context_for_share_of_nominal"]
    assert n == pytest.approx(14.4 * (67584 - 4224 + 131072) / (512 - 460.8), abs=2)
    with_outliers = compression_by_context(LLAMA, parse_format("pq:m=16,k=256,sinks=4,recent=128,outliers=4"))
    assert with_outliers["context_for_share_of_nominal"] is None  # 1.25 bits per element never reach 90% of 16x
    assert with_outliers["asymptotic_ratio"] == pytest.approx(12.8)
    assert len(c["bits_per_element"]) == len(c["contexts"]) and c["bits_per_element"][0] > 4


def test_the_experiment_writes_the_csv_the_figure_reads(tmp_path):
    spec = importlib.util.spec_from_file_location("compression_context", ROOT / "experiments" / "compression_context.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "c.csv"
    assert mod.main(["--out", str(out), "--figure", str(tmp_path / "c.png")]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["setting"] for r in rows} == {parse_format(s).name for s in mod.SETTINGS}
    assert (tmp_path / "c.png").stat().st_size > 1000
