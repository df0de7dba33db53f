"""System variants: the named option sets `compare` runs, and short labels that tell configurations apart.

A variant is a system plus the options that define it (offload with prefetch, PIM with the `limit` capacity
policy). The table below is data, filtered by what this build has: a variant whose system is not registered, or
that sets a key ``RunConfig`` does not have yet, is left out, and every registered system without an entry gets
a plain variant of its own. So a new system appears in `compare` without changes here.

Labels are derived from the configurations themselves, not stored: within each system, the options whose values
differ between the configurations become the label (``offload+prefetch``, ``pim+limit``, ``pim+channels=256``).
The same function labels Results read back from disk, so tables and figures use the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hw_models.loading import did_you_mean
from sim.config import FIELDS, RunConfig, from_mapping
from sim.errors import ConfigError
from sim.systems import SYSTEMS

# (system, options). Options set here win over the user's flags, so every variant stays what its name says.
VARIANTS: tuple[tuple[str, Mapping], ...] = (
    ("offload", {"prefetch": False, "cpu_attention": False}),
    ("offload", {"prefetch": True, "cpu_attention": False}),
    ("offload", {"prefetch": False, "cpu_attention": True}),
    ("pim", {"capacity_policy": "spill"}),
    ("pim", {"capacity_policy": "limit"}),
    ("aqpim", {}),
)

# Keys that never name a variant (they are the same in every run of a comparison or only steer the output).
UNLABELLED = frozenset({"system", "seed", "trace_steps"})
FILE_SUFFIXES = (".toml", ".json", ".csv", ".jsonl")


def available_variants() -> list[tuple[str, dict]]:
    """The variant table filtered by this build, plus a plain variant for every registered system not in it."""
    out = [(s, dict(o)) for s, o in VARIANTS if s in SYSTEMS and all(k in FIELDS for k in o)]
    listed = {s for s, _ in out}
    out += [(s, {}) for s in SYSTEMS if s not in listed]
    return out


def _fmt(key: str, value) -> str:
    if value is True:
        return key.replace("_", "-")
    if isinstance(value, str):
        return Path(value).stem if "/" in value or value.endswith(FILE_SUFFIXES) else value
    return f"{key.replace('_', '-')}={value}"


def config_labels(configs: Sequence[Mapping]) -> list[str]:
    """One short label per configuration dict: its system, plus the options that differ within that system."""
    labels = []
    for cfg in configs:
        peers = [c for c in configs if c.get("system") == cfg.get("system")]
        differing = [k for k in cfg if k not in UNLABELLED and len({repr(p.get(k)) for p in peers}) > 1]
        parts = [_fmt(k, cfg[k]) for k in differing if cfg[k] not in (False, None)]
        labels.append("+".join([str(cfg.get("system"))] + parts))
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        seen[lab] = seen.get(lab, 0) + 1
        if labels.count(lab) > 1:
            labels[i] = f"{lab}#{seen[lab]}"
    return labels


def variant_configs(settings: Mapping, only: Sequence[str] | None = None, system: str | None = None,
                    where: str = "command line") -> list[tuple[str, RunConfig]]:
    """Every available variant applied over ``settings``; identical configurations are kept once.

    ``system`` keeps that system's variants; ``only`` keeps the listed variants, each named by its label (or by a
    system name that is no label, meaning all of its variants). A name that matches nothing is an error.
    """
    configs: list[RunConfig] = []
    for sys_name, options in available_variants():
        if system is None or sys_name == system:
            cfg = from_mapping({**settings, **options, "system": sys_name}, where=where)
            if cfg not in configs:
                configs.append(cfg)
    pairs = list(zip(config_labels([c.to_dict() for c in configs]), configs, strict=True))
    if only:
        labels = [lab for lab, _ in pairs]
        names = sorted(set(labels) | {c.system for _, c in pairs})
        for name in only:
            if name not in names:
                raise ConfigError(f"{where}: unknown variant '{name}'{did_you_mean(name, names)}; "
                                  f"available: {', '.join(names)}")
        pairs = [(lab, c) for lab, c in pairs if lab in only or (c.system in only and c.system not in labels)]
    return pairs
