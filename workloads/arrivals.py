"""Synthetic request streams: an arrival process and a length distribution for prompts and for outputs.

``generate_requests`` yields ``Request``s lazily, in arrival order, drawing ``chunk`` requests at a time with
numpy, so memory does not grow with the number of requests. Everything is drawn from the run's
``numpy.random.Generator``: arrivals from the generator itself, prompt and output lengths from two children
spawned from it (``Generator.spawn``), so changing a length distribution leaves the arrival times as they were
(and the default fixed lengths draw nothing). The chunk size does not change the stream: draws are consumed in
the same order, and the running sum of inter-arrival times carries across chunks exactly (one sequential sum).

Arrival processes (``rate`` requests per second; 0: every request at t=0):
* ``poisson``: exponential inter-arrival times of mean 1/rate (coefficient of variation 1);
* ``gamma``: gamma inter-arrival times of mean 1/rate and coefficient of variation ``cv`` (shape 1/cv^2,
  scale cv^2/rate): cv > 1 is burstier than Poisson (BurstGPT fits its traces this way), cv < 1 more regular,
  cv = 1 is Poisson in distribution (not in its draws).

Length distributions, written ``kind:parameters`` (``LengthDist.parse``):
* ``fixed:N``: always N tokens;
* ``uniform:LO,HI``: a whole number from LO to HI, both included, each equally likely;
* ``lognormal:MEAN,SIGMA[,MAX]``: exp(normal(mu, SIGMA)) with mu = ln(MEAN) - SIGMA^2/2, so MEAN is the mean
  of the unrounded distribution; rounded to the nearest whole number and clipped to [1, MAX] (MAX default 2^30);
* ``empirical:PATH``: drawn uniformly, with replacement, from the prompt (or output) lengths of a trace file in
  any layout ``workloads.trace_formats`` reads (its arrivals are not used; its skipped rows are not drawn).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.errors import WorkloadError
from workloads.trace_formats import read_trace
from workloads.traces import MAX_ARRIVAL_S, MAX_TOKENS, Request

ARRIVAL_PROCESSES = ("poisson", "gamma")
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "empirical")
CHUNK = 4096
MIN_CV, MAX_CV = 0.01, 100.0


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution (see the module docstring for the kinds and their parameters)."""

    kind: str
    params: tuple[float, ...] = ()
    path: str | None = None

    @classmethod
    def parse(cls, text: str, name: str = "length distribution") -> LengthDist:
        """``kind:params`` -> LengthDist, or a one-line WorkloadError naming ``name``."""
        kind, sep, rest = text.partition(":")
        kind = kind.strip()
        if kind not in LENGTH_KINDS:
            raise WorkloadError(f"{name}: unknown distribution '{kind}'{_did_you_mean(kind, LENGTH_KINDS)}; "
                                f"write fixed:N, uniform:LO,HI, lognormal:MEAN,SIGMA[,MAX] or empirical:PATH")
        if kind == "empirical":
            if not rest.strip():
                raise WorkloadError(f"{name}: empirical needs a trace file, as empirical:PATH")
            return cls(kind, (), rest.strip())
        arity = {"fixed": (1,), "uniform": (2,), "lognormal": (2, 3)}[kind]
        usage = {"fixed": "fixed:N", "uniform": "uniform:LO,HI", "lognormal": "lognormal:MEAN,SIGMA[,MAX]"}[kind]
        parts = [x.strip() for x in rest.split(",")] if sep else []
        if len(parts) not in arity or not all(parts):
            raise WorkloadError(f"{name}: write {usage}, got {text!r}")
        try:
            values = [float(x) for x in parts]
        except ValueError:
            raise WorkloadError(f"{name}: {usage} takes numbers, got {text!r}") from None
        if not all(np.isfinite(values)):
            raise WorkloadError(f"{name}: {usage} takes finite numbers, got {text!r}")
        whole = values if kind != "lognormal" else values[2:]
        if any(not v.is_integer() or not 1 <= v <= MAX_TOKENS for v in whole):
            raise WorkloadError(f"{name}: token counts in {usage} must be whole numbers from 1 to {MAX_TOKENS}, "
                                f"got {text!r}")
        if kind == "uniform" and values[0] > values[1]:
            raise WorkloadError(f"{name}: uniform:LO,HI needs LO <= HI, got {text!r}")
        if kind == "lognormal":
            mean, sigma = values[:2]
            if not 1 <= mean <= MAX_TOKENS or not 0 <= sigma <= 10:
                raise WorkloadError(f"{name}: lognormal:MEAN,SIGMA needs MEAN from 1 to {MAX_TOKENS} and SIGMA "
                                    f"from 0 to 10, got {text!r}")
        return cls(kind, tuple(values))

    def sampler(self, rng: np.random.Generator, column: str) -> Callable[[int], np.ndarray]:
        """A function n -> n lengths (int64). ``column``: prompt_tokens or output_tokens (for empirical)."""
        if self.kind == "fixed":
            n_tokens = int(self.params[0])
            return lambda n: np.full(n, n_tokens, dtype=np.int64)
        if self.kind == "uniform":
            lo, hi = int(self.params[0]), int(self.params[1])
            return lambda n: rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)
        if self.kind == "lognormal":
            mean, sigma = self.params[:2]
            top = int(self.params[2]) if len(self.params) > 2 else MAX_TOKENS
            mu = float(np.log(mean) - sigma * sigma / 2)
            return lambda n: np.clip(np.rint(rng.lognormal(mu, sigma, size=n)), 1, top).astype(np.int64)
        pool = self.values(column)
        return lambda n: pool[rng.integers(0, pool.size, size=n)]

    def values(self, column: str) -> np.ndarray:
        """The empirical pool: one column of the trace file's usable rows."""
        reqs = read_trace(Path(self.path)).requests
        return np.fromiter((getattr(r, column) for r in reqs), dtype=np.int64, count=len(reqs))

    def bounds(self) -> tuple[int, int] | None:
        """Smallest and largest length it can give (None for empirical: that depends on the file)."""
        if self.kind == "fixed":
            return int(self.params[0]), int(self.params[0])
        if self.kind == "uniform":
            return int(self.params[0]), int(self.params[1])
        if self.kind == "lognormal":
            return 1, int(self.params[2]) if len(self.params) > 2 else MAX_TOKENS
        return None


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_arrivals(process: str, rate_per_s: float, cv: float | None) -> None:
    if process not in ARRIVAL_PROCESSES:
        raise WorkloadError(f"arrival process must be one of {', '.join(ARRIVAL_PROCESSES)}, got {process!r}")
    if not rate_per_s >= 0:
        raise WorkloadError(f"arrival rate must be >= 0, got {rate_per_s}")
    if process == "gamma":
        if rate_per_s == 0:
            raise WorkloadError("gamma arrivals need an arrival rate above 0")
        if cv is None or not MIN_CV <= cv <= MAX_CV:
            raise WorkloadError(f"gamma arrivals need a coefficient of variation from {MIN_CV:g} to {MAX_CV:g}, "
                                f"got {cv!r}")


def inter_arrivals(process: str, rate_per_s: float, cv: float | None, rng: np.random.Generator,
                   n: int) -> np.ndarray:
    """``n`` inter-arrival times in seconds."""
    if rate_per_s == 0:
        return np.zeros(n)
    if process == "poisson":
        return rng.exponential(1.0 / rate_per_s, size=n)
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / (rate_per_s * shape), size=n)


def generate_requests(n: int, rate_per_s: float, prompt: LengthDist, output: LengthDist,
                      rng: np.random.Generator, process: str = "poisson", cv: float | None = None,
                      chunk: int = CHUNK) -> Iterator[Request]:
    """``n`` requests in arrival order, drawn ``chunk`` at a time (see the module docstring)."""
    if not isinstance(n, int) or n <= 0:
        raise WorkloadError(f"requests must be a positive integer, got {n}")
    if chunk <= 0:
        raise WorkloadError(f"chunk must be positive, got {chunk}")
    check_arrivals(process, rate_per_s, cv)
    prompt_rng, output_rng = (None, None)
    if prompt.kind != "fixed" or output.kind != "fixed":
        prompt_rng, output_rng = rng.spawn(2)
    draw_prompt = prompt.sampler(prompt_rng, "prompt_tokens")   # fixed draws nothing
    draw_output = output.sampler(output_rng, "output_tokens")
    return _stream(n, rate_per_s, process, cv, rng, draw_prompt, draw_output, chunk)


def _stream(n, rate_per_s, process, cv, rng, draw_prompt, draw_output, chunk) -> Iterator[Request]:
    last = 0.0
    done = 0
    while done < n:
        m = min(chunk, n - done)
        gaps = inter_arrivals(process, rate_per_s, cv, rng, m)
        # One sequential sum across chunks: cumsum([last, g0, g1, ...]) adds in the same order as one big cumsum.
        arrivals = np.cumsum(np.concatenate(([last], gaps)))[1:] if done else np.cumsum(gaps)
        prompts, outputs = draw_prompt(m), draw_output(m)
        if arrivals[-1] > MAX_ARRIVAL_S:
            raise WorkloadError(f"synthetic arrivals reach {arrivals[-1]:g} s, beyond {MAX_ARRIVAL_S:g} s; "
                                f"raise the arrival rate or ask fewer requests")
        for a, p, o in zip(arrivals.tolist(), prompts.tolist(), outputs.tolist(), strict=True):
            yield Request(a, p, o)
        last = float(arrivals[-1])
        done += m


def synthetic_requests(n: int, prompt_tokens: int, output_tokens: int, arrival_rate_per_s: float,
                       rng: np.random.Generator) -> list[Request]:
    """``n`` requests with Poisson arrivals at ``arrival_rate_per_s`` (0: all at t=0) and fixed lengths, as a list:
    ``generate_requests`` with fixed lengths, drawn at once."""
    if not isinstance(n, int) or n <= 0:
        raise WorkloadError(f"requests must be a positive integer, got {n}")
    if arrival_rate_per_s < 0:
        raise WorkloadError(f"arrival_rate_per_s must be >= 0, got {arrival_rate_per_s}")
    return list(generate_requests(n, arrival_rate_per_s, LengthDist("fixed", (prompt_tokens,)),
                                  LengthDist("fixed", (output_tokens,)), rng))
