"""User-facing errors of the workload layer: bad model specs, traces or KV formats."""


class WorkloadError(ValueError):
    """A model, trace or KV-format input is invalid; the message says which and why."""
