import dataclasses

import pytest

from hw_models import gpu
from hw_models.errors import HardwareError
from hw_models.loading import read_toml
from hw_models.machine import PRESET_DIR, load_machine, preset_names

REQUIRED = {"a100-pcie4-ddr5", "h100-pcie5-ddr5", "rtx4090-pcie4-ddr5"}


def test_required_machine_presets():
    assert REQUIRED <= set(preset_names())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_preset_value_has_a_source(name):
    table = read_toml(PRESET_DIR / f"{name}.toml")
    for section, body in table.items():
        if not isinstance(body, dict):
            continue
        for key, v in body.items():
            if key == "name":
                continue
            assert isinstance(v, dict) and v.get("source"), f"{name} [{section}] {key} has no source"


def test_gpu_kernel_roofline_by_hand():
    p = load_machine("a100-pcie4-ddr5").gpu
    # memory-bound: 1 GB at 2.039 TB/s x 0.85, plus 5 us launch
    assert gpu.kernel_time_s(p, 1e6, 1e9) == pytest.approx(5e-6 + 1e9 / (2.039e12 * 0.85), rel=1e-12)
    # compute-bound: 1 TFLOP at 312 TFLOP/s x 0.8
    assert gpu.kernel_time_s(p, 1e12, 1e3) == pytest.approx(5e-6 + 1e12 / (312e12 * 0.8), rel=1e-12)


def test_pcie_preset_values():
    p = load_machine("a100-pcie4-ddr5").pcie
    assert (p.h2d_bw_bytes_per_s, p.latency_s) == (25e9, 5e-6)


def test_bad_values_rejected():
    p = load_machine("a100-pcie4-ddr5").gpu
    with pytest.raises(HardwareError, match="mem_bw_bytes_per_s must be a positive number"):
        dataclasses.replace(p, mem_bw_bytes_per_s=0)
    with pytest.raises(HardwareError, match=r"bw_efficiency must be in \(0, 1\]"):
        dataclasses.replace(p, bw_efficiency=1.5)
    with pytest.raises(HardwareError, match="duplex must be one of"):
        dataclasses.replace(load_machine().pcie, duplex="both")


def test_user_file_plain_numbers_unknown_key_and_malformed(tmp_path):
    text = (PRESET_DIR / "a100-pcie4-ddr5.toml").read_text()
    ok = tmp_path / "m.toml"
    ok.write_text(text.replace('h2d_bw_bytes_per_s = { value = 25e9, source = "nvbandwidth, A100 host-to-device'
                               ' about 25 GB/s of 31.5 GB/s raw (V)" }', "h2d_bw_bytes_per_s = 12e9"))
    assert load_machine(str(ok)).pcie.h2d_bw_bytes_per_s == 12e9
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("kernel_launch_s", "kernel_lanch_s"))
    with pytest.raises(HardwareError, match="unknown key 'kernel_lanch_s' \\(did you mean 'kernel_launch_s'\\?\\)"):
        load_machine(str(typo))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[gpu]\npeak = = 3\n")
    with pytest.raises(HardwareError, match=r"bad.toml: malformed TOML: .*line 3"):
        load_machine(str(bad))
    with pytest.raises(HardwareError, match="valid presets: a100-pcie4-ddr5"):
        load_machine("a100")
