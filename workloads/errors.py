"""User-facing errors of the workload layer: bad model specs, traces or KV formats."""

import difflib


class WorkloadError(ValueError):
    """A model, trace or KV-format input is invalid; the message says which and why."""


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
