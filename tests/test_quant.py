"""Uniform INT-k baseline: error bounds, grouping axes and exact cases."""

import numpy as np
import pytest

from workloads.quant import fake_quant, kivi_keys, kivi_values


@pytest.mark.parametrize("bits", [2, 4])
def test_error_is_at_most_half_a_step_per_group(bits):
    x = np.random.default_rng(0).standard_normal((64, 40))
    y = fake_quant(x, bits, group=16, axis=1)
    for start in range(0, 40, 16):  # the last group (8 channels) is a partial one
        blk, got = x[:, start:start + 16], y[:, start:start + 16]
        step = (blk.max(1) - blk.min(1)) / (2**bits - 1)
        assert np.all(np.abs(got - blk).max(1) <= 0.5 * step * 1.01 + 1e-3)  # FP16 scale/zero rounding


def test_constant_groups_and_grid_values_come_back_exactly():
    x = np.full((4, 32), 0.75)
    np.testing.assert_array_equal(fake_quant(x, 2, 32, axis=1), x)
    grid = np.tile(np.array([0.0, 1.0, 2.0, 3.0]), (2, 8))  # exactly the 4 levels of INT2 on [0, 3]
    np.testing.assert_array_equal(fake_quant(grid, 2, 32, axis=1), grid)


def test_keys_are_grouped_per_channel_so_an_outlier_channel_does_not_hurt_the_others():
    rng = np.random.default_rng(1)
    k = rng.standard_normal((64, 8))
    k[:, 3] *= 100.0
    per_channel = kivi_keys(k, 2, group=32)
    per_token = kivi_values(k, 2, group=8)  # the same data grouped the other way
    others = [c for c in range(8) if c != 3]
    assert np.abs(per_channel - k)[:, others].max() < 0.2 * np.abs(per_token - k)[:, others].max()


def test_more_bits_less_error():
    x = np.random.default_rng(2).standard_normal((128, 64))
    errs = [np.abs(fake_quant(x, b, 32, axis=0) - x).mean() for b in (1, 2, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.01
