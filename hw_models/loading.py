"""Reading input files and presets: TOML and JSON with one-line errors, presets by name or path, provenance.

Every layer reads its files through here and passes its own error class (``HardwareError``, ``WorkloadError``,
``ConfigError``), so a bad file is reported the same way wherever it is read. A ``PresetDir`` is a folder of
shipped presets: a name resolves to a file in it, anything that looks like a path is taken as one, and an
unknown name lists the valid ones. ``origin_of`` says which file (and which bytes of it) parameters came from;
``unit_of`` reads a parameter's unit off its name, which carries it by convention (``bw_bytes_per_s``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hw_models.errors import HardwareError

# The folder holding the packages: origins of shipped presets are shown relative to it.
PACKAGES_ROOT = Path(__file__).resolve().parent.parent
HASH_DIGITS = 16

# Name suffix -> unit, longest first so that ``_per_byte_j`` wins over ``_j``.
UNITS = (
    ("_bytes_per_s", "B/s"), ("_flops_per_s", "FLOP/s"), ("_per_array_byte_j", "J/B"), ("_per_io_byte_j", "J/B"),
    ("_per_byte_j", "J/B"), ("_per_flop_j", "J/FLOP"), ("_per_s", "1/s"), ("_bytes", "B"), ("_cycles", "cycles"),
    ("_s", "s"), ("_j", "J"), ("_w", "W"),
)


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unit_of(field_name: str) -> str:
    """The unit a parameter's name ends in (``B/s``, ``s``, ``cycles``...); "" for counts, ratios and names."""
    for suffix, unit in UNITS:
        if field_name.endswith(suffix):
            return unit
    return ""


def _read_bytes(path: Path, error: type[Exception]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None


def _read_text(path: Path, error: type[Exception]) -> str:
    data = _read_bytes(path, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None


def read_toml(path: str | Path, error: type[Exception] = HardwareError) -> dict:
    """Parse a TOML file; syntax errors name the file and line, unreadable files the file and reason."""
    try:
        return tomllib.loads(_read_text(path, error))
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: malformed TOML: {e}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str | Path, error: type[Exception] = HardwareError):
    """Parse a JSON file; syntax errors name the file and line, unreadable files the file and reason.
    ``NaN`` and ``Infinity``, which Python's parser accepts but JSON does not, are errors too."""
    text = _read_text(path, error)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    except ValueError as e:
        raise error(f"{path}: malformed JSON: {e}") from None


def origin_of(path: str | Path, error: type[Exception] = HardwareError) -> str:
    """``<file> sha256:<digits>``: the file parameters were read from (relative to the packages' folder for a
    shipped preset, absolute otherwise) and a hash of its bytes, so a result names exactly what it ran on."""
    p = Path(path).resolve()
    digest = hashlib.sha256(_read_bytes(p, error)).hexdigest()[:HASH_DIGITS]
    shown = p.as_posix()
    if p.is_relative_to(PACKAGES_ROOT):
        rel = p.relative_to(PACKAGES_ROOT)
        if (PACKAGES_ROOT / rel.parts[0] / "__init__.py").exists():
            shown = rel.as_posix()
    return f"{shown} sha256:{digest}"


@dataclass(frozen=True)
class PresetDir:
    """A folder of preset files ``<name><suffix>``; ``what`` names the kind in messages ("PIM device").

    ``folder_file``: a folder holding a file of this name may stand for it (a Hugging Face model folder).
    """

    directory: Path
    suffix: str
    what: str
    error: type[Exception] = HardwareError
    folder_file: str = ""

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob(f"*{self.suffix}"))

    def resolve(self, name_or_path: str) -> Path:
        """The file of preset ``name_or_path``, or ``name_or_path`` itself when it names a file."""
        p = Path(name_or_path)
        if p.suffix == self.suffix or p.exists():
            if self.folder_file and p.is_dir():
                p = p / self.folder_file
            if not p.exists():
                raise self.error(f"{self.what} file not found: {p}")
            return p
        names = self.names()
        key = name_or_path if name_or_path in names else name_or_path.lower()
        if key not in names:
            folder = f" or a folder with {self.folder_file}" if self.folder_file else ""
            raise self.error(f"unknown {self.what} preset '{name_or_path}'{did_you_mean(key, names)}; "
                             f"valid presets: {', '.join(names)} (or a path to a {self.suffix} file{folder})")
        return self.directory / f"{key}{self.suffix}"
