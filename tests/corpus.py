"""A corpus of bad inputs over every subcommand and file format, and how to classify what the CLI does with one.

Each case is a command line (``{d}`` stands for a scratch folder) plus the files it reads, written there first.
``classify`` runs it through ``sim.cli.main`` in this process and says what happened:

* ``error``: exit status 2 and exactly one line on stderr, ``aqpim-sim...: error: ...`` (the wanted outcome);
* ``warning``: exit status 0 with a ``warning:`` line (for inputs that are odd but legitimate);
* ``traceback``: an exception escaped ``main``; ``hang``: it ran past the time limit;
* ``nonsense``: exit status 0 with no warning for an input that is wrong, or an exit status other than 0 and 2.

``tests/test_bad_inputs.py`` asserts every case's outcome; ``scripts/bad_inputs.py`` prints the counts.
"""

from __future__ import annotations

import contextlib
import io
import signal
from dataclasses import dataclass, field
from pathlib import Path

from sim.config import SHARED
from sim.options import flag_of, specs
from sim.systems import SYSTEMS

TIME_LIMIT_S = 30


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    files: dict = field(default_factory=dict)  # name -> str or bytes, written into the scratch folder
    expect: str = "error"                      # or "warning"
    match: str = ""                            # a substring the one line must hold


def case(id: str, *argv: str, files: dict | None = None, expect: str = "error", match: str = "") -> Case:
    return Case(id, tuple(argv), dict(files or {}), expect, match)


SMALL = ("--steps", "1", "--batch", "1", "--context", "1024", "--trace-steps", "0")
SMALL_COMPARE = ("--steps", "1", "--batch", "1", "--context", "1024", "--trace-steps", "1")  # compare draws a step
LLAMA = ('{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, '
         '"num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256, '
         '"max_position_embeddings": 131072}')


def _model(**changes) -> str:
    import json

    cfg = json.loads(LLAMA)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    return json.dumps(cfg)


def _option_cases() -> list[Case]:
    """Every numeric option of `run` (shared and each system's): below its minimum, not a number, beyond the
    hard limit, above the sanity bound without --allow-large, and NaN/inf for real numbers."""
    out = []
    owners = {}
    for name, cls in SYSTEMS.items():
        for key, spec in specs(cls.Options).items():
            owners.setdefault(key, (name, spec))
    table = [(k, None, v) for k, v in SHARED.items()] + [(k, s, v) for k, (s, v) in owners.items()]
    for key, system, (base, _, _, spec) in table:
        if base not in (int, float):
            continue
        flag = flag_of(key, spec)
        pre = ("--system", system) if system else ()
        values = {"word": "abc", "huge": "1" + "0" * 22}
        if spec.minimum is not None:
            values["below"] = str(int(spec.minimum) - 1) if base is int else str(spec.minimum - 0.5)
        if base is int:
            values["fraction"] = "1.5"
        else:
            values.update(nan="nan", inf="inf")
        if spec.maximum is not None:
            values["above-sanity"] = str(int(spec.maximum) + 1) if base is int else str(spec.maximum * 2)
        for what, value in values.items():
            out.append(case(f"run {flag} {what}", "run", *pre, *SMALL[:2], flag, value))
    return out


def _choice_cases() -> list[Case]:
    return [
        case("run --system unknown", "run", "--system", "aqpm", match="did you mean"),
        case("run --capacity-policy", "run", "--system", "pim", "--capacity-policy", "spil"),
        case("run --placement", "run", "--system", "pim", "--placement", "rows"),
        case("run --softmax", "run", "--system", "aqpim", "--softmax", "gpu"),
        case("run --kv-format unknown", "run", "--system", "pim", "--kv-format", "int5x", *SMALL),
        case("run --kv-format pq in pim", "run", "--system", "pim", "--kv-format", "pq:m=8,k=256", match="aqpim"),
        case("run --kv-format 9 bits", "run", "--system", "pim", "--kv-format", "int:bits=9"),
        case("run --kv-format group 0", "run", "--system", "pim", "--kv-format", "int:bits=4,group=0"),
        case("run --kv-format bad option", "run", "--system", "pim", "--kv-format", "int:bitz=4",
             match="did you mean"),
        case("run --kv-format empty value", "run", "--system", "pim", "--kv-format", "int:bits="),
        case("run --model unknown", "run", "--model", "lama-2-7b", match="did you mean 'llama-2-7b'"),
        case("run --model missing file", "run", "--model", "{d}/none.json", match="not found"),
        case("run --hardware unknown", "run", "--hardware", "a100", match="valid presets"),
        case("run --hardware missing file", "run", "--hardware", "{d}/none.toml"),
        case("run --pim unknown", "run", "--system", "pim", "--pim", "attac", match="did you mean"),
        case("run --pim missing file", "run", "--system", "pim", "--pim", "{d}/none.toml"),
        case("run --trace missing", "run", "--trace", "{d}/none.csv", match="not found"),
        case("run --trace wrong suffix", "run", "--trace", "{d}/t.txt", files={"t.txt": "x"}),
        case("run text with NUL", "run", "--model", "llama\0x"),
    ]


def _consistency_cases() -> list[Case]:
    return [
        case("prefetch and cpu attention", "run", "--prefetch", "--cpu-attention", match="cannot be combined"),
        case("cpu kernel without cpu attention", "run", *SMALL, "--cpu-kernel", "bandwidth",
             match="applies only with cpu_attention"),
        case("cpu kernel unknown", "run", *SMALL, "--cpu-attention", "--cpu-kernel", "fast", match="bandwidth"),
        case("kv fraction above 1", "run", *SMALL, "--kv-gpu-fraction", "1.5",
             match="kv_gpu_fraction must be a number in [0, 1] or auto, got '1.5'"),
        case("kv fraction negative", "run", *SMALL, "--kv-gpu-fraction", "-0.25", match="[0, 1] or auto"),
        case("weights fraction a word", "run", *SMALL, "--weights-gpu-fraction", "most",
             match="weights_gpu_fraction must be a number in [0, 1] or auto, got 'most'"),
        case("weights fraction nan", "run", *SMALL, "--weights-gpu-fraction", "nan", match="[0, 1] or auto"),
        # one layer's KV of 200 sequences of 131000 tokens of LLaMA-3.1-8B is 100 GiB: no GPU buffer holds it
        case("auto placement that fits nowhere", "run", "--batch", "200", "--context", "131000", "--steps", "1",
             match="even with every weight and KV byte streamed"),
        case("explicit placement that does not fit", "run", "--batch", "200", "--context", "131000", "--steps",
             "1", "--kv-gpu-fraction", "0", "--weights-gpu-fraction", "0", expect="warning",
             match="does not fit"),
        case("trace and requests", "run", "--trace", "{d}/t.csv", "--requests", "3",
             files={"t.csv": "arrival_s,prompt_tokens,output_tokens\n0,10,1\n"}),
        case("sub-batches above batch", "run", "--system", "pim", "--sub-batches", "5", "--batch", "2"),
        case("sub-batches above max-batch", "run", "--system", "pim", "--sub-batches", "5", "--max-batch", "2",
             "--requests", "4"),
        case("pq-m not dividing head_dim", "run", "--system", "aqpim", "--pq-m", "7", *SMALL,
             match="not divisible by m=7"),
        case("pq-k not a power of two", "run", "--system", "aqpim", "--pq-k", "100", match="power of two"),
        case("compare without a traced step", "compare", "--trace-steps", "0", *SMALL, match="--trace-steps must be"),
        case("compare pq-m not dividing head_dim", "compare", "--pq-m", "12", *SMALL_COMPARE, match="not divisible by m=12"),
        case("compare pq-k not a power of two", "compare", "--pq-k", "384", *SMALL_COMPARE, match="power of two"),
        case("lookup buffer smaller than one table row", "run", "--system", "aqpim", "--lut-bytes", "511", *SMALL,
             match="smaller than one table row (256 centroids x 2 bytes = 512 bytes)"),
        case("lookup buffer below a row at a larger K", "run", "--system", "aqpim", "--pq-k", "1024", *SMALL,
             match="smaller than one table row"),
        case("unknown lookup dataflow", "run", "--system", "aqpim", "--lut-dataflow", "subspaces"),
        case("outliers beyond head_dim", "run", "--system", "aqpim", "--outliers", "128", *SMALL),
        case("near softmax without a near unit", "run", "--system", "pim", "--pim", "upmem", "--softmax", "near",
             *SMALL),
        case("offload with a pim option", "run", "--system", "offload", "--pq-m", "8",
             match="is an option of aqpim, not of offload"),
        case("gpu with an offload option", "run", "--system", "gpu", "--prefetch"),
        case("pim with an aqpim option", "run", "--system", "pim", "--lut-bytes", "4096"),
        case("aqpim with a pim-only option", "run", "--system", "aqpim", "--kv-format", "int4"),
        case("explain with a foreign option", "explain", "--system", "gpu", "--channels", "4"),
        case("compare with an option no variant has", "compare", "--variants", "offload", "--channels", "4",
             "--out", "{d}/c"),
        case("compare unknown variant", "compare", "--variants", "offload+prefech", "--out", "{d}/c",
             match="did you mean"),
        case("compare --system unknown", "compare", "--system", "gpuu", "--out", "{d}/c"),
    ]


def _run_file_cases() -> list[Case]:
    def rf(id: str, text, match: str = "") -> Case:
        return case(f"run file: {id}", "run", "{d}/r.toml", files={"r.toml": text}, match=match)

    return [
        rf("syntax", 'model = "llama-2-7b"\nbatch = = 4\n', match="line 2"),
        rf("not UTF-8", b"\xff\xfe batch = 4\n"),
        rf("unknown key", 'modle = "llama-2-7b"\n', match="did you mean 'model'"),
        rf("nested table", "[run]\nbatch = 4\n", match="flat"),
        rf("batch as text", 'batch = "4"\n'),
        rf("batch fractional", "batch = 4.5\n"),
        rf("batch boolean", "batch = true\n"),
        rf("prefetch as text", 'prefetch = "yes"\n'),
        rf("kv fraction out of range", 'kv_gpu_fraction = "1.01"\n', match="[0, 1] or auto"),
        rf("kv fraction as a number", "kv_gpu_fraction = 0.5\n", match="must be a string"),
        rf("array value", "batch = [1, 2]\n"),
        rf("inf", "arrival_rate_per_s = inf\n"),
        rf("nan", "arrival_rate_per_s = nan\n"),
        rf("huge integer", "context = 100000000000000000000\n"),
        rf("foreign option", 'system = "offload"\npq_m = 8\n', match="option of aqpim"),
        rf("unknown system", 'system = "pimm"\n', match="did you mean"),
        rf("system not text", "system = 3\n"),
        rf("negative seed", "seed = -1\n"),
        rf("date value", "batch = 1979-05-27\n"),
        case("run file: a folder", "run", "{d}", match="cannot read"),
        case("run file: missing", "run", "{d}/none.toml"),
    ]


def _model_cases() -> list[Case]:
    def mf(id: str, text, match: str = "") -> Case:
        return case(f"config.json: {id}", "run", "--model", "{d}/config.json", *SMALL,
                    files={"config.json": text}, match=match)

    return [
        mf("a list", "[1, 2]", match="holds an object"),
        mf("not JSON", "{model_type: llama}", match="malformed JSON"),
        mf("Infinity", _model(hidden_size=1).replace('"hidden_size": 1', '"hidden_size": Infinity')),
        mf("NaN", _model(vocab_size=1).replace('"vocab_size": 1', '"vocab_size": NaN')),
        mf("not UTF-8", b'{"model_type": "llama\xff"}'),
        mf("empty", ""),
        mf("unknown family", _model(model_type="gpt2"), match="not supported"),
        mf("unknown dtype", _model(torch_dtype="int3")),
        mf("missing hidden size", _model(hidden_size=None), match="missing 'hidden_size'"),
        mf("zero heads", _model(num_attention_heads=0)),
        mf("heads not dividing hidden", _model(num_attention_heads=3), match="not a multiple"),
        mf("zero KV heads", _model(num_key_value_heads=0)),
        mf("KV heads not dividing heads", _model(num_key_value_heads=5)),
        mf("fractional layers", _model(num_hidden_layers=32.7)),
        mf("boolean layers", _model(num_hidden_layers=True)),
        mf("layers as text", _model(num_hidden_layers="32")),
        mf("negative vocab", _model(vocab_size=-5)),
        mf("huge vocab", _model(vocab_size=10**15)),
        mf("huge layers", _model(num_hidden_layers=10**9)),
        mf("zero positions", _model(max_position_embeddings=0)),
        mf("negative head_dim", _model(head_dim=-64)),
        mf("sliding window text", _model(use_sliding_window=True, sliding_window="4096")),
        mf("tie flag as text", _model(tie_word_embeddings="no")),
        mf("name not text", _model(_name_or_path=5)),
        case("config.json: a folder without one", "run", "--model", "{d}/sub", files={"sub/x.txt": "x"}),
    ]


MACHINE = (Path(__file__).resolve().parents[1] / "hw_models" / "presets" / "a100-pcie4-ddr5.toml").read_text()
PIM = (Path(__file__).resolve().parents[1] / "hw_models" / "presets" / "pim" / "attacc-hbm3.toml").read_text()


def _hardware_cases() -> list[Case]:
    def mf(id: str, old: str, new: str, match: str = "") -> Case:
        assert old in MACHINE, old
        return case(f"machine file: {id}", "run", "--hardware", "{d}/m.toml", *SMALL,
                    files={"m.toml": MACHINE.replace(old, new, 1)}, match=match)

    def pf(id: str, old: str, new: str, match: str = "") -> Case:
        assert old in PIM, old
        return case(f"PIM file: {id}", "run", "--system", "pim", "--pim", "{d}/p.toml", *SMALL,
                    files={"p.toml": PIM.replace(old, new, 1)}, match=match)

    return [
        mf("missing section", "[pcie]", "[pcie_]"),
        mf("unknown key", "lanes = ", "lanez = ", match="did you mean 'lanes'"),
        mf("negative bandwidth", "value = 2.039e12", "value = -2.039e12"),
        mf("zero capacity", "value = 85899345920", "value = 0"),
        mf("bandwidth as text", "value = 2.039e12", 'value = "fast"'),
        mf("efficiency above one", "bw_efficiency = { value = 0.85", "bw_efficiency = { value = 1.5"),
        mf("unknown duplex", 'value = "full"', 'value = "both"'),
        mf("negative idle power", "idle_power_w = { value = 90.0", "idle_power_w = { value = -5.0",
           match="m.toml [gpu]: gpu 'NVIDIA A100-80GB SXM': idle_power_w must be zero or positive"),
        mf("idle above max power", "idle_power_w = { value = 90.0", "idle_power_w = { value = 9000.0",
           match="m.toml [gpu]"),
        mf("syntax", "[gpu]", "[gpu"),
        mf("nan bandwidth", "value = 2.039e12", "value = nan"),
        mf("inf latency", "value = 5e-6", "value = inf"),
        mf("unknown entry in a value", "source = \"NVIDIA A100 datasheet: 312", "sorce = \"x\", source = \"x"),
        case("machine file: not UTF-8", "run", "--hardware", "{d}/m.toml", files={"m.toml": b"\xff\xfe"}),
        pf("zero channels", "value = 160", "value = 0"),
        pf("unknown processing level", 'value = "bank"', 'value = "bnak"', match="did you mean 'bank'"),
        pf("unrecognised processing level", 'value = "bank"', 'value = "wafer"', match="must be one of"),
        pf("unknown timing preset", 'value = "hbm3-5200"', 'value = "hbm9"', match="valid presets"),
        pf("missing channel section", "[channel]", "[chanel]"),
        pf("fractional ranks", "value = 2, source = \"AT attacc_bank.yaml org", "value = 2.5, source = \"x"),
        pf("units per bank above one", "units_per_bank = { value = 1.0", "units_per_bank = { value = 1.5"),
        pf("negative energy", "value = 4.4e-12", "value = -4.4e-12"),
        pf("lut bytes zero", "lut_bytes = { value = 512", "lut_bytes = { value = 0"),
        pf("lut bytes in the channel section", "[channel]\n", "[channel]\nlut_bytes = 512\n",
           match="moved to the [aqpim_unit] section"),
        pf("fractional lookup SRAM banks", "lut_banks = { value = 16", "lut_banks = { value = 1.5"),
        case("PIM file: lookup buffer smaller than one table row", "run", "--system", "aqpim", "--pim",
             "{d}/p.toml", *SMALL, files={"p.toml": PIM.replace("lut_bytes = { value = 512", "lut_bytes = { value = 256")},
             match="smaller than one table row"),
        case("PIM file without a lookup unit for aqpim", "run", "--system", "aqpim", "--pim", "{d}/p.toml", *SMALL,
             files={"p.toml": PIM[:PIM.index("[aqpim_unit]")]}, match="no AQPIM lookup unit"),
        pf("placement unknown", 'value = "accelerator"', 'value = "cloud"'),
        case("PIM file: not UTF-8", "run", "--system", "pim", "--pim", "{d}/p.toml", files={"p.toml": b"\xff"}),
    ]


def _trace_cases() -> list[Case]:
    head = "arrival_s,prompt_tokens,output_tokens\n"
    azure = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    burst = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"

    def tf(id: str, name: str, text, match: str = "") -> Case:
        return case(f"trace: {id}", "run", "--trace", "{d}/" + name, "--steps", "1", files={name: text},
                    match=match)

    return [
        tf("no header", "t.csv", "0,10,1\n", match="header lacks"),
        tf("missing column", "t.csv", "arrival_s,prompt_tokens\n0,10\n", match="output_tokens"),
        tf("word token count", "t.csv", head + "0,abc,1\n", match="t.csv:2"),
        tf("fractional tokens", "t.csv", head + "0,1024.9,1\n"),
        tf("zero output", "t.csv", head + "0,10,0\n"),
        tf("negative arrival", "t.csv", head + "-1,10,1\n"),
        tf("nan arrival", "t.csv", head + "nan,10,1\n"),
        tf("inf arrival", "t.csv", head + "inf,10,1\n"),
        tf("short row", "t.csv", head + "0,10\n", match="fewer fields"),
        tf("long row", "t.csv", head + "0,10,1,4\n", match="more fields"),
        tf("huge tokens", "t.csv", head + "0,100000000000000,1\n"),
        tf("empty", "t.csv", head, match="no requests"),
        tf("not UTF-8", "t.csv", b"\xff\xfe\x00"),
        tf("NUL byte", "t.csv", head + "0,1\x000,1\n"),
        tf("jsonl malformed", "t.jsonl", '{"arrival_s": 0,,}\n', match="t.jsonl:1"),
        tf("jsonl not an object", "t.jsonl", "[0, 10, 1]\n"),
        tf("jsonl fractional", "t.jsonl", '{"arrival_s": 0, "prompt_tokens": 1024.9, "output_tokens": 1}\n'),
        tf("jsonl boolean", "t.jsonl", '{"arrival_s": 0, "prompt_tokens": true, "output_tokens": 1}\n'),
        tf("jsonl Infinity", "t.jsonl", '{"arrival_s": Infinity, "prompt_tokens": 1, "output_tokens": 1}\n'),
        tf("jsonl missing key", "t.jsonl", '{"arrival_s": 0, "prompt_tokens": 1}\n', match="output_tokens"),
        tf("jsonl text count", "t.jsonl", '{"arrival_s": 0, "prompt_tokens": "ten", "output_tokens": 1}\n'),
        tf("jsonl null", "t.jsonl", '{"arrival_s": null, "prompt_tokens": 1, "output_tokens": 1}\n'),
        case("trace: a folder", "run", "--trace", "{d}/t.csv", files={"t.csv/x": "x"}),
        tf("azure bad timestamp", "a.csv", azure + "2023-11-16 18:15:46.68,374,44\n18:15:47,1,1\n",
           match="a.csv:3: TIMESTAMP must be a date and time"),
        tf("azure impossible date", "a.csv", azure + "2023-02-30 18:15:46,374,44\n", match="a.csv:2"),
        tf("azure fractional tokens", "a.csv", azure + "2023-11-16 18:15:46,374.5,44\n", match="ContextTokens"),
        tf("azure short row", "a.csv", azure + "2023-11-16 18:15:46,374\n", match="fewer fields"),
        tf("burstgpt word timestamp", "b.csv", burst + "soon,ChatGPT,1,1,2,API log\n", match="b.csv:2: Timestamp"),
        tf("burstgpt nan timestamp", "b.csv", burst + "nan,ChatGPT,1,1,2,API log\n", match="b.csv:2"),
        tf("burstgpt negative tokens", "b.csv", burst + "5,ChatGPT,-3,1,2,API log\n", match="Request tokens"),
        tf("burstgpt only failures", "b.csv", burst + "5,ChatGPT,10,0,10,API log\n", match="no requests"),
        tf("unknown header", "t.csv", "time,in,out\n1,2,3\n", match="BurstGPT"),
        case("trace: time scale 0", "run", "--trace", "{d}/t.csv", "--trace-time-scale", "0",
             files={"t.csv": head + "0,10,1\n"}, match="above 0"),
        case("trace: scaled beyond max arrival", "run", "--trace", "{d}/t.csv", "--trace-time-scale", "1e6",
             "--allow-large", files={"t.csv": head + "0,10,1\n5000,10,1\n"}, match="scaled arrivals"),
        case("trace options without a trace", "run", *SMALL, "--trace-max-requests", "3",
             match="applies only with trace"),
    ]


def _generator_cases() -> list[Case]:
    def g(id: str, *argv: str, match: str = "", files: dict | None = None) -> Case:
        return case(f"generator: {id}", "run", "--requests", "3", "--steps", "1", *argv, match=match, files=files)

    return [
        g("unknown process", "--arrival-process", "gama", match="did you mean"),
        g("gamma without cv", "--arrival-process", "gamma", "--arrival-rate", "2", match="needs arrival_cv"),
        g("gamma without rate", "--arrival-process", "gamma", "--arrival-cv", "2", match="arrival_rate_per_s"),
        g("cv with poisson", "--arrival-cv", "2", match="only with arrival_process gamma"),
        g("cv zero", "--arrival-process", "gamma", "--arrival-rate", "2", "--arrival-cv", "0"),
        g("cv huge", "--arrival-process", "gamma", "--arrival-rate", "2", "--arrival-cv", "1e5"),
        g("unknown distribution", "--prompt-dist", "unifrom:1,5", match="did you mean 'uniform'"),
        g("uniform reversed", "--prompt-dist", "uniform:9,3", match="LO <= HI"),
        g("uniform one value", "--output-dist", "uniform:9", match="uniform:LO,HI"),
        g("fixed without value", "--prompt-dist", "fixed", match="fixed:N"),
        g("fixed zero", "--prompt-dist", "fixed:0", match="whole numbers from 1"),
        g("fixed fraction", "--prompt-dist", "fixed:1.5", match="whole numbers"),
        g("lognormal words", "--prompt-dist", "lognormal:a,b", match="takes numbers"),
        g("lognormal nan", "--prompt-dist", "lognormal:nan,1", match="finite"),
        g("lognormal negative sigma", "--prompt-dist", "lognormal:100,-1", match="SIGMA"),
        g("lognormal max 0", "--prompt-dist", "lognormal:100,1,0", match="whole numbers"),
        g("empirical without file", "--prompt-dist", "empirical:", match="needs a trace file"),
        g("empirical missing file", "--prompt-dist", "empirical:{d}/none.csv", match="not found"),
        g("empirical malformed file", "--output-dist", "empirical:{d}/t.csv", match="t.csv:2",
          files={"t.csv": "arrival_s,prompt_tokens,output_tokens\n0,ten,1\n"}),
        case("generator: dist without requests", "run", *SMALL, "--prompt-dist", "uniform:1,5",
             match="applies only to synthetic requests"),
        case("generator: dist with a trace", "run", "--trace", "{d}/t.csv", "--output-dist", "fixed:3",
             files={"t.csv": "arrival_s,prompt_tokens,output_tokens\n0,10,1\n"}, match="synthetic requests"),
    ]


def _sweep_cases() -> list[Case]:
    def sf(id: str, text, match: str = "", *extra: str) -> Case:
        return case(f"sweep: {id}", "sweep", "{d}/s.toml", "--out", "{d}/o", *extra, files={"s.toml": text},
                    match=match)

    base = "[base]\nbatch = 1\nsteps = 1\ncontext = 1024\n"
    return [
        sf("syntax", "[base\n", "line 1"),
        sf("not UTF-8", b"\xff\xfe"),
        sf("unknown table", "[bass]\nbatch = 1\n", "did you mean"),
        sf("setting at top level", "batch = 1\n", "[base]"),
        sf("factor not a list", base + "[factors]\ncontext = 4096\n"),
        sf("factor empty", base + "[factors]\ncontext = []\n"),
        sf("unknown factor", base + "[factors]\ncontxt = [1, 2]\n", "did you mean"),
        sf("factor of tables with an unknown key", base + '[factors]\nv = [{ sytem = "pim" }]\n'),
        sf("foreign option in a grid", base + '[factors]\nsystem = ["offload", "aqpim"]\npq_m = [8, 16]\n',
           "option of aqpim"),
        sf("bad value in a point", base + "[[points]]\nbatch = -1\n"),
        sf("points not tables", base + "points = [1, 2]\n"),
        sf("unknown sweep key", "[sweep]\ncolour = 1\n" + base, "valid keys"),
        sf("bad model in base", '[base]\nmodel = "lama"\n', "valid presets"),
        sf("mistyped model in base", '[base]\nmodel = "llama-2-7"\n', "did you mean 'llama-2-7b'"),
        sf("nested list value", base + "[factors]\ncontext = [[1, 2]]\n"),
        sf("--jobs 0", base, "", "--jobs", "0"),
        case("sweep: missing file", "sweep", "{d}/none.toml"),
        case("sweep --analytic: a trace file", "sweep", "{d}/s.toml", "--out", "{d}/o", "--analytic",
             files={"s.toml": base + 'trace = "t.csv"\n', "t.csv": "arrival_s,prompt_tokens,output_tokens\n0,8,2\n"},
             match="trace file"),
        sf("--analytic: Poisson arrivals", base + "requests = 4\narrival_rate_per_s = 2.0\n", "Poisson arrivals",
           "--analytic"),
        sf("--check-sample without --analytic", base, "applies only with --analytic", "--check-sample", "2"),
        sf("--check-sample negative", base, "--check-sample", "--analytic", "--check-sample", "-1"),
        sf("--analytic on dask", base, "local processes", "--analytic", "--executor", "dask"),
    ]


def _plot_cases() -> list[Case]:
    result = '{"system": "offload"}'
    return [
        case("plot: missing input", "plot", "breakdown", "{d}/none.json", "--out", "{d}/b.png", match="cannot read"),
        case("plot: not JSON", "plot", "breakdown", "{d}/r.json", "--out", "{d}/b.png", files={"r.json": "{"}),
        case("plot: wrong shape", "plot", "breakdown", "{d}/r.json", "--out", "{d}/b.png",
             files={"r.json": result}),
        case("plot: a list of numbers", "plot", "breakdown", "{d}/r.json", "--out", "{d}/b.png",
             files={"r.json": "[1, 2]"}),
        case("plot: not UTF-8", "plot", "breakdown", "{d}/r.json", "--out", "{d}/b.png", files={"r.json": b"\xff"}),
        case("plot: pdf", "plot", "breakdown", "{d}/r.json", "--out", "{d}/b.pdf", files={"r.json": "[]"}),
        case("plot: timeline of a result", "plot", "timeline", "{d}/r.json", "--out", "{d}/t.png",
             files={"r.json": result}),
        case("plot: timeline max lanes 0", "plot", "timeline", "{d}/t.json", "--out", "{d}/t.png", "--max-lanes",
             "0", files={"t.json": '{"traceEvents": []}'}),
        case("plot: timeline steps 0", "plot", "timeline", "{d}/t.json", "--out", "{d}/t.png", "--steps", "0",
             files={"t.json": '{"traceEvents": []}'}),
        case("plot: sweep of a JSON file", "plot", "sweep", "{d}/r.json", "--out", "{d}/s.png",
             files={"r.json": "[]"}),
        case("plot: sweep empty JSONL", "plot", "sweep", "{d}/r.jsonl", "--out", "{d}/s.png", files={"r.jsonl": ""}),
        case("plot: sweep damaged JSONL", "plot", "sweep", "{d}/r.jsonl", "--out", "{d}/s.png",
             files={"r.jsonl": '{"key": 1}\n{x\n'}),
        case("plot: capacity of a JSON file", "plot", "capacity", "{d}/r.json", "--out", "{d}/c.png",
             files={"r.json": "[]"}),
        case("plot: unknown kind", "plot", "pie", "{d}/r.json", "--out", "{d}/c.png"),
        case("plot: no --out", "plot", "breakdown", "{d}/r.json"),
        case("plot: out into a file", "plot", "breakdown", "{d}/r.json", "--out", "{d}/f/b.png",
             files={"f": "x", "r.json": "[]"}),
    ]


def _ledger_cases() -> list[Case]:
    """`assumptions`: every refusal comes before the first simulation."""
    a = ("assumptions", "--out", "{d}/l")
    return [
        case("assumptions unknown hardware", *a, "--hardware", "a100-pcie4", match="unknown hardware preset"),
        case("assumptions unknown PIM device", *a, "--pim", "attacc", match="attacc"),
        case("assumptions unknown model", *a, "--model", "llama-9b", match="unknown model preset"),
        case("assumptions malformed hardware file", *a, "--hardware", "{d}/m.toml", files={"m.toml": "[gpu\n"},
             match="malformed TOML"),
        case("assumptions unknown variant", *a, "--variants", "aqpim,pim+limt", match="did you mean 'pim+limit'"),
        case("assumptions --jobs 0", *a, "--jobs", "0", match="--jobs"),
        case("assumptions --top 0", *a, "--top", "0", match="--top"),
        case("assumptions --steps 0", *a, "--steps", "0", match="steps"),
        case("assumptions nothing fits", *a, "--variants", "gpu", "--context", "1000000", "--steps", "1",
             match="no compared variant fits"),
        case("assumptions --out a file", "assumptions", "--out", "{d}/f", files={"f": "x"},
             match="is a file, not a folder"),
        case("assumptions --out under a file", "assumptions", "--out", "{d}/f/l", files={"f": "x"},
             match="is a file, not a folder"),
        case("plot: tornado of a results list", "plot", "tornado", "{d}/r.json", "--out", "{d}/t.png",
             files={"r.json": "[]"}, match="not an assumption ledger"),
    ]


def _output_cases() -> list[Case]:
    return [
        case("run --json-out under a file", "run", *SMALL, "--json-out", "{d}/f/x.json", files={"f": "x"},
             match="is a file, not a folder"),
        case("run --json-out a folder", "run", *SMALL, "--json-out", "{d}/sub", files={"sub/x": "x"},
             match="it is a folder"),
        case("run --trace-out under a file", "run", *SMALL, "--trace-out", "{d}/f/t.json", files={"f": "x"}),
        case("compare --out a file", "compare", *SMALL_COMPARE, "--variants", "gpu", "--out", "{d}/f", files={"f": "x"},
             match="it is a file, not a folder"),
        case("compare --out under a file", "compare", *SMALL_COMPARE, "--variants", "gpu", "--out", "{d}/f/c",
             files={"f": "x"}, match="is a file, not a folder"),
        case("sweep --out a file", "sweep", "{d}/s.toml", "--out", "{d}/f",
             files={"f": "x", "s.toml": "[base]\nbatch = 1\nsteps = 1\ncontext = 1024\n"}),
        case("accuracy --json-out under a file", "accuracy", "--settings", "fp16", "--data", "synthetic",
             "--context", "256", "--queries", "8", "--iters", "1", "--json-out", "{d}/f/a.json", files={"f": "x"}),
    ]


def _argparse_cases() -> list[Case]:
    return [
        case("no command", match="required"),
        case("unknown command", "rnu", match="invalid choice"),
        case("mistyped flag", "run", "--bacth", "4", match="did you mean '--batch'"),
        case("abbreviated flag", "run", "--bat", "4", match="did you mean '--batch'"),
        case("flag without value", "run", "--batch"),
        case("extra positional", "run", "a.toml", "b.toml"),
        case("presets --show unknown", "presets", "--show", "attac", match="did you mean"),
        case("presets --show and --json", "presets", "--show", "x", "--json"),
        case("explain bad value", "explain", "--batch", "0"),
        case("accuracy unknown format", "accuracy", "--settings", "pq:m=8", "--data", "synthetic"),
        case("accuracy pq m not dividing head_dim", "accuracy", "--settings", "pq:m=7,k=256", "--data",
             "synthetic", match="not divisible by m=7"),
        case("accuracy pq k not a power of two", "accuracy", "--settings", "pq:m=8,k=100", "--data", "synthetic",
             match="k must be a power of two"),
        case("accuracy key_k not a power of two", "accuracy", "--settings", "pq:m=8,k=256,key_k=300", "--data",
             "synthetic", match="key_k must be a power of two"),
        case("accuracy pre_rope on odd sub-vectors", "accuracy", "--settings", "pq:m=64,k=16,pre_rope=true",
             "--data", "synthetic", match="pre_rope needs"),
        case("accuracy bad kind", "accuracy", "--settings", "fp8", "--data", "synthetic", match="unknown kind"),
        case("accuracy mistyped kind", "accuracy", "--settings", "fp61", "--data", "synthetic",
             match="did you mean 'fp16'"),
    ]


def _warning_cases() -> list[Case]:
    return [
        case("context beyond the model's positions", "run", "--model", "llama-2-7b", "--context", "8192",
             "--steps", "1", "--batch", "1", expect="warning", match="max_position_embeddings"),
        case("KV that fits nowhere", "run", "--system", "gpu", "--context", "100000", "--batch", "64", "--steps",
             "1", expect="warning", match="does not fit"),
        case("large batch allowed explicitly", "run", "--batch", "5000", "--allow-large", "--steps", "1",
             "--context", "16", "--model", "llama-2-70b", "--weights-gpu-fraction", "1", expect="warning",
             match="does not fit"),
    ]


def _serving_cases() -> list[Case]:
    def s(id: str, *argv: str, match: str = "") -> Case:
        return case(f"serving: {id}", "run", "--requests", "2", "--steps", "1", "--context", "1024", *argv,
                    match=match)

    return [
        s("negative ttft slo", "--slo-ttft", "-0.2", match="at least 0"),
        s("zero tpot slo", "--slo-tpot", "0", match="above 0"),
        s("nan ttft slo", "--slo-ttft", "nan"),
        s("chunk budget 0", "--prefill", "chunked", "--prefill-chunk-tokens", "0", match="positive"),
        s("chunk budget without chunked", "--prefill", "first", "--prefill-chunk-tokens", "64",
          match="only with prefill chunked"),
        s("unknown prefill mode", "--prefill", "chunk", match="prefill"),
        s("request log without format", "--request-log", "{d}/requests.txt", match=".csv or .jsonl"),
    ]


def cases() -> list[Case]:
    return (_option_cases() + _choice_cases() + _consistency_cases() + _run_file_cases() + _model_cases()
            + _hardware_cases() + _trace_cases() + _generator_cases() + _serving_cases() + _sweep_cases()
            + _plot_cases()
            + _ledger_cases() + _output_cases()
            + _argparse_cases() + _warning_cases())


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_case(c: Case, folder: Path) -> tuple[str, str]:
    """(outcome, the relevant output line) of one case, run in ``folder``."""
    from sim.cli import main

    for name, content in c.files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    argv = [a.replace("{d}", str(folder)) for a in c.argv]
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    except _Timeout:
        return "hang", ""
    except Exception as e:  # noqa: BLE001 - anything escaping main is what this classifies
        return "traceback", f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    lines = err.getvalue().splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("aqpim-sim") and ": error: " in lines[0]:
        return "error", lines[0]
    text = out.getvalue() + err.getvalue()
    if code == 0 and "warning:" in text:
        return "warning", next(line for line in text.splitlines() if "warning:" in line)
    return "nonsense", f"exit {code}: {err.getvalue().strip()[:300]}"
