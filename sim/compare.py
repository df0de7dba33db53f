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
from sim.pipeline import PipelineTrace
from sim.report import fmt_bytes, fmt_time
from sim.results import Result
from sim.run import run_simulation
from sim.systems import SYSTEMS


@dataclass(frozen=True)
class VariantRun:
    label: str
    config: RunConfig
    result: Result
    spans: list
    pipeline: PipelineTrace | None = None


def run_variants(pairs: list[tuple[str, RunConfig]]) -> list[VariantRun]:
    runs = []
    for label, cfg in pairs:
        r = run_simulation(cfg)
        runs.append(VariantRun(label, cfg, r.result, r.spans, r.pipeline))
    return runs


def baseline_index(runs: list[VariantRun]) -> int | None:
    """The reference for speedups: the best fitting variant of the system declared as the baseline (offload), the
    one with the highest tokens/s among its variants that fit (the first of equals); None when none fits."""
    fitting = [i for i, r in enumerate(runs) if SYSTEMS[r.result.system].baseline and r.result.fits]
    return max(fitting, key=lambda i: runs[i].result.tokens_per_s, default=None)


def baseline_line(runs: list[VariantRun]) -> str:
    """What the speedups are measured against, or why there are none."""
    base = baseline_index(runs)
    systems = [s for s in dict.fromkeys(r.result.system for r in runs) if SYSTEMS[s].baseline]
    if base is not None:
        return f"speedup over {runs[base].label} (the best fitting {runs[base].result.system} variant)"
    if systems:
        return f"no speedups: no {' or '.join(systems)} variant fits"
    baselines = [name for name, cls in SYSTEMS.items() if cls.baseline]
    return f"no speedups: no variant of the baseline system ({', '.join(baselines)}) was run"


def label_notes(runs: list[VariantRun]) -> list[str]:
    """Labels whose part is a bare number (an option given as text, ``offload+0``) with the option it sets."""
    notes = []
    for r in runs:
        cfg, defaults = r.result.config, r.result.option_defaults
        for key, value in cfg.items():
            if key in defaults and value != defaults[key] and isinstance(value, str) and _is_number(value) \
                    and f"+{value}" in r.label:
                notes.append(f"{r.label}: {key} = {value}")
    return notes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def accuracy_lines(runs: list[VariantRun]) -> list[str]:
    """One line per variant whose KV format is lossy: the format and its measured accuracy (by geometry)."""
    return [f"{r.label}: KV as {r.result.details['kv_format']}: {r.result.details['accuracy']}"
            for r in runs if "accuracy" in r.result.details]


def batch_cell(res: Result) -> str:
    """The batch a variant decoded: ``6 of 16`` when admission (``capacity_policy = limit``) or arrivals kept it
    below the batch allowed."""
    admitted = res.details.get("admitted_batch", res.peak_batch)
    return f"{admitted} of {res.batch}" if 0 < admitted < res.batch else str(res.batch)


INFEASIBLE_NOTE = ("* does not fit its memory: timing only, shown because of --show-infeasible; no headline "
                   "is drawn from it")


def comparison_rows(runs: list[VariantRun], show_infeasible: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per variant. A variant that does not fit shows ``does not fit`` and no step latency, tokens/s,
    speedup or energy (its reason is in its warning), unless ``show_infeasible``: then its numbers carry a ``*``."""
    base = baseline_index(runs)
    ref = runs[base].result.tokens_per_s if base is not None else None
    header = ["variant", "batch", "step latency", "tokens/s", "speedup", "comm share", "KV cache", "KV lives in",
              "fits", "energy/token", "static + dynamic"]
    rows = []
    for r in runs:
        res = r.result
        mark = "" if res.fits else " *"
        speedup = f"{res.tokens_per_s / ref:.2f}x{mark}" if ref else "-"
        numbers = [fmt_time(res.mean_step_latency_s) + mark, f"{res.tokens_per_s:.2f}{mark}", speedup,
                   f"{100 * res.comm_share:.1f} %{mark}"]
        energy = [f"{res.energy_per_token_j:.3f} J{mark}",
                  f"{res.energy_static_per_token_j:.3f} + {res.energy_dynamic_per_token_j:.3f} J{mark}"]
        if not res.fits and not show_infeasible:
            numbers, energy = ["does not fit", "-", "-", "-"], ["-", "-"]
        rows.append([r.label, batch_cell(res), *numbers, fmt_bytes(res.kv_bytes), res.kv_location or "-",
                     "yes" if res.fits else "NO", *energy])
    return header, rows


def comparison_table(runs: list[VariantRun], show_infeasible: bool = False) -> str:
    """The table, under a line naming the speedups' reference (and what bare-number labels set)."""
    header, rows = comparison_rows(runs, show_infeasible)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = label_notes(runs)
    if show_infeasible and not all(r.result.fits for r in runs):
        lines.append(INFEASIBLE_NOTE)
    return "\n".join([baseline_line(runs) + (f"; {'; '.join(notes)}" if notes else ""), *lines])


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
        t = chrome_trace(r.spans, ranks=r.result.details.get("tp", 1), pipeline=r.pipeline)
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


def report_markdown(runs: list[VariantRun], files: dict[str, str], show_infeasible: bool = False) -> str:
    """The short report: scenario, table, findings in numbers, and the figures."""
    header, rows = comparison_rows(runs, show_infeasible)
    notes = label_notes(runs)
    md = ["# aqpim-sim compare", "", scenario_line(runs) + ".", "",
          baseline_line(runs)[0].upper() + baseline_line(runs)[1:] + (f"; {'; '.join(notes)}" if notes else "")
          + ".", ""]
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if show_infeasible and not all(r.result.fits for r in runs):
        md += ["", INFEASIBLE_NOTE + "."]
    md += ["", "Batch: the sequences decoded at once (`6 of 16`: admission by KV room, `capacity_policy = limit`, "
           "or the arrivals kept it below the batch allowed). A variant that does not fit shows no latency, "
           "throughput, speedup or energy (`compare --show-infeasible` shows them, marked).", "",
           "Speedup: throughput (tokens/s) over the best fitting offload variant's (the highest tokens/s among "
           "the offload variants that fit; offload keeps as much of the weights and KV cache in GPU memory as fits, "
           "or the fractions given, and streams the rest over PCIe each step); with equal batches it is the "
           "step-latency ratio. Comm share: the part of a step in which the GPU-host link is busy and no compute "
           "unit is. Energy per generated token: static (idle power of every powered device over the run's whole "
           "time) plus dynamic (bytes and FLOP of the work).", ""]
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
