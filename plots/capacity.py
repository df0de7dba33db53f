"""Capacity map: on a batch x context grid from a sweep, which system wins and where each stops fitting.

Each cell is coloured by the best level of the ``by`` factor (usually the system) among the configurations
that fit, by ``metric`` (throughput by default); the cell text gives the winner and its speedup over the
baseline (tokens/s ratio) when the baseline fits there. A coloured edge marks where each level stops fitting: inside the
edge (towards small batch and context) it fits, outside it does not. Grey cells: nothing fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from plots.style import new_figure, rc, save, series_colours
from plots.sweep import check_metric, default_baseline, lower_is_better, sweep_rows
from sim.results import ResultsError, read_manifest

NONE_FITS = "#d9d9d9"


def plot_capacity(jsonl: str | Path, out: str | Path, x: str = "context", y: str = "batch",
                  by: str | None = None, metric: str = "tokens_per_s", title: str | None = None) -> Path:
    """Heatmap of the winner per (y, x) cell, with each level's fit boundary drawn as a coloured edge."""
    rows, by = sweep_rows(jsonl, x, by)
    if not rows:
        raise ResultsError(f"{jsonl}: no successful results to plot")
    check_metric(rows, metric, speedup=False)
    cells: dict[tuple, dict[str, dict]] = {}
    levels: dict[str, str] = {}  # line label -> its `by` level
    for r in rows:
        config = r.result.get("config", {})  # a table row has none: its settings are top-level fields
        yv = dict(r.rest).get(y, config[y] if y in config else r.result.get(y))
        if yv is None:
            raise ResultsError(f"{jsonl}: '{y}' is neither a factor of this sweep nor a run setting")
        level = r.series + "".join(f", {k}={v}" for k, v in r.rest if k != y)
        cells.setdefault((yv, r.x), {})[level] = r.result
        levels.setdefault(level, r.series)
    xs = sorted({k[1] for k in cells})
    ys = sorted({k[0] for k in cells})
    baseline = default_baseline(rows)
    baseline = next((lab for lab, lv in levels.items() if lv == baseline), None)
    levels = list(levels)
    palette = series_colours(levels)
    colours = [palette[lv] for lv in levels]
    sign = -1.0 if lower_is_better(metric) else 1.0
    winner = np.full((len(ys), len(xs)), -1)
    text = [["" for _ in xs] for _ in ys]
    fits = {lv: np.full((len(ys), len(xs)), np.nan) for lv in levels}
    for (yv, xv), by_level in cells.items():
        i, j = ys.index(yv), xs.index(xv)
        for lv, res in by_level.items():
            fits[lv][i, j] = 1.0 if res.get("fits", True) else 0.0
        ok = {lv: res for lv, res in by_level.items() if res.get("fits", True)}
        if not ok:
            text[i][j] = "none fits"
            continue
        best = max(ok, key=lambda lv: sign * ok[lv][metric])
        winner[i, j] = levels.index(best)
        text[i][j] = best.replace("+", "\n+")
        base = ok.get(baseline)
        if base and best != baseline and base["tokens_per_s"] > 0:
            text[i][j] += f"\n×{ok[best]['tokens_per_s'] / base['tokens_per_s']:.1f}"
    with rc():
        longest = max((len(part) for row in text for cell in row for part in cell.split("\n")), default=8)
        lines = max((cell.count("\n") + 1 for row in text for cell in row), default=1)
        fig = new_figure(4.0 + max(1.0, 0.075 * longest) * len(xs), 1.4 + max(0.5, 0.2 * lines) * len(ys))
        ax = fig.subplots()
        cmap = ListedColormap([NONE_FITS] + colours)
        ax.imshow(winner + 1, cmap=cmap, vmin=0, vmax=len(levels), origin="lower", aspect="auto", alpha=0.45)
        for i in range(len(ys)):
            for j in range(len(xs)):
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
        handles = [Patch(color=NONE_FITS, label="nothing fits")]
        for k, lv in enumerate(levels):
            if (winner == k).any():
                handles.append(Patch(color=colours[k], alpha=0.45, label=f"{lv} wins"))
            off = 0.04 * (k - (len(levels) - 1) / 2)
            known = fits[lv][~np.isnan(fits[lv])]
            if known.size and known.all():
                where = "fits in every cell"
            elif known.size and not known.any():
                where = "fits in no cell"
            else:
                _draw_fit_edge(ax, fits[lv], colours[k], off)
                where = "fits inside the edge"
            handles.append(Line2D([], [], color=colours[k], linewidth=2.5 if where.endswith("edge") else 0,
                                  label=f"{lv}: {where}"))
        ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, int | float) else str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, int | float) else str(v) for v in ys])
        ax.set_xlabel(x.replace("_", " ") + (" (tokens per sequence)" if x == "context" else ""))
        ax.set_ylabel(y.replace("_", " ") + (" (sequences)" if y == "batch" else ""))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  title=f"best {metric.replace('_', ' ')}" + (f"; ×: speedup over {baseline}" if baseline else ""))
        manifest = read_manifest(jsonl)
        r0 = rows[0].result
        ax.set_title(title or manifest.get("description") or f"{r0['model']} on {r0['hardware']}", loc="left")
        return save(fig, out)


def _draw_fit_edge(ax, fit: np.ndarray, colour, off: float) -> None:
    """Draw the cell edges between fitting and non-fitting cells (missing cells count as neither)."""
    ny, nx = fit.shape
    for i in range(ny):
        for j in range(nx):
            if fit[i, j] != 1.0:
                continue
            if j + 1 < nx and fit[i, j + 1] == 0.0:
                ax.plot([j + 0.5 + off] * 2, [i - 0.5, i + 0.5], color=colour, linewidth=2.5)
            if i + 1 < ny and fit[i + 1, j] == 0.0:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5 + off] * 2, color=colour, linewidth=2.5)
            if j > 0 and fit[i, j - 1] == 0.0:
                ax.plot([j - 0.5 + off] * 2, [i - 0.5, i + 0.5], color=colour, linewidth=2.5)
            if i > 0 and fit[i - 1, j] == 0.0:
                ax.plot([j - 0.5, j + 0.5], [i - 0.5 + off] * 2, color=colour, linewidth=2.5)
