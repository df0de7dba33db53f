"""Atomic outputs: a file appears whole or not at all, a folder of outputs appears as a set, and what a killed
writer leaves behind is cleaned up by the next run (sim.io, plots.style.save, compare --overwrite)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plots.style import new_figure, save
from sim.cli import main
from sim.errors import OutputError
from sim.io import atomic_folder, remove_stale, write_text_atomic
from sim.results import ResultsError

SMALL = ["--variants", "offload", "--steps", "1", "--context", "2048", "--batch", "1", "--trace-steps", "1"]
FILES = ["breakdown.png", "report.md", "results.json", "timeline.png", "trace.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "set"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        write_text_atomic(tmp / "a.txt", "a")
        raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == [], "neither the target nor a temporary folder may remain"
    with atomic_folder(target) as tmp:
        write_text_atomic(tmp / "a.txt", "a")
        assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["set"] and (target / "a.txt").read_text() == "a"
    with pytest.raises(OutputError, match="already exists and is not empty; use --overwrite"):
        with atomic_folder(target):
            pass
    with pytest.raises(OutputError, match="did not write"):  # --overwrite never deletes another file
        with atomic_folder(target, overwrite=True, replaceable={"b.txt"}):
            pass
    with atomic_folder(target, overwrite=True, replaceable={"a.txt", "b.txt"}) as tmp:
        write_text_atomic(tmp / "b.txt", "b")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"], "the whole set is replaced"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".set.{dead}.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "half.png").write_bytes(b"\x89PNG")
    stale_file = tmp_path / f".set.{dead}.def.old"
    stale_file.write_text("old")
    live = tmp_path / f".set.{os.getppid()}.ghi.tmp"
    live.mkdir()
    other = tmp_path / f".other.{dead}.jkl.tmp"
    other.write_text("not ours")
    removed = remove_stale(tmp_path, "set")
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert live.exists() and other.exists()


def test_figures_are_written_atomically_and_os_errors_are_one_line(tmp_path, monkeypatch):
    fig = new_figure(2, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    out = tmp_path / "f.png"
    save(fig, out)
    before = out.read_bytes()
    assert before.startswith(b"\x89PNG")

    def broken(f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(ResultsError, match=f"cannot write {out}: No space left on device"):
        save(fig, out)
    assert out.read_bytes() == before, "a failed write leaves the old figure whole"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"], "and no temporary file"
    monkeypatch.undo()
    dead = _dead_pid()
    (tmp_path / f".f.png.{dead}.xyz.tmp").write_bytes(b"\x89PNG half")  # left by a killed writer
    save(fig, out)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ResultsError, match="blocker is a file, not a folder"):
        save(fig, tmp_path / "blocker" / "g.png")


def test_compare_refuses_a_full_folder_and_overwrite_replaces_the_set(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", *SMALL, "--out", str(out)]) == 0
    first = {n: (out / n).read_bytes() for n in FILES}
    assert sorted(first) == sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["compare", *SMALL, "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert err.err.count("\n") == 1 and "already exists and is not empty; use --overwrite" in err.err
    assert "variant" not in err.out, "refused before running anything"
    assert {n: (out / n).read_bytes() for n in FILES} == first
    (out / "notes.txt").write_text("mine")
    assert main(["compare", *SMALL, "--out", str(out), "--overwrite"]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    dead = _dead_pid()
    left = tmp_path / f".c.{dead}.abcd.tmp"  # what a compare killed mid-way leaves
    left.mkdir()
    (left / "breakdown.png").write_bytes(b"\x89PNG trunc")
    assert main(["compare", *SMALL, "--steps", "2", "--out", str(out), "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["c"], "the killed run's temporary folder is gone"
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert (out / "results.json").read_bytes() != first["results.json"], "the new set replaced the old"
    assert '"steps": 2' in (out / "results.json").read_text()

