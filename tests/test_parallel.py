"""Tensor parallelism: the shard, the rank view, the collectives, both timing views, energy and bad input."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_models.interconnect import allreduce_time_s, p2p_time_s, ring_bytes
from hw_models.machine import load_machine
from sim.cli import main
from sim.config import make_config
from sim.run import simulate
from sim.systems.base import dense_works
from workloads.models import ModelSpec, load_model


def test_shard_splits_heads_ffn_and_vocabulary():
    m = load_model("llama-3.1-70b")
    s = m.shard(8)
    assert (s.n_heads, s.n_kv_heads, s.ffn_size, s.hidden_size) == (8, 1, 3584, 8192)
    assert s.vocab_size == 128256 // 8
    # a GQA model with fewer KV heads than GPUs: each KV head replicated (vLLM)
    q = dataclasses.replace(load_model("llama-3.1-8b"), n_kv_heads=4, n_heads=32)
    assert q.shard(8).n_kv_heads == 1 and q.shard(8).n_heads == 4
    # every weight but the norms is split
    assert s.layer_weight_bytes * 8 == pytest.approx(m.layer_weight_bytes, rel=1e-12)


def test_rank_view_shares_the_host_and_the_pcie_switch():
    p = load_machine("dgx-a100")
    v = p.rank_view(4)
    assert v.tp == 4 and v.gpu == p.gpu
    assert v.cpu.peak_flops_per_s == p.cpu.peak_flops_per_s / 4
    assert v.host_dram.share == 0.25
    assert v.pcie.h2d_bw_bytes_per_s == p.pcie.h2d_bw_bytes_per_s / p.pcie_switch_gpus
    assert p.rank_view(1) is p


def test_collectives_per_layer_by_hand():
    """Two all-reduces of the layer's activations per layer, ring model: alpha + 2 (N-1)/N x S / B."""
    p = load_machine("dgx-a100").rank_view(8)
    m = load_model("llama-3.1-70b").shard(8)
    d = dense_works(p, m, 16)
    ar = [w for w in d.post if w.kind == "allreduce"]
    assert [w.kind for w in d.post] == ["o_proj", "allreduce", "ffn_norm", "ffn", "act", "allreduce"]
    x = 16 * 8192 * 2
    ic = p.interconnect
    assert all(w.duration_s == pytest.approx(ic.allreduce_alpha_s + 2 * 7 / 8 * x / ic.allreduce_bus_bw_bytes_per_s)
               for w in ar)
    assert ar[0].duration_s == pytest.approx(allreduce_time_s(ic, x, 8))
    assert ring_bytes(x, 8) == ar[0].nbytes
    assert [w.kind for w in d.head] == ["final_norm", "lm_head", "logits_gather"]
    assert not [w for w in dense_works(load_machine("dgx-a100"), load_model("llama-3.1-70b"), 16).post
                if w.kind == "allreduce"]


def tiny(layers, kv_heads, group, head_dim):
    return ModelSpec(name="tiny", family="llama", n_layers=layers, hidden_size=kv_heads * group * head_dim,
                     n_heads=kv_heads * group, n_kv_heads=kv_heads, head_dim=head_dim, ffn_size=8 * head_dim,
                     vocab_size=1024, max_context=1 << 20)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 4), st.sampled_from([8, 16]), st.integers(1, 32),
       st.integers(16, 50_000), st.sampled_from(["gpu", "sync", "cpu_attention", "pim", "aqpim", "prefetch"]))
def test_two_views_agree_under_tensor_parallelism(tp, layers, kv_heads, batch, context, mode):
    """Exact where the schedule is one chain, a lower bound otherwise, with the collectives in the chain."""
    opts = {"gpu": {"system": "gpu"}, "pim": {"system": "pim", "capacity_policy": "spill"},
            "aqpim": {"system": "aqpim"},
            "sync": {"system": "offload", "kv_gpu_fraction": "0"},
            "cpu_attention": {"system": "offload", "kv_gpu_fraction": "0", "cpu_attention": True},
            "prefetch": {"system": "offload", "kv_gpu_fraction": "0", "prefetch": True}}[mode]
    cfg = make_config(**opts, hardware="dgx-a100", tp=tp, batch=batch, context=context, steps=2, trace_steps=0)
    r = simulate(cfg, model=tiny(layers, kv_heads, 2, 64))
    if r.analytic_exact:
        assert r.analytic_max_rel_gap <= 1e-9
    else:
        assert r.analytic_max_rel_undershoot <= 1e-12
    if tp > 1:
        assert r.busy_by_kind_s["allreduce"] > 0 and r.details["tp"] == tp


def test_energy_counts_every_gpu_and_the_host_once():
    base = dict(system="gpu", hardware="dgx-a100", model="llama-3.1-8b", batch=8, context=4096, steps=2)
    one, two = simulate(make_config(**base)), simulate(make_config(**base, tp=2))
    p = load_machine("dgx-a100")
    for r, n in ((one, 1), (two, 2)):
        assert r.energy_static_j["gpu"] == pytest.approx(n * p.gpu.idle_power_w * r.total_time_s)
        assert r.energy_static_j["host.cpu"] == pytest.approx(p.cpu.idle_power_w * r.total_time_s)
    # the rank's dynamic energy times the GPUs: the weights' bytes are read once in all, split over the GPUs
    assert two.energy_dynamic_j["gpu"] == pytest.approx(one.energy_dynamic_j["gpu"], rel=0.05)
    assert two.kv_bytes == pytest.approx(one.kv_bytes)


def test_weights_fit_only_when_split():
    base = dict(system="gpu", hardware="dgx-a100", model="llama-3.1-70b", batch=1, context=2048, steps=1)
    assert not simulate(make_config(**base)).fits
    r = simulate(make_config(**base, tp=2))
    assert r.fits and r.details["shard_weight_bytes"] < 80 * 2**30


@pytest.mark.parametrize("argv,needle", [
    (["--hardware", "dgx-a100", "--model", "llama-3.1-70b", "--tp", "3"], "does not divide the 64 attention heads"),
    (["--model", "llama-3.1-8b", "--tp", "2"], "has 1 GPU"),
    (["--hardware", "dgx-a100", "--tp", "16"], "needs 16 GPUs"),
    (["--tp", "0"], "tp"),
])
def test_bad_parallelism_is_one_line_exit_2(capsys, argv, needle):
    code = main(["run", "--system", "gpu", "--batch", "1", "--context", "1024", "--steps", "1", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_trace_draws_one_process_per_gpu(tmp_path, capsys):
    import json
    t = tmp_path / "t.json"
    code = main(["run", "--system", "pim", "--hardware", "dgx-a100", "--model", "llama-3.1-70b", "--tp", "4",
                 "--batch", "4", "--context", "4096", "--steps", "1", "--trace-out", str(t)])
    capsys.readouterr()
    trace = json.loads(t.read_text())
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {f"gpu[{r}]" for r in range(4)} | {f"pim[{r}]" for r in range(4)} <= names
    assert code == 0 and "gpu" not in names and trace["otherData"]["ranks"] == 4
    x = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "gpu"]
    per_rank = {r: sorted((e["name"], e["ts"]) for e in x if e["pid"] == pid)
                for r, pid in enumerate(sorted({e["pid"] for e in x}))}
    assert all(v == per_rank[0] for v in per_rank.values()) and any(n == "allreduce" for n, _ in per_rank[0])


# --- pipeline parallelism ----------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.sampled_from([2, 4]), st.sampled_from([1, 2]), st.sampled_from([None, 1, 3, 8]), st.integers(1, 24),
       st.integers(16, 20_000), st.sampled_from(["gpu", "sync", "pim", "aqpim"]))
def test_two_views_agree_under_pipeline_parallelism(pp, tp, micro, batch, context, mode):
    opts = {"gpu": {"system": "gpu"}, "pim": {"system": "pim", "capacity_policy": "spill"}, "aqpim": {"system": "aqpim"},
            "sync": {"system": "offload", "kv_gpu_fraction": "0"}}[mode]
    cfg = make_config(**opts, hardware="dgx-a100", pp=pp, tp=tp, micro_batches=micro, batch=batch, context=context,
                      steps=3, trace_steps=0)
    r = simulate(cfg, model=tiny(8, 8, 2, 64))
    assert r.analytic_exact and r.analytic_max_rel_gap <= 1e-9
    assert r.details["pp"] == pp and r.details["tp"] == tp


def test_pipeline_step_by_hand():
    """Two stages, two equal micro-batches, the gpu system: the last stage takes tau = tau_o + head per micro-batch;
    a micro-batch comes back pp hops and one other stage after it leaves. First step: micro-batch 0 arrives after
    stage 0 and a hop, micro-batch 1 one stage later; then the steady state max(2 tau, tau + tau_o + 2 hop)."""
    model = tiny(8, 8, 2, 64)
    rows = []
    r = simulate(make_config(system="gpu", hardware="dgx-a100", pp=2, batch=8, context=1000, steps=4, trace_steps=0),
                 model=model, on_step=rows.append)
    p = load_machine("dgx-a100").rank_view(1, 2)
    stage = model.stage(2)
    one = simulate(make_config(system="gpu", hardware="dgx-a100", batch=4, context=1000, steps=1, trace_steps=0),
                   params=p, model=stage)
    tau = one.mean_step_latency_s
    head = sum(one.busy_by_kind_s.get(k, 0.0) for k in ("final_norm", "lm_head"))
    tau_o = tau - head
    hop = p2p_time_s(p.interconnect, 4 * stage.hidden_size * stage.bytes_per_element)  # 4 sequences' activations
    first = rows[0].latency_s
    assert first == pytest.approx((tau_o + hop) + tau + max(0.0, tau_o - tau) + tau, rel=1e-6)
    steady = max(2 * tau, tau + tau_o + 2 * hop)
    # contexts grow by one token per step: tau moves by a few ppm
    assert rows[-1].latency_s == pytest.approx(steady, rel=1e-3)
    assert r.analytic_exact


def test_pipeline_energy_charges_the_head_to_the_last_stage_only():
    """pp = 2, two micro-batches of 4, one step: the simulated GPU runs the stage twice (each as a one-GPU run of
    the stage on 4 sequences); both GPUs do that work, but only the last runs the LM head's kernels."""
    model = tiny(8, 8, 2, 64)
    r = simulate(make_config(system="gpu", hardware="dgx-a100", pp=2, batch=8, context=1000, steps=1, trace_steps=0),
                 model=model)
    p = load_machine("dgx-a100").rank_view(1, 2)
    stage = model.stage(2)
    one = simulate(make_config(system="gpu", hardware="dgx-a100", batch=4, context=1000, steps=1, trace_steps=0),
                   params=p, model=stage)
    one_gpu_j = one.energy_dynamic_j["gpu"] / p.ranks  # that run counts its GPU p.ranks times, head included
    head_j = sum(w.energy_j for w in dense_works(p, stage, 4).head)
    assert head_j > 0
    assert r.energy_dynamic_j["gpu"] == pytest.approx(2 * (2 * one_gpu_j) - (2 - 1) * (2 * head_j), rel=1e-12)


@pytest.mark.parametrize("argv,needle", [
    (["--hardware", "dgx-a100", "--model", "llama-3.1-8b", "--pp", "64"], "needs 64 GPUs"),
    (["--hardware", "dgx-a100", "--tp", "4", "--pp", "4"], "tp 4 x pp 4 needs 16 GPUs"),
    (["--micro-batches", "2"], "applies only with pp"),
    (["--hardware", "dgx-a100", "--pp", "2", "--requests", "2", "--prefill", "first"],
     "prefill first (--prefill) is not simulated with pipeline parallelism (--pp 2)"),
])
def test_bad_pipeline_is_one_line_exit_2(capsys, argv, needle):
    code = main(["run", "--system", "gpu", "--batch", "1", "--context", "1024", "--steps", "1", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pipeline_deeper_than_the_layers_is_refused():
    from workloads.errors import WorkloadError
    with pytest.raises(WorkloadError, match="exceeds the 8 layers"):
        tiny(8, 8, 2, 64).stage(9)


def test_pipeline_trace_draws_every_stage(tmp_path, capsys):
    """pp = 3 x tp = 2 on six GPUs: every stage's GPUs are drawn; each micro-batch goes stage 0 -> 1 -> 2, each
    earlier stage's pass being the last stage's work without the head, ending one hop before the next stage starts
    it; no GPU runs two passes at once."""
    import json
    t = tmp_path / "t.json"
    code = main(["run", "--system", "pim", "--hardware", "dgx-a100", "--model", "llama-3.1-70b", "--tp", "2",
                 "--pp", "3", "--micro-batches", "3", "--batch", "6", "--context", "4096", "--steps", "2",
                 "--trace-out", str(t)])
    capsys.readouterr()
    trace = json.loads(t.read_text())
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert code == 0 and {f"gpu[{g}]" for g in range(6)} <= set(names.values())
    assert trace["otherData"]["stages"] == 3 and trace["otherData"]["simulated_gpu"] == 4
    x = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "gpu"]
    head = {"final_norm", "lm_head", "logits_gather"}
    for step in (0, 1):
        work = {g: sorted((e for e in x if names[e["pid"]] == f"gpu[{g}]" and e["args"]["step"] == step
                           and e["name"] != "pp_send"), key=lambda e: e["ts"]) for g in range(6)}
        for g in (0, 2, 4):  # a stage's ranks do the same work at the same times
            assert [(e["name"], e["ts"]) for e in work[g]] == [(e["name"], e["ts"]) for e in work[g + 1]]
        last = [e["name"] for e in work[4] if e["name"] not in head]
        assert len(work[4]) - len(last) == 3 * 3  # the head's kernels, once per micro-batch
        for g in (0, 2):
            assert [e["name"] for e in work[g]] == last and not head & {e["name"] for e in work[g]}
        for g in range(6):  # passes never overlap on a GPU
            ends = [e["ts"] + e["dur"] for e in work[g]]
            assert all(e["ts"] >= end - 1e-6 for e, end in zip(work[g][1:], ends, strict=False))
        sends = sorted((e for e in x if e["name"] == "pp_send" and e["args"]["step"] == step
                        and names[e["pid"]] in ("gpu[0]", "gpu[2]")), key=lambda e: e["ts"])
        assert len(sends) == 2 * 3
        for s in sends:  # a hop ends where the next stage starts that micro-batch
            arrive = s["ts"] + s["dur"]
            nxt = work[2 if names[s["pid"]] == "gpu[0]" else 4]
            start = min(e["ts"] for e in nxt if e["ts"] >= arrive - 1e-6)
            if nxt is work[2]:
                assert start == pytest.approx(arrive, abs=1e-6)
            else:  # the simulated stage starts it when it arrives or when its previous pass (PIM work too) ends
                assert start >= arrive - 1e-6


def test_pipeline_trace_draws_the_shared_host_once_with_a_lane_per_stage(tmp_path, capsys):
    """CPU attention under pp = 2: the host is one process; each stage's host work has its own lane, the earlier
    stage's marked as derived from the simulated GPU's, and a lane's spans never overlap."""
    import json
    t = tmp_path / "t.json"
    code = main(["run", "--system", "offload", "--cpu-attention", "--hardware", "dgx-a100", "--model",
                 "llama-3.1-70b", "--pp", "2", "--batch", "16", "--context", "131072", "--steps", "2",
                 "--trace-out", str(t)])
    capsys.readouterr()
    trace = json.loads(t.read_text())
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert code == 0 and sorted(v for v in names.values() if v.startswith("host")) == ["host"]
    host = [e for e in trace["traceEvents"] if e["ph"] == "X" and names[e["pid"]] == "host"]
    by_lane: dict = {}
    for e in host:
        by_lane.setdefault(threads[(e["pid"], e["tid"])], []).append(e)
    assert set(by_lane) == {"cpu (stage 0)", "cpu (stage 1)"}
    assert all("replica_of" in e["args"] for e in by_lane["cpu (stage 0)"])
    assert not any("replica_of" in e["args"] for e in by_lane["cpu (stage 1)"])
    assert len(by_lane["cpu (stage 0)"]) == len(by_lane["cpu (stage 1)"])
    for spans in by_lane.values():
        spans.sort(key=lambda e: e["ts"])
        assert all(b["ts"] >= a["ts"] + a["dur"] - 1e-6 for a, b in zip(spans, spans[1:], strict=False))


def test_pipeline_deeper_than_the_layers_is_one_line_exit_2(tmp_path, capsys):
    """Through the CLI, on a machine file with enough GPUs that the layer count is what refuses it."""
    from pathlib import Path
    preset = Path(__file__).resolve().parents[1] / "hw_models" / "presets" / "dgx-a100.toml"
    text = preset.read_text()
    assert "gpus = { value = 8," in text
    machine = tmp_path / "big.toml"
    machine.write_text(text.replace("gpus = { value = 8,", "gpus = { value = 128,", 1))
    code = main(["run", "--system", "gpu", "--hardware", str(machine), "--model", "llama-3.1-8b", "--pp", "64",
                 "--batch", "64", "--context", "1024", "--steps", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "pipeline parallelism 64 exceeds the 32 layers of 'llama-3.1-8b'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
