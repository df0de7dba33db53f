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
    matmul = sum(op.flops for k, op in ops.items() if k != "softmax")
    assert matmul == pytest.approx(m.flops_per_token_per_layer(1000))


def test_kv_bytes_scale_with_tokens_and_weights_do_not():
    m = load_model("llama-2-7b")
    a, b = layer_ops(m, 4, 1000), layer_ops(m, 4, 2000)
    assert b["kv_fetch"].kv_bytes == 2 * a["kv_fetch"].kv_bytes == 2 * 1000 * 2 * 4096 * 2
    assert a["ffn"].weight_bytes == b["ffn"].weight_bytes == 3 * 4096 * 11008 * 2
    assert a["kv_append"].kv_bytes == 4 * 2 * 4096 * 2
