"""A machine's parameters: the nested component parameter blocks, loaded from a TOML preset or a user file.

Presets live in ``hw_models/presets/*.toml``; each value there carries its source. ``load_machine`` accepts a
preset name or a path to a TOML file of the same shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hw_models.cpu import CpuParams
from hw_models.dram import HostDramParams
from hw_models.errors import HardwareError
from hw_models.gpu import GpuParams
from hw_models.interconnect import InterconnectParams
from hw_models.loading import PresetDir, did_you_mean, origin_of, read_toml
from hw_models.params import build, split_sources
from hw_models.pcie import PcieLinkParams

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = PresetDir(PRESET_DIR, ".toml", "hardware")
DEFAULT_MACHINE = "a100-pcie4-ddr5"

# Sections a machine file may hold, and the parameter class each one builds.
SECTIONS = {"gpu": GpuParams, "cpu": CpuParams, "host_dram": HostDramParams, "pcie": PcieLinkParams}
OPTIONAL_SECTIONS = {"interconnect": InterconnectParams}
TOP_KEYS = {"name", "description", "source", "gpus", "pcie_switch_gpus"}


@dataclass(frozen=True)
class MachineParams:
    """A machine: ``gpus`` identical GPUs (``[gpu]``), each on its own PCIe link (``[pcie]``) to one host (``[cpu]``,
    ``[host_dram]``), ``pcie_switch_gpus`` of them behind each PCIe switch (sharing its upstream link, whose
    rates ``[pcie]`` gives), joined by ``interconnect`` when there are several.

    ``tp`` is not a preset value: a machine built for a tensor-parallel run is the *rank view* of one of its
    ``tp`` identical GPUs (``rank_view``)."""

    name: str
    description: str
    gpu: GpuParams
    cpu: CpuParams
    host_dram: HostDramParams
    pcie: PcieLinkParams
    gpus: int = 1
    pcie_switch_gpus: int = 1
    interconnect: InterconnectParams | None = None
    tp: int = 1
    ranks: int = 1
    origin: str = field(default="", compare=False)
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def rank_view(self, tp: int, pp: int = 1) -> MachineParams:
        """What one of the ``tp x pp`` GPUs of a tensor- (and pipeline-) parallel run sees. The ranks do the same
        work at the same time, so each gets an equal share of what they share: the host CPU's FLOP/s and the host
        memory's bandwidth (1 / ranks each), and a PCIe switch's upstream link (1 / the GPUs of the run behind one
        switch). Its own GPU, PCIe downstream link and PIM device are its own; ``tp`` is the size of its
        all-reduce group. Exact for the step time when every shared part serves the ranks in fair shares."""
        ranks = tp * pp
        if ranks == 1:
            return self
        on_switch = min(self.pcie_switch_gpus, ranks)
        pcie = dataclasses.replace(self.pcie, h2d_bw_bytes_per_s=self.pcie.h2d_bw_bytes_per_s / on_switch,
                                   d2h_bw_bytes_per_s=self.pcie.d2h_bw_bytes_per_s / on_switch)
        cpu = dataclasses.replace(self.cpu, peak_flops_per_s=self.cpu.peak_flops_per_s / ranks)
        host_dram = dataclasses.replace(self.host_dram, share=self.host_dram.share / ranks)
        return dataclasses.replace(self, pcie=pcie, cpu=cpu, host_dram=host_dram, tp=tp, ranks=ranks)


preset_names = PRESETS.names


def machine_from_table(table: dict, where: str, origin: str = "") -> MachineParams:
    for key in table:
        if key not in SECTIONS and key not in OPTIONAL_SECTIONS and key not in TOP_KEYS:
            valid = sorted(set(SECTIONS) | set(OPTIONAL_SECTIONS) | TOP_KEYS)
            raise HardwareError(f"{where}: unknown key '{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")
    missing = [s for s in SECTIONS if s not in table]
    if missing:
        raise HardwareError(f"{where}: missing section(s) {', '.join('[' + m + ']' for m in missing)}")
    blocks = {s: build(cls, table[s], f"{where} [{s}]") for s, cls in SECTIONS.items()}
    blocks.update({s: build(cls, table[s], f"{where} [{s}]") for s, cls in OPTIONAL_SECTIONS.items() if s in table})
    counts, sources = split_sources({k: table[k] for k in ("gpus", "pcie_switch_gpus") if k in table}, where)
    for key, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
            raise HardwareError(f"{where}: {key} must be a whole number from 1 to 1024, got {v!r}")
    sources.setdefault("gpus", "one GPU: the default for a machine file without 'gpus'")
    sources.setdefault("pcie_switch_gpus", "default 1: every GPU's PCIe link goes to the host on its own")
    sources["tp"] = "not a preset value: 1 for the machine; N in the rank view of a tensor-parallel run (--tp N)"
    sources["ranks"] = "not a preset value: 1 for the machine; tp x pp in the rank view of a parallel run"
    sources.setdefault("interconnect", "the [interconnect] section" if "interconnect" in blocks
                       else "none: a one-GPU machine needs no GPU-to-GPU interconnect")
    gpus = counts.get("gpus", 1)
    if gpus > 1 and "interconnect" not in blocks:
        raise HardwareError(f"{where}: a machine of {gpus} GPUs needs an [interconnect] section")
    return MachineParams(name=str(table.get("name", Path(where).stem)),
                         description=str(table.get("description", "")), origin=origin, sources=sources,
                         **counts, **blocks)


def load_machine(name_or_path: str = DEFAULT_MACHINE) -> MachineParams:
    """Load a machine preset by name (see ``preset_names``) or from a TOML file path."""
    path = PRESETS.resolve(name_or_path)
    return machine_from_table(read_toml(path), str(path), origin_of(path))
