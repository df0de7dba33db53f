"""User-facing errors of the simulator layer, and the tuple of every layer's input errors the CLI reports."""

from pathlib import Path

from hw_models.errors import HardwareError
from sim.results import ResultsError
from workloads.errors import WorkloadError


class ConfigError(ValueError):
    """A run configuration is invalid (unknown key, bad value, conflicting options); the message says which."""


class OutputError(ValueError):
    """An output file or folder cannot be written (a file where a folder should be, no permission, disk full)."""


def output_error(path, e: OSError) -> OutputError:
    """The one-line error for an OS error while writing ``path``: a file in the way of a folder is named."""
    reason = e.strerror or str(e)
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                reason = f"{parent} is a file, not a folder"
            break
    return OutputError(f"cannot write {path}: {reason}")


INPUT_ERRORS = (ConfigError, HardwareError, WorkloadError, ResultsError, OutputError)
