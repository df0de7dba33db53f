"""Read efficiency of the DRAM timing presets by access pattern, host memory by pattern, and PIM internal bandwidth.

Prints the Markdown tables of docs/pim-model.md:

1. per DRAM preset: peak bandwidth, the closed-form model's streaming efficiency (steady state and for a 1 MiB
   read), what limits it, one bank's efficiency, and the references: the refresh-limited streaming target that
   Ramulator 2's latency-throughput tests hold its simulated streams against
   (github CMU-SAFARI/ramulator2, tests/latency_throughput/utils/spec.py: peak x (1 - (nRTP + nRP + nRFC + nRCD)
   / nREFI)), and a DRAMsim3 measurement where one is published (github umd-memsys/DRAMsim3 issue #36: HBM1,
   one channel, consecutive addresses, 15.71 GB/s of 16 GB/s);
2. per access pattern (sequential, random 64 B / 256 B / 4 KiB, strided) on DDR4-3200 and DDR5-4800 with 1 and 2
   ranks: the model's efficiency and what limits it, against DRAMsim3 run here on the same patterns
   (DRAMSIM3_HERE), published DRAMsim3 and Ramulator 2 figures where there are any, and first-principles bounds;
3. per machine preset: host memory read rates for a stream, the offload DMA of paged-KV blocks and CPU attention's
   per-head block reads, and their sensitivity to the interleave and the controller queue;
4. per PIM preset: channels, units, internal and external bandwidth per channel, what limits the internal
   bandwidth, and the device's published ratio where there is one.

Usage: python benchmarks/dram_efficiency.py
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw_models import cpu, dram, pim  # noqa: E402
from hw_models.machine import load_machine, preset_names  # noqa: E402

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


# DRAMsim3 run here (github umd-memsys/DRAMsim3, commit 2981759, trace-driven), read-only traces of each pattern,
# 1,000,000 memory cycles, reads arriving as fast as the controller accepts them, efficiency = reads x burst cycles /
# cycles. Config: configs/DDR4_8Gb_x8_3200.ini (tRTRS = 1, trans_queue_size 32, 8 commands per bank queue, open
# page, rank-staggered refresh) with address_mapping = rorabachcobg (the model's mapping: bank group just above the
# burst offset) and channel_size 8192 MB per rank; "DDR5-4800 (DDR4 engine)" is the same file with this repository's
# ddr5-4800 preset values (32-bit bus, BL16, 8 bank groups x 4 banks, 40-39-39, tRAS 77, tRTP 18, tCCD 8/12,
# tRRD 8/12, tFAW 32, tRFC 708, tREFI 9360 cycles, tRTRS 2): DRAMsim3 has no DDR5 protocol, so that column checks
# the model's arithmetic against a cycle-level controller, not DDR5-specific features (same-bank refresh).
# Random traces read whole aligned blocks of the given size at uniformly random block addresses over the ranks'
# capacity; strided ones read a run every stride bytes.
DRAMSIM3_HERE = {
    ("ddr4-3200", 1): {"seq": 0.950, "rand64": 0.445, "rand256": 0.444, "rand4096": 0.944, "str256/2048": 0.947,
                       "str64/4160": 0.841},
    ("ddr4-3200", 2): {"seq": 0.955, "rand64": 0.807, "rand256": 0.779, "rand4096": 0.924, "str256/2048": 0.930,
                       "str64/4160": 0.910},
    ("ddr5-4800", 1): {"seq": 0.914, "rand64": 0.909, "rand256": 0.905, "rand4096": 0.913, "str256/2048": 0.913,
                       "str64/4160": 0.908},
    ("ddr5-4800", 2): {"seq": 0.921, "rand64": 0.967, "rand256": 0.965, "rand4096": 0.966, "str256/2048": 0.921,
                       "str64/4160": 0.967},
}
# DRAMsim3's controller holds its 32-entry transaction queue plus 8 commands per bank: reads in flight per channel.
DRAMSIM3_TRANS_QUEUE, DRAMSIM3_CMD_QUEUE = 32, 8

# Published figures for these patterns: (preset, ranks, pattern) -> (efficiency, citation).
PUBLISHED = {
    ("ddr4-3200", 2, "rand64"): (18.8373 * 4 * 0.63 / 64, "DRAMsim3 issue #54: DDR4_8Gb_x8_3200 --stream random, "
                                 "100k cycles: 18.84 GB/s at tCK 0.63 ns = 74.2% of bus cycles; 64 B at random "
                                 "with 1 write in 3 (RandomCPU, src/cpu.cc) and rochrababgco mapping"),
}

PATTERNS = {
    "seq": ("sequential", lambda q: dram.SEQUENTIAL),
    "rand64": ("random 64 B", lambda q: dram.RandomAccess(64, q / 1)),
    "rand256": ("random 256 B", lambda q: dram.RandomAccess(256, q / 4)),
    "rand4096": ("random 4 KiB", lambda q: dram.RandomAccess(4096, q / 64)),
    "str256/2048": ("strided 256 B / 2 KiB", lambda q: dram.Strided(256, 2048)),
    "str64/4160": ("strided 64 B / 4160 B", lambda q: dram.Strided(64, 4160)),
}


def first_principles(t: dram.DramTimingParams, pattern) -> float:
    """Upper bound from the data bus and the activation budget alone (no bank conflicts, no rank switches)."""
    c = dram.pattern_cost(t, pattern)
    bus = c.bounds_cycles["data bus"]
    if isinstance(pattern, dram.RandomAccess):
        bus = math.ceil(pattern.size_bytes / t.burst_bytes) * t.burst_cycles
    limit = max(bus, c.bounds_cycles["activation (tRRD/tFAW)"])
    return c.useful_bytes / (limit * t.tCK_s * t.refresh_factor) / t.peak_bw_bytes_per_s


def pattern_table() -> list[str]:
    rows = ["| DRAM | ranks | pattern | model | limited by | DRAMsim3 here | model vs DRAMsim3 | bus + tFAW bound "
            "| published | model vs published |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, ranks), measured in DRAMSIM3_HERE.items():
        t = dataclasses.replace(dram.load_dram_timing(name), ranks=ranks)
        lines = DRAMSIM3_TRANS_QUEUE + DRAMSIM3_CMD_QUEUE * t.banks
        for key, (label, make) in PATTERNS.items():
            p = make(lines)
            eff = dram.pattern_efficiency(t, p)
            ref = measured[key]
            pub = PUBLISHED.get((name, ranks, key))
            if key == "seq":
                pub = (ramulator2_reference(t), "Ramulator 2 refresh-limited streaming target")
            rows.append(f"| {name} | {ranks} | {label} | {eff:.1%} | {dram.pattern_limiter(t, p)} | {ref:.1%} "
                        f"| {(eff - ref) / ref:+.1%} | {first_principles(t, p):.1%} "
                        f"| {f'{pub[0]:.1%}' if pub else '-'} | {f'{(eff - pub[0]) / pub[0]:+.1%}' if pub else '-'} |")
    return rows


def host_table() -> list[str]:
    rows = ["| machine | host DRAM | peak GB/s | stream GB/s | KV DMA (8 heads x 128) GB/s | CPU attention (1 head) GB/s "
            "| was (0.85 x peak) |",
            "|---|---|---|---|---|---|---|"]
    for name in preset_names():
        h = load_machine(name).host_dram
        seq = dram.host_read_bw_bytes_per_s(h, dram.SEQUENTIAL)
        dma = dram.host_read_bw_bytes_per_s(h, dram.paged_kv_pattern(h, 128, 2, heads=8))
        att = dram.host_read_bw_bytes_per_s(h, cpu.attention_pattern(h, 128, 2))
        peak = h.peak_bw_bytes_per_s
        rows.append(f"| {name} | {h.name}, {h.timing}, {h.ranks_per_channel} ranks | {peak / 1e9:.1f} "
                    f"| {seq / 1e9:.1f} ({seq / peak:.1%}) | {dma / 1e9:.1f} ({dma / peak:.1%}) "
                    f"| {att / 1e9:.1f} ({att / peak:.1%}) | {0.85 * peak / 1e9:.1f} |")
    return rows


def sensitivity_table() -> list[str]:
    h0 = load_machine().host_dram
    rows = ["| CPU attention reads (default machine), varied | value | GB/s | % of peak | limited by |",
            "|---|---|---|---|---|"]
    for field, values in (("interleave_bytes", (64, 256, 4096)), ("read_queue_lines", (8, 32, 128)),
                          ("ranks_per_channel", (1, 2, 4)), ("kv_block_tokens", (16, 32, 128))):
        for v in values:
            h = dataclasses.replace(h0, **{field: v})
            p = cpu.attention_pattern(h, 128, 2)
            bw = dram.host_read_bw_bytes_per_s(h, p)
            rows.append(f"| {field} | {v} | {bw / 1e9:.1f} | {bw / h.peak_bw_bytes_per_s:.1%} "
                        f"| {dram.pattern_limiter(h.dram, dram.channel_pattern(h, p))} |")
    return rows


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
    print("\nRead patterns on one channel (steady state, refresh included):\n")
    print("\n".join(pattern_table()))
    print("\nHost memory by pattern (machine presets):\n")
    print("\n".join(host_table()))
    print("\n" + "\n".join(sensitivity_table()))
    print("\nPIM channels (all units streaming from their banks at once, refresh included):\n")
    print("\n".join(pim_table()))
    print(f"\n{cost_is_flat_in_bytes()}")
    for name, (_, cite) in DRAMSIM3_MEASURED.items():
        print(f"- {name}: {cite}")
    for key, (_, cite) in PUBLISHED.items():
        print(f"- {' '.join(map(str, key))}: {cite}")
    for name, (_, cite) in PIM_PUBLISHED.items():
        print(f"- {name}: {cite}")


if __name__ == "__main__":
    main()
