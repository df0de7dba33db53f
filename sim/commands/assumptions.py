"""`aqpim-sim assumptions`: the assumption ledger of the comparison's headline (``sim.ledger``).

Lists every value tagged as an assumption ``(I)`` in the presets the comparison runs on (the machine, its host
DRAM timing, the PIM device and its DRAM timing, the model) and in the tagged system options, and reruns the
comparison with each one halved and doubled (a boolean flipped), one at a time, to show how far the headline
ratios move: the winner's speedup over the best fitting baseline, and aqpim over pim+limit. Entries whose change
makes another variant win are flagged. The configuration flags are `compare`'s, with a shorter default run (2
decode steps, no trace); ``--list`` only lists the tagged values.

The folder gets ``ledger.txt`` (the table), ``ledger.json``, ``ledger.csv`` and ``tornado.png``, written as a set
(see `compare`): an interrupted run leaves no partial folder, and an existing one is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import MappingProxyType

from sim.commands.compare import SCENARIO as COMPARE_SCENARIO
from sim.commands.compare import add_variant_arguments, variant_pairs
from sim.errors import ConfigError
from sim.io import atomic_folder, check_output_file, check_target_folder, write_text_atomic
from sim.ledger import Headline, build_ledger, fmt_value, ledger_csv, ledger_json, ledger_table, tagged_values
from sim.sweep import check_jobs

HELP = "list the assumptions (I) behind the compare headline and how far halving or doubling each one moves it"
EXAMPLE = """examples:
  aqpim-sim assumptions --out results/ledger --jobs 4      (the default compare's headline, every assumption)
  aqpim-sim assumptions --list                             (only list the tagged values, run nothing)
  aqpim-sim assumptions --pim hbm-pim-aquabolt --context 32768 --out /tmp/l --overwrite
  aqpim-sim assumptions --variants offload,aqpim --steps 1 --out /tmp/l
scenario (flags override it): """

# compare's scenario with a shorter run: every perturbation is one run of each variant that reads the changed value.
SCENARIO = MappingProxyType({**COMPARE_SCENARIO, "steps": 2, "trace_steps": 0})
FILES = MappingProxyType({"table": "ledger.txt", "json": "ledger.json", "csv": "ledger.csv",
                          "tornado": "tornado.png"})
TOP = 15


def add_parser(sub) -> None:
    scenario = ", ".join(f"{k}={v}" for k, v in SCENARIO.items())
    p = sub.add_parser("assumptions", help=HELP, description=HELP, epilog=EXAMPLE + scenario,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--list", action="store_true", help="list the tagged values with their sources; run nothing")
    p.add_argument("--out", metavar="DIR", help="output folder (default results/assumptions-<timestamp>)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it holds a ledger")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="simulations run at once, in worker processes (default: the usable cores)")
    p.add_argument("--top", type=int, default=TOP, metavar="N",
                   help=f"assumptions drawn in the tornado figure, largest swing first (default {TOP}; the table "
                   f"lists all)")


def run(args) -> int:
    if args.top < 1:
        raise ConfigError(f"--top must be a positive number of rows, got {args.top}")
    pairs = variant_pairs(args, SCENARIO)
    if args.list:
        tagged = tagged_values(Headline.load(pairs))
        width = max((len(t.key) for t in tagged), default=0)
        for t in tagged:
            print(f"{t.key:<{width}}  {t.preset}  {fmt_value(t.value, t.unit)}  {t.source}")
        print(f"{len(tagged)} values tagged as assumptions (I)")
        return 0
    jobs = check_jobs(args.jobs)
    out = Path(args.out) if args.out else Path("results") / time.strftime("assumptions-%Y%m%d-%H%M%S")
    check_target_folder(out, args.overwrite, FILES.values())  # before the runs: a refusal costs nothing
    if not out.exists():
        check_output_file(out)  # nor does a file where its parent folder should be
    t0 = time.monotonic()
    ledger = build_ledger(pairs, jobs=jobs)
    elapsed = time.monotonic() - t0
    table = ledger_table(ledger)
    print(table, end="")
    from plots import plot_tornado  # figures read the saved ledger, as every figure reads saved results

    with atomic_folder(out, args.overwrite, FILES.values()) as tmp:
        write_text_atomic(tmp / FILES["table"], table)
        write_text_atomic(tmp / FILES["json"], ledger_json(ledger))
        write_text_atomic(tmp / FILES["csv"], ledger_csv(ledger))
        plot_tornado(tmp / FILES["json"], tmp / FILES["tornado"], top=args.top)
    print(f"{ledger['runs']} simulations in {elapsed:.1f} s with {jobs} job{'s' if jobs != 1 else ''}")
    print(f"wrote {out}/: " + ", ".join(FILES.values()))
    return 0
