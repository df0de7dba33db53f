"""Options declared once: type, default, unit, help, choices and range in one ``option(...)`` line per field.

A run's shared settings (``sim.config.RunConfig``) and every system's own options (``System.Options``) are frozen
dataclasses whose fields are declared with ``option``. Everything else is generated from those declarations: the
CLI flags and their help (``add_arguments``), the keys a TOML run file or a sweep may set (``coerce`` checks the
raw values), and validation (``Options.__post_init__``), so a default or a help text is written in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field

from hw_models.loading import did_you_mean
from sim.errors import ConfigError

NONE_TYPES = {int | None: int, str | None: str, float | None: float}
# Whatever a declaration says, no number beyond these is accepted (int64 range; paths and names of sane length).
HARD_LIMIT = 2**62
MAX_TEXT = 4096


@dataclass(frozen=True)
class OptionSpec:
    """What a field's declaration says beyond its type and default.

    ``maximum`` is a sanity bound: beyond it a value is refused unless the run allows large values
    (``--allow-large``), because it is more likely a typo than a study (a batch of 10^18 requests would only
    hang). ``limit`` is the hard bound that even ``--allow-large`` keeps."""

    help: str
    unit: str = ""
    choices: tuple = ()
    minimum: float | None = None   # inclusive; None: any finite value
    flag: str | None = None        # CLI flag when it is not --name-with-dashes
    maximum: float | None = None   # sanity bound, raised by allow_large
    limit: float = HARD_LIMIT      # hard bound


def option(default, help: str, *, unit: str = "", choices: tuple = (), minimum: float | None = None,
           flag: str | None = None, maximum: float | None = None, limit: float = HARD_LIMIT):
    """A dataclass field declared as an option (see the module docstring)."""
    spec = OptionSpec(help, unit, tuple(choices), minimum, flag, maximum, limit)
    return field(default=default, metadata={"option": spec})


def specs(cls) -> dict[str, tuple[type, bool, object, OptionSpec]]:
    """name -> (base type, may be None, default, spec) for every option field of a dataclass, in order.

    Computed once per class (``typing.get_type_hints`` costs about a millisecond, and building one sweep point
    asks for a dozen); each call returns its own copy of the mapping."""
    return dict(_specs(cls))


@functools.cache
def _specs(cls) -> dict[str, tuple[type, bool, object, OptionSpec]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "option" not in f.metadata:
            continue
        typ = hints[f.name]
        out[f.name] = (NONE_TYPES.get(typ, typ), typ in NONE_TYPES, f.default, f.metadata["option"])
    return out


def flag_of(name: str, spec: OptionSpec) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def check_value(name: str, value, base: type, optional: bool, spec: OptionSpec, where: str,
                allow_large: bool = True):
    """The value as the field's type, or a ConfigError naming the key and what it takes; without
    ``allow_large`` a number above the declaration's sanity bound is refused too."""
    if value is None and optional:
        return None
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}: {name} must be a finite number, got {value!r}")
        value = float(value)
    elif base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
        if len(value) > MAX_TEXT or "\0" in value:
            raise ConfigError(f"{where}: {name} must be a text of at most {MAX_TEXT} characters without NUL bytes")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(map(str, spec.choices))}, got {value!r}"
                          f"{did_you_mean(str(value), [str(c) for c in spec.choices])}")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{where}: {name} must be {_range_text(base, spec.minimum)}, got {value!r}")
    if base in (int, float):
        if value > spec.limit:
            raise ConfigError(f"{where}: {name} must be at most {spec.limit:g}, got {value!r}")
        if spec.maximum is not None and value > spec.maximum and not allow_large:
            raise ConfigError(f"{where}: {name} = {value!r} is above its sanity bound {spec.maximum:g}; set "
                              f"allow_large (--allow-large) to run it anyway (at most {spec.limit:g})")
    return value


def _range_text(base: type, minimum: float) -> str:
    if base is int and minimum in (0, 1):
        return "a positive integer" if minimum == 1 else "a non-negative integer"
    return f"at least {minimum:g}"


class Options:
    """Base of every options dataclass: checks each field against its declaration, then ``check()``."""

    def __post_init__(self):
        where = type(self).__name__
        for name, (base, optional, _, spec) in _specs(type(self)).items():  # read only: no copy
            value = check_value(name, getattr(self, name), base, optional, spec, where)
            object.__setattr__(self, name, value)
        self.check()

    def check(self) -> None:
        """Constraints between fields (subclasses); raise ConfigError."""

    def check_run(self, run) -> None:
        """Constraints between these options and the run's shared settings (``run``, a RunConfig)."""

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _specs(type(self))}

    @classmethod
    def defaults(cls) -> dict:
        return {name: default for name, (_, _, default, _) in specs(cls).items()}


@dataclass(frozen=True)
class NoOptions(Options):
    """A system without options of its own."""


def add_arguments(group, name: str, base: type, default, spec: OptionSpec, choices: tuple = ()) -> None:
    """One CLI flag for an option; unset flags stay None so that a run file's values survive."""
    text = spec.help
    if default is not None:
        shown = str(default).lower() if isinstance(default, bool) else default
        text += f" (default {shown}{' ' + spec.unit if spec.unit else ''})"
    kwargs: dict = {"dest": name, "default": None, "help": text}
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = base
        if choices or spec.choices:
            kwargs["choices"] = choices or spec.choices
        else:
            kwargs["metavar"] = {int: "N", float: "X", str: "TEXT"}[base]
    group.add_argument(flag_of(name, spec), **kwargs)
