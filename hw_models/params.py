"""Loading frozen parameter dataclasses from TOML tables whose values may carry a source.

A preset value is written either as a plain number or as an inline table
``{ value = 2.039e12, source = "NVIDIA A100 datasheet" }``. Shipped presets use the second form for every
number (a test checks it); user files may use either. Field names carry their SI unit
(``bw_bytes_per_s``), so no unit conversion happens here.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from hw_models.errors import HardwareError, did_you_mean


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


def build(cls, table: dict, where: str):
    """Build dataclass ``cls`` from a TOML table, with clear errors for unknown, missing or mistyped keys."""
    if not isinstance(table, dict):
        raise HardwareError(f"{where}: expected a table, got {type(table).__name__}")
    values, _ = split_sources(table, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, fields)}; "
                                f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
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
    return cls(**kwargs)
