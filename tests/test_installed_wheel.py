"""`aqpim-sim accuracy` from an installed wheel, run outside the repository: its data must ship in the wheel.

The wheel is built with pip from a copy of the sources (no ``build/`` folder in the repository, and no stale
``build/lib`` of an earlier build leaking into the wheel), installed by pip into a fresh venv created without pip,
and run from an empty folder. The venv gets the dependencies (numpy, simpy, networkx, matplotlib) from the running
interpreter's site-packages through a ``.pth`` file: nothing is downloaded or installed twice. Lines of a ``.pth``
file only extend ``sys.path`` after the venv's own site-packages (the ``.pth`` files inside those folders, such as an
editable install's, are not run), so the package imported is the wheel's; the test checks that too.

The build runs without isolation when the running interpreter can build wheels itself (setuptools >= 70.1, or an
older setuptools with ``wheel``), a few seconds; otherwise pip builds in an isolated environment, which takes the
build requirements from the package index (16 s here, from the local mirror).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata, util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "sim", "hw_models", "workloads", "plots")  # what a build reads
COMMAND = ["accuracy", "--settings", "fp16", "int:bits=4", "--queries", "16", "--iters", "2"]
TIMEOUT_S = 240


def _version(dist: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in metadata.version(dist).split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return ()


def _can_build_without_isolation() -> bool:
    setuptools = _version("setuptools")
    return setuptools >= (70, 1) or (setuptools >= (61,) and util.find_spec("wheel") is not None)


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, **kw)


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    local = ["--no-build-isolation", "--no-index"] if _can_build_without_isolation() else []
    out = tmp / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", *local,
              "-w", str(out), str(src)])
    assert r.returncode == 0, f"wheel build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (wheel,) = out.glob("aqpim_sim-*.whl")
    return wheel


def _venv_with_running_deps(tmp: Path) -> tuple[Path, Path]:
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert r.returncode == 0, r.stderr
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    deps = [p for p in sys.path if p and Path(p).is_dir() and Path(p).name in ("site-packages", "dist-packages")]
    assert deps, sys.path
    Path(site, "running-interpreter-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return python, bindir


@pytest.mark.skipif(_version("pip") < (22, 3), reason="needs pip >= 22.3 (pip --python)")
def test_accuracy_runs_from_an_installed_wheel_outside_the_repository(tmp_path):
    t0 = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    t_build = time.perf_counter() - t0
    python, bindir = _venv_with_running_deps(tmp_path)
    r = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
              "--ignore-installed", "--disable-pip-version-check", str(wheel)])
    assert r.returncode == 0, f"install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    script = bindir / ("aqpim-sim.exe" if os.name == "nt" else "aqpim-sim")
    r = _run([str(script), *COMMAND, "--json-out", "acc.json"], cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["data", "setting"] and set(lines[1]) <= {"-", " "}
    assert [line.split()[:2] for line in lines[2:]] == [["real", "fp16"], ["real", "int:bits=4"]]
    assert r.stderr == ""

    # the data came from the installed package, and so did the code
    config = json.loads((elsewhere / "acc.json").read_text())["config"]
    venv = python.parent.parent
    assert Path(config["fixture"]).is_relative_to(venv), config["fixture"]
    assert Path(config["fixture"]).parts[-3:] == ("workloads", "data", "smollm2_gpl3_2k.npz")
    where = _run([str(python), "-c", "import sim.cli, workloads; print(sim.cli.__file__); print(workloads.__file__)"],
                 cwd=elsewhere, env=env)
    assert all(Path(p).is_relative_to(venv) for p in where.stdout.split()), where.stdout
    print(f"wheel built in {t_build:.1f} s, whole test {time.perf_counter() - t0:.1f} s")
