"""Model architecture specs: presets (Hugging Face style ``config.json`` files with a source) and a loader.

``ModelSpec`` holds what decoding cost depends on; derived sizes are properties. ``load_model`` takes a preset name
or a path to a ``config.json`` (LLaMA, Mistral, Qwen2 and OPT families; GQA through ``num_key_value_heads``;
``head_dim`` when given). A preset's ``_source`` (where its numbers come from) stays on the spec as ``source``,
and the file it was read from as ``origin``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hw_models.loading import PresetDir, did_you_mean, origin_of, read_json
from workloads.errors import WorkloadError

PRESET_DIR = Path(__file__).parent / "presets" / "models"
PRESETS = PresetDir(PRESET_DIR, ".json", "model", WorkloadError, folder_file="config.json")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float": 4, "half": 2}
FAMILIES = ("llama", "mistral", "qwen2", "opt")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    max_context: int
    bytes_per_element: int = 2
    ffn_gated: bool = True  # SwiGLU (gate, up, down) vs. two-matrix MLP (OPT)
    sliding_window: int | None = None  # tokens of KV kept per sequence (Mistral-7B-v0.1: 4096)
    tied_embeddings: bool = False
    source: str = field(default="", compare=False)  # the preset's ``_source``
    origin: str = field(default="", compare=False)  # file and sha256 it was loaded from

    def __post_init__(self):
        for f in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "ffn_size", "vocab_size",
                  "max_context", "bytes_per_element"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise WorkloadError(f"model '{self.name}': {f} must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise WorkloadError(f"model '{self.name}': n_heads ({self.n_heads}) must be a multiple of "
                                f"n_kv_heads ({self.n_kv_heads})")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise WorkloadError(f"model '{self.name}': sliding_window must be positive, got {self.sliding_window}")

    # --- shapes -----------------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def gqa_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_tokens(self, context: int) -> int:
        """Tokens whose K/V are kept for a sequence of ``context`` tokens (a sliding window caps it)."""
        return context if self.sliding_window is None else min(context, self.sliding_window)

    # --- bytes --------------------------------------------------------------------------------------------------
    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.kv_dim * self.bytes_per_element

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers: 2 x layers x KV heads x head dim x bytes per element."""
        return self.n_layers * self.kv_bytes_per_token_per_layer

    @property
    def attn_weight_params_per_layer(self) -> int:
        return self.hidden_size * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden_size

    @property
    def ffn_weight_params_per_layer(self) -> int:
        return (3 if self.ffn_gated else 2) * self.hidden_size * self.ffn_size

    @property
    def layer_weight_bytes(self) -> int:
        return (self.attn_weight_params_per_layer + self.ffn_weight_params_per_layer) * self.bytes_per_element

    @property
    def embedding_bytes(self) -> int:
        """Input embedding plus the LM head (one matrix when tied)."""
        return (1 if self.tied_embeddings else 2) * self.vocab_size * self.hidden_size * self.bytes_per_element

    @property
    def weight_bytes(self) -> int:
        return self.n_layers * self.layer_weight_bytes + self.embedding_bytes

    def flops_per_token_per_layer(self, context: int) -> float:
        """Decode FLOPs of one token in one layer: 2 per weight (GEMV) plus attention over the kept context."""
        t = self.kv_tokens(context)
        return (2.0 * (self.attn_weight_params_per_layer + self.ffn_weight_params_per_layer)
                + 4.0 * self.n_heads * self.head_dim * t)


preset_names = PRESETS.names


def _need(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise WorkloadError(f"{where}: missing '{key}' in config.json")
    return cfg[key]


def from_hf_config(cfg: dict, name: str, where: str = "config.json") -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json`` dictionary."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise WorkloadError(f"{where}: model_type {family!r} is not supported{did_you_mean(str(family), FAMILIES)}; "
                            f"supported: {', '.join(FAMILIES)}")
    dtype = cfg.get("torch_dtype", "float16")
    source = str(cfg.get("_source", ""))
    if dtype not in DTYPE_BYTES:
        raise WorkloadError(f"{where}: torch_dtype {dtype!r} unknown; known: {', '.join(DTYPE_BYTES)}")
    try:
        if family == "opt":
            hidden = int(_need(cfg, "hidden_size", where))
            heads = int(_need(cfg, "num_attention_heads", where))
            return ModelSpec(
                name=name, family=family, n_layers=int(_need(cfg, "num_hidden_layers", where)),
                hidden_size=hidden, n_heads=heads, n_kv_heads=heads, head_dim=hidden // heads,
                ffn_size=int(_need(cfg, "ffn_dim", where)), vocab_size=int(_need(cfg, "vocab_size", where)),
                max_context=int(_need(cfg, "max_position_embeddings", where)),
                bytes_per_element=DTYPE_BYTES[dtype], ffn_gated=False,
                tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), source=source)
        hidden = int(_need(cfg, "hidden_size", where))
        heads = int(_need(cfg, "num_attention_heads", where))
        head_dim = cfg.get("head_dim") or hidden // heads
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", family == "mistral") else None
        return ModelSpec(
            name=name, family=family, n_layers=int(_need(cfg, "num_hidden_layers", where)),
            hidden_size=hidden, n_heads=heads, n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim), ffn_size=int(_need(cfg, "intermediate_size", where)),
            vocab_size=int(_need(cfg, "vocab_size", where)),
            max_context=int(_need(cfg, "max_position_embeddings", where)),
            bytes_per_element=DTYPE_BYTES[dtype], ffn_gated=True,
            sliding_window=int(window) if window else None,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), source=source)
    except (TypeError, ValueError) as e:
        if isinstance(e, WorkloadError):
            raise
        raise WorkloadError(f"{where}: bad value in config.json: {e}") from None


def load_model(name_or_path: str) -> ModelSpec:
    """A preset name (see ``preset_names()``) or a path to a Hugging Face ``config.json`` (or its folder)."""
    path = PRESETS.resolve(name_or_path)
    cfg = read_json(path, error=WorkloadError)
    if not isinstance(cfg, dict):
        raise WorkloadError(f"{path}: a config.json holds an object, got {type(cfg).__name__}")
    shipped = path.parent == PRESET_DIR
    name = path.stem if shipped else cfg.get("_name_or_path") or path.parent.name or path.stem
    spec = from_hf_config(cfg, name=name, where=str(path))
    return dataclasses.replace(spec, origin=origin_of(path, WorkloadError))
