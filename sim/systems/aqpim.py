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
* a table plus its bins must sit in a PIM unit's lookup buffer (``lut_bytes``, an assumption: the AQPIM
  hardware is not public). Banks are split among the units a channel holds, so a unit serves one (sequence, KV
  head) at a time and needs the tables and bins of its ``gqa_group`` query heads; when they do not fit, the codes
  are streamed once per buffer-full (``table_passes``).

Per-query work (tables, bins x centroids) does not depend on context while per-token work streams 2M code bytes
instead of 4 x head_dim: below some context AQPIM does not pay off. Codebook training (k-means on the prefill
K/V, on the GPU) and the codebooks' transfer into PIM happen once per request at prefill: reported in the
Result details, not in decode steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw_models import gpu as gpu_model
from hw_models import pim as pim_model
from sim.errors import ConfigError
from sim.options import option
from sim.systems.base import Capacity, Devices, StepBatch
from sim.systems.pim import Phase, PimDeviceOptions, PimSystem, bank_phase
from sim.topology import GPU, PIM
from workloads.errors import WorkloadError
from workloads.kvformats import FP16_BYTES, PqSettings

# Nearest-centroid search: a subtract, a multiply and an add per element per centroid.
QUANTIZE_FLOPS_PER_ELEMENT = 3.0
# Bins accumulate softmax weights in FP16, like the tables.
BIN_BYTES = FP16_BYTES


@dataclass(frozen=True)
class AqpimOptions(PimDeviceOptions):
    pq_m: int = option(16, "PQ sub-spaces per head (must divide head_dim)", minimum=1)
    pq_k: int = option(256, "centroids per sub-space (a power of two)", minimum=2)
    sinks: int = option(4, "first tokens kept in FP16", unit="tokens", minimum=0)
    recent: int = option(128, "last tokens kept in FP16", unit="tokens", minimum=0)
    outliers: int = option(0, "key channels per head kept in FP16", minimum=0)
    lut_bytes: int | None = option(None, "lookup-table buffer per PIM unit (default: the PIM device preset's)",
                                   unit="bytes", minimum=1)
    kmeans_iters: int = option(10, "k-means iterations of codebook training at prefill", minimum=1)

    @property
    def pq(self) -> PqSettings:
        return PqSettings(m=self.pq_m, k=self.pq_k, sinks=self.sinks, recent=self.recent, outliers=self.outliers)

    def check(self) -> None:
        try:
            self.pq  # noqa: B018  (validates k, m and the windows)
        except WorkloadError as e:
            raise ConfigError(str(e)) from None


class AqpimSystem(PimSystem):
    name = "aqpim"
    Options = AqpimOptions
    variants = ({},)
    kv_location = "pim (PQ codes)"
    new_tokens_spill = False  # new tokens enter the FP16 window, whose room in PIM is reserved per sequence

    def __init__(self, machine, model, options: AqpimOptions):
        super().__init__(machine, model, options)
        self.pq = options.pq
        self.pq.check(model)
        self.window = options.sinks + options.recent

    @classmethod
    def devices(cls, options: AqpimOptions, pim: pim_model.PimDeviceParams | None = None) -> Devices:
        devices = super().devices(options, pim)
        if options.lut_bytes is None:
            lut = 16384
        else:
            lut = options.lut_bytes
        # An AQPIM unit's buffer is its lookup-table SRAM: tables and bins must fit it (table_passes).
        return Devices(pim_model.with_channel(devices.pim, unit_buffer_bytes=lut), devices.pim_trace_lanes)

    # ---- storage -----------------------------------------------------------------------------------------------
    @property
    def code_bytes_per_token_head(self) -> float:
        """K and V codes of one token in one KV head and layer (bit-packed), plus its FP16 outlier key channels."""
        return 2 * self.pq.m * self.pq.code_bits / 8 + self.pq.outliers * FP16_BYTES

    def pim_bytes_per_token(self) -> float:
        return self.model.n_layers * self.model.n_kv_heads * self.code_bytes_per_token_head

    @property
    def codebook_bytes_per_unit(self) -> float:
        """K and V codebooks of one (sequence, KV head) over all layers."""
        return self.model.n_layers * 2 * self.pq.k * self.model.head_dim * FP16_BYTES

    def pim_fixed_bytes(self, n_pairs: float, n_seqs: int) -> float:
        return n_pairs * self.codebook_bytes_per_unit + n_seqs * self.window * self.model.kv_bytes_per_token

    def placed_tokens(self, kept: np.ndarray) -> np.ndarray:
        return np.maximum(kept - self.window, 0)

    # ---- per-channel work ----------------------------------------------------------------------------------------
    @property
    def lut_passes(self) -> int:
        m = self.model
        return pim_model.table_passes(self.dev.channel,
                                      m.gqa_group * self.pq.m * self.pq.k * (FP16_BYTES + BIN_BYTES))

    def channel_phases(self, tokens, present, new) -> tuple[Phase, ...]:
        ch, m, pq = self.dev.channel, self.model, self.pq
        g, d, e, k = m.gqa_group, m.head_dim, m.bytes_per_element, pq.k
        codebook_bytes = k * d * FP16_BYTES  # one tensor of one KV head in one layer
        code_bytes = pq.m * pq.code_bits / 8  # one tensor of one token in one KV head
        passes = self.lut_passes
        window = self.window  # FP16 tokens per unit, attended in the channel that receives its new tokens

        def works(tok, units, nv):
            fp16 = pim_model.ChannelAttention(kv_vectors=nv * window, head_dim=d, queries_per_kv=g,
                                              query_vectors=0, bytes_per_element=e)
            out = []
            out.append(pim_model.broadcast_work(ch, units * g * d * e, kind="pim.q_in"))
            if nv:  # the token leaving the window is coded; the new one enters the FP16 window
                out.append(pim_model.op_work(ch, "aqpim.quantize", nv * 2 * codebook_bytes,
                                             nv * 2 * QUANTIZE_FLOPS_PER_ELEMENT * k * d))
                out.append(pim_model.write_work(ch, nv * 2 * code_bytes, kind="aqpim.write_codes"))
                out.append(pim_model.append_work(ch, nv, d, e))
            out.append(pim_model.op_work(ch, "aqpim.table", units * codebook_bytes, units * g * 2.0 * k * d))
            out.append(pim_model.op_work(ch, "aqpim.score", tok * (code_bytes * passes + pq.outliers * FP16_BYTES),
                                         tok * g * (2.0 * pq.m + 2.0 * pq.outliers)))
            out.append(pim_model.softmax_work(ch, (tok + nv * window) * g, self.options.softmax, e))
            out.append(pim_model.op_work(ch, "aqpim.value", tok * code_bytes * passes, tok * g * 2.0 * pq.m))
            out.append(pim_model.op_work(ch, "aqpim.bins_x_centroids", units * codebook_bytes,
                                         units * g * 2.0 * k * d))
            if nv and window:
                out.append(pim_model.score_work(ch, fp16))
                out.append(pim_model.context_work(ch, fp16))
            out.append(pim_model.read_out_work(
                ch, units * g * (d * e + pim_model.SOFTMAX_STATS_BYTES_PER_QUERY), kind="pim.out"))
            return tuple(out)

        rows = np.column_stack([tokens, present, new])
        if self.options.softmax == "host":
            # scores go to the GPU between the two halves; split after the softmax's channel side
            def first(t, u, v):
                w = works(t, u, v)
                i = next(j for j, x in enumerate(w) if x.kind.startswith("pim.softmax"))
                return w[: i + 1]

            def second(t, u, v):
                w = works(t, u, v)
                i = next(j for j, x in enumerate(w) if x.kind.startswith("pim.softmax"))
                return w[i + 1:]

            return (bank_phase("aqpim.attention.scores", rows, first),
                    bank_phase("aqpim.attention.context", rows, second))
        return (bank_phase("aqpim.attention", rows, works),)

    # ---- prefill-time costs and capacity -------------------------------------------------------------------------
    def prefill_codebook_s(self, prompt_tokens: int) -> float:
        """Per request, outside decode: k-means on the GPU for every (layer, KV head, tensor), then the codebooks
        cross the link into PIM."""
        m, pq = self.model, self.pq
        coded = max(0, prompt_tokens - self.window)
        flops = (self.options.kmeans_iters * 2 * m.n_layers * m.n_kv_heads
                 * QUANTIZE_FLOPS_PER_ELEMENT * coded * pq.k * m.head_dim)
        train = gpu_model.kernel_time_s(self.machine.params.gpu, flops, 2 * coded * m.kv_bytes_per_token)
        return train + self.machine.topology.route(GPU, PIM).time_s(
            m.n_kv_heads * self.codebook_bytes_per_unit)

    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        cap = super().capacity(kv_bytes, peak)
        ctx = int(peak.max_context) + 1
        parts = self.pq.kv_bytes(self.model, ctx)
        fp16 = self.model.kv_bytes_per_token * self.model.kv_tokens(ctx)
        details = dict(cap.details)
        details.update({
            "pq": self.pq.name, "code_bits_per_element": self.pq.code_bits_per_element(self.model),
            "lut_passes": self.lut_passes,
            "kv_bytes_per_sequence_by_part": {"codes": parts.codes, "fp16_tokens": parts.fp16_tokens,
                                              "outliers": parts.outliers, "codebooks": parts.codebooks},
            "kv_bytes_per_token_by_part": {k: v / ctx for k, v in (("codes", parts.codes),
                                                                    ("fp16_tokens", parts.fp16_tokens),
                                                                    ("outliers", parts.outliers),
                                                                    ("codebooks", parts.codebooks))},
            "compression": fp16 / parts.total,
            "kv_bytes_fp16": (peak.kv_tokens + peak.n_seqs) * self.model.kv_bytes_per_token,
            "prefill_codebook_s_per_request": self.prefill_codebook_s(int(peak.max_context)),
        })
        return Capacity(cap.kv_location, cap.kv_bytes, cap.fits, cap.reasons, details)
