"""AQPIM: the KV cache stored in PIM as product-quantization codes, attention computed on the codes in memory.

The machine, the GPU side and the per-layer schedule are the PIM baseline's (``sim/systems/pim.py``); what
changes is what each channel stores and does (the paper's own dataflow is not public; this follows DESIGN.md):

* storage per coded token and KV head: M codes of log2 K bits for K and for V (plus FP16 outlier key channels);
  per (sequence, KV head, layer) the K and V codebooks (K x head_dim FP16 each), replicated in every channel
  that holds a stripe of that head; per sequence the first ``sinks`` and last ``recent`` tokens in FP16;
* per step in each channel: the token leaving the FP16 window is quantized in memory (distances to the M x K
  centroids of each tensor, argmin, codes written) and the new token enters the window; the query-centroid
  tables (M x K per query head) are built from the stored key codebooks; every coded token's score is the sum of
  M table entries gathered by its codes; softmax statistics are kept per channel; softmax weights are
  scatter-added into M x K bins per query head, and the bins times the value centroids give the partial output;
  the FP16 window is attended exactly; partial outputs and statistics return to the GPU for the merge.
* the lookup hardware beside each PIM unit is the PIM preset's ``[aqpim_unit]`` (``hw_models.pim.AqpimUnitParams``:
  buffer bytes, SRAM banks and clock, energy per access, each sourced from a real PIM part or tagged). A unit
  serves one (sequence, KV head) at a time and needs the table rows (score phase) or bin rows (value phase) of its
  ``gqa_group`` query heads, M x K FP16 entries per head; when they do not fit its buffer, the ``lut_dataflow``
  option says how it copes (``hw_models.pim.pq_lookup_plan``: sub-space passes with running scores carried,
  repeated passes over all codes, or tables split across the banks of a channel with partial scores reduced),
  and the lookup SRAM's accesses bound each phase's time beside streaming and compute;
* exact re-rank (``rerank`` = R, an accuracy option): an FP16 copy of the coded tokens in host memory, and per
  layer the channel work cut after the score gather so that the R coded tokens of highest score per (sequence,
  KV head) are selected on the GPU and attended exactly on the host CPU, the channels leaving them out of the
  softmax and the bins (``between_phases``);
* each phase (in-memory quantization with the new token, table build, score gather, exact re-rank's selection,
  softmax, bin scatter, bins x centroids, the FP16 window, partial outputs out) is its own span kind,
  ``aqpim.<phase>``, in traces and breakdowns (``hw_models.pim.PQ_PHASES``); a channel runs them back to back in
  one hold (two holds, with the holds ``between_phases`` lists between them, when the layer is cut).

Per-query work (tables, bins x centroids) does not depend on context while per-token work streams 2M code bytes
instead of 4 x head_dim: below some context AQPIM does not pay off. Codebook training (k-means on the prefill
K/V) and the codebooks' transfer into PIM happen once per request at prefill. Without prefill in the timeline
(run setting ``prefill = "none"``) they are reported in the Result details only
(``prefill_codebook_s_per_request``); with it they are work in the timeline (``prefill_plan``): on the GPU, in
the step that completes the prompt, each layer's k-means iterations (``kmeans_iters`` passes of distances to the
K centroids of every sub-space, GEMM-like, compute-bound) and the quantization (one more assignment pass) run
after the layer's prefill kernels, then the layer's codes, codebooks and FP16 window cross the device link into
PIM while the next layer computes. The GPU was chosen over PIM for training because k-means over the whole
prompt is dense compute that the GPU does at hundreds of TFLOP/s; PIM's near-bank units are sized for streaming.
Earlier chunks of a chunked prompt wait in GPU memory until the prompt completes (k-means needs all its tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hw_models import cpu as cpu_model
from hw_models import gpu as gpu_model
from hw_models import pim as pim_model
from hw_models.component import Work
from hw_models.dram import token_gather_pattern
from hw_models.errors import HardwareError
from hw_models.params import override
from sim.errors import ConfigError
from sim.options import option
from sim.systems.base import PREFILL, Capacity, Devices, PrefillPlan, StepBatch, gib
from sim.systems.offload import CPU_KERNELS
from sim.systems.pim import PimDeviceOptions, PimSystem
from sim.topology import GPU, HOST_CPU, HOST_DRAM, PIM
from workloads.errors import WorkloadError
from workloads.kvformats import MAX_RERANK, MAX_ROPE_AUG, PqSettings


@dataclass(frozen=True)
class AqpimOptions(PimDeviceOptions):
    pq_m: int = option(16, "PQ sub-spaces per head (must divide head_dim)", minimum=1, limit=2**16)
    pq_k: int = option(256, "centroids per sub-space (a power of two)", minimum=2, limit=65536)
    sinks: int = option(4, "first tokens kept in FP16", unit="tokens", minimum=0, maximum=2**24, limit=2**30)
    recent: int = option(128, "last tokens kept in FP16", unit="tokens", minimum=0, maximum=2**24, limit=2**30)
    outliers: int = option(0, "key channels per head kept in FP16", minimum=0, limit=2**16)
    lut_bytes: int | None = option(None, "lookup-table buffer per PIM unit, for studies (default: the PIM device "
                                   "preset's [aqpim_unit] lut_bytes)", unit="bytes", minimum=1, maximum=2**30,
                                   limit=2**40)
    lut_dataflow: str = option("subspace", "how tables larger than the lookup buffer are used: passes over "
                               "sub-spaces with running scores carried, repeated passes over all codes, or tables "
                               "split across a channel's banks with partial scores reduced",
                               choices=pim_model.PQ_DATAFLOWS)
    kmeans_iters: int = option(10, "k-means iterations of codebook training at prefill", minimum=1, maximum=1000,
                               limit=10**6)
    key_k: int = option(0, "centroids per key sub-space when keys get a larger codebook than values (0: pq_k; a "
                        "power of two); accuracy fix, charged in the timing model", minimum=0, limit=65536)
    pre_rope: bool = option(False, "code keys before RoPE and apply RoPE through a complex query table (accuracy "
                            "fix; larger tables, more lookups per score)")
    pq_stages: int = option(1, "residual PQ stages the pq_m codes of a token are spent on (must divide pq_m); "
                            "accuracy fix: same code bits, pq_stages times the codebooks and per-query work",
                            minimum=1, limit=2**16)
    rope_aug: int = option(0, "copies of the prompt's keys rotated to other positions added to the key codebooks' "
                           "k-means (accuracy fix for post-RoPE keys; same codes and decode work, a longer "
                           "k-means at prefill)", minimum=0, limit=MAX_ROPE_AUG)
    rerank: int = option(0, "coded tokens per (sequence, KV head) attended exactly, those of highest coded score, "
                         "from an FP16 copy of the KV cache in host memory (accuracy fix: the PIM work cut in two "
                         "around a selection on the GPU, host reads and PCIe transfers per layer)", minimum=0,
                         limit=MAX_RERANK)
    rerank_kernel: str = option("bandwidth", "with rerank, the host's kernel for the exact tokens: bandwidth (bound "
                                "by the host DRAM gather, as the offload baseline's best CPU kernel) or flexgen "
                                "(FlexGen's FP32 torch.bmm at the CPU preset's calibrated flops_efficiency)",
                                choices=CPU_KERNELS)
    scale_keys: bool = option(False, "divide key channels by their RMS before k-means (accuracy option; head_dim "
                              "scales per unit, multiplied into each query)")

    @property
    def pq(self) -> PqSettings:
        return PqSettings(m=self.pq_m, k=self.pq_k, sinks=self.sinks, recent=self.recent, outliers=self.outliers,
                          key_k=self.key_k, pre_rope=self.pre_rope, stages=self.pq_stages,
                          scale_keys=self.scale_keys, rope_aug=self.rope_aug, rerank=self.rerank)

    def check(self) -> None:
        try:
            self.pq  # noqa: B018  (validates k, m and the windows)
        except WorkloadError as e:
            raise ConfigError(str(e)) from None
        if self.rerank and self.softmax == "host":
            raise ConfigError("rerank selects the exact tokens between the score gather and the softmax, in a round "
                              "trip of its own; with softmax 'host' use softmax 'pim' or 'near'")


class AqpimSystem(PimSystem):
    """AQPIM: PQ codes in PIM, quantized in memory, attention on the codes."""

    name = "aqpim"
    Options = AqpimOptions
    variants = ({},)
    what_ifs = (*PimSystem.what_ifs, *({"lut_dataflow": f} for f in pim_model.PQ_DATAFLOWS))
    kv_location = "pim (PQ codes)"

    def kv_format(self) -> PqSettings:
        return self.options.pq

    @property
    def pq(self) -> PqSettings:
        return self.fmt

    @classmethod
    def devices(cls, options: AqpimOptions, pim: pim_model.PimDeviceParams | None = None, load=None) -> Devices:
        devices = super().devices(options, pim, load)
        if options.lut_bytes is None:
            return devices
        return Devices(pim_model.with_aqpim_unit(devices.pim, lut_bytes=float(options.lut_bytes)),
                       devices.pim_trace_lanes)

    def __init__(self, machine, model, options: AqpimOptions):
        super().__init__(machine, model, options)
        self.lut = self.lookup_plan(options.lut_dataflow)

    def lookup_plan(self, dataflow: str) -> pim_model.PqLookupPlan:
        """How a unit of this device scores codes with its lookup buffer (an error if it holds no table row)."""
        return pim_model.pq_lookup_plan(self.dev.channel, self.model.gqa_group, self.pq.m, self.pq.k, dataflow)

    # ---- per-channel work ----------------------------------------------------------------------------------------
    @property
    def lut_passes(self) -> int:
        """Passes over the codes (``PqLookupPlan.passes``)."""
        return self.lut.passes

    def key_lookup_plan(self, dataflow: str) -> pim_model.PqLookupPlan | None:
        """The key table's lookup plan when a fix makes it differ from the value bins' (``key_k``: rows of key_k
        entries; ``pre_rope``: head_dim rows per query head instead of m); None when the two are the same."""
        pq = self.pq
        if not pq.key_k and not pq.pre_rope:
            return None
        rows = self.model.head_dim * pq.stages if pq.pre_rope else pq.m
        try:
            return pim_model.pq_lookup_plan(self.dev.channel, self.model.gqa_group, rows, pq.keys_k, dataflow)
        except HardwareError as e:  # name the fix that made the key table's rows too large
            raise HardwareError(f"{e} (key_k = {pq.keys_k})") from None

    def format_works(self, lut: pim_model.PqLookupPlan | None = None) -> tuple:
        pq = self.pq
        lut = self.lut if lut is None else lut
        extra = {"m": pq.m, "k": pq.k, "outliers": pq.outliers, "window": self.window, "lut": lut}
        if pq.key_k or pq.pre_rope:
            extra.update(key_k=pq.key_k, pre_rope=pq.pre_rope, lut_key=self.key_lookup_plan(lut.dataflow))
        if pq.stages > 1:
            extra["stages"] = pq.stages
        if pq.scale_keys:
            extra["scale_keys"] = True
        if pq.rerank:
            extra["rerank"] = pq.rerank
        return pim_model.pq_attention_works, extra

    # ---- exact re-rank -------------------------------------------------------------------------------------------
    @property
    def split_layer(self) -> bool:
        return super().split_layer or self.pq.rerank > 0

    def between_phases(self, batch: StepBatch, tokens, pairs: float) -> tuple[tuple, float]:
        """Exact re-rank (``rerank`` = R) between the score gather and the softmax, one hold after another:

        1. ``rerank_candidates``: each (unit, channel) pair's local top R (``INDEX_BYTES`` + ``SCORE_BYTES``
           each, at most the coded tokens) up the device link;
        2. ``rerank.select`` on the GPU: the unit's top R of its candidates (log2 R compares per candidate, one
           thread block per unit);
        3. ``rerank_to_host`` over PCIe: the queries, the selection and the new token's K/V (the host copy grows
           by it);
        4. ``rerank.host_attention`` on the host CPU: each unit's R tokens' FP16 K and V rows gathered from host
           DRAM (``token_gather_pattern``) and attended by the unit's query heads, ``4 d + 5`` FLOPs per (query,
           token), at the kernel ``rerank_kernel`` names (``bandwidth``: the offload baseline's best CPU kernel,
           FLOP/s at the socket's peak); its energy is the CPU's FLOPs and the DRAM bytes read;
        5. ``rerank_partials`` over PCIe: a partial output with softmax statistics per query, merged on the GPU
           with the channels' (one more partial per query);
        6. ``rerank_selection`` down the device link: the selection, which the channels leave out of the softmax
           and the bins.

        Steps 3-5 do not depend on the channels' second phase; they run before it here, not beside it, so the
        step is an upper bound of a design that overlaps them (docs/accuracy.md, "Exact re-rank as a simulated
        option")."""
        r = self.pq.rerank
        if not r:
            return super().between_phases(batch, tokens, pairs)
        m, p = self.model, self.machine.params
        e, d = m.bytes_per_element, m.head_dim
        units = batch.n_seqs * m.n_kv_heads
        coded = float(self.placed_tokens(batch.kept).sum()) * m.n_kv_heads
        candidates = min(pairs * r, coded)
        exact = min(float(units * r), coded)
        cand_bytes = candidates * (pim_model.INDEX_BYTES + pim_model.SCORE_BYTES)
        sel_bytes = exact * pim_model.INDEX_BYTES
        select = gpu_model.items_kernel(p.gpu, "rerank.select", candidates * max(1.0, math.log2(r)),
                                        cand_bytes + sel_bytes, units)
        read = exact * 2 * d * e
        flops = exact * m.gqa_group * (4.0 * d + pim_model.SOFTMAX_FLOPS_PER_ELEMENT)
        host_cpu = p.cpu if self.options.rerank_kernel == "flexgen" else override(p.cpu, flops_efficiency=1.0)
        attn = cpu_model.op(host_cpu, p.host_dram, "rerank.host_attention", flops, read,
                            token_gather_pattern(p.host_dram, d, e))
        attn = Work(attn.kind, attn.duration_s, attn.nbytes, attn.flops,
                    attn.energy_j + read * p.host_dram.energy_per_byte_j)
        to_host = batch.n_seqs * (m.q_dim * e + m.kv_bytes_per_token_per_layer) + sel_bytes
        partials = batch.n_seqs * m.n_heads * (d * e + pim_model.SOFTMAX_STATS_BYTES_PER_QUERY)
        return ((PIM, GPU, cand_bytes, "rerank_candidates"), (GPU, (select,)),
                (GPU, HOST_DRAM, to_host, "rerank_to_host"), (HOST_CPU, (attn,)),
                (HOST_DRAM, GPU, partials, "rerank_partials"), (GPU, PIM, sel_bytes, "rerank_selection")), partials

    part_order = tuple(f"aqpim.{phase}" for phase in pim_model.PQ_PHASES)

    @staticmethod
    def part_of(kind: str) -> str:
        return f"aqpim.{pim_model.pq_phase_of(kind)}"

    # ---- prefill-time costs and capacity -------------------------------------------------------------------------
    @property
    def centroids_per_tensor(self) -> float:
        """Full-width centroids a token's K or V is compared with in one pass, averaged over K and V:
        ``stages x (key_k + k) / 2`` (``pq_k`` for plain PQ); each residual stage's centroids span all head_dim."""
        pq = self.pq
        return pq.stages * (pq.keys_k + pq.k) / 2

    @property
    def kmeans_centroids_per_tensor(self) -> float:
        """``centroids_per_tensor`` of one k-means pass, where ``rope_aug`` trains the key codebooks on 1 +
        rope_aug points per prompt token (the copies' RoPE rotation, a few FLOPs per element once, is left out:
        under 1 / (iterations x key_k) of the k-means)."""
        pq = self.pq
        return pq.stages * (pq.keys_k * (1 + pq.rope_aug) + pq.k) / 2

    @property
    def kmeans_read_share(self) -> float:
        """K/V bytes one k-means pass reads per prompt token, in units of the token's K and V: keys 1 + rope_aug
        times (each copy rotated as it is read), values once."""
        return (2 + self.pq.rope_aug) / 2

    def prefill_codebook_s(self, prompt_tokens: int) -> float:
        """Per request, outside decode: k-means on the GPU for every (layer, KV head, tensor), then the codebooks
        cross the link into PIM."""
        m, pq = self.model, self.pq
        coded = max(0, prompt_tokens - self.window)
        flops = (self.options.kmeans_iters * 2 * m.n_layers * m.n_kv_heads
                 * pim_model.QUANTIZE_FLOPS_PER_ELEMENT * coded * self.kmeans_centroids_per_tensor * m.head_dim)
        train = gpu_model.kernel_time_s(self.machine.params.gpu, flops,
                                        2 * coded * m.kv_bytes_per_token * self.kmeans_read_share)
        return train + self.machine.topology.route(GPU, PIM).time_s(m.n_kv_heads * pq.pim_unit_fixed_bytes(m))

    def prefill_works(self, coded_tokens: int) -> tuple:
        """Per layer, on the GPU: k-means training (``kmeans_iters`` assignment passes) and the quantization
        (one more) of ``coded_tokens`` tokens' K and V in every KV head: ``QUANTIZE_FLOPS_PER_ELEMENT`` per
        element and centroid; each pass reads the tokens' K/V once (a k-means pass with ``rope_aug``: the keys
        1 + rope_aug times, ``kmeans_read_share``)."""
        m, pq, g = self.model, self.pq, self.machine.params.gpu
        def pass_flops(centroids: float) -> float:
            return (2 * m.n_kv_heads * pim_model.QUANTIZE_FLOPS_PER_ELEMENT * coded_tokens * centroids
                    * m.head_dim)

        pass_bytes = coded_tokens * m.kv_bytes_per_token_per_layer
        if coded_tokens <= 0:
            return ()
        iters = self.options.kmeans_iters
        return (gpu_model.kernel(g, f"{PREFILL}.kmeans", iters * pass_flops(self.kmeans_centroids_per_tensor),
                                 iters * pass_bytes * self.kmeans_read_share),
                gpu_model.kernel(g, f"{PREFILL}.quantize", pass_flops(self.centroids_per_tensor),
                                 pass_bytes + coded_tokens * m.n_kv_heads
                                 * pq.pim_token_bytes_per_head(m)))

    def prefill_plan(self, chunks, resident: StepBatch) -> PrefillPlan:
        """GPU prefill; for the prompts the step completes, k-means and quantization per layer on the GPU, then
        per layer their codes, codebooks and exact window over the device link into PIM (module docstring)."""
        base = super().prefill_plan(chunks, resident)
        m, pq = self.model, self.pq
        done = [c for c in chunks if c.completes]
        coded = sum(max(0, c.prompt - self.window) for c in done)
        exact = sum(min(c.prompt, self.window) for c in done)
        stored = (coded * self.pim_bytes_per_token() + len(done) * m.n_kv_heads * pq.pim_unit_fixed_bytes(m)
                  + exact * m.kv_bytes_per_token)
        return PrefillPlan(base.layer + self.prefill_works(coded), base.head, base.tokens,
                           store_bytes=stored / m.n_layers, store_src=GPU, store_dst=PIM)

    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        cap = super().capacity(kv_bytes, peak)
        details = dict(cap.details, pq=self.pq.name, lut_passes=self.lut_passes,
                       prefill_codebook_s_per_request=self.prefill_codebook_s(int(peak.max_context)),
                       aqpim_lookup=self.lookup_details(peak))
        reasons = cap.reasons
        if self.pq.rerank:
            host, extra = self.rerank_host(peak)
            details.update(extra)
            room = self.machine.params.host_dram.capacity_bytes - details["spilled_bytes"]
            if host > room:
                reasons += (f"exact re-rank's FP16 copy {gib(host)} exceeds the host DRAM left "
                            f"({gib(max(room, 0.0))})",)
        location = cap.kv_location + ("+host copy" if self.pq.rerank else "")
        return Capacity(location, cap.kv_bytes, not reasons, reasons, details)

    def rerank_host(self, peak: StepBatch) -> tuple[float, dict]:
        """Exact re-rank's FP16 copy of the coded tokens in host DRAM at the peak step (bytes), with details: the
        copy and, per request, its transfer at prefill (the prompt's coded tokens over PCIe; not in the timeline,
        see docs/accuracy.md)."""
        m = self.model
        host = self.pq.host_copy_bytes(m, float(self.placed_tokens(peak.kept + 1).sum()))
        prompt = self.pq.host_copy_bytes(m, max(0.0, float(peak.max_context) - self.window))
        return host, {"rerank_host_copy_bytes": host,
                      "prefill_host_copy_s_per_request": self.machine.topology.route(GPU, HOST_DRAM).time_s(prompt)}

    # ---- what bounds the lookup phases (details and explain) -----------------------------------------------------
    def lookup_details(self, peak: StepBatch) -> dict:
        """At the peak step: the lookup unit, the chosen dataflow's plan, which roof bounds the score gather and
        the bin scatter on the busiest channel, and the closed-form PIM time per layer of every dataflow."""
        unit, ch = self.dev.channel.aqpim_unit, self.dev.channel
        placement = self.placement(peak)
        tokens, present, new = placement.loads(1.0 - self.spill_fraction(peak, placement))
        busiest = int(np.argmax(tokens)) if tokens.size else 0
        t = float(tokens[busiest]) if tokens.size else 0.0
        g, m = self.model.gqa_group, self.pq.m
        code = m * (self.pq.k.bit_length() - 1) / 8
        lut = self.lut
        score = (t * (code * lut.code_reads + self.pq.outliers * pim_model.FP16_BYTES
                      + 2.0 * g * lut.carried * pim_model.SCORE_BYTES), t * g * (2.0 * m + 2.0 * self.pq.outliers),
                 t * g * m)
        value = (t * (code * lut.code_reads + g * lut.carried * pim_model.SCORE_BYTES), t * g * 2.0 * m,
                 2.0 * t * g * m)
        per_layer = {}
        for flow in pim_model.PQ_DATAFLOWS:
            try:
                plan = self.lookup_plan(flow)
            except ValueError:
                continue
            phases = self.channel_phases_with(tokens, present, new, plan)
            per_layer[flow] = sum(ph.makespan_s for ph in phases)
        return {"dataflow": lut.dataflow, "lut_bytes": unit.lut_bytes, "lut_banks": unit.lut_banks,
                "lut_clock_hz": unit.lut_clock_hz, "lut_accesses_per_s": unit.accesses_per_s,
                "rows": lut.rows, "rows_per_buffer": lut.rows_per_buffer, "pool": lut.pool, "passes": lut.passes,
                "code_reads": lut.code_reads, "carried": lut.carried, "reduced": lut.reduced,
                "score_bound_by": pim_model.lookup_limiter(ch, *score) if t else "-",
                "scatter_bound_by": pim_model.lookup_limiter(ch, *value) if t else "-",
                "pim_phase_s_per_layer_by_dataflow": per_layer}

    def channel_phases_with(self, tokens, present, new, lut: pim_model.PqLookupPlan):
        """``channel_phases`` under another lookup plan (for comparing dataflows)."""
        saved, self.lut = self.lut, lut
        try:
            return self.channel_phases(tokens, present, new)
        finally:
            self.lut = saved
