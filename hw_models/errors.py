"""User-facing errors of the hardware layer: bad parameters or preset files."""

import difflib


class HardwareError(ValueError):
    """A hardware parameter, preset name or preset file is invalid; the message says which and why."""


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
