"""What every system shares: the batch of one decode step, the capacity report, and the system interface.

A system is one file in this package and one line in the registry (``sim/systems/__init__.py``). It gives
``step(batch)``, a SimPy process generator for one decode step on a ``Machine``, and ``capacity(...)``, where its
KV cache lives and whether everything fits. Its closed-form twin lives in ``sim/analytic.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workloads.models import ModelSpec


@dataclass(frozen=True)
class StepBatch:
    """The sequences decoded in one step: how many, the KV tokens they attend in total (window applied), and
    each sequence's attended tokens (``kept``) for systems that place sequences on channels."""

    n_seqs: int
    kv_tokens: int
    max_context: int
    kept: np.ndarray = field(compare=False, repr=False, default=None)

    @classmethod
    def from_contexts(cls, model: ModelSpec, contexts: np.ndarray) -> StepBatch:
        kept = contexts if model.sliding_window is None else np.minimum(contexts, model.sliding_window)
        return cls(int(contexts.size), int(kept.sum()), int(contexts.max()), np.asarray(kept, dtype=np.int64))

    def split(self, parts: int) -> list[StepBatch]:
        """Consecutive sub-batches of near-equal size (fewer when there are fewer sequences than parts)."""
        chunks = [c for c in np.array_split(self.kept, min(parts, self.n_seqs)) if c.size]
        return [StepBatch(int(c.size), int(c.sum()), int(c.max()), c) for c in chunks]


@dataclass(frozen=True)
class Capacity:
    """Where the KV cache lives and whether the peak working set fits every memory that holds part of it."""

    kv_location: str
    kv_bytes: float
    fits: bool
    reasons: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"
