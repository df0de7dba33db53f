"""The interconnect model's all-reduce against published NCCL measurements on 8-GPU NVSwitch nodes.

    python3 experiments/allreduce_nccl.py

For each table in experiments/data/nccl_allreduce_8gpu.csv (nccl-tests all_reduce_perf, 4 KiB to 64 MiB, with the
URL of the published output), the time the machine preset's interconnect gives (``alpha + 2 (N-1)/N x S / B``,
``hw_models.interconnect.allreduce_time_s``, N = 8) beside the measured time, and the relative error.
A100 rows are compared with dgx-a100, H100 rows with dgx-h100.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw_models.interconnect import allreduce_time_s  # noqa: E402
from hw_models.machine import load_machine  # noqa: E402

DATA = ROOT / "experiments" / "data" / "nccl_allreduce_8gpu.csv"
PRESET = {"A": "dgx-a100", "H": "dgx-h100"}


def rows():
    with DATA.open() as f:
        yield from csv.DictReader(line for line in f if not line.startswith("#"))


def main() -> None:
    print(f"{'table':5} {'preset':9} {'size':>9} {'measured us':>12} {'model us':>9} {'error':>7}")
    worst: dict[str, float] = {}
    for r in rows():
        preset = PRESET[r["table"][0]]
        ic = load_machine(preset).interconnect
        size, measured = int(r["size_bytes"]), float(r["time_us"])
        model = allreduce_time_s(ic, size, 8) * 1e6
        err = model / measured - 1
        worst[r["table"]] = max(worst.get(r["table"], 0.0), abs(err))
        print(f"{r['table']:5} {preset:9} {size:9d} {measured:12.2f} {model:9.2f} {100 * err:+6.1f}%")
    for table, w in worst.items():
        print(f"{table}: largest error {100 * w:.1f}%")


if __name__ == "__main__":
    main()
