"""`aqpim-sim plot`: figures from saved results (never runs the simulator).

Kinds: ``timeline`` (a Chrome trace from ``run --trace-out`` or ``compare``), ``breakdown`` (a Result JSON or a
list of Results), ``sweep`` and ``capacity`` (a sweep's ``results.jsonl``), ``tornado`` (the ``ledger.json`` of
``assumptions``). The suffix of ``--out`` picks PNG or SVG. The figure is written atomically (a temporary file
in the same folder, renamed over ``--out``), so an interrupted run never leaves half a figure.
"""

from __future__ import annotations

import argparse

HELP = "draw a figure from saved results: timeline, breakdown, sweep, capacity or tornado"
EXAMPLE = """examples:
  aqpim-sim run --batch 1 --context 2048 --prefetch --trace-out trace.json
  aqpim-sim plot timeline trace.json --out timeline.png --steps 2
  aqpim-sim plot breakdown results/compare-1/results.json --out breakdown.svg
  aqpim-sim plot sweep results/context/results.jsonl --x context --metric speedup --out speedup.png
  aqpim-sim plot capacity results/capacity/results.jsonl --x context --y batch --out capacity.png
  aqpim-sim plot tornado results/ledger/ledger.json --out tornado.svg --top 10"""


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    def kind(name, help_, input_help):
        k = kinds.add_parser(name, help=help_, description=help_, epilog=EXAMPLE,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        k.add_argument("input", metavar="INPUT", help=input_help)
        k.add_argument("--out", metavar="FILE", required=True, help="figure file, .png or .svg")
        k.add_argument("--title", help="figure title (default: from the results)")
        return k

    t = kind("timeline", "Gantt chart of decode steps, one lane per resource", "Chrome trace JSON")
    t.add_argument("--steps", type=int, help="show the first N traced decode steps (default: all traced)")
    t.add_argument("--max-lanes", type=int, default=8,
                   help="channels shown one lane each up to this many; beyond, grouped density lanes (default 8)")
    kind("breakdown", "stacked bars: step latency and energy per token per system",
         "Result JSON, a JSON list of Results, or a sweep's results.jsonl")
    s = kind("sweep", "a metric against a sweep factor, one line per system", "a sweep's results.jsonl")
    s.add_argument("--x", help="factor on the horizontal axis (default: the sweep file's hint, else the first)")
    s.add_argument("--metric", help="Result field, or 'speedup' over the baseline (default: the hint, else "
                   "mean_step_latency_s)")
    s.add_argument("--by", help="factor whose levels are the lines (default: variant or system)")
    s.add_argument("--baseline", help="level of --by that speedup is measured against (default: offload)")
    s.add_argument("--logy", action=argparse.BooleanOptionalAction, default=None,
                   help="logarithmic y axis (default: when the values span more than 30x)")
    c = kind("capacity", "batch x context map: which system wins, where each stops fitting",
             "a sweep's results.jsonl")
    c.add_argument("--x", default="context", help="factor across (default context)")
    c.add_argument("--y", default="batch", help="factor up (default batch)")
    c.add_argument("--by", help="factor whose levels compete (default: variant or system)")
    c.add_argument("--metric", default="tokens_per_s", help="what 'wins' means (default tokens_per_s, higher is "
                   "better; *_s and *_j metrics: lower is better)")
    t = kind("tornado", "the assumption ledger: each assumption's swing of the headline ratios",
             "the ledger.json of aqpim-sim assumptions")
    t.add_argument("--top", type=int, default=15, help="assumptions drawn, largest swing first (default 15)")


def run(args) -> int:
    import plots  # only the plot command needs matplotlib

    if args.kind == "timeline":
        out = plots.plot_timeline(args.input, args.out, steps=args.steps, max_channel_lanes=args.max_lanes,
                                  title=args.title)
    elif args.kind == "breakdown":
        out = plots.plot_breakdown(args.input, args.out, title=args.title)
    elif args.kind == "sweep":
        out = plots.plot_sweep(args.input, args.out, x=args.x, metric=args.metric, by=args.by,
                               baseline=args.baseline, logy=args.logy, title=args.title)
    elif args.kind == "tornado":
        out = plots.plot_tornado(args.input, args.out, top=args.top, title=args.title)
    else:
        out = plots.plot_capacity(args.input, args.out, x=args.x, y=args.y, by=args.by, metric=args.metric,
                                  title=args.title)
    print(f"wrote {out}")
    return 0
