"""explain suggests an option change only when the simulation confirms it, and prints the simulated gain."""

from __future__ import annotations

import pytest

from sim.cli import main
from sim.config import make_config
from sim.explain import WHAT_IF_MIN_GAIN, checked_what_ifs
from sim.run import simulate
from sim.systems import SYSTEMS


def test_pim_sub_batches_are_not_suggested_when_they_slow_the_step(capsys):
    """The old advice: 'sub-batch interleaving could hide ...' for a pim step that --sub-batches 2 makes slower."""
    cfg = make_config(system="pim", batch=16, context=32768, steps=2)
    slower = simulate(make_config(system="pim", batch=16, context=32768, steps=2, sub_batches=2, trace_steps=0))
    base = simulate(make_config(system="pim", batch=16, context=32768, steps=2, trace_steps=0))
    assert slower.mean_step_latency_s > base.mean_step_latency_s
    assert all(w.change != {"sub_batches": 2} for w in checked_what_ifs(cfg))
    assert main(["explain", "--system", "pim", "--context", "32768", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "could hide" not in out and "Checked what-ifs (5 option changes" in out
    assert "--sub-batches 2:" not in out


def test_a_suggestion_prints_the_simulated_gain(capsys):
    found = checked_what_ifs(make_config(context=32768, steps=2))
    assert found, "offload at 32K: prefetch and the bandwidth CPU kernel both hide the streamed 2% of the cache"
    for w in found:
        again = simulate(make_config(context=32768, steps=2, trace_steps=0, **w.change))
        assert w.after_s == pytest.approx(again.mean_step_latency_s, rel=1e-12)
        assert w.after_s < (1 - WHAT_IF_MIN_GAIN) * w.before_s
    assert [w.after_s for w in found] == sorted(w.after_s for w in found)
    assert main(["explain", "--context", "32768", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    best = found[0]
    assert f"{best.flags}: " in out and f"({best.before_s / best.after_s:.2f}x faster, simulated)" in out


def test_every_what_if_is_a_valid_option_change_of_its_system():
    for name, cls in SYSTEMS.items():
        for change in cls.what_ifs:
            make_config(system=name, **change)  # raises on an unknown or foreign option
