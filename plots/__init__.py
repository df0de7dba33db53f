"""Figures of saved results: decode-step timelines, latency and energy breakdowns, sweeps, capacity maps and the
assumption ledger's tornado.

Every figure reads files the simulator wrote (a Result JSON, a list of Results, a sweep's JSONL, a Chrome trace)
and never runs the simulator: from ``sim`` it imports only ``sim.results`` (the schema, standard library only), so
it loads without SimPy, networkx, hw_models or workloads; a bad input raises ``sim.results.ResultsError``. One
function per figure; each writes a PNG or SVG and returns its path. Figures are drawn on a
``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so no global figure state is touched and
the same input gives the same bytes.
"""

from plots.breakdown import plot_breakdown
from plots.capacity import plot_capacity
from plots.compression import plot_compression
from plots.sweep import plot_sweep
from plots.timeline import plot_timeline
from plots.tornado import plot_tornado

__all__ = ["plot_breakdown", "plot_capacity", "plot_compression", "plot_sweep", "plot_timeline", "plot_tornado"]
