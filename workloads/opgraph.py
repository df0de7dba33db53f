"""The per-layer decode operator graph: what one transformer layer computes for one decode step of a batch.

Nodes carry an ``Op`` (FLOP, bytes of weights, of KV and of activations it reads or writes); edges carry the
bytes that flow between operators (``nbytes``), which become transfers when a system places the two ends on
different devices. ``kv_fetch`` and ``kv_append`` are the data-movement nodes of the KV cache: reading the
batch's K/V from wherever it lives, and storing the new token's K/V there. Everything is a closed-form function of
the batch size and the total number of KV tokens in the batch, so it is built once per step, never per token;
``layer_ops`` builds the operators without the graph (a decode step needs them in order, not the graph).

Each operator also says how it divides into independent work (``Parallelism``), which a GPU turns into thread
blocks and occupancy (``hw_models.gpu.op_shape``): decode attention and softmax are one GEMV-like product per
(sequence, query head), as AttAcc counts them (``numOp``); a projection or FFN is its weight GEMMs, whose output
the GPU model tiles. No system needs code of its own for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from workloads.models import ModelSpec

# Softmax per score: running max, subtract, exp, accumulate, normalise (hw_models.pim counts it the same way).
SOFTMAX_FLOPS_PER_SCORE = 5.0
# The element-wise operators of a decoder layer, as vLLM fuses them (vllm/model_executor/layers/layernorm.py
# fused_add_rms_norm; rotary_embedding.py; activation.py silu_and_mul): per hidden element a residual add and a
# norm (square, sum, scale, weight) = 5 FLOP; per rotated element 3 FLOP (two products and a sum per pair, over
# two elements); per gated FFN element SiLU(gate) x up = 5 FLOP (exp, add, divide, two products), 1 for
# OPT's ReLU.
NORM_FLOPS_PER_ELEMENT = 5.0
ROPE_FLOPS_PER_ELEMENT = 3.0
ACT_FLOPS_PER_ELEMENT = {True: 5.0, False: 1.0}
ROTARY_FAMILIES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True, slots=True)
class Parallelism:
    """How an operator divides into independent work: ``items`` GEMV-like products (one thread block each; AttAcc's
    ``numOp``), or the weight GEMMs ``gemm_shapes`` ((m, n, k) each: rows = sequences, output columns, reduction)
    that a GPU tiles. Decode attention items each reduce over ``kv_tokens`` KV tokens, which a split-KV kernel
    (FlashDecoding) may partition over its ``kv_units`` (sequence, KV head) blocks; ``combine``: the kernel that
    ends attention, after which split partial outputs are merged."""

    items: float = 0.0
    gemm_shapes: tuple = ()
    kv_tokens: float = 0.0
    kv_units: float = 0.0
    combine: bool = False
    head_dim: int = 0
    bytes_per_element: float = 2.0


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    kind: str  # gemm | attention | kv_read | kv_write | head
    flops: float
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    act_bytes: float = 0.0
    parallel: Parallelism = Parallelism()

    @property
    def nbytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.act_bytes


# The layer's data flow (the same for every batch; ``_layer`` gives each edge its bytes) and the graph's
# lexicographical topological order of operators, the order ``layer_ops`` lists them in. The residual adds are
# fused into the norms (vLLM's fused_add_rms_norm): ``attn_norm`` adds the previous layer's FFN output.
EDGES = (("attn_norm", "qkv_proj"), ("qkv_proj", "rope"), ("rope", "attn_score"), ("rope", "kv_append"),
         ("kv_fetch", "attn_score"), ("kv_fetch", "attn_context"), ("attn_score", "softmax"),
         ("softmax", "attn_context"), ("attn_context", "o_proj"), ("o_proj", "ffn_norm"), ("ffn_norm", "ffn"),
         ("ffn", "act"))
OP_ORDER = tuple(nx.lexicographical_topological_sort(nx.DiGraph(EDGES)))
# What every system runs on the GPU before attention and after it, in stream order. ``ffn`` is the FFN's weight
# GEMMs as one kernel; its activation (``act``) is a kernel of its own, listed after them.
DENSE_PRE = ("attn_norm", "qkv_proj", "rope")
DENSE_POST = ("o_proj", "ffn_norm", "ffn", "act")


def _layer(model: ModelSpec, n_seqs: int, kv_tokens: int) -> tuple[list[Op], list[tuple[str, str, float]]]:
    """The layer's operators and its (source, target, bytes) edges for ``n_seqs`` sequences attending
    ``kv_tokens`` KV tokens in total."""
    m, b, t = model, n_seqs, kv_tokens
    e = m.bytes_per_element
    x_bytes = b * m.hidden_size * e          # layer input/output activations
    q_bytes = b * m.q_dim * e                # queries, and the attention output (same shape)
    new_kv_bytes = b * m.kv_bytes_per_token_per_layer
    kv_bytes = t * m.kv_bytes_per_token_per_layer
    score_bytes = t * m.n_heads * e          # one score per (query head, KV token)
    n_ffn = 3 if m.ffn_gated else 2
    h, f = m.hidden_size, m.ffn_size

    def gemms(*shapes):
        return Parallelism(gemm_shapes=tuple((b, n, k) for n, k in shapes), bytes_per_element=e)

    ffn_shapes = ((f, h),) * (n_ffn - 1) + ((h, f),)  # up (and gate), then down
    rows = Parallelism(items=b, bytes_per_element=e)  # element-wise kernels: one thread block per token
    rotated = b * (m.q_dim + m.kv_dim) if m.family in ROTARY_FAMILIES else 0  # query and key elements
    act_in = (n_ffn - 1) * b * f  # gate and up (gated), or the up projection's output
    ops = [
        norm_op("attn_norm", m, b),
        Op("qkv_proj", "gemm", 2.0 * b * h * (m.q_dim + 2 * m.kv_dim),
           weight_bytes=h * (m.q_dim + 2 * m.kv_dim) * e, act_bytes=x_bytes + q_bytes + new_kv_bytes,
           parallel=gemms((m.q_dim + 2 * m.kv_dim, h))),
        Op("rope", "elementwise", ROPE_FLOPS_PER_ELEMENT * rotated, act_bytes=2.0 * rotated * e, parallel=rows),
        *kv_ops(model, n_seqs, kv_tokens).values(),
        Op("o_proj", "gemm", 2.0 * b * m.q_dim * h,
           weight_bytes=m.q_dim * h * e, act_bytes=q_bytes + x_bytes, parallel=gemms((h, m.q_dim))),
        norm_op("ffn_norm", m, b),
        Op("ffn", "gemm", 2.0 * b * n_ffn * h * f,
           weight_bytes=n_ffn * h * f * e, act_bytes=2 * x_bytes + b * f * e, parallel=gemms(*ffn_shapes)),
        Op("act", "elementwise", ACT_FLOPS_PER_ELEMENT[m.ffn_gated] * b * f, act_bytes=(act_in + b * f) * e,
           parallel=rows),
    ]
    edge_nbytes = (x_bytes, q_bytes + new_kv_bytes, q_bytes, new_kv_bytes, kv_bytes / 2, kv_bytes / 2,
                   score_bytes, score_bytes, q_bytes, x_bytes, x_bytes, act_in * e)
    return ops, [(u, v, nbytes) for (u, v), nbytes in zip(EDGES, edge_nbytes, strict=True)]


def kv_ops(model: ModelSpec, n_seqs: int, kv_tokens: int) -> dict[str, Op]:
    """The layer's operators that read or write the KV cache (``kv_fetch``, ``kv_append`` and attention), the
    only ones whose cost depends on ``kv_tokens``: a decode step builds these alone when the rest is cached."""
    m, b, t = model, n_seqs, kv_tokens
    e = m.bytes_per_element
    q_bytes = b * m.q_dim * e
    kv_bytes = t * m.kv_bytes_per_token_per_layer
    score_bytes = t * m.n_heads * e

    def attention(combine=False):
        # one GEMV-like product per (sequence, query head), over the sequence's tokens (t / b on average)
        return Parallelism(items=b * m.n_heads, kv_tokens=t / b if b else 0.0, kv_units=b * m.n_kv_heads,
                           combine=combine, head_dim=m.head_dim, bytes_per_element=e)

    return {
        "kv_fetch": Op("kv_fetch", "kv_read", 0.0, kv_bytes=kv_bytes),
        "kv_append": Op("kv_append", "kv_write", 0.0, kv_bytes=b * m.kv_bytes_per_token_per_layer),
        "attn_score": Op("attn_score", "attention", 2.0 * t * m.n_heads * m.head_dim,
                         kv_bytes=kv_bytes / 2, act_bytes=q_bytes + score_bytes, parallel=attention()),
        "softmax": Op("softmax", "attention", SOFTMAX_FLOPS_PER_SCORE * t * m.n_heads, act_bytes=2 * score_bytes,
                      parallel=attention()),
        "attn_context": Op("attn_context", "attention", 2.0 * t * m.n_heads * m.head_dim,
                           kv_bytes=kv_bytes / 2, act_bytes=score_bytes + q_bytes, parallel=attention(combine=True)),
    }


def norm_op(name: str, model: ModelSpec, n_rows: int) -> Op:
    """A residual add fused with the layer's RMSNorm (LayerNorm for OPT) over ``n_rows`` tokens: it reads the
    input and the residual and writes both (4 x rows x hidden elements), and reads the norm's weight."""
    h, e = model.hidden_size, model.bytes_per_element
    weights = (1 if model.family in ROTARY_FAMILIES else 2) * h * e  # LayerNorm has a bias too
    return Op(name, "elementwise", NORM_FLOPS_PER_ELEMENT * n_rows * h, weight_bytes=weights,
              act_bytes=4.0 * n_rows * h * e, parallel=Parallelism(items=n_rows, bytes_per_element=e))


def layer_graph(model: ModelSpec, n_seqs: int, kv_tokens: int) -> nx.DiGraph:
    """Operator DAG of one layer for ``n_seqs`` sequences attending ``kv_tokens`` KV tokens in total."""
    ops, edges = _layer(model, n_seqs, kv_tokens)
    g = nx.DiGraph()
    for op in ops:
        g.add_node(op.name, op=op)
    for u, v, nbytes in edges:
        g.add_edge(u, v, nbytes=nbytes)
    return g


def layer_ops(model: ModelSpec, n_seqs: int, kv_tokens: int) -> dict[str, Op]:
    """The layer's operators by name, in a topological order of the graph (``layer_graph``: the same operators,
    built here without the graph, which a decode step does not need)."""
    by_name = {op.name: op for op in _layer(model, n_seqs, kv_tokens)[0]}
    return {name: by_name[name] for name in OP_ORDER}


def edge_bytes(model: ModelSpec, n_seqs: int, kv_tokens: int) -> dict[tuple[str, str], float]:
    return {(u, v): nbytes for u, v, nbytes in _layer(model, n_seqs, kv_tokens)[1]}


def final_norm_op(model: ModelSpec, n_seqs: int) -> Op:
    """Once per step after the last layer, before the LM head: the last residual add and the final norm."""
    return norm_op("final_norm", model, n_seqs)


def head_op(model: ModelSpec, n_seqs: int) -> Op:
    """Once per step after the last layer: the LM head (logits) and sampling."""
    e = model.bytes_per_element
    return Op("lm_head", "head", 2.0 * n_seqs * model.hidden_size * model.vocab_size,
              weight_bytes=model.vocab_size * model.hidden_size * e,
              act_bytes=n_seqs * (model.hidden_size + model.vocab_size) * e,
              parallel=Parallelism(gemm_shapes=((n_seqs, model.vocab_size, model.hidden_size),), bytes_per_element=e))


# ---- prefill ------------------------------------------------------------------------------------------------------
# FlashAttention-2's forward kernel runs one thread block per (query tile, sequence, query head); its query tile.
PREFILL_Q_TILE = 128
PREFILL_OPS = ("qkv_proj", "attention", "o_proj", "ffn")


def prefill_attention_pairs(past: int, new: int) -> float:
    """(query, key) pairs a causal prefill of ``new`` tokens after ``past`` prefilled ones scores: query i (0-based)
    attends ``past + i + 1`` keys, so new x past + new (new + 1) / 2."""
    return new * past + new * (new + 1) / 2


def prefill_layer_ops(model: ModelSpec, chunks) -> dict[str, Op]:
    """One layer's prefill operators for ``chunks`` (each with ``past`` and ``new`` prompt tokens, as
    ``workloads.traces.PrefillChunk``): the weight GEMMs over all T new tokens at once (shapes (T, n, k):
    compute-bound for long prompts), a fused causal attention per sequence (scores, softmax and context in one
    FlashAttention-style kernel: it reads the sequence's K/V once and never writes the scores), and ``kv_store``:
    the new tokens' K/V (kind kv_write, no FLOPs), which a system moves to where it keeps the cache."""
    m = model
    e = m.bytes_per_element
    t = sum(c.new for c in chunks)
    assert t > 0, "a prefill needs prompt tokens"
    pairs = sum(prefill_attention_pairs(c.past, c.new) for c in chunks)
    kv_read = sum(c.past + c.new for c in chunks) * m.kv_bytes_per_token_per_layer
    tiles = sum(-(-c.new // PREFILL_Q_TILE) for c in chunks)
    x_bytes, q_bytes = t * m.hidden_size * e, t * m.q_dim * e
    new_kv = t * m.kv_bytes_per_token_per_layer
    h, f = m.hidden_size, m.ffn_size
    n_ffn = 3 if m.ffn_gated else 2

    def gemms(*shapes):
        return Parallelism(gemm_shapes=tuple((t, n, k) for n, k in shapes), bytes_per_element=e)

    ffn_shapes = ((f, h),) * (n_ffn - 1) + ((h, f),)
    ops = [
        Op("qkv_proj", "gemm", 2.0 * t * h * (m.q_dim + 2 * m.kv_dim), weight_bytes=h * (m.q_dim + 2 * m.kv_dim) * e,
           act_bytes=x_bytes + q_bytes + new_kv, parallel=gemms((m.q_dim + 2 * m.kv_dim, h))),
        Op("attention", "attention", (4.0 * m.head_dim + SOFTMAX_FLOPS_PER_SCORE) * pairs * m.n_heads,
           kv_bytes=kv_read, act_bytes=2 * q_bytes,
           parallel=Parallelism(items=tiles * m.n_heads, head_dim=m.head_dim, bytes_per_element=e)),
        Op("o_proj", "gemm", 2.0 * t * m.q_dim * h, weight_bytes=m.q_dim * h * e, act_bytes=q_bytes + x_bytes,
           parallel=gemms((h, m.q_dim))),
        Op("ffn", "gemm", 2.0 * t * n_ffn * h * f, weight_bytes=n_ffn * h * f * e, act_bytes=2 * x_bytes + t * f * e,
           parallel=gemms(*ffn_shapes)),
        Op("kv_store", "kv_write", 0.0, kv_bytes=new_kv),
    ]
    return {op.name: op for op in ops}
