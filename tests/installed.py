"""An installed wheel of this package, for tests that must run as a user would after ``pip install .``.

The wheel is built with pip from a copy of the sources (no ``build/`` folder in the repository, and no stale
``build/lib`` of an earlier build leaking into the wheel), installed by pip into a fresh venv created without pip.
The venv gets the dependencies (numpy, simpy, networkx, matplotlib) from the running interpreter's site-packages
through a ``.pth`` file: nothing is downloaded or installed twice. Lines of a ``.pth`` file only extend
``sys.path`` after the venv's own site-packages (the ``.pth`` files inside those folders, such as an editable
install's, are not run), so the package imported is the wheel's.

The build runs without isolation when the running interpreter can build wheels itself (setuptools >= 70.1, or an
older setuptools with ``wheel``), a few seconds; otherwise pip builds in an isolated environment, which takes the
build requirements from the package index (16 s here, from the local mirror).

``conftest.py`` builds it once per session (fixture ``installed``); ``test_installed_wheel.py`` and
``test_tutorial.py`` share it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "sim", "hw_models", "workloads", "plots")  # what a build reads
TIMEOUT_S = 240


@dataclass(frozen=True)
class Installed:
    python: Path  # the venv's interpreter
    bindir: Path  # where the console script is
    venv: Path
    build_s: float  # wheel build and install, seconds

    @property
    def script(self) -> Path:
        return self.bindir / ("aqpim-sim.exe" if os.name == "nt" else "aqpim-sim")

    def env(self) -> dict[str, str]:
        """The environment a user's shell would give the command: no PYTHON* variables from the test runner."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", PATH=f"{self.bindir}{os.pathsep}{env.get('PATH', '')}")
        return env


def version(dist: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in metadata.version(dist).split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return ()


def can_install() -> str | None:
    """None, or why an installed wheel cannot be made here."""
    return None if version("pip") >= (22, 3) else "needs pip >= 22.3 (pip --python)"


def _can_build_without_isolation() -> bool:
    setuptools = version("setuptools")
    return setuptools >= (70, 1) or (setuptools >= (61,) and util.find_spec("wheel") is not None)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, **kw)


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    local = ["--no-build-isolation", "--no-index"] if _can_build_without_isolation() else []
    out = tmp / "dist"
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", *local,
             "-w", str(out), str(src)])
    assert r.returncode == 0, f"wheel build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (wheel,) = out.glob("aqpim_sim-*.whl")
    return wheel


def venv_with_running_deps(tmp: Path) -> tuple[Path, Path]:
    venv = tmp / "venv"
    r = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert r.returncode == 0, r.stderr
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    deps = [p for p in sys.path if p and Path(p).is_dir() and Path(p).name in ("site-packages", "dist-packages")]
    assert deps, sys.path
    Path(site, "running-interpreter-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return python, bindir


def install(tmp: Path) -> Installed:
    """Build the wheel from a copy of the sources and install it into a fresh venv under ``tmp``."""
    t0 = time.perf_counter()
    wheel = build_wheel(tmp)
    python, bindir = venv_with_running_deps(tmp)
    r = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
             "--ignore-installed", "--disable-pip-version-check", str(wheel)])
    assert r.returncode == 0, f"install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return Installed(python, bindir, python.parent.parent, time.perf_counter() - t0)
