"""Sequential-read efficiency of every DRAM timing preset, and internal bandwidth of every PIM preset.

Prints two Markdown tables (the ones in docs/pim-model.md):

1. per DRAM preset: peak bandwidth, the closed-form model's streaming efficiency (steady state and for a 1 MiB
   read), what limits it, one bank's efficiency, and the references: the refresh-limited streaming target that
   Ramulator 2's latency-throughput tests hold its simulated streams against
   (github CMU-SAFARI/ramulator2, tests/latency_throughput/utils/spec.py: peak x (1 - (nRTP + nRP + nRFC + nRCD)
   / nREFI)), and a DRAMsim3 measurement where one is published (github umd-memsys/DRAMsim3 issue #36: HBM1,
   one channel, consecutive addresses, 15.71 GB/s of 16 GB/s);
2. per PIM preset: channels, units, internal and external bandwidth per channel, what limits the internal
   bandwidth, and the device's published ratio where there is one.

Usage: python benchmarks/dram_efficiency.py
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw_models import dram, pim  # noqa: E402

# Published sequential-read measurements: preset -> (efficiency, citation).
DRAMSIM3_MEASURED = {
    "hbm1-1000": (15.71 / 16.0, "DRAMsim3 issue #36 (HBM1_4Gb_x128, 1 channel, consecutive addresses): 15.71 of 16 GB/s"),
}

# Published internal-to-external bandwidth ratios of the PIM devices: preset -> (ratio, citation).
PIM_PUBLISHED = {
    "attacc-hbm3": (9.0, "AttAcc src/config.py BW_SCALE, bank level, power-capped (16 uncapped)"),
    "hbm-pim-aquabolt": (4.0, "Samsung: 4x the off-chip bandwidth (1.23 TB/s vs 307 GB/s per stack)"),
    "gddr6-aim": (16.0, "SK hynix: 512 GB/s internal vs 32 GB/s per channel"),
}


def ramulator2_reference(t: dram.DramTimingParams) -> float:
    """Ramulator 2's refresh-limited streaming efficiency, in its own cycle units (JEDEC rounding up)."""
    n_rfc = math.ceil(t.tRFC_s / t.tCK_s - 1e-9)
    n_refi = t.tREFI_s / t.tCK_s
    return 1.0 - (t.tRTP_cycles + t.tRP_cycles + n_rfc + t.tRCD_cycles) / n_refi


def dram_table() -> list[str]:
    rows = ["| DRAM preset | peak GB/s | model: steady | model: 1 MiB read | limited by | one bank (vs its column-rate peak) "
            "| Ramulator 2 target | model vs Ramulator 2 | DRAMsim3 measured | model vs DRAMsim3 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in dram.dram_timing_preset_names():
        t = dram.load_dram_timing(name)
        eff = dram.channel_stream_efficiency(t)
        eff_1mib = dram.channel_stream_efficiency(t, 2**20)
        r2 = ramulator2_reference(t)
        measured = DRAMSIM3_MEASURED.get(name)
        ds3 = f"{measured[0]:.1%}" if measured else "-"
        ds3_dev = f"{(eff - measured[0]) / measured[0]:+.1%}" if measured else "-"
        rows.append(f"| {name} | {t.peak_bw_bytes_per_s / 1e9:.1f} | {eff:.1%} | {eff_1mib:.1%} "
                    f"| {dram.channel_stream_limiter(t)} | {dram.bank_stream_efficiency(t):.1%} "
                    f"| {r2:.1%} | {(eff - r2) / r2:+.1%} | {ds3} | {ds3_dev} |")
    return rows


def pim_table() -> list[str]:
    rows = ["| PIM preset | channel | channels | units/channel | internal GB/s per channel | external GB/s "
            "| internal / external | limited by | published ratio | device internal TB/s | capacity GiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in pim.pim_preset_names():
        dev = pim.load_pim(name)
        ch = dev.channel
        internal = pim.internal_bw_bytes_per_s(ch)
        pub = PIM_PUBLISHED.get(name)
        rows.append(f"| {name} | {ch.name} | {dev.channels} | {ch.units} | {internal / 1e9:.2f} "
                    f"| {ch.external_bw_bytes_per_s / 1e9:.2f} | {internal / ch.external_bw_bytes_per_s:.2f}x "
                    f"| {pim.internal_bw_limiter(ch)} | {f'{pub[0]:g}x' if pub else '-'} "
                    f"| {dev.internal_bw_bytes_per_s / 1e12:.2f} | {dev.capacity_bytes / 2**30:.0f} |")
    return rows


def cost_is_flat_in_bytes() -> str:
    """Wall time of one model call at 1 KiB and at 1 TiB: the closed form must not grow with bytes."""
    t = dram.load_dram_timing("ddr4-3200")
    out = []
    for nbytes in (2**10, 2**40):
        start = time.perf_counter()
        for _ in range(2000):
            dram.channel_stream_time_s(t, nbytes)
            dram.bank_stream_time_s(t, nbytes)
        out.append((time.perf_counter() - start) / 2000 * 1e6)
    return f"cost per call pair: {out[0]:.1f} us at 1 KiB, {out[1]:.1f} us at 1 TiB"


def main() -> None:
    print("Sequential reads (steady state unless stated), refresh included:\n")
    print("\n".join(dram_table()))
    print("\nPIM channels (all units streaming from their banks at once, refresh included):\n")
    print("\n".join(pim_table()))
    print(f"\n{cost_is_flat_in_bytes()}")
    for name, (_, cite) in DRAMSIM3_MEASURED.items():
        print(f"- {name}: {cite}")
    for name, (_, cite) in PIM_PUBLISHED.items():
        print(f"- {name}: {cite}")


if __name__ == "__main__":
    main()
