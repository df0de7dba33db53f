"""Feasibility first: a variant that does not fit gets no headline, and admission says which batch it admitted."""

from __future__ import annotations

import json

from sim.cli import main
from sim.config import make_config
from sim.run import simulate

# LLaMA-3.1-8B, batch 16, 32K tokens: 64 GiB of KV. The GPU (80 GiB with 15 GiB of weights) cannot hold it, all
# of it fits host DRAM, and the 80 GiB of PIM admits only some sequences under capacity_policy = limit.
SCENARIO = ["--context", "32768", "--steps", "1", "--batch", "16"]


def table_rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = {}
    for line in lines[head + 2:]:
        cells = [c for c in line.split("  ") if c.strip()]
        if len(cells) < 5:
            break
        rows[cells[0].strip()] = [c.strip() for c in cells]
    return rows


def test_a_variant_that_does_not_fit_has_no_headline(tmp_path, capsys):
    assert main(["compare", *SCENARIO, "--variants", "offload,gpu", "--context", "131072",
                 "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    gpu = rows["gpu"]
    assert "does not fit" in gpu and "NO" in gpu
    assert not any(c.endswith("x") or c.endswith(" J") or "tokens" in c for c in gpu[2:])
    assert "1.00x" in " ".join(rows["offload"])
    assert out.count("warning: gpu: does not fit: GPU memory") == 1  # the reason, once
    report = (tmp_path / "a" / "report.md").read_text()
    gpu_line = next(line for line in report.splitlines() if line.startswith("| gpu "))
    assert "does not fit" in gpu_line and " J" not in gpu_line and "x |" not in gpu_line
    assert report.count("gpu does not fit:") == 1
    # the numbers stay in the data, and an explicit flag shows them, marked
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [r["fits"] for r in data] == [True, False] and data[1]["tokens_per_s"] > 0
    assert main(["compare", *SCENARIO, "--variants", "offload,gpu", "--context", "131072", "--show-infeasible",
                 "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    gpu = table_rows(out)["gpu"]
    assert gpu[4].endswith("x *") and gpu[-2].endswith("J *") and "does not fit" not in gpu
    assert "* does not fit its memory: timing only" in out


def test_limit_reports_the_admitted_batch_everywhere(tmp_path, capsys):
    r = simulate(make_config(system="pim", capacity_policy="limit", batch=16, context=65536, steps=1))
    admitted, budget = r.details["admitted_batch"], r.details["admission_token_budget"]
    assert 0 < admitted < 16 and admitted == r.peak_batch
    # the budget admits `admitted` whole sequences (prompt + output) and not one more
    assert admitted * 65537 <= budget < (admitted + 1) * 65537
    assert r.fits
    assert "admitted_batch" not in simulate(make_config(system="pim", batch=2, context=1024, steps=1)).details
    assert main(["run", "--system", "pim", "--capacity-policy", "limit", "--context", "65536", "--steps", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("admitted batch"))
    assert line.split(maxsplit=2)[2].startswith(f"{admitted} of 16 sequences at once")
    assert main(["compare", "--steps", "1", "--context", "65536", "--variants", "pim+limit",
                 "--out", str(tmp_path)]) == 0
    assert table_rows(capsys.readouterr().out)["pim+limit"][1] == f"{admitted} of 16"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data[0]["details"]["admitted_batch"] == admitted
