"""Public trace formats (Azure LLM inference trace, BurstGPT) read as published, and the synthetic generator:
arrival processes and length distributions, seeded, lazy, and the same stream whatever its chunk size."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.config import make_config
from sim.errors import ConfigError
from workloads.arrivals import LengthDist, generate_requests, synthetic_requests
from workloads.errors import WorkloadError
from workloads.trace_formats import datetime_seconds, load_requests, read_trace
from workloads.traces import ContinuousBatcher, Request, fixed_requests

AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE = AZURE_HEAD + ("2023-11-16 18:15:46.6805900,374,44\n"
                      "2023-11-16 18:15:50.9951690,396,109\n"
                      "2023-11-16 18:15:50.9951690,1024,12\n"
                      "2023-11-16 18:16:46.6805900,2048,30\n")
BURST_HEAD = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
BURST = BURST_HEAD + ("5,ChatGPT,472,18,490,Conversation log\n"
                      "45,ChatGPT,1087,230,1317,Conversation log\n"
                      "47,GPT-4,300,0,300,API log\n"
                      "118,GPT-4,417,276,693,Conversation log\n")


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_azure_trace_arrivals_since_first_row(tmp_path):
    tf = read_trace(write(tmp_path, "azure.csv", AZURE))
    assert tf.layout == "azure" and tf.rows == 4 and not tf.skipped and tf.notes() == []
    assert [(r.prompt_tokens, r.output_tokens) for r in tf.requests] == [(374, 44), (396, 109), (1024, 12),
                                                                        (2048, 30)]
    assert [r.arrival_s for r in tf.requests] == pytest.approx([0.0, 4.314579, 4.314579, 60.0], abs=1e-6)


def test_burstgpt_skips_failed_rows_and_says_how_many(tmp_path):
    tf = read_trace(write(tmp_path, "b.csv", BURST))
    assert tf.layout == "burstgpt" and tf.rows == 4
    assert tf.requests == [Request(0.0, 472, 18), Request(40.0, 1087, 230), Request(113.0, 417, 276)]
    assert tf.skipped == {"with 0 Response tokens: failed requests": 1}
    assert tf.notes() == [f"trace {tmp_path / 'b.csv'}: skipped 1 of 4 rows "
                          "(1 with 0 Response tokens: failed requests)"]
    # BurstGPT's later files add Session ID and Elapsed time columns: still recognised
    extra = ("Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
             "3.5,abc,1.0,ChatGPT,10,2,12,Conversation log\n")
    assert read_trace(write(tmp_path, "b3.csv", extra)).requests == [Request(0.0, 10, 2)]


def test_time_scale_and_cap(tmp_path):
    p = write(tmp_path, "b.csv", BURST)
    half = read_trace(p, time_scale=0.5)
    assert [r.arrival_s for r in half.requests] == [0.0, 20.0, 56.5]
    capped = read_trace(p, max_requests=2)
    assert capped.capped and len(capped.requests) == 2 and capped.rows == 2
    assert "first 2 requests only" in capped.notes()[-1]
    # the cap stops reading: a malformed row after it is not seen
    q = write(tmp_path, "a.csv", AZURE + "not a time,1,1\n")
    assert len(read_trace(q, max_requests=4).requests) == 4
    with pytest.raises(WorkloadError, match=r"a.csv:6: TIMESTAMP must be a date and time"):
        read_trace(q)
    # the project's own format scales too, and load_requests still reads it
    own = write(tmp_path, "o.csv", "arrival_s,prompt_tokens,output_tokens\n2,10,1\n4,20,2\n")
    assert [r.arrival_s for r in read_trace(own, time_scale=2).requests] == [4.0, 8.0]
    assert load_requests(own) == [Request(2.0, 10, 1), Request(4.0, 20, 2)]


@pytest.mark.parametrize("name, text, match", [
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46.68,374,44\n2023-11-16,1,1\n", r"a.csv:3: TIMESTAMP must be a date"),
    ("a.csv", AZURE_HEAD + "2023-02-30 18:15:46,374,44\n", r"a.csv:2: TIMESTAMP is not a valid date"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,37.5,44\n", r"a.csv:2: ContextTokens must be a whole number"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,374,-1\n", r"a.csv:2: GeneratedTokens must be a whole number"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,374\n", r"a.csv:2: fewer fields than the header's 3"),
    ("b.csv", BURST_HEAD + "5,ChatGPT,472,18,490,Conversation log\nsoon,ChatGPT,1,1,2,API log\n",
     r"b.csv:3: Timestamp must be a number of seconds"),
    ("b.csv", BURST_HEAD + "nan,ChatGPT,472,18,490,Conversation log\n", r"b.csv:2: Timestamp must be a finite"),
    ("b.csv", BURST_HEAD + "5,ChatGPT,472,18,490,Conversation log,x\n", r"b.csv:2: more fields"),
    ("b.csv", BURST_HEAD + "5,ChatGPT,0,0,0,API log\n", r"b.csv: no requests in the trace \(.*skipped 1 of 1"),
    ("x.csv", "time,in,out\n1,2,3\n", r"x.csv:1: header lacks .*Azure LLM inference trace's TIMESTAMP"),
])
def test_malformed_public_rows_name_file_and_line(tmp_path, name, text, match):
    with pytest.raises(WorkloadError, match=match):
        read_trace(write(tmp_path, name, text))


def test_datetime_formats():
    base = datetime_seconds("2023-11-16 18:15:46", "T", "w")
    assert datetime_seconds("2023-11-16 18:15:46.6805900", "T", "w") - base == pytest.approx(0.68059)
    assert datetime_seconds("2024-05-10 00:00:00.009930+00:00", "T", "w") == pytest.approx(
        datetime_seconds("2024-05-10T02:00:00.00993+02:00", "T", "w"))


# ---------------------------------------------------------------- synthetic generator

def take(n, rate, prompt="fixed:100", output="fixed:10", seed=0, process="poisson", cv=None, chunk=4096):
    return list(generate_requests(n, rate, LengthDist.parse(prompt), LengthDist.parse(output),
                                  np.random.default_rng(seed), process, cv, chunk))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 300), chunk=st.integers(1, 64),
       process=st.sampled_from(["poisson", "gamma"]),
       prompt=st.sampled_from(["fixed:7", "uniform:1,50", "lognormal:300,1.2,4000"]))
def test_generator_is_deterministic_and_chunk_free(seed, n, chunk, process, prompt):
    cv = 2.5 if process == "gamma" else None
    a = take(n, 3.0, prompt, "uniform:1,9", seed, process, cv)
    assert a == take(n, 3.0, prompt, "uniform:1,9", seed, process, cv, chunk=chunk)
    assert all(x.arrival_s <= y.arrival_s for x, y in zip(a, a[1:], strict=False))
    lo, hi = LengthDist.parse(prompt).bounds()
    assert all(lo <= r.prompt_tokens <= hi and 1 <= r.output_tokens <= 9 for r in a)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32), rate=st.floats(0.1, 1000))
def test_poisson_mean_gap_and_old_stream(seed, rate):
    n = 20000
    a = np.array([r.arrival_s for r in take(n, rate, seed=seed)])
    gaps = np.diff(np.concatenate(([0.0], a)))
    # the sample mean of n exponentials has relative standard deviation 1/sqrt(n) = 0.7%: 5 sigma
    assert gaps.mean() * rate == pytest.approx(1.0, rel=5 / np.sqrt(n))
    # fixed lengths draw nothing: the same arrivals as one cumsum over the run's generator (the old list)
    old = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, size=n))
    assert a.tolist() == old.tolist()
    assert synthetic_requests(50, 100, 10, rate, np.random.default_rng(seed)) == take(50, rate, seed=seed)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32), cv=st.floats(0.3, 4.0))
def test_gamma_mean_and_cv(seed, cv):
    n = 40000
    a = np.array([r.arrival_s for r in take(n, 2.0, seed=seed, process="gamma", cv=cv)])
    gaps = np.diff(np.concatenate(([0.0], a)))
    # 5 standard errors: of the mean, cv/sqrt(n); of the sample standard deviation of a gamma (excess kurtosis
    # 6 cv^2), about sqrt((6 cv^2 + 2) / n) / 2, plus the mean's error in the ratio
    se_mean = cv / np.sqrt(n)
    assert gaps.mean() * 2.0 == pytest.approx(1.0, rel=5 * se_mean)
    se_cv = np.sqrt((6 * cv * cv + 2) / n) / 2 + se_mean
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=5 * se_cv)


def test_lengths_change_without_moving_arrivals_and_empirical(tmp_path):
    fixed = take(200, 5.0, seed=3)
    uni = take(200, 5.0, "uniform:10,20", "lognormal:50,0.5", seed=3)
    assert [r.arrival_s for r in fixed] == [r.arrival_s for r in uni]
    assert {r.prompt_tokens for r in uni} == set(range(10, 21))
    lengths = np.array([r.output_tokens for r in take(20000, 5.0, output="lognormal:50,0.5", seed=1)])
    assert lengths.mean() == pytest.approx(50, rel=0.02)
    p = write(tmp_path, "b.csv", BURST)
    emp = take(300, 0.0, f"empirical:{p}", f"empirical:{p}", seed=2)
    assert {r.prompt_tokens for r in emp} == {472, 1087, 417} and {r.output_tokens for r in emp} == {18, 230, 276}
    assert all(r.arrival_s == 0.0 for r in emp)


def test_generator_is_lazy():
    gen = generate_requests(10**8, 1.0, LengthDist.parse("fixed:1"), LengthDist.parse("fixed:1"),
                            np.random.default_rng(0), chunk=16)
    assert [next(gen).prompt_tokens for _ in range(3)] == [1, 1, 1]  # 10^8 requests never exist at once


def test_batcher_same_steps_from_a_list_and_a_stream():
    def steps(source):
        b = ContinuousBatcher(source, max_batch=4)
        out, now = [], 0.0
        while not b.done:
            b.admit(now, token_budget=400)
            out.append(b.contexts().tolist())
            now = now + 0.05 if out[-1] else b.next_arrival_s()
            b.advance()
        return out, b.max_prompt_tokens, b.max_request_tokens, b.first_arrival_s

    reqs = take(60, 40.0, "uniform:5,90", "uniform:1,6", seed=4)
    assert steps(reqs) == steps(iter(reqs))
    with pytest.raises(WorkloadError, match="out of arrival order"):
        b = ContinuousBatcher(iter([Request(1.0, 1, 1), Request(0.5, 1, 1)]), 2)
        b.admit(5.0)
    assert ContinuousBatcher(fixed_requests(2, 5, 1), 2).max_prompt_tokens == 5


@pytest.mark.parametrize("text", ["fixed", "fixed:0", "fixed:1.5", "uniform:9,3", "uniform:1", "lognormal:0,1",
                                  "lognormal:100,-1", "lognormal:100,1,0", "empirical:", "normal:1,2",
                                  "uniform:a,b", "lognormal:inf,1"])
def test_bad_length_distributions(text):
    with pytest.raises(WorkloadError):
        LengthDist.parse(text)


@pytest.mark.parametrize("settings_, match", [
    ({"trace_time_scale": 0.5}, "applies only with trace"),
    ({"trace_max_requests": 3}, "applies only with trace"),
    ({"prompt_dist": "uniform:1,5"}, "applies only to synthetic requests"),
    ({"requests": 4, "arrival_process": "gamma"}, "needs arrival_cv"),
    ({"requests": 4, "arrival_process": "gamma", "arrival_cv": 2.0}, "arrival_rate_per_s"),
    ({"requests": 4, "arrival_cv": 2.0}, "only with arrival_process gamma"),
    ({"requests": 4, "output_dist": "lognormal:10"}, "output_dist: write lognormal:MEAN,SIGMA"),
    ({"trace": "t.csv", "trace_time_scale": 0.0}, "above 0"),
])
def test_config_checks(settings_, match):
    with pytest.raises(ConfigError, match=match):
        make_config(**settings_)


def test_cli_reads_public_traces_end_to_end(tmp_path, capsys):
    az = write(tmp_path, "azure.csv", AZURE + "2023-11-16 18:16:47,512,9\n2023-11-16 18:16:48,700,9\n")
    out = tmp_path / "r.json"
    code = main(["run", "--system", "gpu", "--trace", str(az), "--trace-max-requests", "5", "--steps", "12",
                 "--trace-time-scale", "0.001", "--trace-steps", "0", "--json-out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "first 5 requests only" in text
    r = json.loads(out.read_text())
    assert r["steps"] == 12 and r["context"] == 2048
    code = main(["run", "--system", "gpu", "--trace", str(write(tmp_path, "b.csv", BURST)), "--steps", "3",
                 "--trace-steps", "0"])
    assert code == 0 and "skipped 1 of 4 rows" in capsys.readouterr().out
    code = main(["run", "--system", "gpu", "--requests", "20", "--arrival-process", "gamma", "--arrival-cv", "3",
                 "--arrival-rate", "50", "--prompt-dist", f"empirical:{az}", "--output-dist", "uniform:2,4",
                 "--steps", "5", "--trace-steps", "0"])
    assert code == 0
