import numpy as np
import pytest

from workloads.arrivals import synthetic_requests
from workloads.errors import WorkloadError
from workloads.trace_formats import load_requests
from workloads.traces import ContinuousBatcher, Request, fixed_requests


def test_fixed_trace_contexts_grow_one_per_step():
    b = ContinuousBatcher(fixed_requests(3, 100, 4), max_batch=3)
    seen = []
    while not b.done:
        b.admit(0.0)
        seen.append(b.contexts().tolist())
        b.advance()
    assert seen == [[100] * 3, [101] * 3, [102] * 3, [103] * 3]


def test_continuous_batching_respects_max_batch_and_arrivals():
    reqs = [Request(0.0, 10, 2), Request(0.0, 20, 1), Request(0.0, 30, 2), Request(5.0, 40, 1)]
    b = ContinuousBatcher(reqs, max_batch=2)
    b.admit(0.0)
    assert b.contexts().tolist() == [10, 20]
    assert b.advance() == 1  # the 1-token request leaves
    b.admit(1.0)
    assert b.contexts().tolist() == [11, 30]
    b.advance()
    b.admit(2.0)  # request 4 has not arrived yet
    assert b.contexts().tolist() == [31]
    b.advance()
    assert not b.done and b.next_arrival_s() == 5.0
    b.admit(5.0)
    assert b.contexts().tolist() == [40]


def test_synthetic_requests_deterministic_with_seed():
    a = synthetic_requests(5, 100, 10, 2.0, np.random.default_rng(7))
    b = synthetic_requests(5, 100, 10, 2.0, np.random.default_rng(7))
    assert a == b and all(x.arrival_s <= y.arrival_s for x, y in zip(a, a[1:], strict=False))


def test_csv_and_jsonl(tmp_path):
    c = tmp_path / "t.csv"
    c.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,5\n0.5,200,3\n")
    j = tmp_path / "t.jsonl"
    j.write_text('{"arrival_s": 0, "prompt_tokens": 100, "output_tokens": 5}\n\n'
                 '{"arrival_s": 0.5, "prompt_tokens": 200, "output_tokens": 3}\n')
    assert load_requests(c) == load_requests(j) == [Request(0.0, 100, 5), Request(0.5, 200, 3)]


@pytest.mark.parametrize("text,match", [
    ("arrival_s,prompt_tokens,output_tokens\n0,100,5\n0,abc,5\n", r"t.csv:3: prompt_tokens must be a whole number"),
    ("arrival_s,prompt_tokens\n0,100\n", r"t.csv:1: header lacks column\(s\) output_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n0,0,5\n", r"t.csv:2: prompt_tokens must be a whole number from 1"),
    ("arrival_s,prompt_tokens,output_tokens\n0,1024.9,5\n", r"t.csv:2: prompt_tokens must be a whole number"),
    ("arrival_s,prompt_tokens,output_tokens\n0,100\n", r"t.csv:2: fewer fields than the header's 3"),
    ("arrival_s,prompt_tokens,output_tokens\n0,100,5,7\n", r"t.csv:2: more fields than the header's 3"),
    ("arrival_s,prompt_tokens,output_tokens\nnan,100,5\n", r"t.csv:2: arrival_s must be a number of seconds from 0"),
    ("arrival_s,prompt_tokens,output_tokens\ninf,100,5\n", r"t.csv:2: arrival_s must be a number of seconds from 0"),
])
def test_malformed_csv_names_file_and_line(tmp_path, text, match):
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(WorkloadError, match=match):
        load_requests(p)


@pytest.mark.parametrize("row, match", [
    ('{"arrival_s": 0, "prompt_tokens": 1024.9, "output_tokens": 1}', "prompt_tokens must be a whole number"),
    ('{"arrival_s": 0, "prompt_tokens": true, "output_tokens": 1}', "prompt_tokens must be a whole number"),
    ('{"arrival_s": Infinity, "prompt_tokens": 1, "output_tokens": 1}', "malformed JSON: Infinity is not a number JSON allows"),
    ('{"arrival_s": 0, "prompt_tokens": 1}', "missing output_tokens"),
])
def test_jsonl_values_are_checked(tmp_path, row, match):
    p = tmp_path / "t.jsonl"
    p.write_text(row + "\n")
    with pytest.raises(WorkloadError, match=r"t.jsonl:1: " + match):
        load_requests(p)


def test_malformed_jsonl_names_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n{"arrival_s": 0,,}\n')
    with pytest.raises(WorkloadError, match=r"t.jsonl:2: malformed JSON"):
        load_requests(p)


def test_zero_sizes_rejected():
    with pytest.raises(WorkloadError, match="batch must be a positive integer"):
        fixed_requests(0, 10, 1)


def test_token_budget_limits_admission_but_never_starves():
    reqs = [Request(0.0, 100, 10)] * 4
    b = ContinuousBatcher(reqs, max_batch=4)
    b.admit(0.0, token_budget=250)  # each needs 110 tokens: two fit
    assert b.contexts().size == 2
    big = ContinuousBatcher([Request(0.0, 1000, 1), Request(0.0, 10, 1)], max_batch=2)
    big.admit(0.0, token_budget=50)  # the oversized first request still runs, alone
    assert big.contexts().tolist() == [1000]
