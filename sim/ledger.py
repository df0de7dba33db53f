"""The assumption ledger: every value a configuration runs on that is tagged as an assumption, and how far each one
moves the headline when it is halved and doubled.

**What counts as an assumption.** A preset value's source ends in tags in parentheses: ``V`` (checked against the
cited source), ``R`` (widely quoted), ``I`` (derived or assumed here), alone or combined: ``(I)``, ``(V/I)``,
``(R/I)``, ``(I, from ...)``, ``(V rule, I value)``. A value is an assumption when a parenthesised group of its
source holds the letter ``I`` standing alone (``I/O`` is not a tag). Loaded parameters keep each value's source
(``.sources``), so the ledger walks the parameters a configuration really runs on: the machine preset with its
sections and the DRAM timing its host memory names, the PIM device of the variants that have one with its
channel and the channel's DRAM timing, the model (whose preset has one source for the file), and the system
options whose help carries the tag. Nested parameter blocks are found by their ``sources`` field, so a field or
a block added to a preset later is in the ledger with no change here. A value set by the user (an option such as
``--lut-bytes``, or ``--channels``) carries an ``overridden`` source and is no assumption of the run.

**The headline**, as ``compare`` defines it (``sim.compare.baseline_index``): the winner (the variant with the
highest tokens/s among those that fit) over the best fitting variant of the baseline system (offload), and the
pairs in ``PAIRS`` (aqpim over pim+limit) when both are compared. Under a perturbation the numerator stays the
unperturbed winner while the baseline is chosen again; when another variant wins, or a pair's ratio crosses 1,
the entry is flagged.

**One at a time.** Each assumption is run at half and at double its value, every other value as shipped; a
boolean is flipped instead. Only the variants that read the changed block run again (a PIM value leaves the
offload variants' results as they were). A whole number is rounded (and says so); a value of 0 has no half or
double and is skipped with that reason; a value its block refuses (a fraction doubled past 1 is clipped to 1 and
says so; anything else refused is skipped with the block's own message). Perturbed parameters are passed to
``sim.run.simulate`` (``params``, ``pim``, ``model``); nothing global changes, so the runs go to a process pool
and the ledger is the same whatever ``jobs``.

The swing of an entry is the span of a headline ratio over {half, shipped, double} relative to the shipped
ratio; entries are sorted by their largest swing over the headline ratios (then by key).
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hw_models.loading import unit_of
from hw_models.machine import MachineParams, load_machine
from hw_models.params import override
from hw_models.pim import PimDeviceParams
from sim.compare import VariantRun, baseline_index
from sim.config import SHARED, RunConfig
from sim.errors import INPUT_ERRORS, ConfigError
from sim.options import specs
from sim.results import Result
from sim.systems import SYSTEMS
from workloads.models import ModelSpec, load_model

# Headline pairs beside the winner's speedup: (numerator, denominator) variant labels, used when both are compared.
PAIRS = (("aqpim", "pim+limit"),)
SPEEDUP = "speedup"
GROUP = re.compile(r"\(([^()]*)\)")
TAG_I = re.compile(r"(?<![\w.])I(?![\w.]|/O)")


def is_assumption(source: str) -> bool:
    """Whether a source tags its value as derived or assumed here: ``I`` alone in a parenthesised group."""
    return any(TAG_I.search(g) for g in GROUP.findall(source or ""))


# ---------------------------------------------------------------------------------------------------- the list

@dataclass(frozen=True)
class Tagged:
    """One value tagged as an assumption. ``root`` is the block it belongs to (``hardware``, ``pim``, ``model`` or
    ``option``) and ``path`` the fields from there (``("host_dram", "dram", "tCK_s")``); ``preset`` the preset
    file (or the system, for an option) it comes from."""

    root: str
    path: tuple[str, ...]
    preset: str
    value: object
    source: str

    @property
    def key(self) -> str:
        return ".".join((self.root, *self.path))

    @property
    def unit(self) -> str:
        return unit_of(self.path[-1]) if self.path else ""


def _preset_name(obj, inherited: str) -> str:
    origin = getattr(obj, "origin", "") or ""
    return Path(origin.split(" sha256:")[0]).stem if origin else inherited


def walk(obj, root: str, path: tuple[str, ...] = (), preset: str = "") -> list[Tagged]:
    """The tagged values of a parameter block and of every block nested in it (a block is a dataclass with
    ``sources``), in field order."""
    preset = _preset_name(obj, preset or getattr(obj, "name", root))
    sources = getattr(obj, "sources", None) or {}
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in sources and is_assumption(sources[f.name]):
            out.append(Tagged(root, (*path, f.name), preset, value, sources[f.name]))
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "sources"):
            out += walk(value, root, (*path, f.name), preset)
    return out


@dataclass(frozen=True)
class Headline:
    """What the ledger perturbs: the compared variants, on the parameters they run on (``pims[i]``: variant i's
    PIM device, None without one)."""

    labels: tuple[str, ...]
    configs: tuple[RunConfig, ...]
    machine: MachineParams
    model: ModelSpec
    pims: tuple[PimDeviceParams | None, ...]

    @classmethod
    def load(cls, pairs: Sequence[tuple[str, RunConfig]]) -> Headline:
        if not pairs:
            raise ConfigError("no variant to compare")
        first = pairs[0][1]
        for _, cfg in pairs:
            if (cfg.hardware, cfg.model) != (first.hardware, first.model):
                raise ConfigError("the ledger takes variants of one machine and one model")
        pims = tuple(SYSTEMS[c.system].devices(c.options).pim for _, c in pairs)
        return cls(tuple(lab for lab, _ in pairs), tuple(c for _, c in pairs), load_machine(first.hardware),
                   load_model(first.model), pims)

    @property
    def pim(self) -> PimDeviceParams | None:
        return next((p for p in self.pims if p is not None), None)


def tagged_values(h: Headline) -> list[Tagged]:
    """Every assumption the headline's variants run on: machine (with its DRAM timing), PIM device (with its
    channel's timing), model, and tagged system options left at their defaults."""
    out = walk(h.machine, "hardware")
    if h.pim is not None:
        out += walk(h.pim, "pim")
    if is_assumption(h.model.source):
        out.append(Tagged("model", (), h.model.name, h.model.name, h.model.source))
    seen = set()
    for cfg in h.configs:
        for opts in (cfg, cfg.options):
            for name, (_, _, default, spec) in specs(type(opts)).items():
                if name in seen or not is_assumption(spec.help) or getattr(opts, name) != default:
                    continue
                seen.add(name)
                owner = "run" if opts is cfg else f"{cfg.system} option"
                out.append(Tagged("option", (name,), owner, default, spec.help))
    return out


# ------------------------------------------------------------------------------------------------ perturbations

@dataclass(frozen=True)
class Side:
    """One perturbation of a value: ``half``, ``double`` or ``flip``; ``value`` None when it was not run (then
    ``note`` says why), else ``note`` says how the value differs from exactly half or double, if it does."""

    name: str
    value: object
    note: str = ""


def sides(value) -> tuple[list[Side], str]:
    """The perturbations to run for ``value``, and the reason when there are none."""
    if isinstance(value, bool):
        return [Side("flip", not value)], ""
    if isinstance(value, int):
        if value == 0:
            return [], "0: halving and doubling leave it at 0"
        half = (abs(value) + 1) // 2 * (1 if value > 0 else -1)
        out = []
        if half == value:
            out.append(Side("half", None, f"{value} has no whole half"))
        else:
            out.append(Side("half", half, f"{value}/2 rounded to {half}" if value % 2 else ""))
        return [*out, Side("double", 2 * value)], ""
    if isinstance(value, float):
        if value == 0:
            return [], "0: halving and doubling leave it at 0"
        return [Side("half", value / 2), Side("double", value * 2)], ""
    if isinstance(value, str):
        return [], "a name, not a number"
    return [], "a block of its own (its tagged values are listed apart), not a number"


def replace_at(obj, path: tuple[str, ...], value):
    """A copy of the nested frozen parameters ``obj`` with the field at ``path`` set to ``value``. The block that
    holds it is rebuilt through ``hw_models.params.override`` (validated again, its source marked overridden), and
    so is every block above it. A field a block derives in ``__post_init__`` (``host_dram.dram``, the timing its
    preset name resolves to) is set on a copy: deriving it again would read the preset back."""
    name, rest = path[0], path[1:]
    child = replace_at(getattr(obj, name), rest, value) if rest else value
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        raise ConfigError(f"{type(obj).__name__} has no field '{name}'")
    if not fields[name].init:
        new = copy.copy(obj)
        object.__setattr__(new, name, child)
        return new
    if rest:
        return dataclasses.replace(obj, **{name: child})
    if hasattr(obj, "sources"):
        return override(obj, **{name: child})
    return dataclasses.replace(obj, **{name: child})


Task = tuple[RunConfig, MachineParams, PimDeviceParams | None, ModelSpec]


def tasks_for(h: Headline, t: Tagged, value) -> dict[int, Task]:
    """The runs one perturbed value needs: variant index -> its inputs, for the variants that read the changed
    block. Raises the block's own error (HardwareError, ConfigError, WorkloadError) when it refuses the value."""
    out = {}
    if t.root == "hardware":
        machine = replace_at(h.machine, t.path, value)
        return {i: (c, machine, h.pims[i], h.model) for i, c in enumerate(h.configs)}
    if t.root == "pim":
        for i, c in enumerate(h.configs):
            if h.pims[i] is not None:
                out[i] = (c, h.machine, replace_at(h.pims[i], t.path, value), h.model)
        return out
    if t.root == "option":
        name = t.path[0]
        for i, c in enumerate(h.configs):
            if name in SHARED:
                out[i] = (dataclasses.replace(c, **{name: value}), h.machine, h.pims[i], h.model)
            elif name in specs(type(c.options)):
                opts = dataclasses.replace(c.options, **{name: value})
                out[i] = (dataclasses.replace(c, options=opts), h.machine, h.pims[i], h.model)
        return out
    raise ConfigError(f"{t.key}: no perturbation for a value of {t.root}")


def checked_side(h: Headline, t: Tagged, s: Side) -> tuple[Side, dict[int, Task]]:
    """``s`` with its runs, or ``s`` marked as not run with the block's reason. A fraction doubled past 1 that its
    block refuses is clipped to 1 and run there."""
    if s.value is None:
        return s, {}
    try:
        return s, tasks_for(h, t, s.value)
    except (*INPUT_ERRORS, ValueError) as e:
        reason = str(e)
    v = t.value
    if s.name == "double" and isinstance(v, float) and 0 < v < 1 < s.value:
        try:
            return Side(s.name, 1.0, f"clipped to 1 ({reason})"), tasks_for(h, t, 1.0)
        except (*INPUT_ERRORS, ValueError):
            pass
    return Side(s.name, None, f"not run: {reason}"), {}


# ----------------------------------------------------------------------------------------------------- running

def run_task(task: Task) -> Result | str:
    """Worker: one simulation; an input error comes back as its one-line message."""
    from sim.run import simulate

    cfg, machine, pim, model = task
    try:
        return simulate(cfg, params=machine, model=model, pim=pim)
    except INPUT_ERRORS as e:
        return str(e)


def run_tasks(tasks: list[Task], jobs: int = 1) -> list[Result | str]:
    """Every task's outcome, in order: in this process for one job, else in a process pool (forked on Linux, so
    workers start with the simulator imported)."""
    if jobs <= 1 or len(tasks) <= 1:
        return [run_task(t) for t in tasks]
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as ex:
        return list(ex.map(run_task, tasks, chunksize=max(1, len(tasks) // (4 * jobs))))


def winner_index(results: Sequence[Result]) -> int | None:
    """The variant with the highest tokens/s among those that fit (the first of equals); None when none fits."""
    fitting = [i for i, r in enumerate(results) if r.fits]
    return max(fitting, key=lambda i: results[i].tokens_per_s, default=None)


def headline_metrics(labels: Sequence[str], results: Sequence[Result], winner: str) -> dict[str, dict]:
    """The headline ratios of one set of results: ``speedup`` (``winner``'s tokens/s over the best fitting
    baseline variant's, as ``compare`` picks it) and each pair of ``PAIRS`` that was compared; each with the
    variant that wins in these results."""
    runs = [VariantRun(lab, None, r, []) for lab, r in zip(labels, results, strict=True)]
    base = baseline_index(runs)
    win = winner_index(results)
    won = labels[win] if win is not None else None
    tps = {lab: r.tokens_per_s for lab, r in zip(labels, results, strict=True)}
    out = {SPEEDUP: {"value": tps[winner] / tps[labels[base]] if base is not None and tps[labels[base]] else None,
                     "over": labels[base] if base is not None else None, "winner": won}}
    for a, b in PAIRS:
        if a in tps and b in tps:
            out[f"{a}/{b}"] = {"value": tps[a] / tps[b] if tps[b] else None, "over": b, "winner": won}
    return out


@dataclass
class Entry:
    tagged: Tagged
    sides: list[Side]
    skipped: str = ""
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)   # side name -> metric -> its dict
    errors: dict[str, str] = field(default_factory=dict)                # side name -> a run's error


def swing(base: float | None, values: Sequence[float | None]) -> float | None:
    """Span of the ratio over the shipped value and its perturbations, relative to the shipped ratio."""
    vals = [v for v in (base, *values) if v is not None]
    if base is None or not base or len(vals) < 2:
        return None
    return (max(vals) - min(vals)) / base


def flags(entry: Entry, base: dict[str, dict]) -> list[str]:
    """Where a perturbation changes who wins: another variant wins, or a pair's ratio crosses 1."""
    out = []
    for side, m in entry.metrics.items():
        won = m[SPEEDUP]["winner"]
        if won != base[SPEEDUP]["winner"]:
            out.append(f"{side}: {won or 'no variant that fits'} wins")
        for name, d in m.items():
            if name == SPEEDUP or d["value"] is None or base[name]["value"] is None:
                continue
            if (d["value"] >= 1) != (base[name]["value"] >= 1):
                out.append(f"{side}: {name} {'>=' if d['value'] >= 1 else '<'} 1")
    return out


def build_ledger(pairs: Sequence[tuple[str, RunConfig]], jobs: int = 1,
                 runner: Callable[[list[Task], int], list] = run_tasks) -> dict:
    """Run the ledger for the variants ``pairs`` (label, RunConfig): the shipped runs (an error if one fails or
    none fits), then every perturbation of every assumption (see the module docstring). Returns the ledger as a JSON-ready dict. ``runner`` runs a list
    of tasks (tests pass a closed form)."""
    h = Headline.load(pairs)
    tagged = tagged_values(h)
    shipped = runner([(c, h.machine, h.pims[i], h.model) for i, c in enumerate(h.configs)], jobs)
    for lab, out in zip(h.labels, shipped, strict=True):
        if isinstance(out, str):
            raise ConfigError(f"{lab}: {out}")
    win = winner_index(shipped)
    if win is None:
        raise ConfigError("no compared variant fits: there is no winner to measure the assumptions against")
    winner = h.labels[win]
    base = headline_metrics(h.labels, shipped, winner)
    if all(d["value"] is None for d in base.values()):
        raise ConfigError(f"no headline ratio to move: {winner} wins, but no baseline variant ("
                          f"{', '.join(n for n, c in SYSTEMS.items() if c.baseline)}) fits, and no pair of "
                          f"{', '.join(f'{a} and {b}' for a, b in PAIRS)} is compared")
    entries, tasks, where = [], [], []   # where[k]: (entry index, side name, variant index) of tasks[k]
    for t in tagged:
        todo, reason = sides(t.value)
        entry = Entry(t, [], reason)
        for s in todo:
            s, runs = checked_side(h, t, s)
            entry.sides.append(s)
            for i, task in runs.items():
                tasks.append(task)
                where.append((len(entries), s.name, i))
        entries.append(entry)
    outcomes = runner(tasks, jobs) if tasks else []
    changed: dict[tuple[int, str], dict[int, Result]] = {}
    for (e, side, i), out in zip(where, outcomes, strict=True):
        if isinstance(out, str):
            entries[e].errors.setdefault(side, f"{h.labels[i]}: {out}")
        else:
            changed.setdefault((e, side), {})[i] = out
    for (e, side), by_variant in changed.items():
        if side in entries[e].errors:
            continue
        results = [by_variant.get(i, shipped[i]) for i in range(len(shipped))]
        entries[e].metrics[side] = headline_metrics(h.labels, results, winner)
    return _ledger_dict(h, shipped, base, entries, len(shipped) + len(tasks))


def plain(value):
    """A value as JSON holds it: numbers, booleans and names as they are; a nested block (a DRAM timing) by name."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(getattr(value, "name", type(value).__name__))


def _ledger_dict(h: Headline, shipped: list[Result], base: dict, entries: list[Entry], runs: int) -> dict:
    metric_names = list(base)
    rows = []
    for e in entries:
        t = e.tagged
        side_rows = []
        for s in e.sides:
            row = {"side": s.name, "value": s.value, "note": s.note}
            if s.name in e.errors:
                row["note"] = (row["note"] + "; " if row["note"] else "") + f"run failed: {e.errors[s.name]}"
                row["value"] = None
            row["metrics"] = e.metrics.get(s.name) if row["value"] is not None else None
            side_rows.append(row)
        swings = {m: swing(base[m]["value"], [r["metrics"][m]["value"] for r in side_rows if r["metrics"]])
                  for m in metric_names}
        rows.append({"key": t.key, "root": t.root, "path": list(t.path), "preset": t.preset, "value": plain(t.value),
                     "unit": t.unit, "source": t.source, "skipped": e.skipped, "sides": side_rows,
                     "swing": swings, "flags": flags(e, base) if not e.skipped else []})
    rows.sort(key=lambda r: (-max((v or 0.0) for v in r["swing"].values()), r["key"]))
    r0 = shipped[0]
    return {
        "scenario": f"{r0.model} on {r0.hardware}: batch {r0.batch}, context {r0.context} tokens, {r0.steps} decode "
                    f"step{'s' if r0.steps != 1 else ''}, seed {r0.seed}",
        "variants": [{"label": lab, "system": r.system, "tokens_per_s": r.tokens_per_s, "fits": r.fits}
                     for lab, r in zip(h.labels, shipped, strict=True)],
        "headline": {m: {**base[m], "name": metric_title(m, base)} for m in metric_names},
        "metrics": metric_names,  # the headline ratios in order (the first is the winner's speedup)
        "presets": _presets(h),
        "runs": runs,
        "entries": rows,
    }


def metric_title(m: str, base: dict) -> str:
    if m == SPEEDUP:
        over = base[m]["over"] or "none fits or none compared"
        return f"{base[m]['winner']} over the best fitting baseline ({over})"
    return m.replace("/", " over ")


def _presets(h: Headline) -> list[dict]:
    out = [{"root": "hardware", "preset": h.machine.name, "origin": h.machine.origin},
           {"root": "hardware", "preset": _preset_name(h.machine.host_dram.dram, ""), "origin":
            h.machine.host_dram.dram.origin}]
    if h.pim is not None:
        out += [{"root": "pim", "preset": h.pim.name, "origin": h.pim.origin},
                {"root": "pim", "preset": _preset_name(h.pim.channel.timing, ""), "origin":
                 h.pim.channel.timing.origin}]
    out.append({"root": "model", "preset": h.model.name, "origin": h.model.origin})
    return out


# ------------------------------------------------------------------------------------------------------ output

def assumptions_markdown(pairs: Sequence[tuple[str, RunConfig]]) -> str:
    """A report section: the values of the compared presets tagged as assumptions (no runs; the sensitivity is
    `aqpim-sim assumptions`)."""
    h = Headline.load(pairs)
    tagged = tagged_values(h)
    presets = ", ".join(dict.fromkeys(t.preset for t in tagged))
    md = ["## Assumptions", ""]
    if not tagged:
        return "\n".join([*md, "No value of the presets this comparison ran on is tagged as an assumption (I).", ""])
    md += [f"{len(tagged)} values of the presets this comparison ran on ({presets}) are tagged as assumptions (I): "
           "derived or assumed here, not checked against a source. `aqpim-sim assumptions`, with the same flags, "
           "halves and doubles each one and reports how far the headline moves (docs/assumptions.md).", "",
           "| assumption | preset | value |", "|---|---|---:|"]
    md += [f"| `{t.key}` | {t.preset} | {fmt_value(t.value, t.unit)} |" for t in tagged]
    return "\n".join([*md, ""])


def ledger_json(ledger: dict) -> str:
    return json.dumps(ledger, sort_keys=True, indent=1, allow_nan=False) + "\n"


def fmt_value(v, unit: str = "") -> str:
    v = plain(v)
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}{' ' + unit if unit else ''}"
    return f"{v}{' ' + unit if unit and isinstance(v, int) else ''}"


def _ratio(d: dict | None, base: float | None, name: str) -> str:
    if not d or d[name]["value"] is None:
        return "-"
    v = d[name]["value"]
    change = f" ({100 * (v / base - 1):+.1f}%)" if base else ""
    return f"{v:.3g}x{change}"


def table_rows(ledger: dict) -> tuple[list[str], list[list[str]]]:
    names = ledger["metrics"]
    header = ["#", "assumption", "preset", "value"]
    for m in names:
        header += [f"{m} at half/flip", f"{m} at double", f"{m} swing"]
    header.append("flags, notes")
    rows = []
    for n, r in enumerate(ledger["entries"], 1):
        sides = {s["side"]: s for s in r["sides"]}
        low = sides.get("half") or sides.get("flip")
        high = sides.get("double")
        row = [str(n), r["key"], r["preset"], fmt_value(r["value"], r["unit"])]
        for m in names:
            base = ledger["headline"][m]["value"]
            sw = r["swing"][m]
            row += [_ratio(low and low["metrics"], base, m), _ratio(high and high["metrics"], base, m),
                    "-" if sw is None else f"{100 * sw:.1f}%"]
        notes = [f"FLIPS THE WINNER ({'; '.join(r['flags'])})"] if r["flags"] else []
        if r["skipped"]:
            notes.append(f"skipped: {r['skipped']}")
        notes += [f"{s['side']}: {s['note']}" for s in r["sides"] if s["note"]]
        row.append("; ".join(notes))
        rows.append(row)
    return header, rows


def headline_lines(ledger: dict) -> list[str]:
    out = [ledger["scenario"]]
    for m in ledger["metrics"]:
        d = ledger["headline"][m]
        out.append(f"headline {m}: {d['name']}: {d['value']:.3g}x" if d["value"] is not None
                   else f"headline {m}: {d['name']}: -")
    return out


def ledger_table(ledger: dict) -> str:
    header, rows = table_rows(ledger)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in (1, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    flipped = [r["key"] for r in ledger["entries"] if r["flags"]]
    summary = (f"{len(ledger['entries'])} assumptions, {ledger['runs']} simulations; "
               f"{len(flipped)} flip the winner" + (f": {', '.join(flipped)}" if flipped else ""))
    return "\n".join([*headline_lines(ledger), summary, "", *lines]) + "\n"


CSV_SIDES = ("half", "double", "flip")


def ledger_csv(ledger: dict) -> str:
    names = ledger["metrics"]
    header = ["rank", "key", "preset", "value", "unit", "skipped"]
    for s in CSV_SIDES:
        header += [f"{s}_value", f"{s}_note"] + [f"{s}_{m}" for m in names] + [f"{s}_winner"]
    header += [f"swing_{m}" for m in names] + ["flags", "source"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for n, r in enumerate(ledger["entries"], 1):
        sides = {s["side"]: s for s in r["sides"]}
        row = [n, r["key"], r["preset"], _csv(r["value"]), r["unit"], r["skipped"]]
        for name in CSV_SIDES:
            s = sides.get(name)
            m = s["metrics"] if s else None
            row += [_csv(s["value"]) if s else "", s["note"] if s else ""]
            row += [_csv(m[k]["value"]) if m else "" for k in names]
            row.append(m[SPEEDUP]["winner"] or "" if m else "")
        row += [_csv(r["swing"][k]) for k in names] + ["; ".join(r["flags"]), r["source"]]
        w.writerow(row)
    return buf.getvalue()


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)
