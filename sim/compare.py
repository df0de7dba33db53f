"""Comparing systems: every available variant on one model, trace and machine, and the files that report it.

``run_variants`` simulates each variant (see ``sim.variants``) and keeps its Result and traced spans.
``comparison_table`` prints one line per variant; ``combined_trace`` merges the variants' spans into one Chrome
trace (one process per variant and device, named ``variant / device``; ``otherData.runs`` maps them back);
``report_markdown`` writes the short report that embeds the figures. Nothing here depends on the time of day,
so the same configuration and seed give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sim.chrome_trace import chrome_trace
from sim.config import RunConfig
from sim.report import fmt_bytes, fmt_time
from sim.results import Result
from sim.run import simulate_traced
from sim.systems import SYSTEMS


@dataclass(frozen=True)
class VariantRun:
    label: str
    config: RunConfig
    result: Result
    spans: list


def run_variants(pairs: list[tuple[str, RunConfig]]) -> list[VariantRun]:
    runs = []
    for label, cfg in pairs:
        result, spans = simulate_traced(cfg)
        runs.append(VariantRun(label, cfg, result, spans))
    return runs


def baseline_index(runs: list[VariantRun]) -> int | None:
    """The reference for speedups: the first variant of a system declared as the baseline (offload)."""
    return next((i for i, r in enumerate(runs) if SYSTEMS[r.result.system].baseline), None)


def accuracy_lines(runs: list[VariantRun]) -> list[str]:
    """One line per variant whose KV format is lossy: the format and its measured accuracy (by geometry)."""
    return [f"{r.label}: KV as {r.result.details['kv_format']}: {r.result.details['accuracy']}"
            for r in runs if "accuracy" in r.result.details]


def comparison_rows(runs: list[VariantRun]) -> tuple[list[str], list[list[str]]]:
    base = baseline_index(runs)
    ref = runs[base].result.tokens_per_s if base is not None else None
    header = ["variant", "step latency", "tokens/s", "speedup", "comm share", "KV cache", "KV lives in", "fits",
              "energy/token", "static + dynamic"]
    rows = []
    for r in runs:
        res = r.result
        speedup = f"{res.tokens_per_s / ref:.2f}x" if ref else "-"
        rows.append([r.label, fmt_time(res.mean_step_latency_s), f"{res.tokens_per_s:.2f}", speedup,
                     f"{100 * res.comm_share:.1f} %", fmt_bytes(res.kv_bytes), res.kv_location or "-",
                     "yes" if res.fits else "NO", f"{res.energy_per_token_j:.3f} J",
                     f"{res.energy_static_per_token_j:.3f} + {res.energy_dynamic_per_token_j:.3f} J"])
    return header, rows


def comparison_table(runs: list[VariantRun]) -> str:
    header, rows = comparison_rows(runs)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def scenario_line(runs: list[VariantRun]) -> str:
    r = runs[0].result
    return (f"{r.model} on {r.hardware}: batch {r.batch}, context {r.context} tokens, {r.steps} decode "
            f"step{'s' if r.steps != 1 else ''}, "
            f"seed {r.seed}")


def combined_trace(runs: list[VariantRun]) -> dict:
    """One Chrome trace holding every variant: processes ``variant / device``, listed in ``otherData.runs``."""
    events, layout = [], []
    offset = 0
    for r in runs:
        t = chrome_trace(r.spans)
        pids = sorted({e["pid"] for e in t["traceEvents"]})
        names = {e["pid"]: e["args"]["name"] for e in t["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "process_name"}
        for e in t["traceEvents"]:
            e = dict(e, pid=e["pid"] + offset)
            if e["ph"] == "M" and e["name"] == "process_name":
                e["args"] = {"name": f"{r.label} / {e['args']['name']}"}
            events.append(e)
        for pid in pids:
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid + offset, "tid": 0,
                           "args": {"sort_index": pid + offset}})
        layout.append({"label": r.label, "processes": {str(p + offset): names[p] for p in pids}})
        offset += max(pids, default=0)
    first = runs[0].result
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"model": first.model, "hardware": first.hardware, "runs": layout}}


def combined_trace_json(runs: list[VariantRun]) -> str:
    return json.dumps(combined_trace(runs), sort_keys=True) + "\n"


def results_json(runs: list[VariantRun]) -> str:
    return json.dumps([r.result.to_dict() for r in runs], sort_keys=True, indent=1, allow_nan=False) + "\n"


def report_markdown(runs: list[VariantRun], files: dict[str, str]) -> str:
    """The short report: scenario, table, findings in numbers, and the figures."""
    header, rows = comparison_rows(runs)
    md = ["# aqpim-sim compare", "", scenario_line(runs) + ".", ""]
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", "Speedup: throughput (tokens/s) over the first offload variant's (KV cache in host DRAM, fetched "
           "over PCIe each step); with equal batches it is the step-latency ratio. Comm share: the part of a step "
           "in which the GPU-host link is busy and no compute unit is. Energy per generated token: static (idle "
           "power of every powered device over the run's whole time) plus dynamic (bytes and FLOP of the work).",
           ""]
    base = baseline_index(runs)
    if base is not None:
        b = runs[base].result
        links = ", ".join(f"{fmt_bytes(v / max(b.steps, 1))} over {k}" for k, v in b.bytes_by_link.items() if v)
        md.append(f"- {runs[base].label}: {100 * b.comm_share:.1f} % of each step is exposed communication "
                  f"({links} per step).")
    md += [f"- Accuracy, {line}." for line in accuracy_lines(runs)]
    for r in runs:
        if not r.result.fits:
            md.append(f"- {r.label} does not fit: {'; '.join(r.result.fit_reasons)}.")
        for w in r.result.warnings:
            if not w.startswith("does not fit"):  # said just above
                md.append(f"- {r.label}: {w}.")
    md += ["", "## Where the time and energy go", "", f"![breakdown]({files['breakdown']})", "",
           "## Timeline of the first traced decode steps", "", f"![timeline]({files['timeline']})", "",
           f"The Chrome trace `{files['trace']}` opens in Perfetto (ui.perfetto.dev) or chrome://tracing; "
           f"every variant is a group of processes named `variant / device`.", "",
           f"Results: `{files['results']}` (a JSON list of Results; `aqpim-sim plot breakdown` reads it).", ""]
    return "\n".join(md)
