"""Run configuration: the settings every run shares, plus the chosen system's own options.

``RunConfig`` holds what all systems share (model, machine, workload, seed, tracing), declared with
``sim.options.option``, and ``options``: an instance of the system's ``Options`` dataclass, where that system's
settings and their defaults live. A flat mapping (a TOML run file, the CLI flags, a sweep point) becomes a
RunConfig through ``from_mapping``, which sends each key to the shared part or to the system's options; a key
that belongs to another system's options is an error naming the systems that have it, so an option that does
nothing is never accepted silently and never enters a sweep key. ``to_dict`` gives the flat mapping back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hw_models.loading import did_you_mean, read_toml
from hw_models.machine import DEFAULT_MACHINE
from sim.errors import ConfigError
from sim.fastpath import DETAILS
from sim.options import Options, check_value, flag_of, option, specs
from sim.systems import SYSTEMS
from workloads.arrivals import ARRIVAL_PROCESSES, MAX_CV, MIN_CV, LengthDist
from workloads.errors import WorkloadError

DEFAULT_STEPS = 8
PREFILL_MODES = ("none", "first", "chunked")
PATH_KEYS = (("trace", None), ("hardware", ".toml"), ("model", ".json"))
DIST_KEYS = ("prompt_dist", "output_dist")


@dataclass(frozen=True)
class RunConfig(Options):
    system: str = option("offload", "which system to simulate")
    model: str = option("llama-3.1-8b", "model preset name or path to a Hugging Face config.json")
    hardware: str = option(DEFAULT_MACHINE, "machine preset name or path to a .toml file")
    tp: int = option(1, "tensor parallelism: GPUs that split every layer's heads and FFN columns (all-reduce after "
                     "attention and after the FFN); the machine must have that many GPUs", minimum=1, maximum=64,
                     limit=1024)
    pp: int = option(1, "pipeline parallelism: GPUs that each hold a consecutive share of the layers; the batch "
                     "flows through them in micro-batches (with --tp: tp x pp GPUs)", minimum=1, maximum=64,
                     limit=1024)
    micro_batches: int | None = option(None, "pipeline parallelism: micro-batches the batch is split into "
                                       "(default: pp)", minimum=1, maximum=4096, limit=2**20)
    # Workload: a fixed batch x context x steps, or a request list (trace file or synthetic) batched continuously.
    batch: int = option(16, "sequences decoded together", minimum=1, maximum=4096, limit=2**20)
    context: int = option(32768, "KV tokens per sequence at the first step", unit="tokens", minimum=1,
                          maximum=2**24, limit=2**30)
    steps: int | None = option(None, f"decode steps (fixed batch: default {DEFAULT_STEPS}; with a request list: "
                                     f"a cap)", minimum=1, maximum=10**6, limit=10**9)
    trace: str | None = option(None, "request trace file: CSV (arrival_s,prompt_tokens,output_tokens; the Azure LLM "
                                     "inference trace; BurstGPT) or JSONL (docs/traces.md)")
    trace_time_scale: float = option(1.0, "trace: multiply every arrival time by this (0.5: twice as fast)",
                                     minimum=0, maximum=1e6, limit=1e9)
    trace_max_requests: int | None = option(None, "trace: read only the first N usable rows (file order)",
                                            minimum=1, maximum=10**7, limit=10**9)
    requests: int | None = option(None, "synthetic request list of this many requests (prompt = --context)",
                                  minimum=1, maximum=10**6, limit=10**8)
    output_tokens: int = option(128, "synthetic requests: tokens each decodes", unit="tokens", minimum=1,
                                maximum=2**24, limit=2**30)
    arrival_rate_per_s: float = option(0.0, "synthetic requests: Poisson arrivals per second (0: all at t=0)",
                                       unit="1/s", minimum=0, flag="--arrival-rate", maximum=1e6)
    arrival_process: str = option("poisson", "synthetic requests: inter-arrival times, exponential (poisson) or "
                                  "gamma with --arrival-cv", choices=ARRIVAL_PROCESSES)
    arrival_cv: float | None = option(None, "synthetic requests, gamma arrivals: coefficient of variation of the "
                                      "inter-arrival time (1: as Poisson; above 1: bursty)", minimum=MIN_CV,
                                      limit=MAX_CV)
    prompt_dist: str | None = option(None, "synthetic requests: prompt lengths, fixed:N, uniform:LO,HI, "
                                     "lognormal:MEAN,SIGMA[,MAX] or empirical:TRACE_FILE (default: --context)")
    output_dist: str | None = option(None, "synthetic requests: output lengths, as --prompt-dist (default: "
                                     "--output-tokens)")
    max_batch: int | None = option(None, "continuous batching limit (default: --batch)", minimum=1, maximum=4096,
                                   limit=2**20)
    prefill: str = option("none", "prefill in the timeline: none (prompt K/V taken to be in place), first (waiting "
                          "prompts prefilled whole before decoding resumes) or chunked (each step carries up to "
                          "--prefill-chunk-tokens prompt tokens beside its decode batch)", choices=PREFILL_MODES)
    prefill_chunk_tokens: int = option(512, "chunked prefill: prompt tokens per step (Sarathi-Serve, vLLM "
                                       "max_num_batched_tokens)", unit="tokens", minimum=1, maximum=2**20,
                                       limit=2**30)
    slo_ttft_s: float | None = option(None, "time-to-first-token SLO for attainment and goodput", unit="s",
                                      flag="--slo-ttft", minimum=0, maximum=1e6)
    slo_tpot_s: float | None = option(None, "time-per-output-token SLO for attainment and goodput", unit="s",
                                      flag="--slo-tpot", minimum=0, maximum=1e6)
    seed: int = option(0, "seed of the run's random generator", minimum=0, limit=2**63 - 1)
    trace_steps: int = option(4, "decode steps whose spans are kept for traces and timelines", minimum=0,
                              maximum=1000, limit=10**6)
    detail: str = option("auto", "auto: steps after the traced ones replay their identical layers from the first "
                         "(exact; overlapping schedules always run in full); full: simulate every layer of every "
                         "step with events", choices=DETAILS)
    allow_large: bool = option(False, "accept values above their sanity bounds (huge batches, contexts, step counts, "
                               "...), up to hard limits")
    options: Options | None = None  # the system's own options; None: its defaults

    def check(self) -> None:
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown system '{self.system}'{did_you_mean(self.system, SYSTEMS)}; "
                              f"valid systems: {', '.join(sorted(SYSTEMS))}")
        cls = SYSTEMS[self.system].Options
        if self.options is None:
            object.__setattr__(self, "options", cls())
        elif type(self.options) is not cls:
            raise ConfigError(f"system '{self.system}' takes {cls.__name__}, got {type(self.options).__name__}")
        if self.trace is not None and self.requests is not None:
            raise ConfigError("give either trace (a file) or requests (a synthetic list), not both")
        if self.micro_batches is not None and self.pp == 1:
            raise ConfigError("micro_batches (--micro-batches) applies only with pp (--pp) above 1")
        if self.pp > 1 and self.prefill != "none":
            # the pipeline model times decode micro-batches through the stages; prompts would need their own flow
            raise ConfigError(f"prefill {self.prefill} (--prefill) is not simulated with pipeline parallelism "
                              f"(--pp {self.pp}); use --prefill none, or --tp for the same GPUs")
        self._check_request_settings()
        self._check_serving_settings()
        self.options.check_run(self)

    def _check_request_settings(self) -> None:
        """Trace options need a trace, generator options need synthetic requests; both parse here."""
        if not self.trace_time_scale > 0:
            raise ConfigError(f"trace_time_scale must be above 0, got {self.trace_time_scale!r}")
        if self.trace is None:
            for key, unset in (("trace_time_scale", 1.0), ("trace_max_requests", None)):
                if getattr(self, key) != unset:
                    raise ConfigError(f"{key} ({flag_of(key, SHARED[key][3])}) applies only with trace (a file)")
        if self.requests is None:
            for key, unset in (("arrival_process", "poisson"), ("arrival_cv", None), ("prompt_dist", None),
                               ("output_dist", None)):
                if getattr(self, key) != unset:
                    raise ConfigError(f"{key} ({flag_of(key, SHARED[key][3])}) applies only to synthetic "
                                      f"requests (requests, --requests N)")
            return
        if self.arrival_process == "gamma":
            if self.arrival_cv is None:
                raise ConfigError("arrival_process gamma needs arrival_cv (--arrival-cv), the coefficient of "
                                  "variation of the inter-arrival time")
            if self.arrival_rate_per_s == 0:
                raise ConfigError("arrival_process gamma needs arrival_rate_per_s (--arrival-rate) above 0")
        elif self.arrival_cv is not None:
            raise ConfigError("arrival_cv (--arrival-cv) applies only with arrival_process gamma "
                              "(Poisson inter-arrival times have a coefficient of variation of 1)")
        self.length_dists()

    def _check_serving_settings(self) -> None:
        if self.prefill != "chunked" and self.prefill_chunk_tokens != SHARED["prefill_chunk_tokens"][2]:
            raise ConfigError("prefill_chunk_tokens (--prefill-chunk-tokens) applies only with prefill chunked")
        for key in ("slo_ttft_s", "slo_tpot_s"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ConfigError(f"{key} ({flag_of(key, SHARED[key][3])}) must be above 0 seconds, got {v!r}")

    def length_dists(self) -> tuple[LengthDist, LengthDist]:
        """Prompt and output length distributions of synthetic requests (default: fixed --context and
        --output-tokens)."""
        out = []
        for key, fixed in (("prompt_dist", self.context), ("output_dist", self.output_tokens)):
            text = getattr(self, key)
            try:
                out.append(LengthDist("fixed", (fixed,)) if text is None else LengthDist.parse(text, key))
            except WorkloadError as e:
                raise ConfigError(str(e)) from None
        return out[0], out[1]

    @property
    def uses_requests(self) -> bool:
        return self.trace is not None or self.requests is not None

    @property
    def effective_max_batch(self) -> int:
        return self.max_batch if self.max_batch is not None else self.batch

    def to_dict(self) -> dict:
        """The flat mapping: shared settings, then the system's options."""
        return {**Options.to_dict(self), **self.options.to_dict()}


SHARED = specs(RunConfig)


def option_owners() -> dict[str, list[str]]:
    """Every system option's name -> the registered systems that have it."""
    owners: dict[str, list[str]] = {}
    for name, cls in SYSTEMS.items():
        for key in specs(cls.Options):
            if key in SHARED:
                raise ConfigError(f"system '{name}': option '{key}' clashes with a shared run setting")
            owners.setdefault(key, []).append(name)
    return owners


def all_keys() -> list[str]:
    """Every key a run file, the CLI or a sweep may set: shared settings, then system options."""
    return list(SHARED) + [k for k in option_owners() if k not in SHARED]


def from_mapping(data: dict, where: str = "config", options_memo: dict | None = None) -> RunConfig:
    """Build a RunConfig from a flat mapping (TOML table or CLI values), with one-line errors. ``options_memo``:
    a dict in which a caller building many configurations (a sweep's points) keeps each distinct system's
    options once checked (they are frozen, so points may share them)."""
    system = data.get("system", SHARED["system"][2])
    if system not in SYSTEMS:
        raise ConfigError(f"{where}: unknown system '{system}'{did_you_mean(str(system), SYSTEMS)}; "
                          f"valid systems: {', '.join(sorted(SYSTEMS))}")
    mine = specs(SYSTEMS[system].Options)
    base, optional, _, spec = SHARED["allow_large"]
    allow_large = check_value("allow_large", data.get("allow_large", False), base, optional, spec, where)
    shared, opts = {}, {}
    for key, value in data.items():
        if key in SHARED:
            base, optional, _, spec = SHARED[key]
            shared[key] = check_value(key, value, base, optional, spec, where, allow_large)
        elif key in mine:
            base, optional, _, spec = mine[key]
            opts[key] = check_value(key, value, base, optional, spec, where, allow_large)
        elif key in (owners := option_owners()):
            spec = specs(SYSTEMS[owners[key][0]].Options)[key][3]
            raise ConfigError(f"{where}: '{key}' ({flag_of(key, spec)}) is an option of "
                              f"{', '.join(owners[key])}, not of {system}")
        else:
            keys = all_keys()
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, keys)}; valid keys: {', '.join(keys)}")
    try:
        if options_memo is None:
            options = SYSTEMS[system].Options(**opts)
        else:
            mkey = (system, tuple(sorted(opts.items())))
            options = options_memo.get(mkey)
            if options is None:
                options = options_memo[mkey] = SYSTEMS[system].Options(**opts)
        return RunConfig(**shared, options=options)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def make_config(**settings) -> RunConfig:
    """``from_mapping`` for Python callers: ``make_config(system="pim", batch=4, capacity_policy="limit")``."""
    return from_mapping(settings, where="configuration")


def resolve_paths(settings: dict, base_dir: Path) -> dict:
    """File paths in a run file or sweep file are relative to that file's folder; preset names are left alone."""
    out = dict(settings)
    for key, suffix in PATH_KEYS:
        v = out.get(key)
        if isinstance(v, str) and (suffix is None or v.endswith(suffix)) and not Path(v).is_absolute():
            out[key] = str((base_dir / v).resolve())
    for key in DIST_KEYS:  # empirical:PATH names a trace file
        v = out.get(key)
        if isinstance(v, str) and v.startswith("empirical:") and v[10:].strip() and \
                not Path(v[10:].strip()).is_absolute():
            out[key] = "empirical:" + str((base_dir / v[10:].strip()).resolve())
    return out


def read_config_file(path: str | Path) -> dict:
    return read_toml(Path(path), error=ConfigError)


def load_config_file(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """A TOML run file (flat keys, as the CLI flags), with optional overrides."""
    data = read_config_file(path)
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{path}: run files are flat key = value lists; unexpected table [{nested[0]}]")
    data = resolve_paths(data, Path(path).parent)
    data.update(overrides or {})
    return from_mapping(data, where=str(path))
