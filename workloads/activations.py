"""Q/K/V activations to measure KV-cache formats on: captured from a real model, or synthetic Gaussian.

Accuracy of a KV format depends on what the keys and values look like. Gaussian data is the easy case: real keys
have outlier channels, an attention-sink token and a RoPE rotation that drifts with position, and those are what
decide whether Product Quantization works. So the evaluation runs on both: captures of SmolLM2-135M-Instruct
(``scripts/capture_activations.py``; a small one ships with the package, ``bundled_path()``) and a seeded Gaussian
generator.

Layout (one file, numpy ``.npz``, float16 arrays):
- ``k``, ``v``: (layers, tokens, kv_heads, head_dim), keys *after* RoPE (what the KV cache stores);
- ``q``: (layers, queries, heads, head_dim), queries after RoPE at token positions ``q_pos`` (queries, );
- ``k_pre`` (optional): keys before RoPE; ``layers``: captured layer indices; ``meta``: JSON (model config,
  text, tool versions).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from workloads.errors import WorkloadError
from workloads.models import ModelSpec, from_hf_config

FORMAT_VERSION = 1
BUNDLED_NAME = "smollm2_gpl3_2k.npz"  # the capture shipped in workloads/data (package data, docs/accuracy.md)
NOT_ACTIVATIONS = "not an activations file (.npz written by scripts/capture_activations.py)"


def bundled_path() -> Path:
    """The capture shipped with the package (``workloads/data``), found through ``importlib.resources``: the same
    code finds it in the source tree and in an installed wheel."""
    ref = resources.files("workloads").joinpath("data", BUNDLED_NAME)
    # an unpacked install (wheel, editable, source tree) gives a real path; a zip import would need as_file()
    return ref if isinstance(ref, Path) else Path(str(ref))


@dataclass(frozen=True, eq=False)
class Activations:
    """Captured (or generated) attention inputs of a few layers of one sequence."""

    q: np.ndarray  # (L, Nq, Hq, D) post-RoPE queries at positions q_pos
    q_pos: np.ndarray  # (Nq,) int token positions of the queries, increasing
    k: np.ndarray  # (L, N, Hkv, D) post-RoPE keys of tokens 0..N-1
    v: np.ndarray  # (L, N, Hkv, D)
    layers: tuple[int, ...]  # model layer index of each captured layer
    model: ModelSpec  # the whole model (bytes are counted over all its layers)
    source: str  # "synthetic" or the text the capture ran on
    rope_theta: float = 0.0  # 0 when not RoPE (synthetic)
    k_pre: np.ndarray | None = None  # (L, N, Hkv, D) keys before RoPE, when captured

    def __post_init__(self):
        L, N, H, D = self.k.shape
        assert self.v.shape == (L, N, H, D), (self.v.shape, self.k.shape)
        assert self.q.ndim == 4 and self.q.shape[0] == L and self.q.shape[3] == D, self.q.shape
        assert self.q_pos.shape == (self.q.shape[1],), (self.q_pos.shape, self.q.shape)
        assert len(self.layers) == L
        assert self.q.shape[2] % H == 0, "query heads must be a multiple of KV heads (GQA)"
        assert self.k_pre is None or self.k_pre.shape == self.k.shape
        if len(self.q_pos) and (np.any(np.diff(self.q_pos) <= 0) or self.q_pos[-1] >= N or self.q_pos[0] < 0):
            raise WorkloadError("activations: query positions must increase and lie within the tokens")

    @property
    def n_tokens(self) -> int:
        return self.k.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.k.shape[3]

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.q.shape[2] // self.k.shape[2]

    def select_layers(self, layers: list[int]) -> Activations:
        """Only the given model layers (which must have been captured)."""
        missing = [li for li in layers if li not in self.layers]
        if missing:
            raise WorkloadError(f"layers {missing} were not captured; captured: {list(self.layers)}")
        idx = [self.layers.index(li) for li in layers]
        return Activations(q=self.q[idx], q_pos=self.q_pos, k=self.k[idx], v=self.v[idx], layers=tuple(layers),
                           model=self.model, source=self.source, rope_theta=self.rope_theta,
                           k_pre=None if self.k_pre is None else self.k_pre[idx])

    def truncated(self, context: int) -> Activations:
        """The first ``context`` tokens (as if the sequence were that long): keys, values and earlier queries."""
        if context > self.n_tokens:
            raise WorkloadError(f"context {context} exceeds the {self.n_tokens} tokens of the activations")
        if context <= 0:
            raise WorkloadError(f"context must be positive, got {context}")
        keep = self.q_pos < context
        return Activations(q=self.q[:, keep], q_pos=self.q_pos[keep], k=self.k[:, :context], v=self.v[:, :context],
                           layers=self.layers, model=self.model, source=self.source, rope_theta=self.rope_theta,
                           k_pre=None if self.k_pre is None else self.k_pre[:, :context])


# --- RoPE (Hugging Face "rotate_half" convention, as the Llama modelling code applies it) -------------------------
def rope_angles(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each (len(positions), head_dim)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    ang = np.concatenate([ang, ang], axis=1)  # (N, D)
    return np.cos(ang), np.sin(ang)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float, inverse: bool = False) -> np.ndarray:
    """Rotate x (N, ..., D) by its token positions; ``inverse`` undoes it (to recover pre-RoPE keys)."""
    cos, sin = rope_angles(positions, x.shape[-1], theta)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    x64 = x.astype(np.float64)
    out = x64 * cos + _rotate_half(x64) * (-sin if inverse else sin)
    return out.astype(x.dtype)


# --- synthetic data ----------------------------------------------------------------------------------------------
def synthetic_activations(rng: np.random.Generator, *, n_tokens: int = 2048, n_queries: int = 128,
                          n_layers: int = 2, n_kv_heads: int = 2, group: int = 3, head_dim: int = 64) -> Activations:
    """i.i.d. standard Gaussian q, k, v: the case with no structure for PQ to exploit (and no outliers)."""
    if not 0 < n_queries <= n_tokens:
        raise WorkloadError(f"synthetic data: need 0 < queries <= tokens, got {n_queries} and {n_tokens}")
    k = rng.standard_normal((n_layers, n_tokens, n_kv_heads, head_dim), dtype=np.float32)
    v = rng.standard_normal((n_layers, n_tokens, n_kv_heads, head_dim), dtype=np.float32)
    q = rng.standard_normal((n_layers, n_queries, n_kv_heads * group, head_dim), dtype=np.float32)
    model = ModelSpec(name="synthetic-gaussian", family="llama", n_layers=n_layers,
                      hidden_size=n_kv_heads * group * head_dim, n_heads=n_kv_heads * group, n_kv_heads=n_kv_heads,
                      head_dim=head_dim, ffn_size=4 * n_kv_heads * group * head_dim, vocab_size=32000,
                      max_context=max(n_tokens, 1))
    return Activations(q=q, q_pos=np.arange(n_tokens - n_queries, n_tokens), k=k, v=v,
                       layers=tuple(range(n_layers)), model=model, source="synthetic")


# --- files -------------------------------------------------------------------------------------------------------
def save_activations(path: str | os.PathLike, acts: Activations, hf_config: dict, extra_meta: dict | None = None,
                     dtype=np.float16) -> None:
    """Write atomically (temp file + rename) so an interrupted capture never leaves a half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "hf_config": hf_config, "source": acts.source,
            "rope_theta": acts.rope_theta, "model_name": acts.model.name, **(extra_meta or {})}
    arrays = {"q": acts.q.astype(dtype), "q_pos": acts.q_pos.astype(np.int32), "k": acts.k.astype(dtype),
              "v": acts.v.astype(dtype), "layers": np.asarray(acts.layers, dtype=np.int32),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    if acts.k_pre is not None:
        arrays["k_pre"] = acts.k_pre.astype(dtype)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_npz(path: Path) -> tuple[dict, np.ndarray]:
    """The arrays of an activations file and its meta (0-d string array); every failure of a wrong, damaged or
    truncated file becomes one WorkloadError naming the file."""
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError) as e:  # a name the OS refuses (too long, a NUL byte)
        raise WorkloadError(f"{path}: cannot read activations: {e}") from None
    if is_dir:
        raise WorkloadError(f"{path} is a folder, {NOT_ACTIVATIONS}")
    if not exists:
        raise WorkloadError(f"activations file not found: {path}")
    try:
        f = open(path, "rb")  # opened here and always closed (np.load leaks its own file when the zip is broken)
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read activations: {e.strerror or e}") from None
    with f:
        try:
            z = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
            raise WorkloadError(f"{path}: {NOT_ACTIVATIONS}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array
            raise WorkloadError(f"{path}: {NOT_ACTIVATIONS}; it holds one array, not the named arrays of a capture")
        with z:
            missing = {"q", "q_pos", "k", "v", "layers", "meta"} - set(z.files)
            if missing:
                raise WorkloadError(f"{path}: {NOT_ACTIVATIONS}; missing arrays {', '.join(sorted(missing))}")
            arrays = {}
            for n in ("q", "q_pos", "k", "v", "layers", "meta", "k_pre"):
                if n not in z.files:
                    continue
                try:
                    arrays[n] = z[n]
                except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
                    raise WorkloadError(f"{path}: {NOT_ACTIVATIONS}; array '{n}' is unreadable (damaged or "
                                        f"truncated, or Python objects, which are never unpickled)") from None
    return arrays, arrays.pop("meta")


def _read_meta(path: Path, raw: np.ndarray) -> dict:
    if raw.shape != () or raw.dtype.kind != "U":
        raise WorkloadError(f"{path}: array 'meta' must be one JSON string, got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except ValueError:
        raise WorkloadError(f"{path}: array 'meta' is not valid JSON") from None
    if not isinstance(meta, dict):
        raise WorkloadError(f"{path}: array 'meta' must be a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WorkloadError(f"{path}: activations format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if not isinstance(meta.get("hf_config"), dict):
        raise WorkloadError(f"{path}: meta lacks 'hf_config' (the model's config.json as an object)")
    if not isinstance(meta.get("source", "?"), str):
        raise WorkloadError(f"{path}: meta 'source' must be a string, got {meta['source']!r}")
    theta = meta.get("rope_theta", 0.0)
    if isinstance(theta, bool) or not isinstance(theta, int | float) or not np.isfinite(theta) or theta < 0:
        raise WorkloadError(f"{path}: meta 'rope_theta' must be a finite number >= 0, got {theta!r}")
    return meta


def _check_arrays(path: Path, a: dict, model: ModelSpec) -> None:
    """Shapes, dtypes and values of a capture, against each other and the model in its meta (module docstring)."""
    def fail(what: str):
        raise WorkloadError(f"{path}: {what}")

    for n in ("q", "k", "v", "k_pre"):
        if n in a and a[n].dtype.kind != "f":
            fail(f"array '{n}' must hold floats, got {a[n].dtype}")
    for n in ("q_pos", "layers"):
        if a[n].dtype.kind not in "iu":
            fail(f"array '{n}' must hold integers, got {a[n].dtype}")
    k, q = a["k"], a["q"]
    if k.ndim != 4 or 0 in k.shape:
        fail(f"array 'k' must be (layers, tokens, kv_heads, head_dim), all non-zero, got shape {k.shape}")
    L, N, H, D = k.shape
    for n in ("v", "k_pre"):
        if n in a and a[n].shape != k.shape:
            fail(f"array '{n}' has shape {a[n].shape}, 'k' has {k.shape}")
    if q.ndim != 4 or q.shape[0] != L or q.shape[1] == 0 or q.shape[3] != D or q.shape[2] % H:
        fail(f"array 'q' must be (layers {L}, queries >= 1, heads (a multiple of {H}), head_dim {D}), "
             f"got shape {q.shape}")
    if a["q_pos"].shape != (q.shape[1],):
        fail(f"array 'q_pos' must have shape ({q.shape[1]},) (one position per query), got {a['q_pos'].shape}")
    if a["layers"].shape != (L,):
        fail(f"array 'layers' must have shape ({L},) (one model layer per captured layer), got {a['layers'].shape}")
    if (H, D, q.shape[2]) != (model.n_kv_heads, model.head_dim, model.n_heads):
        fail(f"arrays have {H} KV heads, {q.shape[2]} query heads of dim {D}; the model in meta has "
             f"{model.n_kv_heads}, {model.n_heads} of dim {model.head_dim}")
    layers = a["layers"].tolist()
    if len(set(layers)) != L or min(layers) < 0 or max(layers) >= model.n_layers:
        fail(f"array 'layers' must hold distinct layer indices in 0..{model.n_layers - 1}, got {layers}")
    pos = a["q_pos"].astype(np.int64)
    if np.any(np.diff(pos) <= 0) or pos[0] < 0 or pos[-1] >= N:
        fail(f"query positions ('q_pos') must increase and lie in 0..{N - 1}")


def load_activations(path: str | os.PathLike, context: int | None = None) -> Activations:
    """Read a capture; arrays become float32 (the math runs in float32, storage was float16). Every problem with the
    file (not a capture, damaged, wrong shapes or dtypes, NaN or infinite values) is a WorkloadError naming it."""
    path = Path(path)
    arrays, raw_meta = _read_npz(path)
    meta = _read_meta(path, raw_meta)
    try:
        model = from_hf_config(meta["hf_config"], name=str(meta.get("model_name", path.stem)), where=str(path))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        if isinstance(e, WorkloadError):
            raise
        raise WorkloadError(f"{path}: bad 'hf_config' in meta: {e}") from None
    _check_arrays(path, arrays, model)
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf, reported just below
        f32 = {n: arrays[n].astype(np.float32) for n in ("q", "k", "v", "k_pre") if n in arrays}
    for n, x in f32.items():
        if not np.isfinite(x).all():
            raise WorkloadError(f"{path}: array '{n}' holds NaN or infinite values (as float32)")
    acts = Activations(q=f32["q"], q_pos=arrays["q_pos"].astype(np.int64), k=f32["k"], v=f32["v"],
                       layers=tuple(int(x) for x in arrays["layers"]), model=model, source=meta.get("source", "?"),
                       rope_theta=float(meta.get("rope_theta", 0.0)), k_pre=f32.get("k_pre"))
    return acts if context is None else acts.truncated(context)
