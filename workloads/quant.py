"""Uniform INT-k quantization of K/V (the baseline PQ is compared with), KIVI style.

Asymmetric min/max quantization in groups of ``group`` elements, each group storing an FP16 scale and zero point:
keys are grouped per channel along tokens (keys have outlier *channels*, so a channel shares one range), values per
token along channels (KIVI, arXiv 2402.02750). With group 32 the scale and zero add 32 bits per 32 elements: INT2
costs 3 bits per element in total, INT4 5; ``workloads.kvformats`` counts that.
"""

from __future__ import annotations

import numpy as np


def fake_quant(x: np.ndarray, bits: int, group: int, axis: int) -> np.ndarray:
    """Quantize then dequantize x (2-D) in groups of ``group`` consecutive elements along ``axis``.

    Scale and minimum are rounded to FP16 as they would be stored; a trailing partial group is its own group.
    """
    assert x.ndim == 2 and axis in (0, 1) and bits >= 1 and group >= 1, (x.shape, axis, bits, group)
    y = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 1)  # groups along the last axis
    R, C = y.shape
    out = np.empty_like(y)
    levels = (1 << bits) - 1
    for start in range(0, C, group):
        blk = y[:, start:start + group]
        lo = blk.min(axis=1, keepdims=True).astype(np.float16).astype(np.float64)
        scale = ((blk.max(axis=1, keepdims=True) - lo) / levels).astype(np.float16).astype(np.float64)
        safe = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.rint((blk - lo) / safe), 0, levels)
        out[:, start:start + group] = lo + q * scale
    return np.moveaxis(out, 1, axis)


def kivi_keys(k: np.ndarray, bits: int, group: int = 32) -> np.ndarray:
    """Keys (N, D): per-channel groups of ``group`` tokens."""
    return fake_quant(k, bits, group, axis=0)


def kivi_values(v: np.ndarray, bits: int, group: int = 32) -> np.ndarray:
    """Values (N, D): per-token groups of ``group`` channels."""
    return fake_quant(v, bits, group, axis=1)
