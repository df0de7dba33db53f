import json

import pytest

from workloads.errors import WorkloadError
from workloads.models import from_hf_config, load_model, preset_names

# KV bytes per token (FP16) from REFERENCE.md's table, computed there from each model's published config.json.
REFERENCE_KV_KIB = {
    "llama-2-7b": 512, "llama-2-13b": 800, "llama-2-70b": 320, "llama-3-8b": 128, "llama-3.1-8b": 128,
    "llama-3-70b": 320, "mistral-7b": 128, "opt-30b": 1.3125 * 1024, "opt-66b": 2.25 * 1024,
}


def test_required_presets_exist():
    assert set(REFERENCE_KV_KIB) <= set(preset_names())


@pytest.mark.parametrize("name", sorted(REFERENCE_KV_KIB))
def test_preset_kv_bytes_per_token_match_reference(name):
    m = load_model(name)
    assert m.kv_bytes_per_token == REFERENCE_KV_KIB[name] * 1024
    # and the textbook formula: 2 x layers x KV heads x head dim x bytes
    assert m.kv_bytes_per_token == 2 * m.n_layers * m.n_kv_heads * m.head_dim * m.bytes_per_element


def test_presets_carry_a_source():
    from workloads.models import PRESET_DIR
    for name in preset_names():
        cfg = json.loads((PRESET_DIR / f"{name}.json").read_text())
        assert cfg.get("_source"), name


def test_llama_2_7b_weights_about_6_7b_params():
    m = load_model("llama-2-7b")
    assert 6.6e9 < m.weight_bytes / 2 < 6.8e9  # 6.74 B parameters (without norms)


def test_hf_loader_gqa_head_dim_and_qwen2(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
           "num_key_value_heads": 2, "num_hidden_layers": 28, "vocab_size": 151936,
           "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "tie_word_embeddings": True,
           "sliding_window": 32768, "use_sliding_window": False}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = load_model(str(p))
    assert (m.n_kv_heads, m.head_dim, m.sliding_window, m.tied_embeddings) == (2, 128, None, True)
    assert m.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2
    cfg["head_dim"] = 64
    assert from_hf_config(cfg, "x").head_dim == 64


def test_mistral_sliding_window_caps_kv_tokens():
    m = load_model("mistral-7b")
    assert m.kv_tokens(100_000) == 4096 and m.kv_tokens(1000) == 1000


def test_opt_has_two_matrix_ffn_and_no_gqa():
    m = load_model("opt-30b")
    assert not m.ffn_gated and m.n_kv_heads == m.n_heads


def test_unknown_model_lists_valid_and_suggests():
    with pytest.raises(WorkloadError, match=r"did you mean 'llama-2-7b'.*valid presets: .*opt-66b"):
        load_model("llama2-7b")


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "model_type": "llama",\n  "hidden_size": ,\n}')
    with pytest.raises(WorkloadError, match=r"config.json:3: malformed JSON"):
        load_model(str(p))


def test_missing_key_and_bad_family(tmp_path):
    with pytest.raises(WorkloadError, match="missing 'hidden_size'"):
        from_hf_config({"model_type": "llama"}, "x")
    with pytest.raises(WorkloadError, match="not supported"):
        from_hf_config({"model_type": "gpt2"}, "x")


def test_zero_sizes_rejected():
    cfg = json.loads((__import__("workloads.models").models.PRESET_DIR / "llama-2-7b.json").read_text())
    cfg["num_hidden_layers"] = 0
    with pytest.raises(WorkloadError, match="'num_hidden_layers' must be a whole number from 1 to 10000, got 0"):
        from_hf_config(cfg, "x")


@pytest.mark.parametrize("key, value, match", [
    ("num_attention_heads", 0, "'num_attention_heads' must be a whole number"),
    ("num_attention_heads", 3, "hidden_size 4096 is not a multiple of num_attention_heads 3"),
    ("num_key_value_heads", 0, "'num_key_value_heads' must be a whole number"),
    ("num_key_value_heads", 5, "must be a multiple of n_kv_heads"),
    ("num_hidden_layers", 32.7, "'num_hidden_layers' must be a whole number"),
    ("num_hidden_layers", True, "'num_hidden_layers' must be a whole number"),
    ("num_hidden_layers", "32", "'num_hidden_layers' must be a whole number"),
    ("vocab_size", 10**12, "'vocab_size' must be a whole number from 1 to"),
    ("head_dim", -1, "'head_dim' must be a whole number"),
    ("tie_word_embeddings", "no", "'tie_word_embeddings' must be true or false"),
])
def test_config_fields_are_checked(key, value, match):
    cfg = json.loads((__import__("workloads.models").models.PRESET_DIR / "llama-2-7b.json").read_text())
    cfg[key] = value
    with pytest.raises(WorkloadError, match=match):
        from_hf_config(cfg, "x")


def test_a_config_that_is_not_an_object_or_has_infinity(tmp_path):
    lst, inf = tmp_path / "list.json", tmp_path / "inf.json"
    lst.write_text("[1, 2]")
    inf.write_text('{"model_type": "llama", "hidden_size": Infinity}')
    with pytest.raises(WorkloadError, match="holds an object, got list"):
        load_model(str(lst))
    with pytest.raises(WorkloadError, match="Infinity is not a number JSON allows"):
        load_model(str(inf))
