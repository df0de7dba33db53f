"""``sim.systems.pim.RowCosts`` against the scalar cost functions: a channel's work sums interpolated in tokens
equal the scalar evaluation (``work_sums`` of ``hw_models.pim.*_attention_works``) to 1e-9 relative, for every KV
format, softmax placement, PIM device and lookup dataflow, at random loads; and a cell is never interpolated when
a roof changes inside it."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hw_models import pim as pim_model
from hw_models.errors import HardwareError
from sim.systems.pim import RowCosts, work_sums

DEVICES = {name: pim_model.load_pim(name) for name in pim_model.pim_preset_names()}


def works_fn(dev, fmt: str, softmax: str, dataflow: str, key_fix: str, head_dim: int, group: int, lut_bytes: float):
    ch = dev.channel
    common = dict(head_dim=head_dim, group=group, bytes_per_element=2.0, softmax=softmax)
    if fmt == "fp16":
        return lambda t, u, v: pim_model.fp16_attention_works(ch, t, u, v, **common)
    if fmt == "int":
        return lambda t, u, v: pim_model.int_attention_works(ch, t, u, v, bits=4, group_size=32, window=132,
                                                             **common)
    if lut_bytes:
        ch = pim_model.with_aqpim_unit(dev, lut_bytes=float(lut_bytes)).channel
    lut = pim_model.pq_lookup_plan(ch, group, 16, 256, dataflow)
    extra = {}
    if key_fix == "key_k":
        extra = dict(key_k=1024, lut_key=pim_model.pq_lookup_plan(ch, group, 16, 1024, dataflow))
    elif key_fix == "pre_rope":
        extra = dict(pre_rope=True, lut_key=pim_model.pq_lookup_plan(ch, group, head_dim, 256, dataflow))
    return lambda t, u, v: pim_model.pq_attention_works(ch, t, u, v, m=16, k=256, outliers=2, window=132,
                                                         lut=lut, **extra, **common)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-300) for x, y in zip(a, b, strict=True))


LOADS = st.tuples(st.floats(0, 2e6), st.integers(0, 8).map(float) | st.floats(0, 8),
                  st.integers(0, 4).map(float) | st.floats(0, 4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(device=st.sampled_from(sorted(DEVICES)), fmt=st.sampled_from(["fp16", "int", "pq"]),
       softmax=st.sampled_from(pim_model.SOFTMAX_PLACEMENTS), dataflow=st.sampled_from(pim_model.PQ_DATAFLOWS),
       key_fix=st.sampled_from(["", "key_k", "pre_rope"]), head_dim=st.sampled_from([64, 128]),
       group=st.sampled_from([1, 4, 8]), lut_bytes=st.sampled_from([0, 1024, 4096, 65536]),
       loads=st.lists(LOADS, min_size=1, max_size=12), part=st.booleans())
def test_interpolated_sums_equal_scalar(device, fmt, softmax, dataflow, key_fix, head_dim, group, lut_bytes, loads,
                                        part):
    try:
        fn = works_fn(DEVICES[device], fmt, softmax, dataflow, key_fix, head_dim, group, lut_bytes)
        fn(100.0, 1.0, 1.0)
    except HardwareError:  # a device without a near-memory unit or an AQPIM unit: refused in both paths
        return
    part_of = (lambda kind: kind.split(".")[0]) if part else None
    costs = RowCosts()
    for t, u, v in loads:
        # a neighbour in the same cell as well, so that cells are reused
        for row in ((t, u, v), (t * (1 + 1e-3), u, v)):
            names, got = costs.sums("k", lambda *r: fn(*r).all, row, part_of)
            ref_names, ref = work_sums(fn(*row).all if any(row) else (), part_of)
            assert names == ref_names
            assert close(got, ref), (row, got, ref)


def test_cells_interpolate_and_roof_changes_are_caught():
    """Over a long run of rows, most rows are interpolated (few scalar evaluations); a function with a kink that
    is not convex-piecewise-linear-friendly at a cell's midpoint is evaluated exactly there."""
    fn = works_fn(DEVICES["attacc-hbm3"], "fp16", "pim", "subspace", "", 128, 1, 0)
    costs = RowCosts()
    for t in np.arange(1000.0, 5000.0, 3.0):
        costs.sums("k", lambda *r: fn(*r).all, (float(t), 2.0, 1.0))
    assert costs.evaluations < 120  # 1,334 rows in 19 cells: two rows alone, then the two ends and the midpoint

    def kinked(t, u, v):  # max(0.5 t, t - 300): its kink at 600 lies inside the cell [576, 608)
        from hw_models.component import Work  # noqa: PLC0415
        return (Work("x", max(0.5 * t, t - 300.0)),)

    costs = RowCosts()
    for t in (580.0, 600.0, 601.5, 607.0):
        _, got = costs.sums("kink", kinked, (t, 1.0, 0.0))
        assert got[0] == max(0.5 * t, t - 300.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=300),
       st.sampled_from([0.5, 1.0, 1234.567, 1234.56749, 1 / 3, 2.0**40]))
@example(cells=[(0, 1, 1)], scale=2.0**40)  # the first column all zero: the key would overflow int64 if packed
def test_distinct_rows_is_numpys_unique_of_the_rounded_rows(cells, scale):
    """``distinct_rows`` (one integer key per row) gives what ``np.unique(np.round(rows, 3), axis=0)`` gives: the
    distinct rounded rows in increasing order and each row's index among them; rows too large to pack take that
    path."""
    from sim.systems.pim import distinct_rows

    rows = np.array(cells, dtype=float) * scale
    uniq, inv = distinct_rows(rows)
    rounded = np.round(rows, 3)
    _, first, expected = np.unique(rounded, axis=0, return_index=True, return_inverse=True)
    assert uniq == list(map(tuple, rounded[first].tolist()))
    assert inv.tolist() == expected.ravel().tolist()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataflow=st.sampled_from(pim_model.PQ_DATAFLOWS), key_fix=st.sampled_from(["", "key_k", "pre_rope"]),
       rows=st.lists(st.tuples(st.sampled_from([0.0, 3.0, 100.0, 4096.5, 70000.0]), st.integers(0, 3),
                               st.integers(0, 2)), min_size=1, max_size=40))
def test_bank_phase_parts_and_their_table_are_the_rows_parts(dataflow, key_fix, rows):
    """``bank_phase`` with parts (AQPIM's) gives each part's per-channel seconds, bytes, FLOPs and joules as its
    row's part, stretched like the row (the power cap), bit for bit, and its ``part_table`` holds the same
    seconds and each part's totals summed as the bank sums one part's array; rows with and without some parts
    (no tokens: no score gather) mix. The parts come in ``part_order`` (here AQPIM's first phases, reversed), the
    others after them in order of first appearance over the distinct rows."""
    from sim.systems.aqpim import AqpimSystem  # noqa: PLC0415
    from sim.systems.pim import bank_phase, distinct_rows  # noqa: PLC0415

    dev = DEVICES["attacc-hbm3"]
    fn = works_fn(dev, "pq", "pim", dataflow, key_fix, 128, 4, 65536)
    part_of = AqpimSystem.part_of
    part_order = tuple(reversed(AqpimSystem.part_order[:3]))
    loads = np.array(rows, dtype=float)
    ch = pim_model.with_aqpim_unit(dev, lut_bytes=65536.0).channel
    ph = bank_phase("k", loads, lambda *r: fn(*r).all, ch, part_of=part_of, part_order=part_order)
    seen = list(dict.fromkeys(name for row in distinct_rows(loads)[0]
                              for name in work_sums(fn(*row).all if any(row) else (), part_of)[0]))
    assert [p.kind for p in ph.parts] == [n for n in part_order if n in seen] + [n for n in seen
                                                                                if n not in part_order]
    for c, row in enumerate(loads):
        names, v = work_sums(fn(*row).all if any(row) else (), part_of)
        d, e = float(v[0]), float(v[3])
        f = pim_model.power_throttle(ch, e, d)
        got = {p.kind: (p.durations_s[c], p.nbytes[c], p.flops[c], p.energy_j[c]) for p in ph.parts}
        for j, name in enumerate(names):
            want = v[4 + 4 * j: 8 + 4 * j].copy()
            want[0] *= f
            assert got.pop(name) == tuple(want)
        assert all(x == (0.0, 0.0, 0.0, 0.0) for x in got.values())  # parts the row does not have
    if ph.parts:
        seconds, totals = ph.part_table
        assert np.array_equal(seconds, np.array([p.durations_s for p in ph.parts]))
        assert totals.tolist() == [[float(p.nbytes.sum()), float(p.flops.sum()), float(p.energy_j.sum())]
                                   for p in ph.parts]
