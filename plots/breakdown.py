"""Latency and energy breakdowns per system: stacked horizontal bars from saved Results.

Left: the mean decode step split as ``Result.breakdown_s`` splits it (compute, exposed communication, idle), per
step; middle: the same as shares of the step, readable for the fast systems too; right: energy per generated
token by component (``Result.energy_j``), with numbered channels (``pim.ch17``) summed into one group per device,
each split into its static part (idle power over the whole run, ``Result.energy_static_j``; dotted) and its dynamic
part (the work; solid). Runs that do not fit their memory are hatched and say so in their label.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
from matplotlib.patches import Patch

from plots.style import BREAKDOWN_COLOURS, new_figure, rc, save, time_unit
from sim.results import ResultsError, load_results

CHANNEL_PART = re.compile(r"^(.*)\.(\D*?)\d+$")
STATIC, DYNAMIC = "|static", "|dynamic"  # the two parts of a device's energy bar


def component_group(name: str) -> str:
    """``pim.ch17`` -> ``pim channels``; other component names are kept."""
    m = CHANNEL_PART.match(name)
    return f"{m.group(1)} channels" if m else name


LOG_SPAN = 30.0  # largest over smallest bar total above which a panel's axis is logarithmic


def plot_breakdown(results_path: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Stacked bars of step latency and energy per token for every Result in a file."""
    labelled = load_results(results_path)
    if not labelled:
        raise ResultsError(f"{results_path}: no results to plot")
    results = [r for _, r in labelled]
    labels = [lab if r.fits else f"{lab}\n(does not fit)" for lab, r in labelled]
    parts = list(dict.fromkeys(k for r in results for k in r.breakdown_s))
    per_step = [{k: r.breakdown_s.get(k, 0.0) / max(r.steps, 1) for k in parts} for r in results]
    groups: list[dict[str, float]] = []
    for r in results:
        g: dict[str, float] = {}
        for comp, joules in r.energy_j.items():
            static = r.energy_static_j.get(comp, 0.0)
            for part, j in ((STATIC, static), (DYNAMIC, joules - static)):
                key = component_group(comp) + part
                g[key] = g.get(key, 0.0) + j / max(r.tokens, 1)
        groups.append(g)
    devices = sorted({k.rsplit("|", 1)[0] for g in groups for k in g})
    energy_parts = [d + part for d in devices for part in (STATIC, DYNAMIC)]
    palette = matplotlib.colormaps["Set2"]
    device_colours = {d: palette(i % 8) for i, d in enumerate(devices)}
    energy_colours = {k: device_colours[k.rsplit("|", 1)[0]] for k in energy_parts}
    unit, scale = time_unit(max(sum(p.values()) for p in per_step))
    shares = [{k: 100 * v / (sum(row.values()) or 1.0) for k, v in row.items()} for row in per_step]
    n = len(results)
    with rc():
        fig = new_figure(13.0, 1.7 + 0.5 * n)
        ax_t, ax_s, ax_e = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 0.8, 1.0]})
        panels = ((ax_t, [{k: v * scale for k, v in row.items()} for row in per_step], parts, BREAKDOWN_COLOURS,
                   f"mean decode-step latency ({unit})", "where a decode step's time goes", "{:#.3g}"),
                  (ax_s, shares, parts, BREAKDOWN_COLOURS, "share of the step (%)", "the same, as shares", None),
                  (ax_e, groups, energy_parts, energy_colours, "energy per generated token (J)",
                   "energy per token by component", "{:#.3g}"))
        for ax, rows, keys, colours, xlabel, heading, fmt in panels:
            totals = [sum(row.get(k, 0.0) for k in keys) for row in rows]
            positive = [t for t in totals if t > 0]
            # A 5 s offload bar beside 10 ms PIM bars hides the PIM bars on a linear axis: go logarithmic when
            # the totals span more than LOG_SPAN (the shares panel still shows each bar's composition).
            log = bool(fmt) and len(positive) > 1 and max(positive) / min(positive) > LOG_SPAN
            floor = min(positive) / 10 if log else 0.0
            left = [floor] * n
            for k in keys:
                widths = [row.get(k, 0.0) for row in rows]
                bars = ax.barh(range(n), widths, left=left, color=colours.get(k, "#888888"), height=0.6,
                               edgecolor="white", linewidth=0.5)
                for bar, r in zip(bars, results, strict=True):
                    hatch = ("//" if not r.fits else "") + ("..." if k.endswith(STATIC) else "")
                    if hatch:
                        bar.set_hatch(hatch)
                left = [a + b for a, b in zip(left, widths, strict=True)]
            if fmt:
                for i, total in enumerate(totals):
                    ax.text(left[i], i, " " + fmt.format(total), va="center", ha="left", fontsize=8)
                if log:
                    ax.set_xscale("log")
                    ax.set_xlim(floor, max(left) * 4)
                    xlabel += ", log scale"
                else:
                    ax.set_xlim(0, max(left) * 1.2 if max(left) > 0 else 1)
            else:
                ax.set_xlim(0, 100)
            ax.set_yticks(range(n), labels if ax is ax_t else [""] * n)
            ax.set_ylim(n - 0.5, -0.5)
            ax.grid(axis="x", color="#dddddd", linewidth=0.5)
            ax.set_axisbelow(True)
            ax.set_xlabel(xlabel)
            ax.set_title(heading, loc="left")
        fig.legend(handles=[Patch(color=BREAKDOWN_COLOURS.get(k, "#888888"), label=k.replace("_", " ")) for k in parts],
                   loc="outside lower left", ncols=4, frameon=False)
        fig.legend(handles=[Patch(color=device_colours[d], label=d) for d in devices]
                   + [Patch(facecolor="white", edgecolor="#555555", hatch="...", label="static (idle power x time)")],
                   loc="outside lower right", ncols=4, frameon=False)
        r0 = results[0]
        fig.suptitle(title or f"{r0.model} on {r0.hardware}: batch {r0.batch}, context {r0.context} "
                     f"(hatched: does not fit)")
        return save(fig, out)
