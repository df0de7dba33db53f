"""Compression against context: stored bits per K/V element for a few KV settings, from the CSV that
``experiments/compression_context.py`` writes (columns ``setting``, ``context``, ``bits_per_element`` and the
per-part ``*_bits``). A dotted line per setting marks its code bits (what its name promises)."""

from __future__ import annotations

import csv
from pathlib import Path

from plots.style import new_figure, rc, save, series_colours
from sim.results import ResultsError


def plot_compression(csv_path: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Bits per element (log-log) against context, one line per setting, codes-only level dotted."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ResultsError(f"{csv_path}: cannot read: {e.strerror or e}") from None
    need = {"setting", "context", "bits_per_element", "codes_bits", "outliers_bits"}
    if not rows or not need <= set(rows[0]):
        raise ResultsError(f"{csv_path}: expected a CSV with columns {', '.join(sorted(need))}")
    series: dict[str, list[tuple[int, float, float]]] = {}
    try:
        for r in rows:
            series.setdefault(r["setting"], []).append(
                (int(r["context"]), float(r["bits_per_element"]), float(r["codes_bits"])))
    except ValueError as e:
        raise ResultsError(f"{csv_path}: {e}") from None
    colours = series_colours(series)
    with rc():
        fig = new_figure(7.0, 4.2)
        ax = fig.add_subplot()
        for name, pts in series.items():
            pts.sort()
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(x, y, marker="o", ms=3, color=colours[name], label=name)
            ax.axhline(pts[-1][2], color=colours[name], ls=":", lw=1)  # codes at the longest context
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("stored bits per K/V element")
        ax.set_title(title or "KV storage against context (dotted: code bits)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        return save(fig, out)
