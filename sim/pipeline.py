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

Energy: every GPU does the last stage's work but the head, so the run's dynamic energy is the ranks times the
simulated stage's, less the head's kernels on the GPUs of the other stages (``PipelineStepper.head_energy_j``).

Traces show every stage (``PipelineTrace``): in a traced step micro-batch k reached the last stage at ``ready_k``,
so stage s ran it from ``ready_k - (pp - 1 - s) x (stage_k + hop)`` for ``stage_k``, the same work as the last
stage's pass without the head; its spans are the last stage's moved to that start, and the hops between stages are
spans of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hw_models.interconnect import p2p_time_s
from sim.engine import Span
from sim.systems.base import Estimate, SeqsCache, StepBatch, dense_works, total_s

P2P_LANE = "gpu.p2p"   # the hops' spans: on the sending GPU, a lane of their own
P2P_KIND = "pp_send"


@dataclass(frozen=True)
class StagePass:
    """One micro-batch's pass through the simulated last stage in a traced step."""

    step: int
    arrive_s: float   # when it reached the last stage (it may have waited for the one before it)
    start_s: float
    end_s: float
    stage_s: float    # an earlier stage's time on it: the closed form without the head
    hop_s: float      # one hop of its activations between stages


@dataclass
class PipelineTrace:
    """What a trace needs to draw every stage of a pipeline-parallel run: the last stage's passes in traced steps
    and which span kinds are the head's (run by the last stage only)."""

    pp: int
    head_kinds: frozenset
    passes: list[StagePass] = field(default_factory=list)

    def staged_spans(self, spans: list[Span]) -> list[tuple[int, Span]]:
        """(stage, span) for every stage: the simulated spans as the last stage's, each earlier stage's work on a
        micro-batch as the last stage's spans of that pass (without the head) moved to when that stage ran it,
        and a ``pp_send`` span on ``gpu.p2p`` for each hop (the last stage's carries the sampled token back to
        the first). Spans outside every pass stay on the last stage."""
        last = self.pp - 1
        out = [(last, s) for s in spans]
        by_step: dict[int, list[Span]] = {}
        for s in spans:
            by_step.setdefault(s.step, []).append(s)
        for p in self.passes:
            inside = [s for s in by_step.get(p.step, ())
                      if p.start_s <= s.start_s < p.end_s and s.kind not in self.head_kinds]
            for stage in range(last):
                begin = p.arrive_s - (last - stage) * (p.stage_s + p.hop_s)
                shift = begin - p.start_s
                out.extend((stage, replace(s, start_s=s.start_s + shift, end_s=s.end_s + shift)) for s in inside)
                send = begin + p.stage_s
                out.append((stage, Span(p.step, P2P_LANE, P2P_KIND, send, send + p.hop_s, 0.0, 0.0, 0.0)))
            out.append((last, Span(p.step, P2P_LANE, P2P_KIND, p.end_s, p.end_s + p.hop_s, 0.0, 0.0, 0.0)))
        return out


@dataclass
class PipelineEntry:
    """One decode step of the pipeline: its micro-batches' stage entries, their delays, and the step's closed form
    from the current clock."""

    entries: list
    loop_s: list[float]      # pp hops + (pp - 1) stages without the head: from leaving this stage to coming back
    stage_s: list[float]     # an earlier stage's time on each micro-batch
    hop_s: list[float]
    head_j: list[float]      # the LM head's GPU energy on each micro-batch (the last stage's alone)
    estimate: Estimate


class PipelineStepper:
    """A ``sim.fastpath.Stepper`` for the pipeline's last stage: the driver's ``entry`` / ``run`` pair."""

    def __init__(self, stepper, system, pp: int, micro_batches: int):
        self.inner, self.system, self.pp, self.micro_batches = stepper, system, pp, micro_batches
        self.env = stepper.env
        self.ready: dict[int, float] = {}  # micro-batch index -> when it next reaches this stage
        self.started = False
        self._head = SeqsCache()  # (seconds, joules) of the LM head's kernels per micro-batch size
        self.head_energy_j = 0.0  # GPU energy of the head's kernels run so far: only the last stage spends it
        self.tracer = system.machine.tracer
        head = dense_works(system.machine.params, system.model, 1).head
        self.trace = PipelineTrace(pp, frozenset(w.kind for w in head))

    def _head_cost(self, n_seqs: int) -> tuple[float, float]:
        def cost(n):
            works = dense_works(self.system.machine.params, self.system.model, n).head
            return total_s(works), sum(w.energy_j for w in works)
        return self._head.get_or(n_seqs, cost)

    def _stage_s(self, entry, n_seqs: int) -> float:
        """The stage's time for a micro-batch without the LM head: what every other stage takes."""
        return max(0.0, entry.estimate.latency_s - self._head_cost(n_seqs)[0])

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
        head_j = [self._head_cost(s.n_seqs)[1] for s in subs]
        return PipelineEntry(entries, loop, stage, hops, head_j, Estimate(t - now, exact))

    def run(self, pe: PipelineEntry):
        """Generator for the driver: the micro-batches through this stage in order, each when it has arrived."""
        env = self.env
        self.started = True
        for k, e in enumerate(pe.entries):
            arrive = self.ready.get(k, env.now)
            if arrive > env.now:
                yield env.timeout(arrive - env.now)
            start = env.now
            yield from self.inner.run(e)
            self.head_energy_j += pe.head_j[k]
            if self.tracer.keeping:
                self.trace.passes.append(StagePass(self.tracer.step, arrive, start, env.now, pe.stage_s[k],
                                                   pe.hop_s[k]))
            self.ready[k] = env.now + pe.loop_s[k]
