"""KV-cache formats and their storage bytes: FP16, uniform INT-k (KIVI style), Product Quantization (AQPIM).

Each format is a frozen settings dataclass, validated on construction (``WorkloadError``), with a canonical text
form that ``parse_format`` reads back, e.g. ``pq:m=16,k=256,sinks=4,recent=128`` or ``int:bits=2``. The byte
functions count what one sequence stores over all layers at a given context, by part:

- ``codes``: PQ codes (M x log2 K bits per token per tensor per KV head, packed) or INT-k integers;
- ``fp16_tokens``: tokens kept exact in FP16 (the first ``sinks`` and the last ``recent``), K and V;
- ``outliers``: PQ key channels kept in FP16 for every coded token, plus their channel indices (2 bytes each);
- ``codebooks``: PQ centroids, K x head_dim x 2 bytes per tensor per KV head per layer, per sequence (they are
  trained on that sequence's prefill), plus the per-channel key scales when ``scale_keys`` is on;
- ``scales``: INT-k FP16 scale and zero point per group.

All sizes are in bytes (SI). A sliding-window model stores at most its window (``ModelSpec.kv_tokens``).
Usage by the simulator: ``kv_bytes(model, fmt, context).total``; per-part values for PIM placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import MappingProxyType

from hw_models.loading import did_you_mean
from workloads.errors import WorkloadError
from workloads.models import ModelSpec

FP16_BYTES = 2  # bytes per element of an exact (FP16) token, a centroid entry, a scale or a zero point


@dataclass(frozen=True)
class KvBytes:
    """Bytes one sequence's KV cache stores, by part (all layers, all KV heads, K and V)."""

    codes: int = 0
    fp16_tokens: int = 0
    outliers: int = 0
    codebooks: int = 0
    scales: int = 0

    @property
    def total(self) -> int:
        return self.codes + self.fp16_tokens + self.outliers + self.codebooks + self.scales


def _check_int(owner: str, name: str, value, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise WorkloadError(f"{owner}: {name} must be an integer {rng}, got {value!r}")


def _split(model: ModelSpec, context: int, sinks: int, recent: int) -> tuple[int, int]:
    """(exact tokens, coded tokens) of one sequence: sinks and recent window stay exact."""
    _check_int("context", "context", context, 0)
    n = model.kv_tokens(context) if context > 0 else 0
    exact = min(n, sinks + recent)
    return exact, n - exact


def _streams(model: ModelSpec) -> int:
    """Per-head streams over the model: layers x KV heads (multiply by 2 for K and V)."""
    return model.n_layers * model.n_kv_heads


@dataclass(frozen=True)
class Fp16Settings:
    """Uncompressed FP16 cache."""

    kind = "fp16"

    @property
    def name(self) -> str:
        return "fp16"

    def check(self, model: ModelSpec) -> None:
        pass

    def code_bits_per_element(self, model: ModelSpec) -> float:
        return 8.0 * FP16_BYTES

    def kv_bytes(self, model: ModelSpec, context: int) -> KvBytes:
        exact, coded = _split(model, context, 0, 0)
        return KvBytes(fp16_tokens=2 * _streams(model) * (exact + coded) * model.head_dim * FP16_BYTES)


@dataclass(frozen=True)
class IntSettings:
    """Uniform asymmetric INT-k: keys grouped per channel along tokens, values per token along channels."""

    bits: int
    group: int = 32
    sinks: int = 0
    recent: int = 0
    kind = "int"

    def __post_init__(self):
        _check_int("int format", "bits", self.bits, 1, 8)
        _check_int("int format", "group", self.group, 1)
        _check_int("int format", "sinks", self.sinks, 0)
        _check_int("int format", "recent", self.recent, 0)

    @property
    def name(self) -> str:
        return _name(self)

    def check(self, model: ModelSpec) -> None:
        pass

    def code_bits_per_element(self, model: ModelSpec) -> float:
        return float(self.bits)

    def kv_bytes(self, model: ModelSpec, context: int) -> KvBytes:
        exact, coded = _split(model, context, self.sinks, self.recent)
        d = model.head_dim
        per_tensor_codes = math.ceil(coded * d * self.bits / 8)
        key_groups = d * math.ceil(coded / self.group)  # per channel, along tokens
        value_groups = coded * math.ceil(d / self.group)  # per token, along channels
        s = _streams(model)
        return KvBytes(codes=2 * s * per_tensor_codes, fp16_tokens=2 * s * exact * d * FP16_BYTES,
                       scales=s * (key_groups + value_groups) * 2 * FP16_BYTES)


@dataclass(frozen=True)
class PqSettings:
    """Product Quantization of K and V per layer and KV head, with AQPIM's accuracy options.

    m: sub-spaces per head (head_dim % m == 0); k: centroids per sub-space (a power of two, codes of log2 k bits);
    sinks / recent: first and last tokens kept exact (FP16); outliers: key channels per head kept in FP16;
    scale_keys: divide key channels by their RMS before clustering; refresh: tokens between codebook refreshes
    during decoding (0 = codebooks fixed after the prefill).
    """

    m: int
    k: int
    sinks: int = 0
    recent: int = 0
    outliers: int = 0
    scale_keys: bool = False
    refresh: int = 0
    kind = "pq"

    def __post_init__(self):
        _check_int("pq format", "m", self.m, 1)
        _check_int("pq format", "k", self.k, 2, 65536)
        if self.k & (self.k - 1):
            raise WorkloadError(f"pq format: k must be a power of two (codes of log2 k bits), got {self.k}")
        for f in ("sinks", "recent", "outliers", "refresh"):
            _check_int("pq format", f, getattr(self, f), 0)
        if not isinstance(self.scale_keys, bool):
            raise WorkloadError(f"pq format: scale_keys must be true or false, got {self.scale_keys!r}")

    @property
    def name(self) -> str:
        return _name(self)

    @property
    def code_bits(self) -> int:
        """Bits of one code (one sub-vector of one token)."""
        return int(self.k).bit_length() - 1

    def check(self, model: ModelSpec) -> None:
        """Errors that depend on the model: sub-spaces must tile the head, outliers fit in it."""
        if model.head_dim % self.m:
            raise WorkloadError(f"pq format {self.name}: head_dim {model.head_dim} of '{model.name}' is not "
                                f"divisible by m={self.m}")
        if self.outliers >= model.head_dim:
            raise WorkloadError(f"pq format {self.name}: outliers ({self.outliers}) must be fewer than head_dim "
                                f"({model.head_dim})")

    def code_bits_per_element(self, model: ModelSpec) -> float:
        self.check(model)
        return self.m * self.code_bits / model.head_dim

    def kv_bytes(self, model: ModelSpec, context: int) -> KvBytes:
        self.check(model)
        exact, coded = _split(model, context, self.sinks, self.recent)
        d, s = model.head_dim, _streams(model)
        per_tensor_codes = math.ceil(coded * self.m * self.code_bits / 8)
        codebook = self.k * d * FP16_BYTES  # one tensor of one head: k centroids x m sub-spaces x d/m dims
        key_scales = d * FP16_BYTES if self.scale_keys else 0
        return KvBytes(codes=2 * s * per_tensor_codes, fp16_tokens=2 * s * exact * d * FP16_BYTES,
                       outliers=s * (coded * self.outliers * FP16_BYTES + self.outliers * FP16_BYTES),
                       codebooks=s * (2 * codebook + key_scales))


KvFormat = Fp16Settings | IntSettings | PqSettings
FORMATS = MappingProxyType({"fp16": Fp16Settings, "int": IntSettings, "pq": PqSettings})


def _name(fmt) -> str:
    """Canonical text: required fields, then the options that differ from their defaults."""
    parts = []
    for f in fields(fmt):
        v = getattr(fmt, f.name)
        if f.default is f.default_factory or v != f.default:  # required (no default), or changed
            parts.append(f"{f.name}={str(v).lower() if isinstance(v, bool) else v}")
    return f"{fmt.kind}:" + ",".join(parts)


def parse_format(text: str) -> KvFormat:
    """``kind:key=value,...`` -> settings; e.g. ``pq:m=16,k=256,sinks=4,recent=128``, ``int:bits=4``, ``fp16``."""
    text = text.strip()
    kind, _, opts = text.partition(":")
    kind = kind.strip().lower()
    if kind not in FORMATS:
        raise WorkloadError(f"KV format '{text}': unknown kind '{kind}'{did_you_mean(kind, FORMATS)}; "
                            f"known: {', '.join(FORMATS)}")
    cls = FORMATS[kind]
    known = {f.name: f for f in fields(cls)}
    values: dict = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise WorkloadError(f"KV format '{text}': expected key=value, got '{item}'")
        if key not in known:
            raise WorkloadError(f"KV format '{text}': unknown option '{key}'{did_you_mean(key, known)}; "
                                f"{kind} takes: {', '.join(known) or 'no options'}")
        if key in values:
            raise WorkloadError(f"KV format '{text}': option '{key}' given twice")
        if known[key].type in (bool, "bool"):
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise WorkloadError(f"KV format '{text}': {key} must be true or false, got '{raw}'")
            values[key] = low in ("true", "1", "yes", "on")
        else:
            try:
                values[key] = int(raw)
            except ValueError:
                raise WorkloadError(f"KV format '{text}': {key} must be an integer, got '{raw}'") from None
    missing = [n for n, f in known.items() if f.default is f.default_factory and n not in values]
    if missing:
        raise WorkloadError(f"KV format '{text}': missing {', '.join(missing)}")
    return cls(**values)


# --- the small API the simulator uses ------------------------------------------------------------------------------
def kv_bytes(model: ModelSpec, fmt: KvFormat, context: int) -> KvBytes:
    """Bytes by part that one sequence of ``context`` tokens stores over all layers."""
    return fmt.kv_bytes(model, context)


def code_bits_per_element(model: ModelSpec, fmt: KvFormat) -> float:
    """Bits per K or V element of a coded token, codes only (PQ: m log2 k / head_dim; INT-k: k; FP16: 16)."""
    return fmt.code_bits_per_element(model)


def bits_per_element(model: ModelSpec, fmt: KvFormat, context: int) -> float:
    """All stored bits (codes, exact tokens, outliers, codebooks, scales) per K/V element at this context."""
    n = model.kv_tokens(context)
    return 8.0 * kv_bytes(model, fmt, context).total / (2 * _streams(model) * n * model.head_dim)


def compression(model: ModelSpec, fmt: KvFormat, context: int) -> float:
    """FP16 bytes over all bytes the format stores (>1 is smaller than FP16)."""
    return Fp16Settings().kv_bytes(model, context).total / kv_bytes(model, fmt, context).total
