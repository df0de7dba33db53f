"""Request trace files: the project's own CSV/JSONL and two public LLM serving traces, recognised by their headers.

A trace file becomes a list of ``Request``s (arrival time, prompt tokens, output tokens). Three CSV layouts are
read as they are published, told apart by the header row:

* the project's own: ``arrival_s,prompt_tokens,output_tokens`` (any column order, extra columns ignored; also as
  JSONL, one object per line). Arrivals are taken as written.
* the Azure LLM inference traces (Azure/AzurePublicDataset, ``AzureLLMInferenceTrace_code.csv`` and
  ``_conv.csv``, 2023 and 2024): ``TIMESTAMP,ContextTokens,GeneratedTokens``, TIMESTAMP a date and time such as
  ``2023-11-16 18:15:46.6805900`` (any number of fractional digits, an optional UTC offset).
* BurstGPT (HPMLL/BurstGPT): ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``,
  Timestamp in seconds (the later files' extra ``Session ID``, ``Elapsed time`` columns are ignored; every model
  and log type is kept).

In the public formats the arrival is the time since the file's earliest row (its first row in the published
files), so a run starts with the first request. Rows with 0 output tokens (BurstGPT's failed requests; the
Azure files have none that we know of) or 0 prompt tokens cannot be decoded: they are skipped, and
``TraceFile.notes()`` says how many, for the run's warnings. In the project's own format such a row is an error,
as any other malformed value.

Options: ``time_scale`` multiplies every arrival (0.5: the same requests twice as fast), ``max_requests`` keeps
the first N usable rows in file order and stops reading there (a malformed row after them is not seen). The file
is read whole (up to the cap) and checked before a run starts: a malformed row is a one-line error naming the
file and line, and nothing of a half-read file is simulated.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from workloads.errors import WorkloadError
from workloads.traces import (
    MAX_ARRIVAL_S,
    MAX_REQUESTS,
    MAX_TOKENS,
    TRACE_COLUMNS,
    Request,
    _no_constant,
    _parse_row,
)


@dataclass(frozen=True)
class Layout:
    """A CSV trace layout: its name, the columns it needs (arrival, prompt, output) and how arrivals read."""

    name: str
    title: str
    columns: tuple[str, str, str]
    datetime_arrivals: bool   # TIMESTAMP is a date and time, not seconds
    from_earliest: bool       # arrival = time since the earliest row
    skip_zero: bool           # rows with 0 prompt or output tokens are skipped (counted), not an error


OWN = Layout("aqpim", "arrival_s, prompt_tokens, output_tokens", TRACE_COLUMNS, False, False, False)
AZURE = Layout("azure", "Azure LLM inference trace", ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), True, True,
               True)
BURSTGPT = Layout("burstgpt", "BurstGPT", ("Timestamp", "Request tokens", "Response tokens"), False, True, True)
LAYOUTS = (AZURE, BURSTGPT, OWN)  # tried in this order against the header


@dataclass(frozen=True)
class TraceFile:
    """What a trace file held: its requests (file order), the layout, and the rows skipped by reason."""

    path: str
    layout: str
    requests: list[Request]
    rows: int                                   # data rows read (usable and skipped)
    skipped: dict[str, int] = field(default_factory=dict)
    capped: bool = False                        # reading stopped at max_requests

    def notes(self) -> list[str]:
        """One line per fact a run should report: rows skipped, a cap that cut the file."""
        out = []
        if self.skipped:
            parts = "; ".join(f"{n} {why}" for why, n in self.skipped.items())
            out.append(f"trace {self.path}: skipped {sum(self.skipped.values())} of {self.rows} rows ({parts})")
        if self.capped:
            out.append(f"trace {self.path}: first {len(self.requests)} requests only (trace_max_requests)")
        return out


_DATETIME = re.compile(r"\s*(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?\s*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_seconds(text: str, name: str, where: str) -> float:
    """Seconds since 1970 of ``YYYY-MM-DD HH:MM:SS[.fraction][Z|+HH:MM]`` (no offset: UTC)."""
    m = _DATETIME.match(text)
    if not m:
        raise WorkloadError(f"{where}: {name} must be a date and time like 2023-11-16 18:15:46.6805900, got {text!r}")
    date, clock, frac, zone = m.groups()
    try:
        t = datetime.fromisoformat(f"{date} {clock}")
    except ValueError:
        raise WorkloadError(f"{where}: {name} is not a valid date and time, got {text!r}") from None
    offset = timedelta(0)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    whole = (t.replace(tzinfo=UTC) - offset - _EPOCH).total_seconds()
    return whole + (float(frac) if frac else 0.0)


def _tokens(text, name: str, where: str, allow_zero: bool) -> int:
    """A token count of a CSV cell: a whole number (0 allowed where the layout skips such rows)."""
    s = text.strip() if isinstance(text, str) else ""
    if not s.lstrip("+").isdigit():
        raise WorkloadError(f"{where}: {name} must be a whole number, got {text!r}")
    v = int(s)
    if not (0 if allow_zero else 1) <= v <= MAX_TOKENS:
        low = 0 if allow_zero else 1
        raise WorkloadError(f"{where}: {name} must be a whole number from {low} to {MAX_TOKENS}, got {text!r}")
    return v


def _layout_of(fields: list[str], p: Path) -> Layout:
    names = {f.strip() for f in fields}
    for layout in LAYOUTS:
        if set(layout.columns) <= names:
            return layout
    missing = [c for c in TRACE_COLUMNS if c not in names]
    raise WorkloadError(f"{p}:1: header lacks column(s) {', '.join(missing)}; expected {', '.join(TRACE_COLUMNS)}, "
                        f"or the Azure LLM inference trace's {', '.join(AZURE.columns)}, or BurstGPT's "
                        f"{', '.join(BURSTGPT.columns)}")


def read_trace(path: str | Path, time_scale: float = 1.0, max_requests: int | None = None) -> TraceFile:
    """Read a trace file in any of the three layouts (see the module docstring); one-line errors."""
    p = Path(path)
    if not time_scale > 0 or time_scale == float("inf"):
        raise WorkloadError(f"trace time scale must be a positive number, got {time_scale!r}")
    if max_requests is not None and max_requests <= 0:
        raise WorkloadError(f"trace max requests must be a positive integer, got {max_requests!r}")
    if not p.exists():
        raise WorkloadError(f"trace file not found: {p}")
    if p.suffix.lower() not in (".csv", ".jsonl"):
        raise WorkloadError(f"{p}: trace files must end in .csv or .jsonl")
    cap = max_requests if max_requests is not None else MAX_REQUESTS
    try:
        with open(p, encoding="utf-8", newline="") as f:
            if p.suffix.lower() == ".jsonl":
                out = _read_jsonl(f, p, cap, max_requests is not None)
            else:
                out = _read_csv(f, p, cap, max_requests is not None)
    except UnicodeDecodeError:
        raise WorkloadError(f"{p}: not a text file (not UTF-8)") from None
    except csv.Error as e:
        raise WorkloadError(f"{p}: malformed CSV: {e}") from None
    except OSError as e:
        raise WorkloadError(f"{p}: cannot read: {e.strerror or e}") from None
    if not out.requests:
        raise WorkloadError(f"{p}: no requests in the trace" + (f" ({out.notes()[0]})" if out.skipped else ""))
    if time_scale != 1.0:
        reqs = [Request(r.arrival_s * time_scale, r.prompt_tokens, r.output_tokens) for r in out.requests]
        late = max(r.arrival_s for r in reqs)
        if late > MAX_ARRIVAL_S:
            raise WorkloadError(f"{p}: scaled arrivals reach {late:g} s, beyond {MAX_ARRIVAL_S:g} s")
        out = TraceFile(out.path, out.layout, reqs, out.rows, out.skipped, out.capped)
    return out


def load_requests(path: str | Path) -> list[Request]:
    """The requests of a trace file in any layout, without options (``read_trace`` has them)."""
    return read_trace(path).requests


def _read_jsonl(f, p: Path, cap: int, capped_by_user: bool) -> TraceFile:
    reqs: list[Request] = []
    rows = 0
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        if len(reqs) >= cap:
            return _over_cap(p, OWN, reqs, rows, {}, cap, capped_by_user)
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{p}:{lineno}: malformed JSON: {e.msg}") from None
        except ValueError as e:
            raise WorkloadError(f"{p}:{lineno}: malformed JSON: {e}") from None
        if not isinstance(row, dict):
            raise WorkloadError(f"{p}:{lineno}: expected a JSON object")
        rows += 1
        reqs.append(_parse_row(row, f"{p}:{lineno}"))
    return TraceFile(str(p), OWN.name, reqs, rows)


def _over_cap(p: Path, layout: Layout, reqs, rows, skipped, cap: int, capped_by_user: bool) -> TraceFile:
    if not capped_by_user:
        raise WorkloadError(f"{p}: more than {MAX_REQUESTS} requests; set trace_max_requests "
                            f"(--trace-max-requests) to read the first ones")
    return TraceFile(str(p), layout.name, reqs, rows, skipped, capped=True)


def _read_csv(f, p: Path, cap: int, capped_by_user: bool) -> TraceFile:
    reader = csv.DictReader(f)
    layout = _layout_of(list(reader.fieldnames or []), p)
    if layout is OWN:
        reader.fieldnames = list(reader.fieldnames or [])
    else:  # published headers are exact; tolerate spaces around the names
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
    t_col, p_col, o_col = layout.columns
    reqs: list[Request] = []
    arrivals: list[float] = []
    skipped: dict[str, int] = {}
    rows = 0
    for row in reader:
        where = f"{p}:{reader.line_num}"
        if None in row:
            raise WorkloadError(f"{where}: more fields than the header's {len(reader.fieldnames)}")
        if any(v is None for v in row.values()):
            raise WorkloadError(f"{where}: fewer fields than the header's {len(reader.fieldnames)}")
        if len(reqs) >= cap:
            return _finish(_over_cap(p, layout, reqs, rows, skipped, cap, capped_by_user), layout, arrivals, p)
        rows += 1
        if layout is OWN:
            reqs.append(_parse_row(row, where))
            continue
        t = (datetime_seconds(row[t_col], t_col, where) if layout.datetime_arrivals
             else _raw_seconds(row[t_col], t_col, where))
        prompt = _tokens(row[p_col], p_col, where, allow_zero=True)
        output = _tokens(row[o_col], o_col, where, allow_zero=True)
        if output == 0 or prompt == 0:
            why = f"with 0 {o_col}: failed requests" if output == 0 else f"with 0 {p_col}"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        arrivals.append(t)
        reqs.append(Request(0.0, prompt, output))
    return _finish(TraceFile(str(p), layout.name, reqs, rows, skipped), layout, arrivals, p)


def _raw_seconds(text, name: str, where: str) -> float:
    """A timestamp in seconds (any finite value: only differences matter)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise WorkloadError(f"{where}: {name} must be a number of seconds, got {text!r}") from None
    if not abs(v) <= 1e12:
        raise WorkloadError(f"{where}: {name} must be a finite number of seconds, got {text!r}")
    return v


def _finish(tf: TraceFile, layout: Layout, arrivals: list[float], p: Path) -> TraceFile:
    """Public layouts: arrivals become seconds since the earliest row."""
    if not layout.from_earliest or not arrivals:
        return tf
    t0 = min(arrivals)
    span = max(arrivals) - t0
    if span > MAX_ARRIVAL_S:
        raise WorkloadError(f"{p}: the trace spans {span:g} s, beyond {MAX_ARRIVAL_S:g} s")
    reqs = [Request(t - t0, r.prompt_tokens, r.output_tokens) for t, r in zip(arrivals, tf.requests, strict=True)]
    return TraceFile(tf.path, tf.layout, reqs, tf.rows, tf.skipped, tf.capped)
