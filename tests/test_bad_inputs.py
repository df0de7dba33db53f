"""Every case of the bad-input corpus (tests/corpus.py) ends as its one clean line, exit 2 (or, for odd but
legitimate inputs, a warning): never a traceback, a hang, or a silently accepted wrong input."""

import pytest
from corpus import cases, run_case  # tests/corpus.py

CASES = cases()


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 250
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c, tmp_path):
    outcome, line = run_case(c, tmp_path)
    assert outcome == c.expect, line
    assert c.match in line
