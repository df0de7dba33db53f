"""Shared look of the figures: colours per span kind and per system, metric names with units, saving.

Values arrive in SI units (s, J, bytes); conversion to ms, GiB or % happens here, at the edge, and the axis label
says which unit was chosen.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.results import ResultsError

# Known operation kinds get fixed colours so the same kind looks the same in every figure; others take the
# remaining palette entries in sorted order.
KIND_COLOURS = {
    "kv_fetch": "#1f77b4", "attn_out": "#6baed6", "kv_append": "#ff7f0e", "q_and_kv_append": "#fdae6b",
    "qkv_proj": "#2ca02c", "attn_score": "#d62728", "softmax": "#9467bd", "attn_context": "#8c564b",
    "o_proj": "#bcbd22", "ffn": "#17becf", "lm_head": "#e377c2",
}
EXTRA_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
                 "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7ba52", "#e7969c", "#de9ed6", "#a1d99b")
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")
SYSTEM_COLOURS = {"offload": "#1f77b4", "pim": "#d62728", "aqpim": "#2ca02c", "gpu": "#7f7f7f"}
BREAKDOWN_COLOURS = {"compute": "#2ca02c", "exposed_comm": "#1f77b4", "exposed_link": "#9467bd", "idle": "#c7c7c7"}

# Metric -> (readable name, kind of unit). Unknown metrics fall back to their suffix.
METRICS = {
    "mean_step_latency_s": ("mean decode-step latency", "time"),
    "analytic_mean_step_latency_s": ("analytic step latency", "time"),
    "ttnt_p50_s": ("time to next token, p50", "time"),
    "ttnt_p90_s": ("time to next token, p90", "time"),
    "ttnt_p99_s": ("time to next token, p99", "time"),
    "total_time_s": ("simulated time", "time"),
    "tokens_per_s": ("throughput", "tokens/s"),
    "energy_per_token_j": ("energy per token", "energy"),
    "comm_share": ("exposed GPU-host communication share", "share"),
    "kv_bytes": ("KV cache size", "bytes"),
    "speedup": ("speedup", "ratio"),
}

RC = {"svg.hashsalt": "aqpim-sim", "svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
      "axes.labelsize": 9, "legend.fontsize": 8}


def kind_colours(kinds: Iterable[str]) -> dict[str, str]:
    kinds = sorted(set(kinds))
    spare = [c for c in EXTRA_COLOURS if c not in KIND_COLOURS.values()]
    unknown = [k for k in kinds if k not in KIND_COLOURS]
    out = {k: KIND_COLOURS[k] for k in kinds if k in KIND_COLOURS}
    out.update({k: spare[i % len(spare)] for i, k in enumerate(unknown)})
    return out


def series_colours(names: Iterable[str]) -> dict[str, str]:
    """Distinct colours for the lines of one figure: a system (or its first variant) keeps the system's colour,
    the rest take the unused tab10 colours in order."""
    names = list(dict.fromkeys(names))
    out = {n: SYSTEM_COLOURS[n] for n in names if n in SYSTEM_COLOURS}
    for n in names:  # the first variant of a system whose plain name is absent takes the system's colour
        family = n.split("+")[0].split(",")[0]
        if n not in out and family in SYSTEM_COLOURS and SYSTEM_COLOURS[family] not in out.values():
            out[n] = SYSTEM_COLOURS[family]
    free = [c for c in TAB10 if c not in out.values()]
    for i, n in enumerate(x for x in names if x not in out):
        out[n] = free[i % len(free)]
    return out


def time_unit(max_s: float) -> tuple[str, float]:
    """The unit to show times up to ``max_s`` seconds in, and the factor from seconds."""
    if max_s >= 1.0:
        return "s", 1.0
    if max_s >= 1e-3:
        return "ms", 1e3
    return "µs", 1e6


def metric_axis(metric: str, values: Iterable[float]) -> tuple[str, float]:
    """Axis label (with unit) for a metric and the factor that converts its SI values to that unit."""
    name, kind = METRICS.get(metric, (metric.replace("_", " "), _suffix_kind(metric)))
    vals = [abs(v) for v in values if v is not None]
    top = max(vals, default=0.0)
    if kind == "time":
        unit, scale = time_unit(top)
        return f"{name} ({unit})", scale
    if kind == "energy":
        return (f"{name} (mJ)", 1e3) if top < 1 else (f"{name} (J)", 1.0)
    if kind == "bytes":
        return f"{name} (GiB)", 1 / 2**30
    if kind == "share":
        return f"{name} (%)", 100.0
    if kind == "ratio":
        return f"{name} (×)", 1.0
    if kind == "tokens/s":
        return f"{name} (tokens/s)", 1.0
    return name, 1.0


def _suffix_kind(metric: str) -> str:
    for suffix, kind in (("_s", "time"), ("_j", "energy"), ("_bytes", "bytes"), ("_share", "share")):
        if metric.endswith(suffix):
            return kind
    return ""


def new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out: str | Path, dpi: int = 130) -> Path:
    """Write PNG or SVG (by suffix), without a timestamp, so the same figure gives the same bytes.

    Atomically: the figure is written to a temporary file in the same folder (``.<name>.<pid>.<random>.tmp``),
    made durable and renamed over ``out``, so a reader or a killed run never sees half a figure; temporaries left
    by killed writers of the same figure are removed. An OS error is one line (``ResultsError``) naming the file.
    (``plots`` may import only ``sim.results`` from the simulator, so this mirrors ``sim.io.open_atomic``.)"""
    p = Path(out)
    suffix = p.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ResultsError(f"{p}: figures are written as .png or .svg")
    metadata = {"Date": None} if suffix == ".svg" else {}
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(p)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=p.parent)
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; a figure is an ordinary file
        with os.fdopen(fd, "wb") as f, rc():
            fig.savefig(f, format=suffix[1:], dpi=dpi, metadata=metadata)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise ResultsError(f"cannot write {p}: {_reason(p, e)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return p


def _reason(p: Path, e: OSError) -> str:
    for parent in p.parents:  # a file in the way of the folder is the usual surprise: name it
        if parent.exists():
            return f"{parent} is a file, not a folder" if not parent.is_dir() else (e.strerror or str(e))
    return e.strerror or str(e)


def _remove_stale(p: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` files of ``p`` whose writer is no longer running (it was killed)."""
    prefix = f".{p.name}."
    with contextlib.suppress(OSError):
        for q in p.parent.iterdir():
            pid = q.name[len(prefix):].split(".", 1)[0] if q.name.startswith(prefix) else ""
            if q.name.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    q.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rc():
    """The figures' rc settings, as a context manager to wrap drawing and saving in."""
    return matplotlib.rc_context(RC)
