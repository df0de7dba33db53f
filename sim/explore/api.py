"""What the explorer page asks, answered as JSON: its controls (``schema``), closed forms (``estimate``), a short
discrete-event run (``run``) and a closed-form sweep (``sweep``).

The page's state is a flat mapping of strings, the same one its URL's query string holds, so a link reproduces a
configuration and the tests can drive the handlers without a browser. ``parse_state`` turns it into settings with
the option declarations' types (``sim.options``), then one ``RunConfig`` per compared variant
(``sim.variants.available_variants``), through ``from_mapping`` and its one-line errors: whatever the page or a
hand-edited URL sends, a bad value is an input error (HTTP 400 with that line), never a traceback.

What the page may name is narrower than what the CLI accepts, because a server must not read files it is told
about: models, machines and PIM devices are preset names; an uploaded ``config.json`` and a machine with another
PCIe bandwidth are written into the server's own temporary folder (``Workspace``) and named from there. Sizes
that make a request slow are bounded (``LIMITS``) so one page cannot starve the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path

from hw_models import machine as machine_presets
from hw_models import pim as pim_presets
from hw_models.loading import did_you_mean, read_toml
from sim.analytic_sweep import Evaluator, estimate_point
from sim.config import SHARED, RunConfig, from_mapping
from sim.errors import INPUT_ERRORS, ConfigError
from sim.explain import explain_result
from sim.options import check_value, flag_of, specs
from sim.results import Result, config_labels
from sim.run import run_simulation
from sim.systems import SYSTEMS
from sim.variants import available_variants
from workloads import models as model_presets

# Shared settings the page does not show, with the reason (the schema lists them): the explorer runs a fixed batch,
# traces one step for its timeline and keeps every sanity bound. Any other shared setting becomes a control.
HIDDEN_SHARED = {
    "system": "chosen by the variants to compare",
    "trace": "request traces need the event engine for every point; use aqpim-sim run --trace",
    "trace_time_scale": "request traces only", "trace_max_requests": "request traces only",
    "requests": "synthetic request lists: use aqpim-sim run --requests",
    "output_tokens": "synthetic requests only", "arrival_rate_per_s": "synthetic requests only",
    "arrival_process": "synthetic requests only", "arrival_cv": "synthetic requests only",
    "prompt_dist": "synthetic requests only", "output_dist": "synthetic requests only",
    "max_batch": "continuous batching only (the batch is the limit)",
    "trace_steps": "the explorer traces the first step (its timeline)",
    "allow_large": "the explorer keeps every sanity bound",
}
# Settings of the page itself (not options of a run).
PAGE_KEYS = {
    "variants": "variants to compare, comma-separated labels (aqpim-sim compare's names)",
    "pcie_gbps": "override the machine's PCIe host-to-device bandwidth, GB/s (device-to-host scales with it)",
    "model_json": "an uploaded Hugging Face config.json (its text)",
    "sweep_x": "the control that becomes the sweep's x axis",
    "sweep_from": "first x of the sweep", "sweep_to": "last x of the sweep",
    "sweep_points": "points of the sweep", "sweep_scale": "spacing of the sweep's points: log or linear",
    "log": "draw latencies on a logarithmic axis (1) or a linear one (0)",
}
# The explorer's own bounds, below the declarations' sanity bounds: a request stays under a few seconds.
LIMITS = {
    "steps": 8, "batch": 1024, "channels": 4096, "trace_channels": 64, "sub_batches": 16, "link_chunks": 64,
    "kmeans_iters": 50, "variants": 12, "sweep_points": 64, "body_bytes": 256 * 1024, "model_json_bytes": 64 * 1024,
    "workspace_files": 256,
}
EXPLORER_DEFAULTS = {"steps": 2}
DEFAULT_VARIANTS = ("offload+cpu-attention+bandwidth", "pim", "aqpim", "gpu")
LOG_SWEEPS = {"context", "batch", "channels", "lut_bytes", "pcie_gbps", "pq_k"}
TIMELINE_SPANS = 2500   # spans drawn per system (merged within a lane beyond that)
TIMELINE_LANES = 48


def _variant_table() -> dict[str, tuple[str, dict]]:
    """label -> (system, options) of every registered variant, labelled as `aqpim-sim compare` labels them."""
    pairs = available_variants()
    cfgs = [from_mapping({**o, "system": s}) for s, o in pairs]
    labels = config_labels([c.to_dict() for c in cfgs], [type(c.options).defaults() for c in cfgs])
    return {lab: (s, o) for lab, (s, o) in zip(labels, pairs, strict=True)}


def _owners() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, cls in SYSTEMS.items():
        for key in specs(cls.Options):
            out.setdefault(key, []).append(name)
    return out


def _spec_of(key: str):
    if key in SHARED:
        return SHARED[key]
    for cls in SYSTEMS.values():
        s = specs(cls.Options)
        if key in s:
            return s[key]
    return None


def _describe(key: str, base: type, optional: bool, default, spec, systems: list[str] | None) -> dict:
    return {"key": key, "type": base.__name__, "optional": optional, "default": EXPLORER_DEFAULTS.get(key, default),
            "declared_default": default, "choices": list(spec.choices), "minimum": spec.minimum,
            "maximum": min(x for x in (spec.maximum, LIMITS.get(key)) if x is not None)
            if spec.maximum is not None or key in LIMITS else None,
            "help": spec.help, "unit": spec.unit, "flag": flag_of(key, spec), "systems": systems}


def presets() -> dict[str, list[str]]:
    return {"model": model_presets.preset_names(), "hardware": machine_presets.preset_names(),
            "pim": pim_presets.pim_preset_names()}


def schema() -> dict:
    """Every control the page draws, generated from the declarations: shared settings, then each system's options
    (an option several systems share once, naming them), the variants, the presets and the explorer's bounds."""
    shared = [_describe(k, b, o, d, s, None) for k, (b, o, d, s) in SHARED.items() if k not in HIDDEN_SHARED]
    names = presets()
    for row in shared:
        if row["key"] in ("model", "hardware"):
            row["choices"] = names[row["key"]]
    owners = _owners()
    options, seen = [], set()
    for cls in SYSTEMS.values():
        for key, (b, o, d, s) in specs(cls.Options).items():
            if key not in seen:
                seen.add(key)
                row = _describe(key, b, o, d, s, owners[key])
                if key == "pim":
                    row["choices"] = names["pim"]
                options.append(row)
    systems = {n: (c.__doc__ or "").strip().splitlines()[0] if c.__doc__ else "" for n, c in SYSTEMS.items()}
    variants = [{"label": lab, "system": s, "options": o, "default": lab in DEFAULT_VARIANTS}
                for lab, (s, o) in _variant_table().items()]
    sweepable = [r["key"] for r in shared + options if r["type"] in ("int", "float") and not r["choices"]
                 and r["key"] not in ("seed", "steps")] + ["pcie_gbps"]
    return {"shared": shared, "options": options, "systems": systems, "variants": variants, "presets": names,
            "page": PAGE_KEYS, "hidden": HIDDEN_SHARED, "limits": LIMITS, "sweepable": sweepable,
            "log_sweeps": sorted(LOG_SWEEPS)}


# --- the page's state -------------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d{1,19}")


def _convert(key: str, raw, base: type):
    """A value from the URL or the page (usually a string) as the declared type; what cannot be converted is
    passed on unchanged, so ``check_value`` words the error like every other input error."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if base is bool:
        low = text.lower()
        return True if low in ("1", "true", "on", "yes") else False if low in ("0", "false", "off", "no") else text
    if base is int:
        return int(text) if _INT.fullmatch(text) else text
    if base is float:
        try:
            return float(text)
        except ValueError:
            return text
    return raw


@dataclass
class State:
    """The page's state parsed: settings for ``from_mapping`` (shared and system options, typed), the variants,
    and the page's own keys."""

    settings: dict = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)
    pcie_gbps: float | None = None
    model_json: str | None = None
    page: dict = field(default_factory=dict)


def parse_state(raw: dict) -> State:
    """The page's flat mapping -> ``State``; an unknown key, a value of the wrong type or out of range is a
    ConfigError naming the key (the declarations' own messages, prefixed with ``page``)."""
    if not isinstance(raw, dict):
        raise ConfigError("page: the request body must be a JSON object of settings")
    state = State()
    owners = _owners()
    table = _variant_table()
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError("page: setting names must be strings")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # empty control: the default
        if key in PAGE_KEYS:
            state.page[key] = value
            continue
        if key in HIDDEN_SHARED:
            raise ConfigError(f"page: '{key}' is not a setting of the explorer ({HIDDEN_SHARED[key]})")
        spec_row = _spec_of(key)
        if spec_row is None:
            keys = [k for k in SHARED if k not in HIDDEN_SHARED] + list(owners) + list(PAGE_KEYS)
            raise ConfigError(f"page: unknown setting '{key}'{did_you_mean(key, keys)}")
        base, optional, _, spec = spec_row
        v = check_value(key, _convert(key, value, base), base, optional, spec, "page", allow_large=False)
        if key in LIMITS and v is not None and v > LIMITS[key]:
            raise ConfigError(f"page: {key} must be at most {LIMITS[key]} in the explorer (the command line "
                              f"takes larger values), got {v!r}")
        state.settings[key] = v
    for key, default in EXPLORER_DEFAULTS.items():
        state.settings.setdefault(key, default)
    variants = state.page.get("variants", ",".join(DEFAULT_VARIANTS))
    if not isinstance(variants, str):
        raise ConfigError("page: variants must be a comma-separated text of variant labels")
    state.variants = [v.strip() for v in variants.split(",") if v.strip()]
    if not state.variants:
        raise ConfigError("page: choose at least one variant to compare")
    if len(state.variants) > LIMITS["variants"]:
        raise ConfigError(f"page: at most {LIMITS['variants']} variants at once, got {len(state.variants)}")
    for v in state.variants:
        if v not in table:
            raise ConfigError(f"page: unknown variant '{v}'{did_you_mean(v, table)}; available: {', '.join(table)}")
    if "pcie_gbps" in state.page:
        g = _convert("pcie_gbps", state.page["pcie_gbps"], float)
        if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or not 0.1 <= g <= 10000:
            raise ConfigError(f"page: pcie_gbps must be a number of GB/s from 0.1 to 10000, got {g!r}")
        state.pcie_gbps = float(g)
    if "model_json" in state.page:
        text = state.page["model_json"]
        if not isinstance(text, str) or len(text.encode()) > LIMITS["model_json_bytes"]:
            raise ConfigError(f"page: an uploaded config.json must be a text of at most "
                              f"{LIMITS['model_json_bytes'] // 1024} KiB")
        state.model_json = text
    for key, names in presets().items():
        value = state.settings.get(key)
        if value is None or (key == "model" and state.model_json is not None):
            continue
        if value not in names:
            what = {"model": "model", "hardware": "machine", "pim": "PIM device"}[key]
            extra = " (or upload a config.json)" if key == "model" else ""
            raise ConfigError(f"page: unknown {what} preset '{value}'{did_you_mean(value, names)}; valid presets: "
                              f"{', '.join(names)}{extra}")
    return state


# --- files the page makes: an uploaded model, a machine with another PCIe bandwidth --------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def machine_toml(table: dict) -> str:
    """A machine preset's table as TOML (scalars and inline ``{ value, source }`` tables in sections)."""
    top = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = top[:]
    for k, v in table.items():
        if isinstance(v, dict):
            out += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n"


class Workspace:
    """The server's temporary folder: the only place the explorer writes. Files are named by their content's hash
    (the same upload twice is one file); beyond ``LIMITS['workspace_files']`` the oldest are removed."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.names: dict[Path, str] = {}  # file -> the name the page shows (for commands and messages)
        self.lock = threading.Lock()

    def write(self, stem: str, suffix: str, text: str, shown: str) -> Path:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = self.folder / f"{stem}-{digest}{suffix}"
        with self.lock:
            if path not in self.names:
                while len(self.names) >= LIMITS["workspace_files"]:
                    old = next(iter(self.names))
                    old.unlink(missing_ok=True)
                    del self.names[old]
                path.write_text(text)
                self.names[path] = shown
        return path

    def model(self, text: str) -> str:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"uploaded config.json is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"uploaded config.json must hold an object, got {type(data).__name__}")
        path = self.write("model", ".json", json.dumps(data, indent=1), "config.json")
        try:
            model_presets.load_model(str(path))
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(self.clean(f"uploaded config.json: {e}")) from None
        return str(path)

    def machine(self, preset: str, gbps: float) -> tuple[str, str]:
        """A machine file: ``preset`` with its PCIe host-to-device bandwidth set to ``gbps`` GB/s and
        device-to-host scaled by the same factor; returns (its path, its text)."""
        table = read_toml(machine_presets.PRESETS.resolve(preset))
        pcie = dict(table["pcie"])
        value = lambda x: x["value"] if isinstance(x, dict) else x  # noqa: E731
        h2d = float(value(pcie["h2d_bw_bytes_per_s"]))
        factor = gbps * 1e9 / h2d
        for key in ("h2d_bw_bytes_per_s", "d2h_bw_bytes_per_s"):
            was = float(value(pcie[key]))
            pcie[key] = {"value": was * factor, "source": f"explorer override: {preset}'s {was / 1e9:g} GB/s x "
                                                           f"{factor:.4g} (I)"}
        table = {**table, "name": f"{preset}-pcie{gbps:g}", "pcie": pcie,
                 "description": f"{table.get('description', preset)}; PCIe host-to-device {gbps:g} GB/s"}
        text = machine_toml(table)
        shown = f"{preset}-pcie{gbps:g}.toml"
        return str(self.write("machine", ".toml", text, shown)), text

    def clean(self, text: str) -> str:
        """A message without the temporary folder's paths (the page names the files as a user would)."""
        for path, shown in list(self.names.items()):
            text = text.replace(str(path), shown)
        return text.replace(str(self.folder) + "/", "")


# --- configurations ----------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    configs: list[tuple[str, RunConfig]]
    files: dict[str, str]        # name shown -> text, for the page's "command" view
    shown: dict[str, str]        # path -> name shown


def prepare(state: State, ws: Workspace, overrides: dict | None = None, labels: list[str] | None = None) -> Prepared:
    """One RunConfig per chosen variant (or per one of ``labels``): the page's settings a system has, then the
    variant's own options."""
    settings = {**state.settings, **(overrides or {})}
    files, shown = {}, {}
    if state.model_json is not None:
        path = ws.model(state.model_json)
        settings["model"] = path
        files["config.json"] = state.model_json
        shown[path] = "config.json"
    pcie = (overrides or {}).get("pcie_gbps", state.pcie_gbps)
    settings.pop("pcie_gbps", None)
    if pcie is not None:
        path, text = ws.machine(settings.get("hardware", SHARED["hardware"][2]), pcie)
        settings["hardware"] = path
        files[ws.names[Path(path)]] = text
        shown[path] = ws.names[Path(path)]
    table = _variant_table()
    out = []
    for label in labels or state.variants:
        system, opts = table[label]
        mine = specs(SYSTEMS[system].Options)
        applied = {k: v for k, v in settings.items() if k in SHARED or k in mine}
        try:
            cfg = from_mapping({**applied, **opts, "system": system, "trace_steps": 1}, where="page")
        except ConfigError as e:
            raise ConfigError(ws.clean(f"{label}: {e}")) from None
        out.append((label, cfg))
    return Prepared(out, files, shown)


def command_of(cfg: RunConfig, shown: dict[str, str]) -> tuple[str, str]:
    """The `aqpim-sim run` command and the TOML run file of ``cfg`` (settings that differ from the defaults)."""
    declared = {**SHARED, **specs(type(cfg.options))}
    flags, lines = ["aqpim-sim", "run"], []
    for key, value in cfg.to_dict().items():
        base, _, default, spec = declared[key]
        if value == default and key != "system":
            continue
        value = shown.get(value, value) if isinstance(value, str) else value
        lines.append(f"{key} = {_toml_value(value)}")
        flag = flag_of(key, spec)
        if base is bool:
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, shlex.quote(str(value))]
    return " ".join(flags), "\n".join(lines) + "\n"


# --- answers -----------------------------------------------------------------------------------------------------

def _energy(r: Result) -> float | None:
    return r.energy_per_token_j if r.energy_per_token_j > 0 else None


def _capacity_row(r: Result) -> dict:
    d = r.details
    keys = ("pim_capacity_bytes", "pim_used_bytes", "spilled_share", "admitted_batch", "admission_token_budget",
            "gpu_bytes_needed", "kv_format", "compression", "pim_channels")
    return {k: d[k] for k in keys if k in d and isinstance(d[k], int | float | str)}


def accuracy_of(r: Result) -> str:
    acc = r.details.get("accuracy")
    if isinstance(acc, str):
        return acc
    return "exact: FP16 KV cache (no compression)"


class Engine:
    """Closed forms through one shared ``Evaluator`` (its systems, models and machines stay loaded between
    requests, so a control change costs only its plans); the evaluator is not thread-safe, so it is used under a
    lock, and replaced when it holds too many systems (memory stays flat; its step memo is per point)."""

    MAX_SETUPS = 64
    MEMO = 20_000

    def __init__(self):
        self.lock = threading.Lock()
        self.evaluator = Evaluator(memo_limit=self.MEMO)

    def estimate(self, cfg: RunConfig) -> Result:
        with self.lock:
            ev = self.evaluator
            if len(ev.setups) > self.MAX_SETUPS:
                ev = self.evaluator = Evaluator(memo_limit=self.MEMO)
            return estimate_point(cfg, ev)


def estimate(raw: dict, ws: Workspace, engine: Engine) -> dict:
    state = parse_state(raw)
    prep = prepare(state, ws)
    rows = []
    for label, cfg in prep.configs:
        r = engine.estimate(cfg)
        command, toml = command_of(cfg, prep.shown)
        rows.append({"label": label, "system": cfg.system, "step_latency_s": r.mean_step_latency_s,
                     "exact": r.analytic_exact, "tokens_per_s": r.tokens_per_s, "fits": r.fits,
                     "fit_reasons": r.fit_reasons, "energy_per_token_j": _energy(r),
                     "energy_dynamic_per_token_j": r.energy_dynamic_per_token_j, "kv_bytes": r.kv_bytes,
                     "kv_location": r.kv_location, "peak_batch": r.peak_batch, "batch": r.batch,
                     "capacity": _capacity_row(r), "accuracy": accuracy_of(r),
                     "warnings": [ws.clean(w) for w in r.warnings], "command": command, "toml": toml})
    return {"rows": rows, "files": prep.files, "winner": _winner(rows, "step_latency_s")}


def _winner(rows: list[dict], key: str) -> str | None:
    fit = [r for r in rows if r["fits"] and r.get(key) is not None]
    return min(fit, key=lambda r: r[key])["label"] if fit else None


def timeline(spans: list, step_s: float) -> dict:
    """The first traced step's spans as lanes (one per component, as the Chrome trace's threads)."""
    if not spans:
        return {"step_s": step_s, "lanes": [], "kinds": [], "spans": []}
    first = min(s.step for s in spans)
    mine = [s for s in spans if s.step == first]
    t0 = min(s.start_s for s in mine)
    lanes = sorted({s.component for s in mine}, key=lambda c: (c.split(".")[0], len(c), c))[:TIMELINE_LANES]
    lane_ix = {c: i for i, c in enumerate(lanes)}
    kinds: dict[str, int] = {}
    rows = []
    for s in sorted(mine, key=lambda s: (s.component, s.start_s)):
        if s.component not in lane_ix:
            continue
        rows.append([lane_ix[s.component], s.start_s - t0, s.end_s - t0, kinds.setdefault(s.kind, len(kinds))])
    end = max([r[2] for r in rows] + [step_s])
    gap = end / 2000
    while len(rows) > TIMELINE_SPANS:  # merge neighbours in a lane closer than a pixel or so
        merged = [rows[0]]
        for r in rows[1:]:
            m = merged[-1]
            if r[0] == m[0] and r[1] - m[2] <= gap:
                m[2] = max(m[2], r[2])
            else:
                merged.append(r)
        rows, gap = merged, gap * 2
    return {"step_s": end, "lanes": lanes, "kinds": list(kinds), "spans": rows}


def run(raw: dict, ws: Workspace) -> dict:
    state = parse_state(raw)
    prep = prepare(state, ws)
    rows = []
    for label, cfg in prep.configs:
        sim_run = run_simulation(cfg)
        r = sim_run.result
        step0 = r.traced_step_latency_s[0] if r.traced_step_latency_s else r.mean_step_latency_s
        rows.append({"label": label, "system": cfg.system, "step_latency_s": r.mean_step_latency_s,
                     "analytic_step_latency_s": r.analytic_mean_step_latency_s, "exact": r.analytic_exact,
                     "tokens_per_s": r.tokens_per_s, "fits": r.fits, "fit_reasons": r.fit_reasons,
                     "breakdown_s": r.breakdown_s, "energy_j": r.energy_j, "energy_per_token_j": _energy(r),
                     "steps": r.steps, "batch": r.batch, "kv_bytes": r.kv_bytes, "kv_location": r.kv_location,
                     "capacity": _capacity_row(r), "accuracy": accuracy_of(r),
                     "timeline": timeline(sim_run.spans, step0),
                     "explain": ws.clean(explain_result(r, sim_run.spans, sim_run.topology, sim_run.model)),
                     "warnings": [ws.clean(w) for w in r.warnings]})
    return {"rows": rows, "winner": _winner(rows, "step_latency_s")}


def sweep_values(state: State) -> tuple[str, list]:
    """The sweep's x key and its values (from, to, points; log or linear spacing; integers rounded, kept once)."""
    key = state.page.get("sweep_x", "context")
    spec_row = _spec_of(key) if key != "pcie_gbps" else (float, True, None, None)
    if spec_row is None or spec_row[0] not in (int, float) or (spec_row[3] is not None and spec_row[3].choices):
        raise ConfigError(f"page: sweep_x must be a numeric setting, got {key!r}")
    base = spec_row[0]

    def number(name: str, default):
        v = _convert(name, state.page.get(name, default), float)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"page: {name} must be a number, got {v!r}")
        return float(v)

    lo, hi = number("sweep_from", 1024), number("sweep_to", 131072)
    n = number("sweep_points", 12)
    if not n.is_integer() or not 2 <= n <= LIMITS["sweep_points"]:
        raise ConfigError(f"page: sweep_points must be an integer from 2 to {LIMITS['sweep_points']}, got {n:g}")
    scale = state.page.get("sweep_scale", "log" if key in LOG_SWEEPS else "linear")
    if scale not in ("log", "linear"):
        raise ConfigError(f"page: sweep_scale must be log or linear, got {scale!r}")
    if scale == "log" and (lo <= 0 or hi <= 0):
        raise ConfigError("page: a log sweep needs sweep_from and sweep_to above 0")
    bound = LIMITS.get(key, 10000 if key == "pcie_gbps" else None)
    if bound is not None and max(lo, hi) > bound:
        raise ConfigError(f"page: {key} must be at most {bound} in the explorer, got {max(lo, hi):g}")
    n = int(n)
    if scale == "log":
        xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    else:
        xs = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    if base is int:
        xs = list(dict.fromkeys(int(round(x)) for x in xs))
    return key, xs


def sweep(raw: dict, ws: Workspace, engine: Engine) -> dict:
    """Closed-form step latency per variant over one control's values; a point a variant refuses (pq_m that does
    not divide head_dim) is left empty with its reason; the winner is the fastest variant that fits."""
    state = parse_state(raw)
    key, xs = sweep_values(state)
    series = {v: [] for v in state.variants}
    fits = {v: [] for v in state.variants}
    notes: dict[str, str] = {}
    winners = []
    for x in xs:
        best = None
        for label in state.variants:
            try:
                (_, cfg), = prepare(state, ws, {key: x}, [label]).configs
                r = engine.estimate(cfg)
            except INPUT_ERRORS as e:
                series[label].append(None)
                fits[label].append(False)
                notes.setdefault(label, ws.clean(f"{key} = {x:g}: {e}"))
                continue
            series[label].append(r.mean_step_latency_s)
            fits[label].append(r.fits)
            if r.fits and (best is None or r.mean_step_latency_s < best[1]):
                best = (label, r.mean_step_latency_s)
        winners.append(best[0] if best else None)
    if all(v is None for s in series.values() for v in s):
        raise ConfigError(next(iter(notes.values())))
    changes = [{"index": i, "x": xs[i], "from": winners[i - 1], "to": winners[i]}
               for i in range(1, len(xs)) if winners[i] != winners[i - 1]]
    return {"x": key, "values": xs, "series": series, "fits": fits, "winners": winners, "changes": changes,
            "notes": notes}
