"""Loading frozen parameter dataclasses from TOML tables whose values may carry a source.

A preset value is written either as a plain number or as an inline table
``{ value = 2.039e12, source = "NVIDIA A100 datasheet" }``. Shipped presets use the second form for every
number (a test checks it); user files may use either. The sources stay on the built dataclass, in its
``sources`` field ({field: source}), which takes no part in equality or hashing; ``override`` keeps them true
when a value is changed after loading. Field names carry their SI unit (``bw_bytes_per_s``), so no unit
conversion happens here.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from hw_models.errors import HardwareError
from hw_models.loading import did_you_mean


def positive(owner: str, **values: float) -> None:
    """Raise a HardwareError naming the first value that is not a finite positive number."""
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise HardwareError(f"{owner}: {name} must be a positive number, got {v!r}")


def fraction(owner: str, **values: float) -> None:
    """Raise a HardwareError naming the first value outside (0, 1]."""
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and 0 < v <= 1):
            raise HardwareError(f"{owner}: {name} must be in (0, 1], got {v!r}")


def non_negative(owner: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise HardwareError(f"{owner}: {name} must be zero or positive, got {v!r}")


def check_power(owner: str, idle_power_w: float, max_power_w: float) -> None:
    """Power fields: both zero or positive (0: not modelled); a limit, when given, not below the idle power."""
    non_negative(owner, idle_power_w=idle_power_w, max_power_w=max_power_w)
    if max_power_w and max_power_w < idle_power_w:
        raise HardwareError(f"{owner}: max_power_w ({max_power_w}) must not be below idle_power_w ({idle_power_w})")


def split_sources(table: dict, where: str) -> tuple[dict, dict]:
    """Split ``{key: value | {value, source}}`` into plain values and a ``{key: source}`` map."""
    values, sources = {}, {}
    for key, raw in table.items():
        if isinstance(raw, dict) and "value" in raw:
            extra = set(raw) - {"value", "source", "unit", "note"}
            if extra:
                raise HardwareError(f"{where}.{key}: unknown entries {sorted(extra)}; use value, source, note")
            values[key] = raw["value"]
            if "source" in raw:
                sources[key] = str(raw["source"])
        else:
            values[key] = raw
    return values, sources


def build(cls, table: dict, where: str, **given):
    """Build dataclass ``cls`` from a TOML table, with clear errors for unknown, missing or mistyped keys.

    ``given`` are values the caller supplies (a name from the file's top level, a nested block); they are not
    keys of the table. Fields excluded from comparison (``sources``, ``origin``) are bookkeeping, never keys.
    """
    if not isinstance(table, dict):
        raise HardwareError(f"{where}: expected a table, got {type(table).__name__}")
    values, sources = split_sources(table, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.compare and f.name not in given}
    for key in values:
        if key not in fields:
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, fields)}; "
                                f"valid keys: {', '.join(sorted(fields))}")
    kwargs = dict(given)
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise HardwareError(f"{where}: missing required key '{name}'")
            continue
        v = values[name]
        typ = hints[name]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if typ in (float, int) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise HardwareError(f"{where}.{name}: expected a number, got {v!r}")
        if typ is int and isinstance(v, float):
            if not v.is_integer():
                raise HardwareError(f"{where}.{name}: expected a whole number, got {v!r}")
            v = int(v)
        if typ is str and not isinstance(v, str):
            raise HardwareError(f"{where}.{name}: expected a string, got {v!r}")
        if typ is bool and not isinstance(v, bool):
            raise HardwareError(f"{where}.{name}: expected true or false, got {v!r}")
        kwargs[name] = v
    if "sources" in hints:
        kwargs["sources"] = sources
    try:
        return cls(**kwargs)
    except HardwareError as e:  # a value out of range: say in which file and section it is
        raise HardwareError(f"{where}: {e}") from None


def override(params, **changes):
    """A copy of ``params`` with ``changes`` applied (validated again); each changed field's source says so."""
    sources = {**params.sources, **{k: f"overridden: {k} = {v!r}" for k, v in changes.items()}}
    return dataclasses.replace(params, **changes, sources=sources)
