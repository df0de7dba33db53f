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
  are streamed once per buffer-full (``pq_table_passes``).

Per-query work (tables, bins x centroids) does not depend on context while per-token work streams 2M code bytes
instead of 4 x head_dim: below some context AQPIM does not pay off. Codebook training (k-means on the prefill
K/V, on the GPU) and the codebooks' transfer into PIM happen once per request at prefill: reported in the
Result details, not in decode steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw_models import gpu as gpu_model
from hw_models import pim as pim_model
from sim.errors import ConfigError
from sim.options import option
from sim.systems.base import Capacity, Devices, StepBatch
from sim.systems.pim import PimDeviceOptions, PimSystem
from sim.topology import GPU, PIM
from workloads.errors import WorkloadError
from workloads.kvformats import PqSettings


@dataclass(frozen=True)
class AqpimOptions(PimDeviceOptions):
    pq_m: int = option(16, "PQ sub-spaces per head (must divide head_dim)", minimum=1, limit=2**16)
    pq_k: int = option(256, "centroids per sub-space (a power of two)", minimum=2, limit=65536)
    sinks: int = option(4, "first tokens kept in FP16", unit="tokens", minimum=0, maximum=2**24, limit=2**30)
    recent: int = option(128, "last tokens kept in FP16", unit="tokens", minimum=0, maximum=2**24, limit=2**30)
    outliers: int = option(0, "key channels per head kept in FP16", minimum=0, limit=2**16)
    lut_bytes: int | None = option(None, "lookup-table buffer per PIM unit (default: the PIM device preset's)",
                                   unit="bytes", minimum=1, maximum=2**30, limit=2**40)
    kmeans_iters: int = option(10, "k-means iterations of codebook training at prefill", minimum=1, maximum=1000,
                               limit=10**6)

    @property
    def pq(self) -> PqSettings:
        return PqSettings(m=self.pq_m, k=self.pq_k, sinks=self.sinks, recent=self.recent, outliers=self.outliers)

    def check(self) -> None:
        try:
            self.pq  # noqa: B018  (validates k, m and the windows)
        except WorkloadError as e:
            raise ConfigError(str(e)) from None


class AqpimSystem(PimSystem):
    """AQPIM: PQ codes in PIM, quantized in memory, attention on the codes."""

    name = "aqpim"
    Options = AqpimOptions
    variants = ({},)
    kv_location = "pim (PQ codes)"

    def kv_format(self) -> PqSettings:
        return self.options.pq

    @property
    def pq(self) -> PqSettings:
        return self.fmt

    @classmethod
    def devices(cls, options: AqpimOptions, pim: pim_model.PimDeviceParams | None = None) -> Devices:
        devices = super().devices(options, pim)
        if options.lut_bytes is None:
            return devices
        return Devices(pim_model.with_channel(devices.pim, lut_bytes=float(options.lut_bytes)),
                       devices.pim_trace_lanes)

    # ---- per-channel work ----------------------------------------------------------------------------------------
    @property
    def lut_passes(self) -> int:
        """Times the codes are streamed: the tables and bins of a unit's query heads fill its lookup buffer."""
        return pim_model.pq_table_passes(self.dev.channel, self.model.gqa_group, self.pq.m, self.pq.k)

    def format_works(self) -> tuple:
        pq = self.pq
        return pim_model.pq_attention_works, {"m": pq.m, "k": pq.k, "outliers": pq.outliers, "window": self.window,
                                              "lut_passes": self.lut_passes}

    # ---- prefill-time costs and capacity -------------------------------------------------------------------------
    def prefill_codebook_s(self, prompt_tokens: int) -> float:
        """Per request, outside decode: k-means on the GPU for every (layer, KV head, tensor), then the codebooks
        cross the link into PIM."""
        m, pq = self.model, self.pq
        coded = max(0, prompt_tokens - self.window)
        flops = (self.options.kmeans_iters * 2 * m.n_layers * m.n_kv_heads
                 * pim_model.QUANTIZE_FLOPS_PER_ELEMENT * coded * pq.k * m.head_dim)
        train = gpu_model.kernel_time_s(self.machine.params.gpu, flops, 2 * coded * m.kv_bytes_per_token)
        return train + self.machine.topology.route(GPU, PIM).time_s(m.n_kv_heads * pq.pim_unit_fixed_bytes(m))

    def capacity(self, kv_bytes: float, peak: StepBatch) -> Capacity:
        cap = super().capacity(kv_bytes, peak)
        details = dict(cap.details, pq=self.pq.name, lut_passes=self.lut_passes,
                       prefill_codebook_s_per_request=self.prefill_codebook_s(int(peak.max_context)))
        return Capacity(cap.kv_location, cap.kv_bytes, cap.fits, cap.reasons, details)
