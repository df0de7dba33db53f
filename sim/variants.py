"""System variants: the option sets `compare` runs, and short labels that tell configurations apart.

A variant is a system plus the options that define it (offload with prefetch, PIM with the `limit` capacity
policy). Each system declares its own in ``System.variants``, so a new system appears in `compare` without changes
here.

Labels are derived from the configurations themselves (``sim.results.config_labels``): within each system, the
options whose values differ become the label (``offload+prefetch``, ``pim+limit``, ``pim+channels=256``). The same
function labels Results read back from disk, so tables and figures use the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hw_models.loading import did_you_mean
from sim.config import SHARED, RunConfig, from_mapping, option_owners
from sim.errors import ConfigError
from sim.options import specs
from sim.results import config_labels
from sim.systems import SYSTEMS


def available_variants() -> list[tuple[str, dict]]:
    """Every registered system's variants, in registry order."""
    return [(name, dict(v)) for name, cls in SYSTEMS.items() for v in cls.variants]




def variant_configs(settings: Mapping, only: Sequence[str] | None = None, system: str | None = None,
                    where: str = "command line") -> list[tuple[str, RunConfig]]:
    """Every available variant applied over ``settings``; identical configurations are kept once.

    A setting that is an option of some systems applies to their variants only; one that no compared system has
    is an error. ``system`` keeps that system's variants; ``only`` keeps the listed variants, each named by its
    label (or by a system name that is no label, meaning all of its variants). A name that matches nothing is an
    error.
    """
    owners = option_owners()
    chosen = [(s, o) for s, o in available_variants() if system is None or s == system]
    if system is not None and not chosen:
        raise ConfigError(f"{where}: unknown system '{system}'{did_you_mean(system, SYSTEMS)}; "
                          f"valid systems: {', '.join(SYSTEMS)}")
    systems = {s for s, _ in chosen}
    for key in settings:
        if key in owners and not systems & set(owners[key]):
            raise ConfigError(f"{where}: '{key}' is an option of {', '.join(owners[key])}, none of the compared "
                              f"systems ({', '.join(sorted(systems))})")
    configs: list[RunConfig] = []
    for sys_name, options in chosen:
        mine = specs(SYSTEMS[sys_name].Options)
        applied = {k: v for k, v in settings.items() if k in SHARED or k in mine}
        cfg = from_mapping({**applied, **options, "system": sys_name}, where=where)
        if cfg not in configs:
            configs.append(cfg)
    labels = config_labels([c.to_dict() for c in configs], [type(c.options).defaults() for c in configs])
    pairs = list(zip(labels, configs, strict=True))
    if only:
        labels = [lab for lab, _ in pairs]
        names = sorted(set(labels) | {c.system for _, c in pairs})
        for name in only:
            if name not in names:
                raise ConfigError(f"{where}: unknown variant '{name}'{did_you_mean(name, names)}; "
                                  f"available: {', '.join(names)}")
        pairs = [(lab, c) for lab, c in pairs if lab in only or (c.system in only and c.system not in labels)]
    kept = {c.system for _, c in pairs}
    for key in settings:
        if key in owners and not kept & set(owners[key]):
            raise ConfigError(f"{where}: '{key}' is an option of {', '.join(owners[key])}, none of the compared "
                              f"variants' systems ({', '.join(sorted(kept))})")
    return pairs
