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

**Two counts, one formula per part.** ``kv_bytes`` counts a whole sequence: codes packed per tensor with ``ceil``
over the whole context, INT-k key groups rounded up to whole groups, codebooks and outlier indices once. A PIM
system places bytes per token as the context grows, so every format also gives the *PIM view*, without ``ceil``:
``pim_token_bytes_per_head`` (one coded token, one KV head, one layer, K and V: codes, outlier channels,
per-token scales and the token's share of per-channel key scales), ``pim_token_bytes`` (over all layers and KV
heads), ``pim_unit_fixed_bytes`` (what does not grow with tokens per (sequence, KV head) over all layers: PQ
codebooks), ``window_tokens`` (tokens per sequence kept exact, ``sinks + recent``) and ``pim_window_bytes``.
Both counts use the same per-part helpers; they differ only where stated in each method. Exact tokens are
counted in FP16 by ``kv_bytes`` and in the model's element size (``ModelSpec.bytes_per_element``, 2 bytes for
every shipped model) by the PIM view, which is what the model's K/V arrive in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from types import MappingProxyType

from hw_models.loading import did_you_mean
from workloads.errors import WorkloadError
from workloads.models import ModelSpec

FP16_BYTES = 2  # bytes per element of an exact (FP16) token, a centroid entry, a scale or a zero point
SCALE_ZERO_BYTES = 2 * FP16_BYTES  # an INT-k group's FP16 scale and FP16 zero point


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


MAX_ROPE_AUG = 64  # rotated copies of the training keys (the training set grows 1 + rope_aug times)
MAX_RERANK = 2**16  # exact tokens per (position, KV head) under exact re-rank


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


def _exact_bytes_per_token_head(model: ModelSpec, element_bytes: int) -> int:
    """K and V of one exact token in one KV head and layer."""
    return 2 * model.head_dim * element_bytes


class _PimView:
    """The PIM view shared by every format (see the module docstring); formats supply the per-head parts."""

    @property
    def window_tokens(self) -> int:
        """Tokens per sequence kept exact: the first ``sinks`` and the last ``recent``."""
        return self.sinks + self.recent

    def pim_token_bytes(self, model: ModelSpec) -> float:
        """Bytes one coded token occupies in PIM over all layers and KV heads (no ``ceil``)."""
        return _streams(model) * self.pim_token_bytes_per_head(model)

    def pim_window_bytes(self, model: ModelSpec) -> int:
        """Bytes of one sequence's exact window over all layers, in the model's element size."""
        return self.window_tokens * model.kv_bytes_per_token

    def pim_unit_fixed_bytes(self, model: ModelSpec) -> float:
        """Bytes per (sequence, KV head) over all layers that do not grow with tokens; none unless stated."""
        return 0.0


@dataclass(frozen=True)
class Fp16Settings(_PimView):
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
        return KvBytes(fp16_tokens=_streams(model) * (exact + coded) * _exact_bytes_per_token_head(model, FP16_BYTES))

    @property
    def window_tokens(self) -> int:
        """No window: every token is exact."""
        return 0

    def pim_token_bytes_per_head(self, model: ModelSpec) -> float:
        """K and V of one token in one KV head and layer, in the model's element size (``kv_bytes``: FP16)."""
        return float(_exact_bytes_per_token_head(model, model.bytes_per_element))


@dataclass(frozen=True)
class IntSettings(_PimView):
    """Uniform asymmetric INT-k: keys grouped per channel along tokens, values per token along channels.

    bits: code bits per element; group: elements per quantization group (tokens for keys, channels for values),
    each with an FP16 scale and zero point; sinks / recent: first and last tokens kept exact (FP16).
    """

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

    def code_bits_per_token(self, model: ModelSpec) -> int:
        """Code bits of one tensor (K or V) of one token in one KV head."""
        return model.head_dim * self.bits

    def value_groups_per_token(self, model: ModelSpec) -> int:
        """Value groups of one token in one KV head (groups along channels; the last may be partial)."""
        return math.ceil(model.head_dim / self.group)

    def kv_bytes(self, model: ModelSpec, context: int) -> KvBytes:
        """Codes packed per tensor (``ceil`` over the context); keys: one group per channel per ``group`` coded
        tokens, the last partial group counted whole."""
        exact, coded = _split(model, context, self.sinks, self.recent)
        d = model.head_dim
        per_tensor_codes = math.ceil(coded * self.code_bits_per_token(model) / 8)
        key_groups = d * math.ceil(coded / self.group)  # per channel, along tokens
        value_groups = coded * self.value_groups_per_token(model)  # per token, along channels
        s = _streams(model)
        return KvBytes(codes=2 * s * per_tensor_codes,
                       fp16_tokens=s * exact * _exact_bytes_per_token_head(model, FP16_BYTES),
                       scales=s * (key_groups + value_groups) * SCALE_ZERO_BYTES)

    def pim_token_bytes_per_head(self, model: ModelSpec) -> float:
        """K and V codes of one coded token (``head_dim x bits / 8`` bytes each), its value groups' scales and
        zero points, and its share of the key groups' (``head_dim`` channels, one group per ``group`` tokens:
        ``head_dim x SCALE_ZERO_BYTES / group``, no partial group rounded up)."""
        d = model.head_dim
        return (2 * (self.code_bits_per_token(model) / 8) + d * SCALE_ZERO_BYTES / self.group
                + self.value_groups_per_token(model) * SCALE_ZERO_BYTES)


@dataclass(frozen=True)
class PqSettings(_PimView):
    """Product Quantization of K and V per layer and KV head, with AQPIM's accuracy options.

    m: sub-spaces per head (head_dim % m == 0); k: centroids per sub-space (a power of two, codes of log2 k bits);
    sinks / recent: first and last tokens kept exact (FP16); outliers: key channels per head kept in FP16;
    scale_keys: divide key channels by their RMS before clustering; refresh: tokens between codebook refreshes
    during decoding (0 = codebooks fixed after the prefill); key_k: centroids per key sub-space when keys get a
    different codebook size than values (0 = k; a power of two); pre_rope: keys coded before RoPE, with RoPE
    applied through a complex query table (``workloads.pq.rope_pq_scores``; head_dim / m must be even); stages:
    residual stages the m codes of a token are spent on (``workloads.pq.ResidualCoded``; m % stages == 0): stage s
    has m / stages sub-spaces of head_dim x stages / m dims and codes what the stages before it left; the code bits
    are m x log2 k per token whatever the stages, the codebooks ``stages`` times larger; rope_aug: copies of the
    prompt's keys, rotated to other positions, added to the key codebooks' k-means training set
    (``workloads.pq.rope_augmented``; post-RoPE keys only, pre_rope keys need none): the same codes, tables and
    storage, a k-means (1 + rope_aug) times longer for keys; rerank: exact re-rank, per position and KV head the
    ``rerank`` coded tokens of highest coded score (``workloads.pq.rerank_mask``) attended exactly from a full FP16
    copy of the coded tokens kept in host memory (``host_copy_bytes``), the rest from their codes.
    What each option costs inside PIM: ``pim_costs`` (``PqPimCosts``). ``refresh`` is an accuracy-protocol option
    only (``REFRESH_NOT_DEPLOYABLE``): the timing model does not run it.
    """

    m: int
    k: int
    sinks: int = 0
    recent: int = 0
    outliers: int = 0
    scale_keys: bool = False
    refresh: int = 0
    key_k: int = 0
    pre_rope: bool = False
    stages: int = 1
    rope_aug: int = 0
    rerank: int = 0
    kind = "pq"

    def __post_init__(self):
        _check_int("pq format", "m", self.m, 1)
        _check_int("pq format", "k", self.k, 2, 65536)
        if self.k & (self.k - 1):
            raise WorkloadError(f"pq format: k must be a power of two (codes of log2 k bits), got {self.k}")
        for f in ("sinks", "recent", "outliers", "refresh"):
            _check_int("pq format", f, getattr(self, f), 0)
        _check_int("pq format", "rope_aug", self.rope_aug, 0, MAX_ROPE_AUG)
        _check_int("pq format", "rerank", self.rerank, 0, MAX_RERANK)
        if self.rope_aug and self.pre_rope:
            raise WorkloadError("pq format: rope_aug rotates post-RoPE training keys to other positions; pre_rope "
                                "keys carry no position (use one or the other)")
        if self.key_k != 0:
            _check_int("pq format", "key_k", self.key_k, 2, 65536)
            if self.key_k & (self.key_k - 1):
                raise WorkloadError(f"pq format: key_k must be a power of two (codes of log2 key_k bits), "
                                    f"got {self.key_k}")
        _check_int("pq format", "stages", self.stages, 1)
        if self.m % self.stages:
            raise WorkloadError(f"pq format: stages ({self.stages}) must divide m ({self.m}): each residual stage "
                                f"holds m / stages sub-spaces")
        for f in ("scale_keys", "pre_rope"):
            if not isinstance(getattr(self, f), bool):
                raise WorkloadError(f"pq format: {f} must be true or false, got {getattr(self, f)!r}")

    @property
    def name(self) -> str:
        return _name(self)

    @property
    def code_bits(self) -> int:
        """Bits of one value code (one sub-vector of one token)."""
        return int(self.k).bit_length() - 1

    @property
    def keys_k(self) -> int:
        """Centroids per key sub-space (``key_k``, or ``k`` when 0)."""
        return self.key_k or self.k

    @property
    def key_code_bits(self) -> int:
        """Bits of one key code."""
        return int(self.keys_k).bit_length() - 1

    @property
    def code_bits_per_token(self) -> int:
        """Code bits of one value vector of one token in one KV head: ``m x log2 k``."""
        return self.m * self.code_bits

    @property
    def key_code_bits_per_token(self) -> int:
        """Code bits of one key vector of one token in one KV head: ``m x log2 key_k``."""
        return self.m * self.key_code_bits

    @property
    def outlier_bytes_per_token(self) -> int:
        """The FP16 outlier key channels of one coded token in one KV head."""
        return self.outliers * FP16_BYTES

    @property
    def outlier_index_bytes(self) -> int:
        """The outlier channels' indices, per KV head and layer (2 bytes each)."""
        return self.outliers * FP16_BYTES

    def codebook_bytes(self, model: ModelSpec) -> int:
        """Centroids of the value tensor of one KV head in one layer: k centroids x m sub-spaces x head_dim/m FP16
        per residual stage (the key codebook too unless ``key_k`` is set: ``key_codebook_bytes``)."""
        return self.stages * self.k * model.head_dim * FP16_BYTES

    def key_codebook_bytes(self, model: ModelSpec) -> int:
        """Centroids of the key tensor of one KV head in one layer: key_k x head_dim FP16 per residual stage."""
        return self.stages * self.keys_k * model.head_dim * FP16_BYTES

    @property
    def stage_m(self) -> int:
        """Sub-spaces of one residual stage (m without stages)."""
        return self.m // self.stages

    def codebooks_bytes(self, model: ModelSpec) -> int:
        """K and V codebooks of one KV head in one layer."""
        return self.key_codebook_bytes(model) + self.codebook_bytes(model)

    def key_scale_bytes(self, model: ModelSpec) -> int:
        """Per-channel key scales of one KV head in one layer (``scale_keys``), FP16."""
        return model.head_dim * FP16_BYTES if self.scale_keys else 0

    def check(self, model: ModelSpec) -> None:
        """Errors that depend on the model: sub-spaces must tile the head, outliers fit in it."""
        if model.head_dim % self.m:
            raise WorkloadError(f"pq format {self.name}: head_dim {model.head_dim} of '{model.name}' is not "
                                f"divisible by m={self.m}")
        if self.outliers >= model.head_dim:
            raise WorkloadError(f"pq format {self.name}: outliers ({self.outliers}) must be fewer than head_dim "
                                f"({model.head_dim})")
        if self.pre_rope and (model.head_dim // self.stage_m) % 2:
            raise WorkloadError(f"pq format {self.name}: pre_rope needs sub-vectors of whole RoPE pairs, an even "
                                f"head_dim x stages / m; head_dim {model.head_dim} / {self.stage_m} sub-spaces per "
                                f"stage is odd")

    def code_bits_per_element(self, model: ModelSpec) -> float:
        """Code bits per K/V element of a coded token, keys and values averaged."""
        self.check(model)
        return (self.key_code_bits_per_token + self.code_bits_per_token) / (2 * model.head_dim)

    def kv_bytes(self, model: ModelSpec, context: int) -> KvBytes:
        """Codes packed per tensor (``ceil`` over the context); codebooks, key scales and outlier indices once."""
        self.check(model)
        exact, coded = _split(model, context, self.sinks, self.recent)
        s = _streams(model)
        codes = math.ceil(coded * self.key_code_bits_per_token / 8) + math.ceil(coded * self.code_bits_per_token / 8)
        return KvBytes(codes=s * codes,
                       fp16_tokens=s * exact * _exact_bytes_per_token_head(model, FP16_BYTES),
                       outliers=s * (coded * self.outlier_bytes_per_token + self.outlier_index_bytes),
                       codebooks=s * (self.codebooks_bytes(model) + self.key_scale_bytes(model)))

    def host_copy_bytes(self, model: ModelSpec, coded_tokens: float) -> float:
        """The FP16 copy of ``coded_tokens`` coded tokens (K and V, every layer and KV head) that ``rerank`` keeps
        in host memory; 0 without it."""
        return coded_tokens * model.kv_bytes_per_token if self.rerank else 0.0

    def pim_token_bytes_per_head(self, model: ModelSpec) -> float:
        """K and V codes of one coded token in one KV head and layer (bit-packed, no ``ceil``), plus its FP16
        outlier key channels."""
        self.check(model)
        return (self.key_code_bits_per_token + self.code_bits_per_token) / 8 + self.outlier_bytes_per_token

    def pim_costs(self, model: ModelSpec) -> PqPimCosts:
        """Bytes, table sizes and FLOPs of this format inside PIM, per unit and layer (``PqPimCosts``)."""
        self.check(model)
        d, m, kk, k, st = model.head_dim, self.m, self.keys_k, self.k, self.stages
        scale_flops = d if self.scale_keys else 0
        if self.pre_rope:  # a complex table per stage; every stage's gathered pairs rotated by the same factors
            entries, table_flops, reads = st * kk * d, 3.0 * st * kk * d, st * d
            score_flops, rope_flops = 2.0 * st * d + 6.0 * self.outliers, 3.0 * d
        else:  # stages share the m table rows between them: m x kk entries, m reads per token whatever the stages
            entries, table_flops, reads = m * kk, 2.0 * st * kk * d, m
            score_flops, rope_flops = 2.0 * m + 2.0 * self.outliers, 0.0
        return PqPimCosts(
            key_code_bytes_per_token=self.key_code_bits_per_token / 8,
            value_code_bytes_per_token=self.code_bits_per_token / 8,
            outlier_bytes_per_token=self.outlier_bytes_per_token,
            codebook_bytes=self.codebooks_bytes(model) + self.key_scale_bytes(model),
            table_entries_per_query=entries, bin_entries_per_query=m * k,
            table_bytes_streamed_per_query=self.key_codebook_bytes(model) + self.key_scale_bytes(model),
            table_flops_per_query=table_flops + scale_flops, table_reads_per_token_per_query=reads,
            score_flops_per_token_per_query=score_flops, rope_flops_per_token=rope_flops,
            value_flops_per_token_per_query=2.0 * m, bins_x_centroids_flops_per_query=2.0 * st * k * d,
            quantize_elements_per_new_token=st * (kk + k) * d,
            quantize_bytes_per_new_token=self.codebooks_bytes(model),
            refresh_every_tokens=self.refresh,
            refresh_train_elements_per_token=st * (kk * (1 + self.rope_aug) + k) * d)

    def pim_unit_fixed_bytes(self, model: ModelSpec) -> float:
        """K and V codebooks of one (sequence, KV head) over all layers: one copy (a system holding a unit's
        tokens on several channels keeps a copy in each). The outlier indices and ``scale_keys`` scales that
        ``kv_bytes`` counts are not placed in PIM by this count (a few bytes per KV head and layer)."""
        self.check(model)
        return model.n_layers * self.codebooks_bytes(model)


@dataclass(frozen=True)
class PqPimCosts:
    """What one PQ format costs inside PIM, per (sequence, KV head, layer) "unit", as data for the timing model
    (``PqSettings.pim_costs``). Counts, not times: the timing model turns bytes and FLOPs into time with its channel
    parameters. "per query" = per query head of the unit's GQA group; "per token" = per coded token the unit holds;
    table and bin entries are FP16 values held in the unit's lookup buffer (``lut_bytes``).

    What each option changes against plain PQ (m sub-spaces, k centroids, post-RoPE keys):
    - ``key_k``: key codes of log2 key_k bits, a key codebook of key_k x head_dim, key tables of m x key_k
      entries, key_k x head_dim FP16 streamed and 2 key_k head_dim FLOPs per query to build them, key_k x head_dim
      distance elements per quantized token;
    - ``pre_rope``: the key table holds complex entries per RoPE pair: key_k x head_dim FP16 values per query
      (head_dim / m times more), built with 3 key_k head_dim FLOPs (a complex product per pair); each token reads
      head_dim table values instead of m and spends 2 head_dim FLOPs (rotate each gathered pair by its position
      and add) instead of 2m; the rotation factors e^{j p theta_i} of the token's position (head_dim / 2 pairs)
      cost 3 head_dim FLOPs per token per unit, shared by the group's query heads (a complex multiply-step from the
      previous position; nothing stored); outlier channels cost 6 FLOPs each instead of 2 (rotated);
    - ``outliers``: outliers x 2 bytes per token streamed with the key codes, their exact dot products;
    - ``scale_keys``: head_dim FP16 scales per unit, head_dim FLOPs per query (q times the scales, folded into the
      table); no per-token cost;
    - ``stages`` (S residual stages of m / S sub-spaces): codebooks S times larger (streamed to build the tables,
      to multiply the bins and to quantize: S x (key_k + k) x head_dim distance elements per new token), table
      build and bins x centroids S times the FLOPs; table and bin entries stay m x key_k and m x k (the stages
      share the m rows) and a token still reads m entries and scatters into m bins; with ``pre_rope`` each stage
      has its own complex table (S x key_k x head_dim values, S x head_dim reads per token and query head);
    - ``refresh``: every ``refresh`` decoded tokens the unit's codebooks are re-fit (on the GPU, as at prefill:
      ``refresh_train_elements`` distance elements per k-means iteration) and sent again
      (``codebook_bytes`` per copy). The accuracy protocol re-codes the tokens already coded from their FP16
      values, which the format does not keep: a deployable refresh codes only later tokens with the new codebooks.
      So refresh is not a simulated option (``REFRESH_NOT_DEPLOYABLE``); these two counts are what a deployable
      refresh would be charged, for a study.
    """

    key_code_bytes_per_token: float  # m log2(key_k) / 8
    value_code_bytes_per_token: float  # m log2(k) / 8
    outlier_bytes_per_token: float  # FP16 key channels of a coded token
    codebook_bytes: float  # K and V centroids (+ key scales) per unit, one copy
    table_entries_per_query: float  # key score table: m x key_k (post-RoPE) or key_k x head_dim (pre-RoPE)
    bin_entries_per_query: float  # value bins: m x k
    table_bytes_streamed_per_query: float  # the key codebook read to build a table
    table_flops_per_query: float  # 2 key_k head_dim (post-RoPE), 3 key_k head_dim (pre-RoPE) (+ head_dim scales)
    table_reads_per_token_per_query: float  # m (post-RoPE) or head_dim (pre-RoPE)
    score_flops_per_token_per_query: float  # 2m (post) or 2 head_dim (pre), + 2 (post) or 6 (pre) per outlier
    rope_flops_per_token: float  # 3 head_dim when pre_rope (per unit, shared by the group's query heads), else 0
    value_flops_per_token_per_query: float  # 2m: scatter-add the weight into m bins
    bins_x_centroids_flops_per_query: float  # 2 k head_dim
    quantize_elements_per_new_token: float  # (key_k + k) x head_dim distance elements (x the model's FLOPs/element)
    quantize_bytes_per_new_token: float  # both codebooks streamed to code the token leaving the window
    refresh_every_tokens: int  # 0 = never
    refresh_train_elements_per_token: float  # (key_k (1 + rope_aug) + k) x head_dim per training token per iteration


REFRESH_NOT_DEPLOYABLE = (
    "refresh is an accuracy-protocol option only: as measured it re-codes the tokens already coded from their FP16 "
    "values, which a PQ cache does not keep (only the sinks and the recent window stay FP16), so no system runs it "
    "and the timing model does not charge it; a deployable refresh (new codebooks for later tokens only) is not "
    "measured")

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
    """``kind:key=value,...`` -> settings; e.g. ``pq:m=16,k=256,sinks=4,recent=128``, ``int:bits=4``, ``fp16``.

    Short names: ``int8``, ``int4``, ``int2`` (any ``int<bits>``) are ``int:bits=<bits>`` (groups of 32, no
    exact window); options may follow, ``int4:group=64``."""
    text = text.strip()
    kind, _, opts = text.partition(":")
    kind = kind.strip().lower()
    values: dict = {}
    short = re.fullmatch(r"int(\d+)", kind)
    if short:
        kind, values["bits"] = "int", int(short.group(1))
    if kind not in FORMATS:
        raise WorkloadError(f"KV format '{text}': unknown kind '{kind}'{did_you_mean(kind, FORMATS)}; "
                            f"known: {', '.join(FORMATS)} (and int<bits>: int2, int4, int8)")
    cls = FORMATS[kind]
    known = {f.name: f for f in fields(cls)}
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


# --- compression as the context grows ------------------------------------------------------------------------------
# A PQ sequence pays fixed bytes (its codebooks, per layer and KV head) and an FP16 window (sinks + recent tokens)
# before its codes: at short context the "1 bit" format stores several bits per element. These functions give the
# whole-sequence count (``kv_bytes``, the same as ``compression``) at any context and the context where a format
# reaches a share of its ratio: the *nominal* ratio is what its code bits promise (16 / code bits per element), the
# *asymptotic* one what it reaches at infinite context (codes plus the per-token outlier channels; below the
# nominal one when it keeps outliers). A sliding-window model stops growing at its window.

FP16_BITS = 8.0 * FP16_BYTES
BITS_PARTS = ("codes", "fp16_tokens", "outliers", "codebooks", "scales")
CURVE_CONTEXTS = tuple(2 ** i for i in range(10, 21))  # 1K .. 1M tokens


def bits_per_element_by_part(model: ModelSpec, fmt: KvFormat, context: int) -> dict[str, float]:
    """Stored bits per K/V element at ``context``, by part (``BITS_PARTS``) and ``total``."""
    n = model.kv_tokens(context)
    elements = 2 * _streams(model) * n * model.head_dim
    parts = kv_bytes(model, fmt, context)
    out = {p: 8.0 * getattr(parts, p) / elements for p in BITS_PARTS}
    out["total"] = 8.0 * parts.total / elements
    return out


def asymptotic_bits_per_element(model: ModelSpec, fmt: KvFormat) -> float:
    """Bits per element as the context grows without bound (a coded token's bytes; FP16 for fp16); a sliding-window
    model's value at its window."""
    if model.sliding_window is not None:
        return bits_per_element(model, fmt, model.sliding_window)
    if isinstance(fmt, Fp16Settings):
        return FP16_BITS
    return 8.0 * fmt.pim_token_bytes_per_head(model) / (2 * model.head_dim)


def context_for_ratio(model: ModelSpec, fmt: KvFormat, target_ratio: float, limit: int = 2**40) -> int | None:
    """The smallest context whose compression (FP16 bytes / stored bytes) is at least ``target_ratio``; None when
    no context up to ``limit`` reaches it. Bisection: the ratio grows with the context once the exact window is
    full (up to a byte of code packing, see the property test)."""
    if compression(model, fmt, limit) < target_ratio:
        return None
    lo, hi = 0, limit  # compression(lo) < target (or lo = 0), compression(hi) >= target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if compression(model, fmt, mid) >= target_ratio:
            hi = mid
        else:
            lo = mid
    return hi


def compression_by_context(model: ModelSpec, fmt: KvFormat, contexts: Sequence[int] = CURVE_CONTEXTS,
                           share: float = 0.9) -> dict:
    """Bits per element against context (total and by part) and where the format reaches ``share`` of its nominal
    and asymptotic ratios: the Result ``details`` entry ``bits_per_element_by_context`` and the figure's data."""
    nominal_bits = code_bits_per_element(model, fmt)
    asym_bits = asymptotic_bits_per_element(model, fmt)
    by_part = [bits_per_element_by_part(model, fmt, c) for c in contexts]
    return {"format": fmt.name, "contexts": [int(c) for c in contexts],
            "bits_per_element": [b["total"] for b in by_part],
            "bits_per_element_by_part": {p: [b[p] for b in by_part] for p in BITS_PARTS},
            "nominal_bits_per_element": nominal_bits, "nominal_ratio": FP16_BITS / nominal_bits,
            "asymptotic_bits_per_element": asym_bits, "asymptotic_ratio": FP16_BITS / asym_bits, "share": share,
            "context_for_share_of_nominal": context_for_ratio(model, fmt, share * FP16_BITS / nominal_bits),
            "context_for_share_of_asymptotic": context_for_ratio(model, fmt, share * FP16_BITS / asym_bits)}


# =====================================================================================================================
# --- measured accuracy, looked up by geometry (workloads/presets/accuracy.json, scripts/accuracy_table.py) ---------
# =====================================================================================================================
# The simulator runs LLaMA-class heads (head_dim 128); accuracy was measured on SmolLM2-135M (head_dim 64) and on
# Gaussian data. A format's accuracy is carried over by *geometry*: PQ error depends on the sub-vector a codebook
# clusters (head_dim / m dims) and its K centroids, not on how many sub-vectors tile the head, so pq:m=16 on
# head_dim 128 (8-dim sub-vectors) takes the entry measured as pq:m=8 on head_dim 64. INT-k groups 32 elements
# whatever the head size, so it matches by bits, group and window; FP16 is exact. Every other option (sinks, recent,
# outliers, scale_keys, refresh) must be equal. Outlier channels match by count, not by share of the head (4 of 128
# channels is half the share of 4 of 64): a carried-over entry is an estimate, and says what it was measured as.

ACCURACY_TABLE = Path(__file__).parent / "presets" / "accuracy.json"
ACCURACY_TABLE_VERSION = 1


@dataclass(frozen=True)
class AccuracyEntry:
    """One measured (format, data) row of the shipped accuracy table; metrics as in ``workloads.accuracy``."""

    format: str  # canonical text of the format as measured (on the data's head_dim)
    data: str  # "real" (captured K/V) or "synthetic" (i.i.d. Gaussian)
    head_dim: int  # of the data the format was measured on
    model: str  # whose K/V: "SmolLM2-135M-Instruct", "synthetic-gaussian"
    text: str  # what the activations were captured on ("synthetic" for Gaussian data)
    context: int  # tokens of the measured sequence
    layers: tuple[int, ...]  # captured layers evaluated
    out_cos_mean: float  # attention-output cosine vs FP16, mean over layers, query heads and decode queries
    out_cos_min: float  # ... and the worst of them
    key_rel_err: float
    value_rel_err: float
    score_rmse: float  # RMS logit error
    topk_overlap: float
    bits_per_element: float  # all stored bits per K/V element at ``context`` on the data's model
    code_bits_per_element: float
    ppl: float | None = None  # perplexity with the coded cache, when measured
    ppl_fp16: float | None = None
    command: str = ""  # the command that regenerates the table

    @property
    def settings(self) -> KvFormat:
        return parse_format(self.format)

    @property
    def geometry(self) -> str:
        """What the entry carries over by: ``d_sub 8, K 256`` (``K 256, key K 1024`` with a larger key codebook),
        ``INT2 group 32`` or ``exact``."""
        fmt = self.settings
        if isinstance(fmt, PqSettings):
            return (f"d_sub {self.head_dim // fmt.m}, K {fmt.k}" + (f", key K {fmt.key_k}" if fmt.key_k else "")
                    + (f", {fmt.stages} residual stages" if fmt.stages > 1 else ""))
        if isinstance(fmt, IntSettings):
            return f"INT{fmt.bits} group {fmt.group}"
        return "exact"

    def summary(self) -> str:
        """One line, e.g. ``cos 0.989 mean / 0.47 worst (SmolLM2-135M-Instruct K/V, d_sub 8, K 256, measured as
        pq:m=8,k=256,sinks=4,recent=128)``."""
        return (f"cos {self.out_cos_mean:.3f} mean / {self.out_cos_min:.2f} worst ({self.model} K/V, "
                f"{self.geometry}, measured as {self.format})")


def accuracy_key(fmt: KvFormat, head_dim: int) -> tuple:
    """What a format's measured accuracy carries over by, on heads of ``head_dim`` dims: its kind, PQ's sub-vector
    dimension instead of m, and every other option. Two (format, head_dim) pairs with equal keys share an entry."""
    _check_int("accuracy lookup", "head_dim", head_dim, 1)
    options = tuple((f.name, getattr(fmt, f.name)) for f in fields(fmt) if f.name != "m")
    if isinstance(fmt, PqSettings):
        if head_dim % fmt.m:
            raise WorkloadError(f"pq format {fmt.name}: head_dim {head_dim} is not divisible by m={fmt.m}")
        return (fmt.kind, ("sub_dim", head_dim // fmt.m), *options)
    return (fmt.kind, *options)


def _entry_from_json(raw: dict, where: str) -> AccuracyEntry:
    try:
        data, metrics = raw["data"], raw["metrics"]
        entry = AccuracyEntry(
            format=str(raw["format"]), data=str(data["kind"]), head_dim=int(raw["geometry"]["head_dim"]),
            model=str(data["model"]), text=str(data["text"]), context=int(data["context"]),
            layers=tuple(int(x) for x in data["layers"]), command=str(raw["command"]),
            **{f.name: (None if metrics[f.name] is None else float(metrics[f.name]))
               for f in fields(AccuracyEntry) if f.name in metrics})
    except (KeyError, TypeError, ValueError) as e:
        raise WorkloadError(f"{where}: malformed accuracy entry {raw.get('format', '?')!r}: {e!r}") from None
    parse_format(entry.format)  # the stored text must still parse (WorkloadError otherwise)
    return entry


@cache
def load_accuracy_table(path: Path = ACCURACY_TABLE) -> tuple[AccuracyEntry, ...]:
    """The entries of an accuracy table file (read once per path)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WorkloadError(f"accuracy table {path}: cannot read: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != ACCURACY_TABLE_VERSION:
        raise WorkloadError(f"accuracy table {path}: expected version {ACCURACY_TABLE_VERSION}")
    return tuple(_entry_from_json(raw, str(path)) for raw in doc.get("entries", []))


HELDOUT_DATA = "real-heldout"  # entries measured on layers the fixes were not chosen on
UNSEEN_DATA = "real-heldout-unseen"  # the same layers, codebooks trained on an early prefix: later tokens unseen


def accuracy_summary(fmt: KvFormat, head_dim: int, entries: Sequence[AccuracyEntry] | None = None) -> str:
    """One line for run and compare: the measured accuracy of ``fmt`` on heads of ``head_dim`` dims on the tuned
    layers and on the held-out ones, or that none was measured at this geometry and with these options."""
    tuned = accuracy_entry(fmt, head_dim, "real", entries)
    held = accuracy_entry(fmt, head_dim, HELDOUT_DATA, entries)
    unseen = accuracy_entry(fmt, head_dim, UNSEEN_DATA, entries)
    if tuned is None and held is None and unseen is None:
        geo = (f"d_sub {head_dim // fmt.m}, K {fmt.k}" if isinstance(fmt, PqSettings) and head_dim % fmt.m == 0
               else fmt.name)
        return f"not measured at this geometry and options ({geo}; table {ACCURACY_TABLE.name})"
    parts = []
    if tuned is not None:
        parts.append(f"tuned layers cos {tuned.out_cos_mean:.3f} mean / {tuned.out_cos_min:.2f} worst")
    if held is not None:
        parts.append(f"held-out layers cos {held.out_cos_mean:.3f} mean / {held.out_cos_min:.2f} worst")
    if unseen is not None:
        parts.append(f"tokens the codebooks never saw cos {unseen.out_cos_mean:.3f} mean / "
                     f"{unseen.out_cos_min:.2f} worst")
    e = tuned or held or unseen
    return f"{'; '.join(parts)} ({e.model} K/V, {e.geometry}, measured as {e.format})"


def accuracy_entry(fmt: KvFormat, head_dim: int, data: str = "real",
                   entries: Sequence[AccuracyEntry] | None = None) -> AccuracyEntry | None:
    """The measured accuracy of ``fmt`` on heads of ``head_dim`` dims, matched by geometry (see the section
    comment), on ``data`` ("real" or "synthetic"); None when nothing matching was measured. Of several matches the
    one measured at the nearest head_dim wins (by ratio; the first listed on a tie). ``entries``: default, the
    shipped table."""
    want = accuracy_key(fmt, head_dim)
    found = [e for e in (load_accuracy_table() if entries is None else entries)
             if e.data == data and accuracy_key(e.settings, e.head_dim) == want]
    return min(found, key=lambda e: abs(math.log2(e.head_dim / head_dim)), default=None)
