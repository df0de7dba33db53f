"""A machine's parameters: the nested component parameter blocks, loaded from a TOML preset or a user file.

Presets live in ``hw_models/presets/*.toml``; each value there carries its source. ``load_machine`` accepts a
preset name or a path to a TOML file of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hw_models.cpu import CpuParams
from hw_models.dram import HostDramParams
from hw_models.errors import HardwareError
from hw_models.gpu import GpuParams
from hw_models.loading import PresetDir, did_you_mean, origin_of, read_toml
from hw_models.params import build
from hw_models.pcie import PcieLinkParams

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = PresetDir(PRESET_DIR, ".toml", "hardware")
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
    origin: str = field(default="", compare=False)


preset_names = PRESETS.names


def machine_from_table(table: dict, where: str, origin: str = "") -> MachineParams:
    for key in table:
        if key not in SECTIONS and key not in TOP_KEYS:
            valid = sorted(set(SECTIONS) | TOP_KEYS)
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")
    missing = [s for s in SECTIONS if s not in table]
    if missing:
        raise HardwareError(f"{where}: missing section(s) {', '.join('[' + m + ']' for m in missing)}")
    blocks = {s: build(cls, table[s], f"{where} [{s}]") for s, cls in SECTIONS.items()}
    return MachineParams(name=str(table.get("name", Path(where).stem)),
                         description=str(table.get("description", "")), origin=origin, **blocks)


def load_machine(name_or_path: str = DEFAULT_MACHINE) -> MachineParams:
    """Load a machine preset by name (see ``preset_names``) or from a TOML file path."""
    path = PRESETS.resolve(name_or_path)
    return machine_from_table(read_toml(path), str(path), origin_of(path))
