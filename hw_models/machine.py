"""A machine's parameters: the nested component parameter blocks, loaded from a TOML preset or a user file.

Presets live in ``hw_models/presets/*.toml``; each value there carries its source. ``load_machine`` accepts a
preset name or a path to a TOML file of the same shape.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from hw_models.cpu import CpuParams
from hw_models.dram import HostDramParams
from hw_models.errors import HardwareError, did_you_mean
from hw_models.gpu import GpuParams
from hw_models.params import build
from hw_models.pcie import PcieLinkParams

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_MACHINE = "a100-pcie4-ddr5"

# Sections a machine file may hold, and the parameter class each one builds.
SECTIONS = {"gpu": GpuParams, "cpu": CpuParams, "host_dram": HostDramParams, "pcie": PcieLinkParams}
TOP_KEYS = {"name", "description", "source"}


@dataclass(frozen=True)
class MachineParams:
    name: str
    description: str
    gpu: GpuParams
    cpu: CpuParams
    host_dram: HostDramParams
    pcie: PcieLinkParams


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(path: Path) -> dict:
    """Parse a TOML file; syntax errors name the file and line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise HardwareError(f"{path}: malformed TOML: {e}") from None
    except OSError as e:
        raise HardwareError(f"{path}: cannot read: {e.strerror}") from None


def machine_from_table(table: dict, where: str) -> MachineParams:
    for key in table:
        if key not in SECTIONS and key not in TOP_KEYS:
            valid = sorted(set(SECTIONS) | TOP_KEYS)
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")
    missing = [s for s in SECTIONS if s not in table]
    if missing:
        raise HardwareError(f"{where}: missing section(s) {', '.join('[' + m + ']' for m in missing)}")
    blocks = {s: build(cls, table[s], f"{where} [{s}]") for s, cls in SECTIONS.items()}
    return MachineParams(name=str(table.get("name", Path(where).stem)),
                         description=str(table.get("description", "")), **blocks)


def resolve_machine_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise HardwareError(f"hardware file not found: {p}")
        return p
    if name_or_path not in preset_names():
        raise HardwareError(f"unknown hardware preset '{name_or_path}'{did_you_mean(name_or_path, preset_names())}; "
                            f"valid presets: {', '.join(preset_names())} (or a path to a .toml file)")
    return PRESET_DIR / f"{name_or_path}.toml"


def load_machine_table(name_or_path: str) -> tuple[dict, str]:
    path = resolve_machine_path(name_or_path)
    return read_toml(path), str(path)


def load_machine(name_or_path: str = DEFAULT_MACHINE) -> MachineParams:
    table, where = load_machine_table(name_or_path)
    return machine_from_table(table, where)
