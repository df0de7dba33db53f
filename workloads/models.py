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

    def shard(self, tp: int) -> ModelSpec:
        """One GPU's share of the model under ``tp``-way tensor parallelism (Megatron-LM's split, as vLLM runs
        it): its query heads and KV heads (each KV head on ``tp / n_kv_heads`` GPUs when there are fewer KV heads
        than GPUs, as vLLM replicates them), its columns of the FFN and its rows of the vocabulary (padded up);
        the hidden size, layers and norms are every GPU's."""
        if tp == 1:
            return self
        name = f"'{self.name}'"
        if self.n_heads % tp:
            raise WorkloadError(f"tensor parallelism {tp} does not divide the {self.n_heads} attention heads of "
                                f"{name}; use a divisor of {self.n_heads}")
        if self.n_kv_heads % tp and tp % self.n_kv_heads:
            raise WorkloadError(f"tensor parallelism {tp} neither divides nor is a multiple of the "
                                f"{self.n_kv_heads} KV heads of {name}")
        if self.ffn_size % tp:
            raise WorkloadError(f"tensor parallelism {tp} does not divide the FFN size {self.ffn_size} of {name}")
        return dataclasses.replace(self, name=f"{self.name}/tp{tp}", n_heads=self.n_heads // tp,
                                   n_kv_heads=max(1, self.n_kv_heads // tp), ffn_size=self.ffn_size // tp,
                                   vocab_size=-(-self.vocab_size // tp))

    def stage(self, pp: int) -> ModelSpec:
        """The last of ``pp`` pipeline stages: ceil(layers / pp) consecutive layers (the most any stage holds) and
        the LM head; the run simulates it (``sim.pipeline``)."""
        if pp == 1:
            return self
        if pp > self.n_layers:
            raise WorkloadError(f"pipeline parallelism {pp} exceeds the {self.n_layers} layers of '{self.name}'")
        return dataclasses.replace(self, name=f"{self.name}/pp{pp}", n_layers=-(-self.n_layers // pp))

    def flops_per_token_per_layer(self, context: int) -> float:
        """Decode FLOPs of one token in one layer: 2 per weight (GEMV) plus attention over the kept context."""
        t = self.kv_tokens(context)
        return (2.0 * (self.attn_weight_params_per_layer + self.ffn_weight_params_per_layer)
                + 4.0 * self.n_heads * self.head_dim * t)


preset_names = PRESETS.names


# Hard bounds on what a config.json may say (a typo, not a model, beyond them).
MAX_LAYERS = 10_000
MAX_WIDTH = 2**20          # hidden size, FFN size, heads, head dim
MAX_VOCAB = 2**24
MAX_POSITIONS = 2**30


def _int(cfg: dict, key: str, where: str, default=None, hi: int = MAX_WIDTH) -> int:
    """A positive whole number from the config (JSON integers; ``true`` or ``32.7`` are errors)."""
    if key not in cfg or cfg[key] is None:
        if default is None:
            raise WorkloadError(f"{where}: missing '{key}' in config.json")
        return default
    v = cfg[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
        raise WorkloadError(f"{where}: '{key}' must be a whole number from 1 to {hi}, got {v!r}")
    return v


def _bool(cfg: dict, key: str, where: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise WorkloadError(f"{where}: '{key}' must be true or false, got {v!r}")
    return v


def from_hf_config(cfg: dict, name: str, where: str = "config.json") -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json`` dictionary; every field is checked (type, range,
    heads dividing the hidden size when ``head_dim`` is not given, query heads a multiple of KV heads)."""
    if not isinstance(cfg, dict):
        raise WorkloadError(f"{where}: a config.json holds an object, got {type(cfg).__name__}")
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise WorkloadError(f"{where}: model_type {family!r} is not supported{did_you_mean(str(family), FAMILIES)}; "
                            f"supported: {', '.join(FAMILIES)}")
    dtype = cfg.get("torch_dtype", "float16")
    source = str(cfg.get("_source", ""))
    if dtype not in DTYPE_BYTES:
        raise WorkloadError(f"{where}: torch_dtype {dtype!r} unknown; known: {', '.join(DTYPE_BYTES)}")
    hidden = _int(cfg, "hidden_size", where)
    heads = _int(cfg, "num_attention_heads", where)
    layers = _int(cfg, "num_hidden_layers", where, hi=MAX_LAYERS)
    vocab = _int(cfg, "vocab_size", where, hi=MAX_VOCAB)
    positions = _int(cfg, "max_position_embeddings", where, hi=MAX_POSITIONS)
    opt = family == "opt"
    kv_heads = heads if opt else _int(cfg, "num_key_value_heads", where, default=heads)
    if opt or cfg.get("head_dim") is None:
        if hidden % heads:
            raise WorkloadError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                                f"(give head_dim if the heads are not hidden_size / heads wide)")
        head_dim = hidden // heads
    else:
        head_dim = _int(cfg, "head_dim", where)
    window = None
    if not opt and _bool(cfg, "use_sliding_window", where, family == "mistral"):
        window = _int(cfg, "sliding_window", where, hi=MAX_POSITIONS) if cfg.get("sliding_window") else None
    return ModelSpec(
        name=name, family=family, n_layers=layers, hidden_size=hidden, n_heads=heads, n_kv_heads=kv_heads,
        head_dim=head_dim, ffn_size=_int(cfg, "ffn_dim" if opt else "intermediate_size", where), vocab_size=vocab,
        max_context=positions, bytes_per_element=DTYPE_BYTES[dtype], ffn_gated=not opt, sliding_window=window,
        tied_embeddings=_bool(cfg, "tie_word_embeddings", where, opt), source=source)


def load_model(name_or_path: str) -> ModelSpec:
    """A preset name (see ``preset_names()``) or a path to a Hugging Face ``config.json`` (or its folder)."""
    path = PRESETS.resolve(name_or_path)
    cfg = read_json(path, error=WorkloadError)
    if not isinstance(cfg, dict):
        raise WorkloadError(f"{path}: a config.json holds an object, got {type(cfg).__name__}")
    if not isinstance(cfg.get("_name_or_path", ""), str):
        raise WorkloadError(f"{path}: '_name_or_path' must be a string")
    shipped = path.parent == PRESET_DIR
    name = path.stem if shipped else cfg.get("_name_or_path") or path.parent.name or path.stem
    spec = from_hf_config(cfg, name=name, where=str(path))
    return dataclasses.replace(spec, origin=origin_of(path, WorkloadError))
