"""Sweep plots: a metric against one factor of a sweep, one line per level of another (usually the system).

Input is a sweep's ``results.jsonl`` (and, when beside it, ``sweep.json`` for the factor names and plot hints).
Each record's ``factors`` say where it sits; ``x`` names the factor (or run setting) on the horizontal axis and
``by`` the factor whose levels become lines; any other factors are folded into the line labels. ``speedup`` is
each line's throughput (tokens/s) over the baseline level's, at the same values of every other factor (with equal
batches, the step-latency ratio; a ``limit`` policy that cuts the batch shows up in it). Hollow markers:
the configuration does not fit its memory.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from plots.style import metric_axis, new_figure, rc, save, series_colours
from sim.results import ResultsError, check_result, read_manifest, scan_records

SERIES_FACTORS = ("variant", "system", "point")
LINESTYLES = ("-", "--", ":", "-.")
LOWER_IS_BETTER_SUFFIXES = ("_s", "_j", "_bytes", "comm_share")


@dataclass(frozen=True)
class Row:
    index: int
    x: object
    series: str            # the `by` level
    rest: tuple            # the other factors' (name, value) pairs
    result: dict


def lower_is_better(metric: str) -> bool:
    """Times, energies, bytes and shares: lower is better; rates (``*_per_s``) and speedups: higher."""
    return metric.endswith(LOWER_IS_BETTER_SUFFIXES) and not metric.endswith("_per_s")


def _value(rec: dict, res: dict, name: str):
    if name in rec.get("factors", {}):
        return rec["factors"][name]
    return res["config"][name] if name in res.get("config", {}) else res.get(name)


def sweep_rows(jsonl: str | Path, x: str, by: str | None) -> tuple[list[Row], str]:
    """The successful records of a sweep as rows (a Result, or a closed-form table's row of headline fields,
    named as the Result's); ``by`` defaults to the variant/system factor."""
    rows = []
    for number, _, _, rec in scan_records(jsonl):
        res = rec.get("result")
        if res is not None:
            check_result(res, f"{jsonl}: line {number}")
        elif isinstance(rec.get("row"), dict):  # sweep --analytic --table
            res = rec["row"]
        else:
            continue
        factors = rec.get("factors", {})
        if by is None:
            by = next((f for f in SERIES_FACTORS if f in factors and f != x), None) or "system"
        for name in (x, by):
            if _value(rec, res, name) is None:
                raise ResultsError(f"{jsonl}: '{name}' is neither a factor of this sweep nor a run setting; "
                                   f"factors: {', '.join(factors)}")
        rest = tuple((k, v) for k, v in factors.items() if k not in (x, by))
        rows.append(Row(rec.get("index", len(rows)), _value(rec, res, x), str(_value(rec, res, by)), rest, res))
    rows.sort(key=lambda r: r.index)
    return rows, by or "system"


def default_baseline(rows: list[Row]) -> str | None:
    levels = list(dict.fromkeys(r.series for r in rows))
    offload = [lv for lv in levels if any(r.series == lv and r.result["system"] == "offload" for r in rows)]
    return offload[0] if offload else (levels[0] if levels else None)


def check_metric(rows: list[Row], metric: str, speedup: bool = True) -> None:
    """``metric`` must be a number in every row's Result (or ``speedup``, where the figure computes it)."""
    if speedup and metric == "speedup":
        return
    if any(not isinstance(r.result.get(metric), int | float) for r in rows):
        raise ResultsError(f"metric '{metric}' is not a number in the results; try mean_step_latency_s, "
                           f"tokens_per_s, energy_per_token_j, comm_share, kv_bytes"
                           + (" or speedup" if speedup else ""))


def check_baseline(rows: list[Row], baseline: str, by: str, where) -> None:
    """``baseline`` must be one of the levels of ``by`` in the rows."""
    levels = list(dict.fromkeys(r.series for r in rows))
    if baseline not in levels:
        close = difflib.get_close_matches(baseline, levels, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ResultsError(f"{where}: unknown baseline '{baseline}'{hint}; levels of '{by}': {', '.join(levels)}")


def metric_values(rows: list[Row], metric: str, baseline: str | None) -> list[float | None]:
    """The metric per row; ``speedup`` is throughput over the baseline's at the same x and other factors."""
    check_metric(rows, metric)
    if metric != "speedup":
        return [float(r.result[metric]) for r in rows]
    base = {(repr(r.x), r.rest): r.result["tokens_per_s"] for r in rows if r.series == baseline}
    out = []
    for r in rows:
        b = base.get((repr(r.x), r.rest))
        out.append(r.result["tokens_per_s"] / b if b else None)
    return out


def plot_sweep(jsonl: str | Path, out: str | Path, x: str | None = None, metric: str | None = None,
               by: str | None = None, baseline: str | None = None, logy: bool | None = None,
               title: str | None = None) -> Path:
    """``metric`` against ``x``, one line per level of ``by``; log axes chosen when values span decades."""
    manifest = read_manifest(jsonl)
    hints = manifest.get("hints", {})
    factors = manifest.get("factors", [])
    x = x or hints.get("x") or next((f for f in factors if f not in SERIES_FACTORS), None) or "context"
    metric = metric or hints.get("metric") or "mean_step_latency_s"
    rows, by = sweep_rows(jsonl, x, by)
    if not rows:
        raise ResultsError(f"{jsonl}: no successful results to plot")
    if baseline is not None:
        check_baseline(rows, baseline, by, jsonl)
    baseline = baseline or default_baseline(rows)
    values = metric_values(rows, metric, baseline)
    label, scale = metric_axis(metric, [v for v in values if v is not None])
    numeric = all(isinstance(r.x, int | float) and not isinstance(r.x, bool) for r in rows)
    xs_order = list(dict.fromkeys(r.x for r in rows))
    lines: dict[tuple[str, tuple], list[tuple[object, float, bool]]] = {}
    for r, v in zip(rows, values, strict=True):
        if v is not None:
            lines.setdefault((r.series, r.rest), []).append((r.x, v * scale, bool(r.result.get("fits", True))))
    palette = series_colours(k[0] for k in lines)
    rests = list(dict.fromkeys(k[1] for k in lines))
    with rc():
        fig = new_figure(9.5, 4.8)
        ax = fig.subplots()
        for (level, rest), pts in lines.items():
            colour = palette[level]
            style = LINESTYLES[rests.index(rest) % len(LINESTYLES)]
            name = level + "".join(f", {k}={val}" for k, val in rest)
            pos = [p[0] if numeric else xs_order.index(p[0]) for p in pts]
            ax.plot(pos, [p[1] for p in pts], color=colour, linestyle=style, linewidth=1.5, label=name)
            for px, (_, py, fits) in zip(pos, pts, strict=True):
                ax.plot([px], [py], marker="o", markersize=6, color=colour,
                        markerfacecolor=colour if fits else "white", markeredgewidth=1.5)
        ys = [p[1] for pts in lines.values() for p in pts if p[1] > 0]
        if logy if logy is not None else (ys and max(ys) / min(ys) > 30):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if numeric:
            xv = sorted({float(v) for v in xs_order})
            if xv[0] > 0 and xv[-1] / xv[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(xv, [f"{v:g}" for v in xv])
            ax.xaxis.set_minor_locator(NullLocator())
        else:
            ax.set_xticks(range(len(xs_order)), [Path(str(v)).stem if str(v).endswith(".toml") else str(v)
                                                 for v in xs_order])
        if metric == "speedup":
            ax.axhline(1.0, color="#555555", linestyle="--", linewidth=0.8)
        ax.set_xlabel(x.replace("_", " ") + (" (tokens)" if x == "context" else ""))
        ax.set_ylabel(label.replace("(×)", f"over {baseline} (×)") if metric == "speedup" else label)
        ax.grid(color="#dddddd", linewidth=0.5)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], marker="o", color="#555555", markerfacecolor="white", linestyle="none"))
        labels.append("hollow: does not fit")
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title=by)
        r0 = rows[0].result
        ax.set_title(title or manifest.get("description") or f"{r0['model']} on {r0['hardware']}", loc="left")
        return save(fig, out)
