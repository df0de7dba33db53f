"""User-facing errors of the simulator layer, and the tuple of every layer's input errors the CLI reports."""

from hw_models.errors import HardwareError
from sim.results import ResultsError
from workloads.errors import WorkloadError


class ConfigError(ValueError):
    """A run configuration is invalid (unknown key, bad value, conflicting options); the message says which."""


INPUT_ERRORS = (ConfigError, HardwareError, WorkloadError, ResultsError)
