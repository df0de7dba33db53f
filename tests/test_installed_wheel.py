"""`aqpim-sim accuracy` from an installed wheel, run outside the repository: its data must ship in the wheel.

The wheel and its venv are the session's (``installed`` fixture, tests/installed.py: built from a copy of the
sources, installed by pip into a fresh venv that borrows the running interpreter's dependencies). The command runs
from an empty folder; the test checks that the data file and the code it used both came from the venv.
"""

import json
import time
from pathlib import Path

from installed import run  # tests/installed.py

COMMAND = ["accuracy", "--settings", "fp16", "int:bits=4", "--queries", "16", "--iters", "2"]


def test_accuracy_runs_from_an_installed_wheel_outside_the_repository(installed, tmp_path):
    t0 = time.perf_counter()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = installed.env()
    r = run([str(installed.script), *COMMAND, "--json-out", "acc.json"], cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["data", "setting"] and set(lines[1]) <= {"-", " "}
    assert [line.split()[:2] for line in lines[2:]] == [["real", "fp16"], ["real", "int:bits=4"]]
    assert r.stderr == ""

    # the data came from the installed package, and so did the code
    config = json.loads((elsewhere / "acc.json").read_text())["config"]
    venv = installed.venv
    assert Path(config["fixture"]).is_relative_to(venv), config["fixture"]
    assert Path(config["fixture"]).parts[-3:] == ("workloads", "data", "smollm2_gpl3_2k.npz")
    where = run([str(installed.python), "-c", "import sim.cli, workloads; print(sim.cli.__file__); "
                 "print(workloads.__file__)"], cwd=elsewhere, env=env)
    assert all(Path(p).is_relative_to(venv) for p in where.stdout.split()), where.stdout
    print(f"wheel built and installed in {installed.build_s:.1f} s, command {time.perf_counter() - t0:.1f} s")
