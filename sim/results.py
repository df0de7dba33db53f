"""Results are a schema: what a run and a sweep leave on disk, and how to read it back, with the standard library only.

This module is what ``plots/`` (and any report or page) imports to read saved results without loading the
simulator: it holds the ``Result`` of one simulation (every metric of ``docs/metrics.md``), the short labels that
tell configurations apart, a sweep's file names and its record schema (one JSON object per line of
``results.jsonl``: ``key``, ``index``, ``factors``, and ``result`` or ``error``), the flattening of a record into a
CSV row, and ``load_results``, labelled Results from any results file. Writing stays with the simulator
(``sim.sweep``); nothing here imports another part of ``sim``, hw_models, workloads or a third-party package.

A Result holds no list that grows with the number of decode steps (schema 2): per-step figures are streamed
aggregates (``sim.stats``), and the per-step rows go, on request, to a step log: a CSV file with the columns
``STEP_LOG_COLUMNS``, one line per step, read back by ``read_step_log``. ``Result.from_dict`` reads schema-1 files
too (they carried per-step lists): the aggregates are derived from those lists, the lists themselves are dropped.

Schema 4 adds request-level metrics (TTFT, TPOT, end-to-end latency, queueing delay, SLO attainment, goodput)
and the prefill steps' totals; files of schemas 1 to 3 read with those at zero (they had no prefill and no
request records). Per-request records go, on request, to a request log (``sim.serving``), never into the Result.

A Result's JSON is written with sorted keys and Python's shortest round-trip float repr, so the same run gives the
same bytes. Nothing time-of-day or host-specific goes in. A file that cannot be read or has the wrong shape raises
``ResultsError``: one line naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

RESULT_SCHEMA_VERSION = 4

# Schema 1 kept these per-step lists in the Result; schema 2 keeps streamed aggregates and, on request, a step log.
SCHEMA1_STEP_LISTS = ("step_latency_s", "step_batch", "step_kv_tokens", "analytic_step_latency_s")

# A sweep's output folder.
RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
MANIFEST = "sweep.json"


class ResultsError(ValueError):
    """A results file cannot be read or has the wrong shape, or a figure asks for what it does not hold."""


@dataclass(frozen=True)
class Result:
    system: str
    model: str
    hardware: str
    batch: int
    context: int
    steps: int
    seed: int
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
    analytic_mean_step_latency_s: float
    analytic_exact: bool
    warnings: list[str]
    config: dict
    details: dict = field(default_factory=dict)
    option_defaults: dict = field(default_factory=dict)  # the system's options at their defaults (for labels)
    provenance: dict = field(default_factory=dict)  # input -> "file sha256:..." (docs/metrics.md)
    # Streamed over the steps (schema 2; docs/metrics.md). Defaults only for files of schema 1 without step lists.
    ttnt_mean_s: float = 0.0
    busy_tokens_per_s: float = 0.0  # tokens over the time some step ran (idle waiting excluded)
    step_latency_min_s: float = 0.0
    step_latency_max_s: float = 0.0
    peak_batch: int = 0
    peak_kv_tokens: int = 0
    analytic_max_rel_gap: float = 0.0
    analytic_max_rel_undershoot: float = 0.0
    traced_step_latency_s: list[float] = field(default_factory=list)  # the first min(trace_steps, steps) steps
    # Energy split (schema 3; docs/metrics.md, "Energy"): ``energy_j`` is their sum per component. Defaults only for
    # files of schema 1 and 2, whose ``energy_j`` was dynamic energy alone.
    energy_static_j: dict[str, float] = field(default_factory=dict)
    energy_dynamic_j: dict[str, float] = field(default_factory=dict)
    energy_static_per_token_j: float = 0.0
    energy_dynamic_per_token_j: float = 0.0
    mean_power_w: float = 0.0
    # Requests and prefill (schema 4; docs/metrics.md, "Requests"). Defaults (zeros) for files of schema 1 to 3,
    # which had no request-level metrics.
    requests_completed: int = 0
    request_output_tokens: int = 0
    request_tokens_per_s: float = 0.0
    slo_attainment: float = 0.0
    goodput_tokens_per_s: float = 0.0
    queue_mean_s: float = 0.0
    queue_p50_s: float = 0.0
    queue_p90_s: float = 0.0
    queue_p99_s: float = 0.0
    ttft_mean_s: float = 0.0
    ttft_p50_s: float = 0.0
    ttft_p90_s: float = 0.0
    ttft_p99_s: float = 0.0
    tpot_mean_s: float = 0.0
    tpot_p50_s: float = 0.0
    tpot_p90_s: float = 0.0
    tpot_p99_s: float = 0.0
    e2e_mean_s: float = 0.0
    e2e_p50_s: float = 0.0
    e2e_p90_s: float = 0.0
    e2e_p99_s: float = 0.0
    prefill_steps: int = 0
    prefill_tokens: int = 0
    prefill_time_s: float = 0.0
    prefill_analytic_time_s: float = 0.0
    prefill_analytic_exact: bool = True
    prefill_analytic_max_rel_undershoot: float = 0.0
    schema_version: int = RESULT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        """A Result from its dict; a schema-1 dict's per-step lists become the aggregates that replaced them."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in upgrade_schema2(upgrade_schema1(d)).items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.from_dict(json.loads(text))


def upgrade_schema1(d: dict) -> dict:
    """``d`` with the streamed aggregates of schema 2 derived from schema 1's per-step lists where it has them
    (the lists stay in the returned dict; ``Result.from_dict`` ignores them). Other dicts are returned as they are."""
    lat, batch = d.get("step_latency_s"), d.get("step_batch")
    if not isinstance(lat, list) or not isinstance(batch, list) or not lat or len(lat) != len(batch):
        return d
    try:
        derived = _schema1_aggregates(d, lat, batch)
    except (TypeError, ValueError):  # damaged lists: leave the aggregates at their defaults
        return d
    out = dict(d)
    for k, v in derived.items():
        out.setdefault(k, v)
    return out


def upgrade_schema2(d: dict) -> dict:
    """``d`` of schema 1 or 2, whose ``energy_j`` was dynamic energy alone (no static power was modelled), with that
    energy named as the dynamic part of schema 3; other dicts are returned as they are."""
    if not isinstance(d, dict) or d.get("schema_version", RESULT_SCHEMA_VERSION) >= 3 or "energy_dynamic_j" in d:
        return d
    out = dict(d)
    if isinstance(d.get("energy_j"), dict):
        out["energy_dynamic_j"] = dict(d["energy_j"])
    if isinstance(d.get("energy_per_token_j"), int | float):
        out["energy_dynamic_per_token_j"] = d["energy_per_token_j"]
    return out


def _schema1_aggregates(d: dict, lat: list, batch: list) -> dict:
    tokens = sum(batch)
    kv = d.get("step_kv_tokens")
    config = d.get("config") if isinstance(d.get("config"), dict) else {}
    derived = {"ttnt_mean_s": sum(v * n for v, n in zip(lat, batch, strict=True)) / tokens if tokens else 0.0,
               "step_latency_min_s": min(lat), "step_latency_max_s": max(lat), "peak_batch": max(batch),
               "peak_kv_tokens": max(kv) if isinstance(kv, list) and kv else 0,
               "traced_step_latency_s": lat[:int(config.get("trace_steps", 0))]}
    analytic = d.get("analytic_step_latency_s")
    if isinstance(analytic, list) and len(analytic) == len(lat):
        pairs = [(s, a) for s, a in zip(lat, analytic, strict=True) if a > 0]
        derived["analytic_max_rel_gap"] = max((abs(s - a) / a for s, a in pairs), default=0.0)
        derived["analytic_max_rel_undershoot"] = max([0.0] + [(a - s) / a for s, a in pairs])
    return derived


# --- the step log --------------------------------------------------------------------------------------------------
# One CSV line per decode step, written as the run goes when asked for (``sim.run.run_simulation(step_log=...)``):
# the step's index, its start (simulated time), its simulated and closed-form latency, whether the closed form is
# exact (1/0), its sequences and the KV tokens they attend. Floats are written as Python's shortest round-trip repr,
# so the file holds the same numbers as the run.
class StepRow(NamedTuple):
    """One decode step: a line of the step log (seconds of simulated time, tokens)."""

    step: int
    start_s: float
    latency_s: float
    analytic_s: float
    exact: bool
    n_seqs: int
    kv_tokens: int


STEP_LOG_COLUMNS = StepRow._fields
_STEP_LOG_TYPES = (int, float, float, float, lambda x: bool(int(x)), int, int)


def read_step_log(path: str | Path) -> dict[str, list]:
    """A step log as columns: ``{"step": [...], "latency_s": [...], ...}`` (``STEP_LOG_COLUMNS``, typed)."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or tuple(header) != STEP_LOG_COLUMNS:
                raise ResultsError(f"{p}: not a step log (expected the header {','.join(STEP_LOG_COLUMNS)})")
            cols: dict[str, list] = {c: [] for c in STEP_LOG_COLUMNS}
            for number, row in enumerate(rows, 2):
                try:
                    for c, convert, v in zip(STEP_LOG_COLUMNS, _STEP_LOG_TYPES, row, strict=True):
                        cols[c].append(convert(v))
                except ValueError:
                    raise ResultsError(f"{p}: line {number} is not a step-log row") from None
    except OSError as e:
        raise ResultsError(f"{p}: cannot read: {e.strerror or e}") from None
    return cols


# The JSON type each Result field must have, from its annotation (numbers: int or float, never bool).
_JSON_TYPES = {"str": (str,), "int": (int, float), "float": (int, float), "bool": (bool,), "list": (list,),
               "dict": (dict,)}
REQUIRED_FIELDS = tuple(f.name for f in dataclasses.fields(Result)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def check_result(d, where: str) -> dict:
    """``d`` if it has the shape of a Result dict (every required field, each of its JSON type); else an error."""
    if not isinstance(d, dict):
        raise ResultsError(f"{where}: expected a Result (a JSON object), got {type(d).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in d]
    if missing:
        raise ResultsError(f"{where}: not a Result: missing {', '.join(missing[:5])}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for f in dataclasses.fields(Result):
        if f.name in d:
            types = _JSON_TYPES[str(f.type).split("[")[0]]
            v = d[f.name]
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise ResultsError(f"{where}: Result field '{f.name}' should be {str(f.type)}, got {v!r:.40}")
    return d


# --- labels ------------------------------------------------------------------------------------------------------
# Labels are derived from the configurations themselves, not stored: within each system, the options whose values
# differ between the configurations become the label (``offload+prefetch``, ``pim+limit``, ``pim+channels=256``).
# The same function labels the variants of `compare` and the Results read back from disk, so tables and figures
# use the same names.

# Keys that never name a variant (they are the same in every run of a comparison or only steer the output).
UNLABELLED = frozenset({"system", "seed", "trace_steps", "trace_channels"})
FILE_SUFFIXES = (".toml", ".json", ".csv", ".jsonl")


def _fmt(key: str, value) -> str:
    if value is True:
        return key.replace("_", "-")
    if isinstance(value, str):
        return Path(value).stem if "/" in value or value.endswith(FILE_SUFFIXES) else value
    return f"{key.replace('_', '-')}={value}"


def config_labels(configs: Sequence[Mapping], defaults: Sequence[Mapping] | None = None) -> list[str]:
    """One short label per configuration dict: its system, plus the options that differ within that system.

    With ``defaults`` (per configuration, its system's option defaults, as ``Result.option_defaults``), an option
    at its default is left out of the label unless that makes two labels equal, so the plain variant of a system
    is labelled by its name."""
    def labels(skip_defaults: bool) -> list[str]:
        out = []
        for i, cfg in enumerate(configs):
            system = cfg.get("system")
            peers = [c for c in configs if c.get("system") == system]
            base = defaults[i] if skip_defaults else {}
            differing = [k for k in cfg if k not in UNLABELLED and len({repr(p.get(k)) for p in peers}) > 1]
            parts = [_fmt(k, cfg[k]) for k in differing
                     if cfg[k] not in (False, None) and not (k in base and cfg[k] == base[k])]
            out.append("+".join([str(system)] + parts))
        return out

    result = labels(skip_defaults=defaults is not None)
    if len(set(result)) < len(result):
        result = labels(skip_defaults=False)
    seen: dict[str, int] = {}
    for i, lab in enumerate(result):
        seen[lab] = seen.get(lab, 0) + 1
        if result.count(lab) > 1:
            result[i] = f"{lab}#{seen[lab]}"
    return result


# --- reading files -----------------------------------------------------------------------------------------------

def read_json(path: str | Path):
    """The parsed content of a JSON file; an unreadable file or invalid JSON is a ``ResultsError``."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsError(f"{p}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{p}: not valid JSON: {e}") from None


def read_manifest(jsonl: str | Path) -> dict:
    """The ``sweep.json`` beside a sweep's JSONL (factor names, plot hints, description); empty when absent."""
    p = Path(jsonl).with_name(MANIFEST)
    if not p.exists():
        return {}
    data = read_json(p)
    if not isinstance(data, dict):
        raise ResultsError(f"{p}: not a sweep manifest (expected a JSON object)")
    return data


# --- the sweep's records -----------------------------------------------------------------------------------------

def _parse_line(line: bytes, path, number: int) -> dict:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResultsError(f"{path}: line {number} is not valid JSON (not a sweep's results.jsonl, or a damaged "
                           f"one: move it away to start over)") from None
    if (not isinstance(rec, dict) or not isinstance(rec.get("key"), str)
            or type(rec.get("index", 0)) is not int
            or not isinstance(rec.get("factors", {}), dict) or not isinstance(rec.get("result", {}), dict)):
        raise ResultsError(f"{path}: line {number} is not a sweep record")
    return rec


def scan_records(path: str | Path) -> Iterator[tuple[int, int, bytes, dict]]:
    """(line number, byte offset, raw line, record) for each complete line of a results JSONL, in file order.

    Stops at a torn last line (no newline: the writer was killed mid-write); a damaged complete line is an error.
    """
    try:
        with open(path, "rb") as f:
            offset = 0
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    return
                yield number, offset, line, _parse_line(line, path, number)
                offset += len(line)
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror or e}") from None


def iter_records(path: str | Path) -> Iterator[dict]:
    """The complete records of a results JSONL, in file order; a torn last line is ignored."""
    for _, _, _, rec in scan_records(path):
        yield rec


# CSV columns: a Result's scalar fields, then the entries of these dicts as ``name.key``.
SCALAR_FIELDS = tuple(f.name for f in dataclasses.fields(Result)
                      if f.name not in ("config", "details") and f.type in ("str", "int", "float", "bool"))
FLAT_DICTS = ("breakdown_s", "bytes_by_link", "config", "details")


def flat_row(rec: dict) -> dict:
    """A sweep record as one CSV row: index, key, ``factor.*``, scalar Result fields, ``<dict>.<key>`` entries."""
    row = {"index": rec.get("index"), "key": rec["key"]}
    row.update({f"factor.{k}": v for k, v in rec.get("factors", {}).items()})
    res = rec.get("result")
    if res is None:
        if "row" in rec:  # a closed-form table's headline numbers (sim.analytic_sweep.Evaluator.row)
            row.update(rec["row"])
        else:
            row["error"] = rec.get("error", "")
        return row
    row.update({k: res[k] for k in SCALAR_FIELDS if k in res})
    for name in FLAT_DICTS:
        for k, v in (res.get(name) or {}).items():
            if v is None or isinstance(v, str | int | float | bool):
                row[f"{name}.{k}"] = v
    return row


# --- labelled Results from any results file ----------------------------------------------------------------------

def load_results(path: str | Path) -> list[tuple[str, Result]]:
    """Labelled Results from a Result JSON, a JSON list of Results, or a sweep's JSONL.

    Labels: a sweep's factor values (records in point order, failed points skipped); otherwise the options that
    tell the configurations apart (``config_labels``).
    """
    p = Path(path)
    if p.suffix == ".jsonl":
        recs, rows = [], 0
        for number, _, _, rec in scan_records(p):
            if "result" in rec:
                check_result(rec["result"], f"{p}: line {number}")
                recs.append(rec)
            rows += "row" in rec
        if rows and not recs:
            raise ResultsError(f"{p}: holds closed-form table rows (sweep --analytic --table), not Results: read "
                               f"its results.csv, or run the sweep without --table for whole Results")
        recs.sort(key=lambda r: r.get("index", 0))
        return [(", ".join(str(v) for v in r.get("factors", {}).values()) or r["key"][:8],
                 Result.from_dict(r["result"])) for r in recs]
    data = read_json(p)
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(d, dict) and "mean_step_latency_s" in d for d in items):
        raise ResultsError(f"{p}: expected a Result JSON or a list of Results")
    for i, d in enumerate(items):
        check_result(d, f"{p}: item {i}" if isinstance(data, list) else str(p))
    results = [Result.from_dict(d) for d in items]
    labels = config_labels([r.config for r in results], [r.option_defaults for r in results])
    return list(zip(labels, results, strict=True))
