"""The Result of one simulation: every metric of ``docs/metrics.md``, serialisable to JSON and back losslessly.

JSON is written with sorted keys and Python's shortest round-trip float repr, so the same run gives the same
bytes. Nothing time-of-day or host-specific goes in.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

RESULT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Result:
    system: str
    model: str
    hardware: str
    batch: int
    context: int
    steps: int
    seed: int
    step_latency_s: list[float]
    step_batch: list[int]
    step_kv_tokens: list[int]
    mean_step_latency_s: float
    total_time_s: float
    tokens: int
    tokens_per_s: float
    ttnt_p50_s: float
    ttnt_p90_s: float
    ttnt_p99_s: float
    busy_s: dict[str, float]
    busy_by_kind_s: dict[str, float]
    breakdown_s: dict[str, float]
    comm_share: float
    bytes_by_link: dict[str, float]
    energy_j: dict[str, float]
    energy_per_token_j: float
    kv_bytes: float
    kv_location: str
    fits: bool
    fit_reasons: list[str]
    analytic_step_latency_s: list[float]
    analytic_mean_step_latency_s: float
    analytic_exact: bool
    warnings: list[str]
    config: dict
    details: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # input -> "file sha256:..." (docs/metrics.md)
    schema_version: int = RESULT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.from_dict(json.loads(text))
