"""Tornado figure of the assumption ledger: how far each assumption moves the headline ratios.

Reads the ``ledger.json`` that `aqpim-sim assumptions` writes (``sim.ledger``). One panel per headline ratio
(the winner's speedup over the best fitting baseline; aqpim over pim+limit), one row per assumption in the
ledger's order (largest swing first), at most ``top`` rows. Each row has a bar from the shipped ratio to the ratio
at half the value and one to the ratio at double (a boolean: one bar to the flipped value), as the change from the
shipped ratio in percent, each bar tipped with the ratio it reaches. In a pair's panel a red line marks where the
ratio crosses 1 (the pair's winner changes) when it is in view. Rows whose perturbation changes who wins are
labelled in red. Assumptions that move no ratio by 0.01 % or more are left out (the ledger's table lists them).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from plots.style import new_figure, rc, save
from sim.results import ResultsError, read_json

SIDE_COLOURS = {"half": "#1f77b4", "double": "#ff7f0e", "flip": "#9467bd"}
FLIP_COLOUR = "#d62728"
MIN_SWING = 1e-4  # rows whose ratios move less than this (0.01 %) are left out of the figure


def _check(ledger, where: str) -> dict:
    if not isinstance(ledger, dict) or not {"headline", "entries", "scenario"} <= set(ledger):
        raise ResultsError(f"{where}: not an assumption ledger (expected the ledger.json of aqpim-sim assumptions)")
    return ledger


def _value_text(r: dict) -> str:
    v = r["value"]
    if isinstance(v, bool):
        shown = str(v).lower()
    elif isinstance(v, float):
        shown = f"{v:.3g}"
    else:
        shown = str(v)
    return f"{r['key']} = {shown}{' ' + r['unit'] if r['unit'] and not isinstance(v, bool) else ''} ({r['preset']})"


def plot_tornado(ledger_path: str | Path, out: str | Path, top: int = 15, title: str | None = None) -> Path:
    """Tornado bars of the ``top`` largest swings of every headline ratio in a ledger."""
    ledger = _check(read_json(ledger_path), str(ledger_path))
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ResultsError(f"top must be a positive number of rows, got {top!r}")
    metrics = [m for m in ledger["metrics"] if ledger["headline"][m].get("value")]
    if not metrics:
        raise ResultsError(f"{ledger_path}: the ledger has no headline ratio: nothing to plot")
    moving = [r for r in ledger["entries"] if any((r["swing"].get(m) or 0.0) >= MIN_SWING for m in metrics)]
    rows = moving[:top]
    if not rows:
        raise ResultsError(f"{ledger_path}: no assumption moves a headline ratio: nothing to plot")
    n = len(rows)
    with rc():
        fig = new_figure(4.5 + 3.4 * len(metrics), 1.7 + 0.3 * n)
        axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        crossing = False
        for ax, m in zip(axes, metrics, strict=True):
            base = ledger["headline"][m]["value"]
            changes = [0.0]
            for y, r in enumerate(rows):
                for s in r["sides"]:
                    if not s.get("metrics") or s["metrics"][m]["value"] is None:
                        continue
                    v = s["metrics"][m]["value"]
                    c = 100 * (v / base - 1)
                    changes.append(c)
                    ax.barh(y, c, height=0.6, color=SIDE_COLOURS.get(s["side"], "#7f7f7f"))
                    if abs(c) >= 0.05:
                        ax.text(c, y, f" {v:.3g}× " if c >= 0 else f" {v:.3g}× ", va="center",
                                ha="left" if c >= 0 else "right", fontsize=6.5)
            lo, hi = min(changes), max(changes)
            pad = 0.25 * (hi - lo or 1.0)
            ax.set_xlim(lo - pad, hi + pad)
            ax.axvline(0.0, color="#444444", linewidth=0.8)
            if m != ledger["metrics"][0]:  # a pair: where its ratio crosses 1, the other side wins
                cross = 100 * (1 / base - 1)
                if lo - pad <= cross <= hi + pad:
                    ax.axvline(cross, color=FLIP_COLOUR, linewidth=1.0)
                    crossing = True
            ax.set_xlabel(f"change of {ledger['headline'][m]['name']} (%)\nshipped: {base:.3g}×")
            ax.grid(axis="x", alpha=0.3)
        ax0 = axes[0]
        ax0.set_yticks(range(n), [_value_text(r) for r in rows], fontsize=7)
        for label, r in zip(ax0.get_yticklabels(), rows, strict=True):
            if r["flags"]:
                label.set_color(FLIP_COLOUR)
        ax0.invert_yaxis()
        handles = [Patch(color=c, label=f"at {s}" if s != "flip" else "flipped") for s, c in SIDE_COLOURS.items()]
        if any(r["flags"] for r in rows):
            handles.append(Patch(color=FLIP_COLOUR, label="changes who wins (red label)"))
        if crossing:
            handles.append(Line2D([], [], color=FLIP_COLOUR, label="ratio 1: the pair's winner changes"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        shown = f"{n} of the {len(moving)} assumptions" if len(moving) > n else f"the {n} assumptions"
        fig.suptitle(title or f"{ledger['scenario']}\n{shown} that move a headline ratio (of "
                     f"{len(ledger['entries'])} tagged), each halved and doubled alone",
                     x=0.01, ha="left", fontsize=9)
        return save(fig, out)
