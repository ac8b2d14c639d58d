#!/usr/bin/env python3
"""Benchmark: a union merge of two 32k-vocabulary tokenizers that differ in a few thousand
tokens (issue: mergekit adds new tokens one call at a time, which is quadratic).

    ~/mk/bin/python bench/tokenizer_union.py [WORKDIR] [--mergekit]

Makes two tiny Llama-shaped models (hidden 64, 1 layer, bf16) whose tokenizer.json are 32,000-token
BPE vocabularies sharing the first 29,000 tokens, then times `amalgam merge` (release build,
`cargo build --release` first) of `tokenizer_source: union` and, with --mergekit, mergekit-yaml on
the same config. Prints wall times from this one run (the machine is shared: compare them with
each other, not across runs).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
work = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), "/tmp/amalgam-union-bench"))
VOCAB, SHARED, H, I = 32000, 29000, 64, 128


def model(dirname, tag, seed):
    d = work / dirname
    d.mkdir(parents=True, exist_ok=True)
    tokens = [f"tok_{i}" for i in range(SHARED)] + [f"{tag}_{i}" for i in range(VOCAB - SHARED)]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    }
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 4, "vocab_size": VOCAB, "torch_dtype": "bfloat16",
           "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
    (d / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16)
    t = {"model.embed_tokens.weight": r(VOCAB, H), "lm_head.weight": r(VOCAB, H),
         "model.norm.weight": r(H)}
    p = "model.layers.0."
    for n, s in [("input_layernorm.weight", (H,)), ("post_attention_layernorm.weight", (H,)),
                 ("self_attn.q_proj.weight", (H, H)), ("self_attn.k_proj.weight", (H, H)),
                 ("self_attn.v_proj.weight", (H, H)), ("self_attn.o_proj.weight", (H, H)),
                 ("mlp.gate_proj.weight", (I, H)), ("mlp.up_proj.weight", (I, H)),
                 ("mlp.down_proj.weight", (H, I))]:
        t[p + n] = r(*s)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


model("a", "alpha", 1)
model("b", "beta", 2)
(work / "union.yml").write_text(
    "merge_method: linear\nbase_model: ./a\nmodels:\n  - model: ./a\n    parameters: {weight: 0.5}\n"
    "  - model: ./b\n    parameters: {weight: 0.5}\ntokenizer_source: union\ndtype: bfloat16\n")


def timed(cmd, out):
    subprocess.run(["rm", "-rf", str(work / out)], check=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd + [str(work / "union.yml"), str(work / out)], cwd=work,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1"})
    dt = time.monotonic() - t0
    if r.returncode != 0:
        print(r.stderr[-2000:])
        raise SystemExit(f"{cmd[0]} failed")
    return dt


amalgam = ROOT / "target" / "release" / "amalgam"
print(f"amalgam merge: {timed([str(amalgam), 'merge'], 'out-amalgam'):.2f} s")
if "--mergekit" in sys.argv:
    mk = Path.home() / "mk" / "bin" / "mergekit-yaml"
    print(f"mergekit-yaml: {timed([str(mk)], 'out-mergekit'):.2f} s")
