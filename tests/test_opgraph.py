import networkx as nx
import pytest

from workloads.models import load_model
from workloads.opgraph import layer_graph, layer_ops


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3-8b", "opt-30b"])
def test_graph_is_a_dag_and_flops_match_model_formula(name):
    m = load_model(name)
    g = layer_graph(m, 1, 1000)
    assert nx.is_directed_acyclic_graph(g)
    ops = layer_ops(m, 1, 1000)
    matmul = sum(op.flops for op in ops.values() if op.kind in ("gemm", "attention") and op.name != "softmax")
    assert matmul == pytest.approx(m.flops_per_token_per_layer(1000))
    assert set(g.nodes) == set(ops)


@pytest.mark.parametrize("name", ["llama-2-7b", "opt-30b"])
def test_elementwise_operators_of_the_whole_layer(name):
    """Norms (residual add fused), rotary embedding (rotary families only) and the FFN activation, by hand."""
    m = load_model(name)
    b, h, e = 4, m.hidden_size, m.bytes_per_element
    ops = layer_ops(m, b, 1000)
    for norm in ("attn_norm", "ffn_norm"):
        assert ops[norm].flops == 5.0 * b * h
        assert ops[norm].act_bytes == 4 * b * h * e
    rotated = b * (m.q_dim + m.kv_dim) if m.family == "llama" else 0
    assert ops["rope"].flops == 3.0 * rotated and ops["rope"].act_bytes == 2 * rotated * e
    n_in = 2 if m.ffn_gated else 1
    assert ops["act"].act_bytes == (n_in + 1) * b * m.ffn_size * e
    assert ops["act"].flops == (5.0 if m.ffn_gated else 1.0) * b * m.ffn_size


def test_kv_bytes_scale_with_tokens_and_weights_do_not():
    m = load_model("llama-2-7b")
    a, b = layer_ops(m, 4, 1000), layer_ops(m, 4, 2000)
    assert b["kv_fetch"].kv_bytes == 2 * a["kv_fetch"].kv_bytes == 2 * 1000 * 2 * 4096 * 2
    assert a["ffn"].weight_bytes == b["ffn"].weight_bytes == 3 * 4096 * 11008 * 2
    assert a["kv_append"].kv_bytes == 4 * 2 * 4096 * 2
