"""`aqpim-sim presets`: list the model and hardware presets."""

from __future__ import annotations

import argparse
import dataclasses
import json

from hw_models.machine import load_machine
from hw_models.machine import preset_names as machine_names
from hw_models.pim import load_pim, pim_preset_names
from workloads.models import load_model
from workloads.models import preset_names as model_names

HELP = "list model, machine and PIM device presets"
EXAMPLE = "example: aqpim-sim presets --json"


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help="print the machine and PIM device presets' full parameters as JSON")


def run(args) -> int:
    if args.json:
        print(json.dumps({"machines": {n: dataclasses.asdict(load_machine(n)) for n in machine_names()},
                          "pim": {n: dataclasses.asdict(load_pim(n)) for n in pim_preset_names()}},
                         indent=1, sort_keys=True))
        return 0
    print("models:")
    for n in model_names():
        m = load_model(n)
        print(f"  {n:<14} {m.n_layers:>3} layers  hidden {m.hidden_size:>5}  heads {m.n_heads:>3}/{m.n_kv_heads:<3}"
              f" KV {m.kv_bytes_per_token / 1024:>6.0f} KiB/token  weights {m.weight_bytes / 1e9:6.1f} GB")
    print("hardware:")
    for n in machine_names():
        print(f"  {n:<20} {load_machine(n).description}")
    print("PIM devices (--pim):")
    for n in pim_preset_names():
        d = load_pim(n)
        print(f"  {n:<20} {d.channels:>5} channels  {d.capacity_bytes / 2**30:7.1f} GiB  "
              f"internal {d.internal_bw_bytes_per_s / 1e12:5.1f} TB/s  {d.placement:<11}  {d.description}")
    return 0
