"""`aqpim-sim presets`: list the model and hardware presets, or show one with every value's unit and source."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from hw_models import dram, machine, pim
from hw_models.loading import did_you_mean, read_toml, unit_of
from sim.errors import ConfigError
from sim.options import flag_of, specs
from sim.systems import SYSTEMS
from workloads import models

HELP = "list model, machine, PIM device and DRAM timing presets, or show one with units and sources"
EXAMPLE = """examples:
  aqpim-sim presets
  aqpim-sim presets --show attacc-hbm3
  aqpim-sim presets --json"""

# kind -> (its presets, its loader, the section its own scalar values go in)
KINDS = {
    "machine": (machine.PRESETS, machine.load_machine, None),
    "PIM device": (pim.PIM_PRESETS, pim.load_pim, "device"),
    "DRAM timing": (dram.DRAM_PRESETS, dram.load_dram_timing, "timing"),
    "model": (models.PRESETS, models.load_model, "model"),
}
SI_PREFIXES = {15: "P", 12: "T", 9: "G", 6: "M", 3: "k", 0: "", -3: "m", -6: "u", -9: "n", -12: "p"}
# unit -> range of SI prefix exponents the readable form uses (bandwidth in GB/s as datasheets quote it, energy
# per byte or FLOP in pJ).
READABLE = {"B/s": (3, 9), "FLOP/s": (3, 15), "s": (-12, 0), "J": (-12, 0), "J/B": (-12, -12),
            "J/FLOP": (-12, -12), "B": (0, 15)}
BINARY_PREFIXES = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--json", action="store_true",
                      help="print the machine and PIM device presets' full parameters, sources and files as JSON")
    what.add_argument("--show", metavar="NAME",
                      help="print every value of a machine, PIM device, DRAM timing or model preset (or of such a "
                           "file) with its unit and source")


def run(args) -> int:
    if args.show:
        print("\n\n".join(show(args.show)))
        return 0
    if args.json:
        print(json.dumps({"machines": {n: dataclasses.asdict(machine.load_machine(n)) for n in machine.preset_names()},
                          "pim": {n: dataclasses.asdict(pim.load_pim(n)) for n in pim.pim_preset_names()}},
                         indent=1, sort_keys=True))
        return 0
    print("models:")
    for n in models.preset_names():
        m = models.load_model(n)
        print(f"  {n:<14} {m.n_layers:>3} layers  hidden {m.hidden_size:>5}  heads {m.n_heads:>3}/{m.n_kv_heads:<3}"
              f" KV {m.kv_bytes_per_token / 1024:>6.0f} KiB/token  weights {m.weight_bytes / 1e9:6.1f} GB")
    print("hardware:")
    for n in machine.preset_names():
        print(f"  {n:<20} {machine.load_machine(n).description}")
    print("PIM devices (--pim):")
    for n in pim.pim_preset_names():
        d = pim.load_pim(n)
        print(f"  {n:<20} {d.channels:>5} channels  {d.capacity_bytes / 2**30:7.1f} GiB  "
              f"internal {d.internal_bw_bytes_per_s / 1e12:5.1f} TB/s  {d.placement:<11}  {d.description}")
    print("DRAM timings (a PIM channel's timing):")
    for n in dram.dram_timing_preset_names():
        print(f"  {n:<20} {dram.load_dram_timing(n).name}")
    print("systems (--system) and their options:")
    for name, cls in SYSTEMS.items():
        print(f"  {name:<20} {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}".rstrip())
        for key, (_, _, default, spec) in specs(cls.Options).items():
            shown = "" if default is None else f" (default {str(default).lower() if isinstance(default, bool) else default}"\
                f"{' ' + spec.unit if spec.unit else ''})"
            print(f"    {flag_of(key, spec):<20} {spec.help}{shown}")
    return 0


# ------------------------------------------------------------------ --show

def show(name_or_path: str) -> list[str]:
    """One text block per preset ``name_or_path`` names (a name may exist in several kinds), or for its file."""
    return [describe(kind, KINDS[kind][1](name_or_path)) for kind in kinds_of(name_or_path)]


def kinds_of(name_or_path: str) -> list[str]:
    p = Path(name_or_path)
    if p.suffix in (".toml", ".json") or p.exists():
        if p.suffix != ".toml":
            return ["model"]
        table = read_toml(p, error=ConfigError)
        return ["DRAM timing" if "timing" in table else "PIM device" if "device" in table else "machine"]
    found = [k for k, (presets, _, _) in KINDS.items()
             if name_or_path in presets.names() or name_or_path.lower() in presets.names()]
    if not found:
        every = sorted({n for presets, _, _ in KINDS.values() for n in presets.names()})
        listed = "; ".join(f"{k}: {', '.join(presets.names())}" for k, (presets, _, _) in KINDS.items())
        raise ConfigError(f"unknown preset '{name_or_path}'{did_you_mean(name_or_path, every)}; valid presets: "
                          f"{listed} (or a path to a .toml or config.json file)")
    return found


def describe(kind: str, params) -> str:
    """Title, file and every value of loaded parameters, grouped by section."""
    lines = [f"{kind} {params.name}" + (f": {params.description}" if getattr(params, "description", "") else ""),
             f"file: {params.origin or '(built in code)'}"]
    if getattr(params, "source", ""):
        lines.append(f"source: {params.source}")
    section = KINDS[kind][2]
    _block(params, f"[{section}]" if section else "", "", params.origin, lines)
    return "\n".join(lines)


def _block(params, header: str, prefix: str, parent_origin: str, lines: list[str]) -> None:
    """A parameter block's header, its file when it has its own, its values, then its nested blocks."""
    if header:
        lines.append(header)
    origin = getattr(params, "origin", "") or parent_origin
    if origin != parent_origin:
        lines.append(f"  file: {origin}")
    sources = getattr(params, "sources", None)
    nested = []
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if not f.compare or f.name in ("name", "description"):
            continue
        if dataclasses.is_dataclass(v):
            nested.append((f.name, v))
            continue
        # A block without per-value sources (a model spec) has one source for all of its values.
        src = sources.get(f.name, "") if sources is not None else getattr(params, "source", "")
        lines.append(f"  {f.name} = {format_value(v, unit_of(f.name))}  source: {src or '(not given)'}")
    for name, block in nested:
        src = (sources or {}).get(name, "")
        label = getattr(block, "name", "")
        _block(block, f"[{prefix}{name}]" + (f"  {label}" if label else "") + (f"  source: {src}" if src else ""),
               f"{prefix}{name}.", origin, lines)


def format_value(v, unit: str) -> str:
    """``2.039e12 B/s (2039 GB/s)``: the SI value, its unit, and a readable form where it helps."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if v is None:
        return "none"
    text = _number(v) + (f" {unit}" if unit else "")
    readable = _readable(v, unit)
    return f"{text} ({readable})" if readable else text


def _number(v: float) -> str:
    if isinstance(v, int) or v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.12g}"
    mantissa, exponent = f"{v:.12e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _readable(v: float, unit: str) -> str:
    if unit not in READABLE or not math.isfinite(v) or v == 0:
        return ""
    if unit == "B" and float(v).is_integer():
        for size, name in BINARY_PREFIXES:
            if v >= size and v % size == 0:
                return f"{v / size:g} {name}"
    lo, hi = READABLE[unit]
    exp3 = min(hi, max(lo, 3 * math.floor(math.log10(abs(v)) / 3)))
    if exp3 == 0:
        return ""
    return f"{v / 10.0 ** exp3:.6g} {SI_PREFIXES[exp3]}{unit}"
