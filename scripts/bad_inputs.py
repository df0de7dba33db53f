"""Run the bad-input corpus (tests/corpus.py) and count the outcomes: clean errors, warnings, tracebacks, hangs and
silently accepted nonsense. Prints every case that is not what it should be.

    python3 scripts/bad_inputs.py [-v]
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from corpus import cases, run_case  # noqa: E402


def main() -> int:
    verbose = "-v" in sys.argv
    counts: collections.Counter = collections.Counter()
    by_command: collections.Counter = collections.Counter()
    bad = []
    t0 = time.perf_counter()
    for c in cases():
        with tempfile.TemporaryDirectory() as d:
            outcome, line = run_case(c, Path(d))
        counts[outcome] += 1
        by_command[c.argv[0] if c.argv else "(none)"] += 1
        ok = outcome == c.expect and c.match in line
        if not ok:
            bad.append((c.id, outcome, line))
        if verbose:
            print(f"{outcome:<9} {c.id}: {line}")
    total = sum(counts.values())
    print(f"{total} bad inputs in {time.perf_counter() - t0:.1f} s over "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_command.items())))
    print("outcomes: " + ", ".join(f"{k} {counts[k]}" for k in ("error", "warning", "traceback", "hang", "nonsense")))
    for id, outcome, line in bad:
        print(f"NOT AS EXPECTED: {id}: {outcome}: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
