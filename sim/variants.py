"""System variants: the named option sets `compare` runs, and short labels that tell configurations apart.

A variant is a system plus the options that define it (offload with prefetch, PIM with the `limit` capacity
policy). The table below is data, filtered by what this build has: a variant whose system is not registered, or
that sets a key ``RunConfig`` does not have yet, is left out, and every registered system without an entry gets
a plain variant of its own. So a new system appears in `compare` without changes here.

Labels are derived from the configurations themselves (``sim.results.config_labels``): within each system, the
options whose values differ become the label (``offload+prefetch``, ``pim+limit``, ``pim+channels=256``). The same
function labels Results read back from disk, so tables and figures use the same names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from sim.config import FIELDS, RunConfig, from_mapping
from sim.errors import ConfigError
from sim.results import config_labels
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


def available_variants() -> list[tuple[str, dict]]:
    """The variant table filtered by this build, plus a plain variant for every registered system not in it."""
    out = [(s, dict(o)) for s, o in VARIANTS if s in SYSTEMS and all(k in FIELDS for k in o)]
    listed = {s for s, _ in out}
    out += [(s, {}) for s in SYSTEMS if s not in listed]
    return out


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
