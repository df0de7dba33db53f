"""User-facing errors of the hardware layer: bad parameters or preset files."""


class HardwareError(ValueError):
    """A hardware parameter, preset name or preset file is invalid; the message says which and why."""
