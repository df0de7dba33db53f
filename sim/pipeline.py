"""Pipeline parallelism: the last stage simulated, the rest of the pipeline as the delay it puts on each micro-batch.

With ``pp`` stages each GPU holds ceil(layers / pp) consecutive layers (``ModelSpec.stage``); the batch is cut into
``micro_batches`` micro-batches that flow through the stages one after another, each stage taking them in order.
The last stage also runs the LM head, so it is the slowest, and it is the one simulated (on the machine's rank
view, as tensor parallelism's ranks are). A micro-batch that leaves it at time ``t`` comes back when its sampled
token has gone to the first stage and through the ``pp - 1`` stages before the last, each a hop on the
interconnect (``p2p_time_s`` of its activations) and the stage's work on it (this stage's closed form without the
head):

    ready = t + pp x hop + (pp - 1) x stage_without_head

In the first decode step the micro-batches leave the first stage back to back, so micro-batch k arrives at
sum_{j<k} stage_j + (pp - 1) x (stage_k + hop). Because the last stage is the slowest, no micro-batch waits at
another stage and these delays are exact; the step (every sequence one token) ends when the last micro-batch
leaves the last stage. Its closed form is the same recurrence over the micro-batches' closed forms:
t = max(t, ready_k) + stage_k, exact when theirs are.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw_models.interconnect import p2p_time_s
from sim.systems.base import Estimate, SeqsCache, StepBatch, dense_works, total_s


@dataclass
class PipelineEntry:
    """One decode step of the pipeline: its micro-batches' stage entries, their delays, and the step's closed form
    from the current clock."""

    entries: list
    loop_s: list[float]      # pp hops + (pp - 1) stages without the head: from leaving this stage to coming back
    estimate: Estimate


class PipelineStepper:
    """A ``sim.fastpath.Stepper`` for the pipeline's last stage: the driver's ``entry`` / ``run`` pair."""

    def __init__(self, stepper, system, pp: int, micro_batches: int):
        self.inner, self.system, self.pp, self.micro_batches = stepper, system, pp, micro_batches
        self.env = stepper.env
        self.ready: dict[int, float] = {}  # micro-batch index -> when it next reaches this stage
        self.started = False
        self._head_s = SeqsCache()  # the LM head's kernels per micro-batch size (only the last stage runs them)

    def _stage_s(self, entry, n_seqs: int) -> float:
        """The stage's time for a micro-batch without the LM head: what every other stage takes."""
        head = self._head_s.get_or(n_seqs, lambda n: total_s(dense_works(self.system.machine.params,
                                                                             self.system.model, n).head))
        return max(0.0, entry.estimate.latency_s - head)

    def _hop_s(self, n_seqs: int) -> float:
        m, model = self.system.machine.params, self.system.model
        return p2p_time_s(m.interconnect, n_seqs * model.hidden_size * model.bytes_per_element)

    def entry(self, batch: StepBatch) -> PipelineEntry:
        subs = batch.split(self.micro_batches)
        entries = [self.inner.entry(s) for s in subs]
        stage = [self._stage_s(e, s.n_seqs) for e, s in zip(entries, subs, strict=True)]
        hops = [self._hop_s(s.n_seqs) for s in subs]
        pp, now = self.pp, self.env.now
        if not self.started:  # first step: the micro-batches fill the pipeline
            first = 0.0
            for k, (st, hop) in enumerate(zip(stage, hops, strict=True)):
                self.ready[k] = now + first + (pp - 1) * (st + hop)
                first += st
        t, exact = now, True
        for k, e in enumerate(entries):
            t = max(t, self.ready.get(k, now)) + e.estimate.latency_s
            exact = exact and e.estimate.exact
        loop = [pp * hop + (pp - 1) * st for st, hop in zip(stage, hops, strict=True)]
        return PipelineEntry(entries, loop, Estimate(t - now, exact))

    def run(self, pe: PipelineEntry):
        """Generator for the driver: the micro-batches through this stage in order, each when it has arrived."""
        env = self.env
        self.started = True
        for k, e in enumerate(pe.entries):
            wait = self.ready.get(k, env.now) - env.now
            if wait > 0:
                yield env.timeout(wait)
            yield from self.inner.run(e)
            self.ready[k] = env.now + pe.loop_s[k]
