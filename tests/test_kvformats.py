"""KV format bytes by part (checked against hand counts), validation and the settings text form."""

import pytest

from workloads.errors import WorkloadError
from workloads.kvformats import (
    SCALE_ZERO_BYTES,
    Fp16Settings,
    IntSettings,
    PqSettings,
    bits_per_element,
    code_bits_per_element,
    compression,
    kv_bytes,
    parse_format,
)
from workloads.models import ModelSpec, load_model

TINY = ModelSpec(name="tiny", family="llama", n_layers=2, hidden_size=256, n_heads=4, n_kv_heads=2, head_dim=64,
                 ffn_size=512, vocab_size=1000, max_context=4096)


def test_fp16_bytes_match_the_model_spec():
    m = load_model("llama-3-8b")
    assert kv_bytes(m, Fp16Settings(), 1000).total == 1000 * m.kv_bytes_per_token
    assert compression(m, Fp16Settings(), 1000) == 1.0


def test_pq_bytes_by_part_by_hand():
    fmt = PqSettings(m=16, k=256, sinks=4, recent=28, outliers=2)
    b = kv_bytes(TINY, fmt, 1000)
    streams = 2 * 2  # layers x KV heads
    # 968 coded tokens x 16 codes x 1 byte, for K and V
    assert b.codes == streams * 2 * 968 * 16
    assert b.fp16_tokens == streams * 2 * 32 * 64 * 2
    assert b.outliers == streams * (968 * 2 * 2 + 2 * 2)  # key channels of coded tokens + their indices
    assert b.codebooks == streams * 2 * 256 * 64 * 2
    assert b.scales == 0
    assert b.total == b.codes + b.fp16_tokens + b.outliers + b.codebooks


def test_pq_codes_pack_sub_byte_codes():
    b = kv_bytes(TINY, PqSettings(m=8, k=16), 3)  # 3 tokens x 8 codes x 4 bits = 12 bytes per stream
    assert b.codes == 2 * 2 * 2 * 12
    assert code_bits_per_element(TINY, PqSettings(m=8, k=16)) == 8 * 4 / 64


def test_int_bytes_by_hand():
    b = kv_bytes(TINY, IntSettings(bits=2, group=32), 100)
    streams = 4
    assert b.codes == streams * 2 * 100 * 64 * 2 // 8
    # keys: 64 channels x ceil(100/32)=4 groups; values: 100 tokens x 2 groups; scale + zero, 2 bytes each
    assert b.scales == streams * (64 * 4 + 100 * 2) * 4


def test_two_bits_per_element_and_compression_counts_everything():
    fmt = PqSettings(m=32, k=16)
    assert code_bits_per_element(TINY, fmt) == 2.0
    # at a long context the codebooks are amortised: about 16 / 2 = 8x
    assert 7.9 < compression(TINY, fmt, 4096 * 64) < 8.0
    # at a short one they dominate: 16 centroids x 64 dims x 16 bits over 64 tokens x 64 dims is 4 bits/element
    assert bits_per_element(TINY, fmt, 64) == pytest.approx(2.0 + 16 * 64 * 16 / (64 * 64))


def test_sliding_window_caps_stored_tokens():
    m = load_model("mistral-7b")
    assert kv_bytes(m, PqSettings(m=16, k=256), 100_000) == kv_bytes(m, PqSettings(m=16, k=256), m.sliding_window)


def test_short_context_is_all_exact_tokens():
    b = kv_bytes(TINY, PqSettings(m=16, k=256, sinks=4, recent=128), 50)
    assert b.codes == 0 and b.outliers == 0 and b.fp16_tokens == 4 * 2 * 50 * 64 * 2


@pytest.mark.parametrize("text", ["fp16", "int:bits=2", "int:bits=4,group=64,sinks=4,recent=128",
                                  "pq:m=16,k=256", "pq:m=8,k=16,sinks=4,recent=128,outliers=4,scale_keys=true",
                                  "pq:m=16,k=256,refresh=256"])
def test_names_round_trip(text):
    fmt = parse_format(text)
    assert fmt.name == text
    assert parse_format(fmt.name) == fmt


def test_parse_accepts_spaces_and_booleans():
    assert parse_format(" pq: m=16, k=256, scale_keys=yes ") == PqSettings(m=16, k=256, scale_keys=True)


@pytest.mark.parametrize("text, words", [
    ("pq:m=16,k=255", "power of two"),
    ("pq:m=16,k=131072", "2..65536"),
    ("pq:m=16,kk=256", "did you mean 'k'"),
    ("pq:m=16,k=256,sinks=-1", "sinks"),
    ("pq:m=16", "missing k"),
    ("pgq:m=16,k=256", "did you mean 'pq'"),
    ("pq:m=16,k=256,recent", "key=value"),
    ("pq:m=16,k=2x", "integer"),
    ("pq:m=16,k=256,m=8", "twice"),
    ("int:bits=9", "1..8"),
    ("pq:m=16,k=256,scale_keys=maybe", "true or false"),
    ("pq:m=16,k=256,key_k=1000", "key_k must be a power of two"),
    ("pq:m=16,k=256,pre_rope=2", "true or false"),
])
def test_bad_settings_raise_one_line_errors(text, words):
    with pytest.raises(WorkloadError, match=words) as e:
        parse_format(text)
    assert "\n" not in str(e.value)


def test_model_dependent_checks():
    with pytest.raises(WorkloadError, match="not divisible"):
        kv_bytes(TINY, PqSettings(m=3, k=16), 10)
    with pytest.raises(WorkloadError, match="outliers"):
        kv_bytes(TINY, PqSettings(m=16, k=16, outliers=64), 10)
    with pytest.raises(WorkloadError, match="m must be"):
        PqSettings(m=0, k=16)
    with pytest.raises(WorkloadError, match="pre_rope needs .* even"):
        kv_bytes(TINY, PqSettings(m=64, k=16, pre_rope=True), 10)  # 1-dim sub-vectors hold no RoPE pair


def test_larger_key_codebook_costs_its_code_bits_and_centroids():
    fmt = PqSettings(m=8, k=256, key_k=1024)
    assert code_bits_per_element(TINY, fmt) == (8 * 10 + 8 * 8) / (2 * 64)
    b = kv_bytes(TINY, fmt, 1000)
    streams = 2 * 2
    assert b.codes == streams * (1000 * 8 * 10 // 8 + 1000 * 8)
    assert b.codebooks == streams * (1024 + 256) * 64 * 2
    assert fmt.pim_token_bytes_per_head(TINY) == (80 + 64) / 8
    assert parse_format(fmt.name) == fmt and fmt.name == "pq:m=8,k=256,key_k=1024"
    # pre-RoPE coding stores the same bytes as post-RoPE coding
    assert kv_bytes(TINY, PqSettings(m=8, k=256, pre_rope=True), 1000) == kv_bytes(TINY, PqSettings(m=8, k=256), 1000)


# ---- the PIM view: bytes per token without ceil, shared per-part formulas ------------------------------------------

PQS = [PqSettings(m=16, k=256), PqSettings(m=8, k=16, sinks=4, recent=128, outliers=4),
       PqSettings(m=32, k=256, sinks=4, recent=28, outliers=2, scale_keys=True), PqSettings(m=64, k=2),
       PqSettings(m=16, k=256, sinks=4, recent=128, key_k=1024, pre_rope=True)]
INTS = [IntSettings(bits=2), IntSettings(bits=4, group=64, sinks=4, recent=128), IntSettings(bits=3, group=48),
        IntSettings(bits=8, group=1)]
MODELS = [TINY, load_model("llama-3-8b"), load_model("llama-2-7b"), load_model("opt-30b")]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("fmt", PQS, ids=lambda f: f.name)
def test_pq_pim_view_equals_the_old_aqpim_storage(model, fmt):
    """What AqpimSystem computed for itself (code_bytes_per_token_head, pim_bytes_per_token,
    codebook_bytes_per_unit, the window in pim_fixed_bytes), written out: the PIM view gives the same numbers."""
    if fmt.key_k:
        pytest.skip("the old storage had one k for keys and values")
    old_per_head = 2 * fmt.m * fmt.code_bits / 8 + fmt.outliers * 2
    assert fmt.pim_token_bytes_per_head(model) == old_per_head
    assert fmt.pim_token_bytes(model) == model.n_layers * model.n_kv_heads * old_per_head
    assert fmt.pim_unit_fixed_bytes(model) == model.n_layers * 2 * fmt.k * model.head_dim * 2
    assert fmt.window_tokens == fmt.sinks + fmt.recent
    assert fmt.pim_window_bytes(model) == (fmt.sinks + fmt.recent) * model.kv_bytes_per_token


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_fp16_pim_view_equals_the_model_spec(model):
    fmt = Fp16Settings()
    assert fmt.pim_token_bytes(model) == float(model.kv_bytes_per_token)
    assert fmt.pim_unit_fixed_bytes(model) == 0 and fmt.window_tokens == 0 and fmt.pim_window_bytes(model) == 0
    assert kv_bytes(model, fmt, 4097).total == 4097 * fmt.pim_token_bytes(model)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("fmt", PQS, ids=lambda f: f.name)
@pytest.mark.parametrize("coded", [100_000, 100_003, 1_000_001])
def test_pq_per_token_bytes_match_kv_bytes_to_the_ceil(model, fmt, coded):
    b = kv_bytes(model, fmt, coded + fmt.window_tokens)
    streams = model.n_layers * model.n_kv_heads
    per_token = b.codes + b.outliers - streams * fmt.outlier_index_bytes
    diff = per_token - coded * fmt.pim_token_bytes(model)
    assert 0 <= diff < 2 * streams  # under one byte per packed tensor
    assert b.codebooks == model.n_kv_heads * fmt.pim_unit_fixed_bytes(model) + streams * fmt.key_scale_bytes(model)
    assert b.fp16_tokens == fmt.pim_window_bytes(model)  # 2-byte models: FP16 and model element size agree


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("fmt", INTS, ids=lambda f: f.name)
@pytest.mark.parametrize("coded", [96_000, 100_003])
def test_int_per_token_bytes_match_kv_bytes_to_the_ceil(model, fmt, coded):
    b = kv_bytes(model, fmt, coded + fmt.window_tokens)
    streams = model.n_layers * model.n_kv_heads
    diff = b.codes + b.scales - coded * fmt.pim_token_bytes(model)
    # ceil of the packed codes (under a byte per tensor) and of the last key group (one per channel)
    assert -1e-6 * b.total <= diff < 2 * streams + streams * model.head_dim * SCALE_ZERO_BYTES
    if coded % fmt.group == 0 and (coded * model.head_dim * fmt.bits) % 8 == 0:
        assert diff == pytest.approx(0, abs=1e-6 * b.total)
    assert b.fp16_tokens == fmt.pim_window_bytes(model)
    assert fmt.pim_unit_fixed_bytes(model) == 0


def test_int_pim_token_bytes_by_hand():
    # head_dim 64, INT4, groups of 32: codes 2 x 32 bytes; key scales 64 channels x 4 bytes / 32 tokens = 8;
    # value scales 2 groups x 4 = 8
    assert IntSettings(bits=4).pim_token_bytes_per_head(TINY) == 64 + 8 + 8
    assert IntSettings(bits=4).pim_token_bytes(TINY) == 4 * 80
    # groups of 48 channels: 2 value groups per token (the second partial)
    assert IntSettings(bits=2, group=48).pim_token_bytes_per_head(TINY) == 32 + 64 * 4 / 48 + 2 * 4


@pytest.mark.parametrize("short, long", [("int8", "int:bits=8"), ("int4", "int:bits=4"), ("int2", "int:bits=2"),
                                         ("INT4", "int:bits=4"), ("int4:group=64", "int:bits=4,group=64"),
                                         ("int2:sinks=4,recent=128", "int:bits=2,sinks=4,recent=128")])
def test_short_int_names(short, long):
    fmt = parse_format(short)
    assert fmt == parse_format(long) and fmt.name == long
    assert (fmt.group, fmt.window_tokens) == ((64 if "group" in short else 32), (132 if "sinks" in short else 0))


@pytest.mark.parametrize("text, words", [("int9", "1..8"), ("int0", "1..8"), ("int4:bits=2", "twice"),
                                         ("int4x", "int<bits>")])
def test_bad_short_int_names(text, words):
    with pytest.raises(WorkloadError, match=words):
        parse_format(text)


def test_residual_stages_keep_the_code_bits_and_multiply_the_codebooks():
    model = load_model("llama-3.1-8b")
    plain, staged = PqSettings(m=16, k=256, sinks=4, recent=128), PqSettings(m=16, k=256, sinks=4, recent=128,
                                                                               stages=8)
    assert staged.name == "pq:m=16,k=256,sinks=4,recent=128,stages=8"
    assert parse_format(staged.name) == staged and plain.stages == 1 and "stages" not in plain.name
    assert staged.code_bits_per_element(model) == plain.code_bits_per_element(model) == 1.0
    a, b = plain.kv_bytes(model, 65536), staged.kv_bytes(model, 65536)
    assert (a.codes, a.fp16_tokens, a.outliers) == (b.codes, b.fp16_tokens, b.outliers)
    assert b.codebooks == 8 * a.codebooks
    assert staged.pim_unit_fixed_bytes(model) == 8 * plain.pim_unit_fixed_bytes(model)
    assert staged.pim_token_bytes_per_head(model) == plain.pim_token_bytes_per_head(model)
    cp, cs = plain.pim_costs(model), staged.pim_costs(model)
    assert cs.table_entries_per_query == cp.table_entries_per_query  # the stages share the m rows
    assert cs.table_flops_per_query == 8 * cp.table_flops_per_query
    assert cs.bins_x_centroids_flops_per_query == 8 * cp.bins_x_centroids_flops_per_query
    assert cs.quantize_elements_per_new_token == 8 * cp.quantize_elements_per_new_token
    rope = PqSettings(m=16, k=256, pre_rope=True, stages=8).pim_costs(model)
    assert rope.table_entries_per_query == 8 * 256 * 128 and rope.table_reads_per_token_per_query == 8 * 128


@pytest.mark.parametrize("text, msg", [("pq:m=16,k=256,stages=3", "must divide m"),
                                       ("pq:m=16,k=256,stages=0", "stages must be an integer >= 1")])
def test_bad_stages_are_one_line_errors(text, msg):
    with pytest.raises(WorkloadError, match=msg):
        parse_format(text)
