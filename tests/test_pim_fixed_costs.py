"""The PIM fixed costs: the per-operation overhead is the calibrated value, and the batch-1 breakdown adds up."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from hw_models import pim as pim_model

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pim_fixed_costs", ROOT / "experiments" / "pim_fixed_costs.py")
fixed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixed)


def test_attacc_op_overhead_is_the_calibrated_value():
    rows = fixed.load_rows()
    assert len(rows) == 1873
    fit = fixed.fit_op_overhead(rows)
    dev = pim_model.load_pim("attacc-hbm3")
    assert fit["optimum_s"] < 0 and fit["op_overhead_s"] == dev.channel.op_overhead_s == 0.0
    e = fit["errors"]
    long_rows = fit["lengths"] >= 1024
    assert np.sqrt(np.mean(e[long_rows] ** 2)) < 0.05          # the array term: within a few percent
    assert np.sqrt(np.mean(e ** 2)) < 0.10
    assert np.sqrt(np.mean(fit["errors_at"](100e-9) ** 2)) > 0.5  # the old assumption did not fit


def test_a_row_by_hand():
    """One round (3 heads per stack -> 1 round), L = 2064: AttAcc's 4892 cycles; this model streams 1032 tokens of
    K and V per pseudo-channel plus first-access latencies and channel I/O."""
    dev = pim_model.load_pim("attacc-hbm3")
    base, ops = fixed.round_parts(dev, 2064, True)
    assert ops == 6
    ch = dev.channel
    stream = 2 * 1032 * 128 * 2 / ch.internal_bw_bytes_per_s + 2 * 38 * ch.timing.tCK_s
    assert base == pytest.approx(stream, rel=0.05)
    assert (2064, 3, True, 4892) in fixed.load_rows()


@pytest.mark.parametrize("context", [2048, 32768])
def test_batch_1_breakdown_adds_up(context):
    b = fixed.breakdown("llama-3.1-8b", context)
    parts = sum(b[k] for k in ("link set-up", "link bytes", "op overheads", "first access", "channel I/O", "array"))
    assert parts == pytest.approx(b["path"], rel=1e-9)
    assert b["array"] > 0 and b["link set-up"] == pytest.approx(4e-6)
