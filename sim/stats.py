"""Streaming statistics of a run's decode steps: each step is folded in as it ends, so memory does not grow with
the number of steps.

``StepStats`` keeps what the Result reports about steps: counts and sums (mean step latency, closed-form mean,
tokens, the token-weighted mean time to next token), the fastest and slowest step, the largest batch, whether
every step's closed form was exact (a running AND), and how far simulation and closed form drifted apart (the
largest relative gap over steps, and the largest shortfall of the simulation below the closed form). All of these
are exact: sums are taken in step order, as sums over the old per-step lists were.

Percentiles of time to next token (each step's latency counted once per sequence in it) need the values.
``WeightedQuantiles`` keeps them exactly (as (value, weight) pairs) for the first ``EXACT_STEPS`` values, and
gives the same percentile as a sort of all values would; beyond that it folds them into a histogram of
log-spaced bins, bin i holding the values in (gamma^(i-1), gamma^i] with gamma = (1 + a) / (1 - a), reported at
2 gamma^i / (gamma + 1). Every value in a bin lies within a relative ``a`` = ``REL_ERROR`` of that
representative, and binning keeps the order of values, so the weighted percentile found among bins is the bin
that holds the exact percentile: the reported percentile is within ``REL_ERROR`` (relative) of the exact one, up
to floating-point rounding of the bin index. Memory: at most ``EXACT_STEPS`` pairs (16 bytes each), then 8 bytes
per bin from the smallest to the largest value seen, ln(largest / smallest) / ln(gamma) bins: 3,500 bins (28 kB)
for latencies spanning 1,000x, whatever the number of steps.
"""

from __future__ import annotations

import math
from array import array

REL_ERROR = 1e-3    # percentiles beyond EXACT_STEPS values are within 0.1 % of the exact ones
EXACT_STEPS = 1024  # values kept exactly before folding into the histogram


class WeightedQuantiles:
    """Weighted percentiles of a stream of non-negative values in bounded memory (see the module docstring)."""

    __slots__ = ("rel_error", "exact_limit", "values", "weights", "bins", "first_bin", "zero_weight",
                 "total_weight", "_log_gamma", "_gamma")

    def __init__(self, rel_error: float = REL_ERROR, exact_limit: int = EXACT_STEPS):
        if not 0 < rel_error < 1:
            raise ValueError(f"rel_error must be in (0, 1), got {rel_error}")
        self.rel_error = rel_error
        self.exact_limit = exact_limit
        self.values: array | None = array("d")  # exact (value, weight) pairs until exact_limit; None after
        self.weights = array("d")
        self.bins = array("d")                   # weight of bin first_bin + k at k, once values is None
        self.first_bin = 0
        self.zero_weight = 0.0                   # weight of values equal to 0 (no bin holds 0)
        self.total_weight = 0.0
        self._gamma = (1 + rel_error) / (1 - rel_error)
        self._log_gamma = math.log(self._gamma)

    @property
    def exact(self) -> bool:
        """Whether percentiles are still computed from every value."""
        return self.values is not None

    def add(self, value: float, weight: float = 1.0) -> None:
        if not value >= 0:
            raise ValueError(f"values must be non-negative numbers, got {value}")
        if weight <= 0:
            return
        self.total_weight += weight
        if self.values is not None:
            self.values.append(value)
            self.weights.append(weight)
            if len(self.values) > self.exact_limit:
                values, weights, self.values, self.weights = self.values, self.weights, None, array("d")
                for v, w in zip(values, weights, strict=True):
                    self._bin(v, w)
            return
        self._bin(value, weight)

    def _bin(self, value: float, weight: float) -> None:
        if value == 0:
            self.zero_weight += weight
            return
        i = math.ceil(math.log(value) / self._log_gamma)
        bins = self.bins
        if not bins:
            self.first_bin = i
            bins.append(0.0)
        elif i < self.first_bin:
            self.bins = bins = array("d", bytes(8 * (self.first_bin - i))) + bins
            self.first_bin = i
        elif i >= self.first_bin + len(bins):
            bins.extend(array("d", bytes(8 * (i - self.first_bin - len(bins) + 1))))
        bins[i - self.first_bin] += weight

    def percentile(self, q: float) -> float:
        """The smallest value whose cumulative weight (values in increasing order) reaches q % of the total;
        0.0 when nothing was added."""
        if self.total_weight <= 0:
            return 0.0
        target = q / 100.0 * self.total_weight
        if self.values is not None:
            order = sorted(range(len(self.values)), key=self.values.__getitem__)
            cum = 0.0
            for k in order:
                cum += self.weights[k]
                if cum >= target:
                    return self.values[k]
            return self.values[order[-1]]
        cum = self.zero_weight
        if cum > 0 and cum >= target:
            return 0.0
        last = 0
        for k, w in enumerate(self.bins):
            if w:
                cum += w
                last = k
                if cum >= target:
                    return self._representative(self.first_bin + k)
        return self._representative(self.first_bin + last)

    def _representative(self, i: int) -> float:
        return 2.0 * self._gamma ** i / (self._gamma + 1.0)


class StepStats:
    """Running aggregates of a run's steps (see the module docstring); ``add`` once per finished step."""

    def __init__(self, rel_error: float = REL_ERROR, exact_limit: int = EXACT_STEPS):
        self.steps = 0
        self.tokens = 0
        self.latency_sum_s = 0.0
        self.analytic_sum_s = 0.0
        self.token_latency_sum_s = 0.0     # sum over steps of latency x sequences
        self.latency_min_s = math.inf
        self.latency_max_s = 0.0
        self.peak_batch = 0
        self.analytic_exact = True
        self.max_rel_gap = 0.0             # max |simulated - analytic| / analytic
        self.max_rel_undershoot = 0.0      # max (analytic - simulated) / analytic, 0 if never below
        self.ttnt = WeightedQuantiles(rel_error, exact_limit)

    def add(self, latency_s: float, analytic_s: float, exact: bool, n_seqs: int) -> None:
        self.steps += 1
        self.tokens += n_seqs
        self.latency_sum_s += latency_s
        self.analytic_sum_s += analytic_s
        self.token_latency_sum_s += latency_s * n_seqs
        self.latency_min_s = min(self.latency_min_s, latency_s)
        self.latency_max_s = max(self.latency_max_s, latency_s)
        self.peak_batch = max(self.peak_batch, n_seqs)
        self.analytic_exact = self.analytic_exact and exact
        if analytic_s > 0:
            self.max_rel_gap = max(self.max_rel_gap, abs(latency_s - analytic_s) / analytic_s)
            self.max_rel_undershoot = max(self.max_rel_undershoot, (analytic_s - latency_s) / analytic_s)
        self.ttnt.add(latency_s, n_seqs)


class RequestStats:
    """Running aggregates of a run's finished requests (docs/metrics.md, "Requests"): counts and output tokens,
    percentiles of queueing delay, TTFT, TPOT and end-to-end latency (``WeightedQuantiles``, each request weight
    1; TPOT only for requests of two or more output tokens), SLO attainment and goodput tokens; and the prefill
    steps (count, tokens, time, closed-form sum, largest shortfall of the simulation below it). ``add`` takes a
    ``workloads.traces.RequestRecord``."""

    def __init__(self, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
                 rel_error: float = REL_ERROR, exact_limit: int = EXACT_STEPS):
        self.slo_ttft_s, self.slo_tpot_s = slo_ttft_s, slo_tpot_s
        self.requests = 0
        self.output_tokens = 0
        self.met_slo = 0
        self.goodput_tokens = 0
        self.first_arrival_s = math.inf
        self.last_finish_s = 0.0
        self.sums = {"queue": 0.0, "ttft": 0.0, "tpot": 0.0, "e2e": 0.0}
        self.tpot_requests = 0
        self.q = {name: WeightedQuantiles(rel_error, exact_limit) for name in self.sums}
        self.prefill_steps = 0
        self.prefill_tokens = 0
        self.prefill_s = 0.0
        self.prefill_analytic_s = 0.0
        self.prefill_exact = True
        self.prefill_max_rel_undershoot = 0.0

    def add(self, r) -> None:
        self.requests += 1
        self.output_tokens += r.output_tokens
        self.first_arrival_s = min(self.first_arrival_s, r.arrival_s)
        self.last_finish_s = max(self.last_finish_s, r.finish_s)
        values = {"queue": r.queue_s, "ttft": r.ttft_s, "e2e": r.e2e_s, "tpot": r.tpot_s}
        for name, v in values.items():
            if v is None:
                continue
            v = max(0.0, v)  # a difference of equal times may round below 0
            self.sums[name] += v
            self.q[name].add(v)
        if r.tpot_s is not None:
            self.tpot_requests += 1
        ok = ((self.slo_ttft_s is None or r.ttft_s <= self.slo_ttft_s)
              and (self.slo_tpot_s is None or r.tpot_s is None or r.tpot_s <= self.slo_tpot_s))
        if ok:
            self.met_slo += 1
            self.goodput_tokens += r.output_tokens

    def add_prefill(self, tokens: int, latency_s: float, analytic_s: float, exact: bool) -> None:
        self.prefill_steps += 1
        self.prefill_tokens += tokens
        self.prefill_s += latency_s
        self.prefill_analytic_s += analytic_s
        self.prefill_exact = self.prefill_exact and exact
        if analytic_s > 0:
            self.prefill_max_rel_undershoot = max(self.prefill_max_rel_undershoot, (analytic_s - latency_s) / analytic_s)

    def mean(self, name: str) -> float:
        n = self.tpot_requests if name == "tpot" else self.requests
        return self.sums[name] / n if n else 0.0
