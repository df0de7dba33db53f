"""Explaining one decode step in plain words: what is stored where, what moves, what each resource does, what limits.

Everything printed is derived from a Result, the spans of its traced steps, and the machine and model parameters:
per resource, the busy time per step, the bytes it moved and at what rate, against the rate the machine
parameters allow; then the verdict (the resource that is busy for most of the step, or the dependency chain when
none is), what the step would gain if that limit went away, and where the energy goes. The sentences are
templates per kind of resource (a link, a compute unit, a group of PIM channels), not prose per system, so a new
system is explained without changes here. Sizes and rates are in decimal GB (1e9 bytes) so the arithmetic
(GB / GB/s = s) can be checked by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sim.config import DEFAULT_STEPS, RunConfig, from_mapping
from sim.errors import INPUT_ERRORS
from sim.report import fmt_bytes, fmt_time
from sim.results import Result
from sim.run import run_simulation, simulate
from sim.systems import SYSTEMS
from sim.topology import Topology
from workloads.models import ModelSpec

CHANNEL = re.compile(r"^(.*?)(\d+)$")
BOUND_SHARE = 0.9    # a resource busy this share of the step or more is "the" bottleneck
MOSTLY_SHARE = 0.6   # ... this share or more: the step is mostly its work


def gb(nbytes: float) -> str:
    """Sizes in binary units (GiB, MiB, KiB) as everywhere else; rates stay in GB/s, as links are specified."""
    return fmt_bytes(nbytes)


def rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e9:.1f} GB/s"


def flops(f: float) -> str:
    return f"{f / 1e12:.2f} TFLOP" if f >= 1e11 else f"{f / 1e9:.2f} GFLOP"


@dataclass
class Usage:
    """One resource (or a group of numbered channels) over the traced steps, per step."""

    name: str
    members: int
    busy_s: float          # per step; for a group, the busiest member's
    mean_busy_s: float     # per step; for a group, the members' mean
    nbytes: float          # per step, all members
    flops: float           # per step, all members
    kinds: dict            # kind -> busy seconds per step (all members)
    count: float           # pieces of work (kernels, transfers) per step, all members
    detail: tuple | None = None  # (lanes, busiest, mean) busy per step of traced channel lanes of this unit


def usage_from_spans(spans: list, n_steps: int, counted: set[str] | None = None) -> list[Usage]:
    """Per-resource use per step. Components outside ``counted`` (the Result's) are trace-only channel lanes:
    their busy times become the load-balance detail of the counted unit they belong to (``pim.ch3`` -> ``pim``)."""
    comps: dict[str, list] = {}
    for s in spans:
        comps.setdefault(s.component, []).append(s)
    details: dict[str, list[str]] = {}
    if counted is not None:
        for c in list(comps):
            parent = c.rsplit(".", 1)[0]
            if c not in counted and CHANNEL.match(c) and parent in counted:
                details.setdefault(parent, []).append(c)
                del comps[c]
    groups: dict[str, list[str]] = {}
    for c in comps:
        m = CHANNEL.match(c)
        twins = [o for o in comps if CHANNEL.match(o) and m and CHANNEL.match(o).group(1) == m.group(1)]
        groups.setdefault(m.group(1) + "*" if m and len(twins) > 1 else c, []).append(c)

    def busy(c):
        return sum(s.end_s - s.start_s for s in comps[c]) / n_steps

    out = []
    for name, members in groups.items():
        b = [busy(c) for c in members]
        kinds: dict[str, float] = {}
        for c in members:
            for s in comps[c]:
                kinds[s.kind] = kinds.get(s.kind, 0.0) + (s.end_s - s.start_s) / n_steps
        lanes = details.get(name)
        detail = None
        if lanes:
            lb = [sum(s.end_s - s.start_s for s in spans if s.component == c) / n_steps for c in lanes]
            detail = (len(lanes), max(lb), sum(lb) / len(lb))
        out.append(Usage(name, len(members), max(b), sum(b) / len(b),
                         sum(s.nbytes for c in members for s in comps[c]) / n_steps,
                         sum(s.flops for c in members for s in comps[c]) / n_steps,
                         dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
                         sum(len(comps[c]) for c in members) / n_steps, detail))
    return sorted(out, key=lambda u: -u.busy_s)


def _link_rates(topology: Topology) -> dict[str, float]:
    return {link.name: link.bw_bytes_per_s for link in topology.links if link.resource}


def _compute_limits(topology: Topology) -> dict[str, tuple[float, float, str]]:
    """Compute unit -> (memory bytes/s, FLOP/s, which memory) that the parameters allow."""
    return {n: (d["mem_bw_bytes_per_s"], d["flops_per_s"], d["memory"])
            for n, d in topology.compute_nodes().items()}


def _top_kinds(u: Usage, n: int = 3) -> str:
    total = sum(u.kinds.values()) or 1.0
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in list(u.kinds.items())[:n])


def _resource_line(u: Usage, step_s: float, links: dict, limits: dict) -> str:
    share = 100 * u.busy_s / step_s if step_s else 0.0
    if u.members > 1:
        imbalance = u.busy_s / u.mean_busy_s if u.mean_busy_s else 1.0
        text = (f"{u.name} ({u.members} channels): the busiest is busy {fmt_time(u.busy_s)} ({share:.0f}% of the "
                f"step), the mean {fmt_time(u.mean_busy_s)} (imbalance {imbalance:.2f}x); together they touch "
                f"{gb(u.nbytes)}")
        if u.mean_busy_s > 0 and u.nbytes:
            text += f", {rate(u.nbytes / (u.mean_busy_s * u.members))} per busy channel"
        return text + f". Work: {_top_kinds(u)}."
    text = f"{u.name}: busy {fmt_time(u.busy_s)} ({share:.0f}% of the step)"
    if u.name in links:
        achieved = u.nbytes / u.busy_s if u.busy_s else 0.0
        text += (f", carries {gb(u.nbytes)} at {rate(achieved)} while busy "
                 f"(link rate {rate(links[u.name])})")
        if achieved < 0.5 * links[u.name]:
            text += f"; {u.count:.0f} small transfers per step, so the fixed cost per transfer dominates"

    elif u.name in limits:
        bw, fl, mem = limits[u.name]
        t_mem, t_fl = u.nbytes / bw, u.flops / fl
        kind = "memory-bound" if t_mem >= t_fl else "compute-bound"
        text += (f"; reads/writes {gb(u.nbytes)} of {mem} ({fmt_time(t_mem)} at {rate(bw)}) and does "
                 f"{flops(u.flops)} ({fmt_time(t_fl)} at {fl / 1e12:.1f} TFLOP/s): {kind} overall; "
                 f"{u.count:.0f} operations' fixed costs and per-operation limits make up the other "
                 f"{fmt_time(max(0.0, u.busy_s - max(t_mem, t_fl)))}")
    elif u.nbytes:
        text += f", moves {gb(u.nbytes)}"
    if u.detail:
        lanes, top, mean = u.detail
        text += (f"; its first {lanes} channels (traced) are busy {fmt_time(mean)} on average, the busiest "
                 f"{fmt_time(top)} (imbalance {top / mean if mean else 1.0:.2f}x)")
    return text + f". Work: {_top_kinds(u)}."


def _verdict(us: list[Usage], step_s: float, links: dict, limits: dict, result: Result) -> list[str]:
    top = us[0]
    out = []
    share = top.busy_s / step_s if step_s else 0.0
    what = "link" if top.name in links else ("channel group" if top.members > 1 else "unit")
    if share >= BOUND_SHARE:
        out.append(f"The step is bound by {top.name}: this {what} is busy {100 * share:.0f}% of the step.")
        if top.name in links:
            out.append(f"  {gb(top.nbytes)} must cross it every step; at {rate(links[top.name])} that alone is "
                       f"{fmt_time(top.nbytes / links[top.name])}. Only a faster link or fewer bytes across it "
                       f"(keep the KV cache where attention runs, or compress it) shortens the step.")
        elif top.name in limits:
            bw, fl, mem = limits[top.name]
            more = f"more {mem} bandwidth" if top.nbytes / bw >= top.flops / fl else "more FLOP/s"
            out.append(f"  Its work is set by what it reads and computes, so {more}, or less work (a compressed KV "
                       f"cache, attention elsewhere), shortens the step.")
        elif top.members > 1:
            out.append("  Attention work spread over more channels, or fewer bytes per channel (a compressed KV "
                       "cache), shortens the step; a high imbalance says the placement leaves channels idle.")
    elif share >= MOSTLY_SHARE:
        rest = ", ".join(f"{u.name} {100 * u.busy_s / step_s:.0f}%" for u in us[1:3])
        out.append(f"The step is mostly {top.name}'s work ({100 * share:.0f}% of it); the rest is work of other "
                   f"resources that does not overlap with it ({rest}).")
    else:
        busiest = ", ".join(f"{u.name} {100 * u.busy_s / step_s:.0f}%" for u in us[:3])
        total = sum(u.busy_s for u in us[:2])
        out.append(f"No single resource is busy for most of the step (busiest: {busiest}). The step is a chain "
                   f"of dependent operations that take turns on the resources.")
        if len(us) > 1 and total >= 0.9 * step_s:
            out.append(f"  {us[0].name} and {us[1].name} together account for {fmt_time(total)} of the "
                       f"{fmt_time(step_s)} step; whether overlapping them pays is checked below.")
    if len(us) > 1 and us[1].busy_s > 0:
        out.append(f"If {top.name} cost nothing, the next limit would be {us[1].name} at {fmt_time(us[1].busy_s)} "
                   f"per step: at best {step_s / us[1].busy_s:.1f}x faster.")
    out.append(f"Exposed GPU-host communication (link busy, no compute unit busy): {100 * result.comm_share:.1f}% "
               f"of the step.")
    return out


def _lookup_lines(result: Result, spans: list, n_steps: int) -> list[str]:
    """AQPIM's phases and its lookup unit: each phase's share of the PIM device's busy time, what bounds the score
    gather and the bin scatter, and the PIM time per layer of every lookup dataflow (the system's closed form)."""
    look = result.details.get("aqpim_lookup")
    if not look:
        return []
    phases: dict[str, float] = {}
    for s in spans:
        if s.component == "pim" and not s.detail and s.kind.startswith("aqpim."):
            phases[s.kind] = phases.get(s.kind, 0.0) + (s.end_s - s.start_s) / n_steps
    total = sum(phases.values())
    out = ["", "AQPIM phases and lookup unit:"]
    if total > 0:
        out.append("  PIM busy per step by phase: " + ", ".join(
            f"{k.removeprefix('aqpim.')} {fmt_time(v)} ({100 * v / total:.0f}%)" for k, v in phases.items())
                   + f"; together {fmt_time(total)}.")
    out.append(f"  Lookup buffer {look['lut_bytes']:.0f} B per unit ({look['rows_per_buffer']} of the {look['rows']} "
               f"table rows a (sequence, KV head) needs), {look['lut_banks']} SRAM banks at "
               f"{look['lut_clock_hz'] / 1e6:.0f} MHz ({look['lut_accesses_per_s'] / 1e9:.2f} G accesses/s per unit).")
    out.append(f"  Dataflow '{look['dataflow']}': {look['passes']} pass(es); each code byte read {look['code_reads']}x"
               f"; running scores carried {look['carried']}x; partial scores reduced across banks "
               f"{look['reduced']}x (pool of {look['pool']} unit(s)).")
    out.append(f"  On the busiest channel the score gather is bound by {look['score_bound_by']} and the bin scatter "
               f"by {look['scatter_bound_by']}.")
    by_flow = look.get("pim_phase_s_per_layer_by_dataflow", {})
    if by_flow:
        best = min(by_flow, key=by_flow.get)
        out.append("  PIM time per layer by dataflow (closed form, busiest channel): " + ", ".join(
            f"{k} {fmt_time(v)}" for k, v in by_flow.items()) + f"; the fastest is '{best}'"
                   + ("." if best == look["dataflow"] else f", not the one run ('{look['dataflow']}')."))
    return out


@dataclass(frozen=True)
class WhatIf:
    """One option change and the mean step latency it gave, both runs simulated over the same steps."""

    change: dict
    before_s: float
    after_s: float
    fits: bool

    @property
    def flags(self) -> str:
        return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in self.change.items())


WHAT_IF_MIN_GAIN = 0.01  # a change is suggested only when the simulation confirms at least a 1% shorter step


def checked_what_ifs(cfg: RunConfig, steps: int = 2) -> list[WhatIf]:
    """Each of the system's ``what_ifs`` that changes the configuration and is valid, simulated beside the
    configuration itself over ``steps`` steps; the ones whose step is at least 1% shorter, best first."""
    base_cfg = {**cfg.to_dict(), "steps": min(cfg.steps or DEFAULT_STEPS, steps), "trace_steps": 0}
    base = simulate(from_mapping(base_cfg, where="explain"))
    found = []
    for change in SYSTEMS[cfg.system].what_ifs:
        if all(base_cfg.get(k) == v for k, v in change.items()):
            continue
        try:
            other = simulate(from_mapping({**base_cfg, **change}, where="explain"))
        except INPUT_ERRORS:  # not valid with the rest of the configuration (e.g. prefetch with cpu_attention)
            continue
        if other.mean_step_latency_s < (1 - WHAT_IF_MIN_GAIN) * base.mean_step_latency_s and other.fits >= base.fits:
            found.append(WhatIf(dict(change), base.mean_step_latency_s, other.mean_step_latency_s, other.fits))
    return sorted(found, key=lambda w: w.after_s)


def what_if_lines(cfg: RunConfig, found: list[WhatIf], steps: int) -> list[str]:
    tried = SYSTEMS[cfg.system].what_ifs
    if not tried:
        return []
    n = min(cfg.steps or DEFAULT_STEPS, steps)
    out = ["", f"Checked what-ifs ({len(tried)} option changes, each simulated over {n} step{'s' if n != 1 else ''} "
                f"beside this configuration):"]
    if not found:
        out.append("  none shortens the step by 1% or more.")
    for w in found:
        out.append(f"  {w.flags}: {fmt_time(w.before_s)} -> {fmt_time(w.after_s)} per step "
                   f"({w.before_s / w.after_s:.2f}x faster, simulated).")
    return out


def explain_result(result: Result, spans: list, topology: Topology, model: ModelSpec) -> str:
    """The explanation of ``result``, simulated on ``topology``."""
    steps = sorted({s.step for s in spans})
    n = len(steps) or 1
    traced = result.traced_step_latency_s  # latencies of the steps whose spans were kept
    if steps and steps[-1] < len(traced):
        step_s = sum(traced[i] for i in steps) / n
    else:
        step_s = result.mean_step_latency_s
    links, limits = _link_rates(topology), _compute_limits(topology)
    us = usage_from_spans(spans, n, set(result.busy_s))
    lines = [f"{result.system} | {result.model} | {result.hardware} | batch {result.batch} | "
             f"context {result.context}", ""]
    tp, pp = result.details.get("tp", 1), result.details.get("pp", 1)
    if pp > 1:
        lines.append(f"Pipeline parallel over {pp} stages of {model.n_layers} layers ({tp} GPU{'s' if tp > 1 else ''} "
                     f"each): the numbers below are the last stage's (it also runs the LM head), with the "
                     f"micro-batches waiting for the other stages (sim/pipeline.py); energy counts every GPU.")
        lines.append("")
    if tp > 1:
        lines.append(f"Tensor parallel over {tp} GPUs: each holds {model.n_heads} query heads, {model.n_kv_heads} KV "
                     f"head{'s' if model.n_kv_heads > 1 else ''} and 1/{tp} of the FFN; every layer ends its attention "
                     f"and its FFN with an all-reduce over the interconnect. The GPUs do the same work at the same "
                     f"times: the numbers below are one GPU's (energy: all of them).")
        lines.append("")
    lines.append("What is stored:")
    lines.append(f"  Weights: {gb(model.weight_bytes)} in {'each GPU' if tp > 1 else 'GPU'} memory, read once per "
                 f"step.")
    parts = result.details.get("kv_bytes_per_token_by_part")
    if parts:  # a compressed format: what a token really costs, part by part
        per_token = sum(parts.values())
        lines.append(f"  KV cache: {gb(per_token)} per token as {result.details.get('kv_format', 'compressed')} ("
                     + ", ".join(f"{k} {gb(v)}" for k, v in parts.items() if v > 0)
                     + f"; FP16 would be {gb(model.kv_bytes_per_token)}); {gb(result.kv_bytes)} at the largest "
                     f"step, in {result.kv_location or 'unknown'}.")
    else:
        lines.append(f"  KV cache: {gb(model.kv_bytes_per_token)} per token (2 x {model.n_layers} layers x "
                     f"{model.n_kv_heads} KV heads x {model.head_dim} x {model.bytes_per_element} bytes); "
                     f"{gb(result.kv_bytes)} at the largest step, in {result.kv_location or 'unknown'}.")
    fits = "It fits." if result.fits else "It does NOT fit: " + "; ".join(result.fit_reasons) + "."
    lines.append(f"  {fits}")
    lines += ["", f"One decode step takes {fmt_time(step_s)} (mean of {n} traced step{'s' if n > 1 else ''}; "
              f"closed-form {'estimate' if result.analytic_exact else 'lower bound'} "
              f"{fmt_time(result.analytic_mean_step_latency_s)}); {result.tokens_per_s:.2f} tokens/s.", "",
              "Per step, each resource:"]
    lines += ["  " + _resource_line(u, step_s, links, limits) for u in us]
    lines += ["", "What limits the step:"]
    lines += ["  " + line for line in _verdict(us, step_s, links, limits, result)] if us else ["  (no spans traced)"]
    lines += _lookup_lines(result, spans, n)
    energy = result.energy_j
    total = sum(energy.values())
    if total > 0 and result.tokens:
        top = sorted(energy.items(), key=lambda kv: -kv[1])[:3]
        parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top)
        lines += ["", f"Energy: {result.energy_per_token_j:.3f} J per generated token; most in {parts}."]
    for w in result.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def explain(cfg: RunConfig, what_if_steps: int = 2) -> str:
    """Simulate ``cfg`` (tracing at least one step) and explain its decode step; then try the system's what-ifs
    and print those the simulation confirms (``what_if_steps = 0``: none tried)."""
    if cfg.trace_steps < 1:
        cfg = replace(cfg, trace_steps=1)
    run = run_simulation(cfg)
    text = explain_result(run.result, run.spans, run.topology, run.model)
    if what_if_steps > 0 and not cfg.uses_requests:
        text += "\n" + "\n".join(what_if_lines(cfg, checked_what_ifs(cfg, what_if_steps), what_if_steps))
    return text
