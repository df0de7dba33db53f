"""Run configuration: one frozen dataclass holding every setting and its default, parsed from TOML or the CLI.

This is the only place defaults live. ``from_mapping`` checks keys (unknown ones get a did-you-mean), types and
ranges, and ``load_config_file`` reports malformed TOML with the file and line.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from hw_models.loading import did_you_mean as _suggest
from hw_models.loading import read_toml
from hw_models.machine import DEFAULT_MACHINE
from sim.errors import ConfigError
from sim.systems import SYSTEMS

DEFAULT_STEPS = 8
CHOICES = {"capacity_policy": ("spill", "limit"), "placement": ("hybrid", "head", "token"),
           "softmax": ("pim", "near", "host")}


@dataclass(frozen=True)
class RunConfig:
    system: str = "offload"
    model: str = "llama-3.1-8b"
    hardware: str = DEFAULT_MACHINE
    # Workload: a fixed batch x context x steps, or a request list (trace file or synthetic) batched continuously.
    batch: int = 16
    context: int = 32768
    steps: int | None = None          # fixed workload: decode steps (default 8); request lists: a cap
    trace: str | None = None          # CSV or JSONL with arrival_s, prompt_tokens, output_tokens
    requests: int | None = None       # synthetic request list: how many (prompt = context tokens)
    output_tokens: int = 128          # synthetic request list: tokens each request decodes
    arrival_rate_per_s: float = 0.0   # synthetic request list: Poisson rate; 0 = all arrive at t=0
    max_batch: int | None = None      # continuous batching limit (default: batch)
    # Offload options
    prefetch: bool = False
    cpu_attention: bool = False
    # PIM options (systems pim and aqpim)
    pim: str = "attacc-hbm3"          # PIM device preset or .toml file
    channels: int | None = None       # override the device's channel count
    capacity_policy: str = "spill"    # KV beyond PIM capacity: spill (to host, offload path) or limit (the batch)
    placement: str = "hybrid"         # KV across channels: hybrid, head or token
    softmax: str = "pim"              # where softmax runs: pim, near (near-memory unit) or host (the GPU)
    sub_batches: int = 1              # 2: two sub-batches alternate between GPU and PIM (NeuPIMs-style)
    link_chunks: int = 1              # >1: queries and partials cross the PIM link in chunks, overlapping compute
    # AQPIM options
    pq_m: int = 16                    # PQ sub-spaces per head
    pq_k: int = 256                   # centroids per sub-space
    sinks: int = 4                    # first tokens kept in FP16
    recent: int = 128                 # last tokens kept in FP16
    outliers: int = 0                 # key channels per head kept in FP16
    lut_bytes: int = 16384            # per-unit lookup-table buffer of an AQPIM PIM unit (assumption, see docs)
    kmeans_iters: int = 10            # k-means iterations of codebook training at prefill
    # Run options
    seed: int = 0
    trace_steps: int = 4              # decode steps whose spans are kept for traces and timelines
    trace_channels: int = 8           # PIM channels drawn one per lane in traces (all are always simulated)

    def __post_init__(self):
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown system '{self.system}'{_suggest(self.system, SYSTEMS)}; "
                              f"valid systems: {', '.join(sorted(SYSTEMS))}")
        for name in ("batch", "context", "output_tokens"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "requests", "max_batch"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("trace_steps", "trace_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.arrival_rate_per_s < 0:
            raise ConfigError(f"arrival_rate_per_s must be >= 0, got {self.arrival_rate_per_s}")
        if self.trace is not None and self.requests is not None:
            raise ConfigError("give either trace (a file) or requests (a synthetic list), not both")
        for name in ("channels",):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("sub_batches", "link_chunks", "pq_m", "pq_k", "lut_bytes", "kmeans_iters"):
            _positive_int(name, getattr(self, name))
        for name in ("sinks", "recent", "outliers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        for name, choices in CHOICES.items():
            v = getattr(self, name)
            if v not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {v!r}{_suggest(str(v), choices)}")
        if self.prefetch and self.cpu_attention:
            raise ConfigError("prefetch and cpu_attention cannot be combined: with attention on the host no KV "
                              "crosses the link to prefetch")

    @property
    def uses_requests(self) -> bool:
        return self.trace is not None or self.requests is not None

    @property
    def effective_max_batch(self) -> int:
        return self.max_batch if self.max_batch is not None else self.batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive_int(name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def _coerce(name: str, value, where: str):
    typ = _HINTS[name]
    base = {int | None: int, str | None: str}.get(typ, typ)
    if value is None and typ in (int | None, str | None):
        return None
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{name}' must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{name}' must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{name}' must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{name}' must be a string, got {value!r}")
        return value
    return value


def from_mapping(data: dict, where: str = "config") -> RunConfig:
    """Build a RunConfig from a flat mapping (TOML table or CLI values), with clear errors."""
    kwargs = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key, FIELDS)}; "
                              f"valid keys: {', '.join(FIELDS)}")
        kwargs[key] = _coerce(key, value, where)
    try:
        return RunConfig(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def read_config_file(path: str | Path) -> dict:
    return read_toml(Path(path), error=ConfigError)


def load_config_file(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """A TOML run file (flat keys, as the CLI flags), with optional overrides.

    File paths inside it (trace, a hardware .toml, a model config.json) are relative to the file's folder.
    """
    data = read_config_file(path)
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{path}: run files are flat key = value lists; unexpected table [{nested[0]}]")
    base = Path(path).parent
    for key, suffix in (("trace", None), ("hardware", ".toml"), ("model", ".json")):
        v = data.get(key)
        if isinstance(v, str) and (suffix is None or v.endswith(suffix)) and not Path(v).is_absolute():
            data[key] = str(base / v)
    data.update(overrides or {})
    return from_mapping(data, where=str(path))
