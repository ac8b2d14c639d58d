#!/usr/bin/env python3
"""Golden cases for vocabulary alignment (tokenizer_source, tokenizer:, chat_template,
--unsafe-truncate-embeddings), made by mergekit 0.1.5.

    ~/mk/bin/python tests/golden-tokenizer/make_golden.py

Models (tests/golden-tokenizer/models/, Llama-shaped: hidden 16, 2 layers, bf16), after the
fixtures of mergekit's tests/test_tokenizer.py: a 64-token BPE vocabulary `<unk> <s> </s> _tok_3
... _tok_63` loaded as LlamaTokenizerFast (so the three specials are added tokens), and

* base:    vocab_size 64, no extra tokens;
* chatml:  vocab_size 66, added `<|im_start|>` `<|im_end|>` (ids 64, 65);
* chatml2: as chatml with other weights (two models share the new tokens: the average rule);
* padded:  vocab_size 64, tokenizer with `<UNUSED_0..3>` at ids 64..67 (beyond the embedding);
* special: vocab_size 65, special added `<|existing_special|>` (single_word, lstrip, rstrip);
* tied:    as base, `tie_word_embeddings: true` and no `lm_head.weight` (as transformers saves
           a tied model);
* tied_chatml: as chatml, tied the same way;
* alt:     vocab_size 64, regular vocabulary whose last four tokens are `_alt_0.._alt_3`
           (a union adds regular tokens: their ids follow a hash order in mergekit, so the test
           compares up to a permutation of the new ids).

Each case is run as `PYTHONHASHSEED=0 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 mergekit-yaml
configs/<case>.yml expected/<case>` from this folder; a rejected config keeps its last error line
in cases.json. versions.json records torch / transformers / tokenizers / mergekit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaTokenizerFast

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
MERGEKIT = Path.home() / "mk" / "bin" / "mergekit-yaml"

HIDDEN, INTER, LAYERS, HEADS, KV = 16, 32, 2, 4, 2


def make_tokenizer(vocab_size, added_tokens, alt=0):
    tokens = ["<unk>", "<s>", "</s>"] + [f"_tok_{i}" for i in range(3, vocab_size)]
    tokens = tokens[:vocab_size]
    for k in range(alt):
        tokens[vocab_size - alt + k] = f"_alt_{k}"
    data = {
        "version": "1.0",
        "model": {"type": "BPE", "vocab": dict(zip(tokens, range(vocab_size))), "merges": []},
        "added_tokens": [],
    }
    tok = tokenizers.Tokenizer.from_str(json.dumps(data))
    with tempfile.TemporaryDirectory() as p:
        path = os.path.join(p, "tokenizer.json")
        tok.save(path)
        res = LlamaTokenizerFast(tokenizer_file=path)
    res.add_tokens(added_tokens)
    return res


def tensors(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    hd = HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (vocab, HIDDEN), "lm_head.weight": (vocab, HIDDEN),
              "model.norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HEADS * hd, HIDDEN),
            p + "self_attn.k_proj.weight": (KV * hd, HIDDEN),
            p + "self_attn.v_proj.weight": (KV * hd, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * hd),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
        })
    out = {}
    for name in sorted(shapes):
        x = torch.randn(shapes[name], generator=g)
        out[name] = (1.0 + 0.1 * x) if "norm" in name else 0.05 * x
    return {k: v.to(torch.bfloat16).contiguous() for k, v in out.items()}


def write_model(name, vocab, tok, seed, tied=False):
    path = MODELS / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_attention_heads=HEADS,
                      num_key_value_heads=KV, num_hidden_layers=LAYERS, vocab_size=vocab,
                      max_position_embeddings=64, tie_word_embeddings=tied,
                      architectures=["LlamaForCausalLM"], bos_token_id=1, eos_token_id=2)
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(path)
    weights = tensors(vocab, seed)
    if tied:
        # As transformers saves a tied model: no lm_head.weight.
        del weights["lm_head.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    tok.save_pretrained(path)


def build_models():
    if MODELS.exists():
        shutil.rmtree(MODELS)
    write_model("base", 64, make_tokenizer(64, []), 1)
    write_model("chatml", 66, make_tokenizer(64, ["<|im_start|>", "<|im_end|>"]), 2)
    write_model("chatml2", 66, make_tokenizer(64, ["<|im_start|>", "<|im_end|>"]), 3)
    write_model("padded", 64, make_tokenizer(64, [f"<UNUSED_{i}>" for i in range(4)]), 4)
    special = make_tokenizer(64, [])
    special.add_special_tokens({"additional_special_tokens": [tokenizers.AddedToken(
        "<|existing_special|>", single_word=True, lstrip=True, rstrip=True, normalized=False,
        special=True)]})
    write_model("special", 65, special, 5)
    write_model("alt", 64, make_tokenizer(64, [], alt=4), 6)
    write_model("tied", 64, make_tokenizer(64, []), 7, tied=True)
    write_model("tied_chatml", 66, make_tokenizer(64, ["<|im_start|>", "<|im_end|>"]), 8, tied=True)


def models(names, weight=1.0):
    return "models:\n" + "".join(
        f"  - model: ./models/{n}\n    parameters:\n      weight: {weight}\n" for n in names)


B3 = ["base", "padded", "chatml"]
CASES = {
    "mismatch": (models(B3) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\n", []),
    "source_base": (models(B3) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: base\n", []),
    "source_union": (models(B3) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: union\n", []),
    "source_model": (models(B3) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: ./models/chatml\n", []),
    "ta_base": (models(["base", "chatml"]) + "merge_method: task_arithmetic\nbase_model: ./models/base\ndtype: float32\ntokenizer:\n  source: base\n", []),
    "ta_union": (models(["base", "chatml"]) + "merge_method: task_arithmetic\nbase_model: ./models/base\ndtype: float32\ntokenizer: {}\n", []),
    "slerp_union": (models(["base", "chatml"]) + "merge_method: slerp\nbase_model: ./models/base\ndtype: float32\nparameters:\n  t: 0.5\ntokenizer_source: union\n", []),
    "force_token": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\n"
                    "tokenizer:\n  source: union\n  tokens:\n    _tok_10:\n      source: ./models/chatml\n      force: true\n"
                    "    _tok_11:\n      source: ./models/base\n      force: true\n", []),
    "special_model": (models(["special"]) + "merge_method: linear\nbase_model: ./models/special\ndtype: float32\n"
                      "tokenizer:\n  source: ./models/special\n  tokens:\n    \"<|existing_special|>\":\n      source: ./models/special\n      force: true\n"
                      "    \"<|new_configured_token|>\":\n      source:\n        kind: model_token\n        model: ./models/special\n        token: _tok_10\n      force: true\n", []),
    "special_base": (models(["special"]) + "merge_method: linear\nbase_model: ./models/special\ndtype: float32\n"
                     "tokenizer:\n  source: base\n  tokens:\n    \"<|existing_special|>\":\n      source: ./models/special\n      force: true\n", []),
    "special_union": (models(["special"]) + "merge_method: linear\nbase_model: ./models/special\ndtype: float32\n"
                      "tokenizer:\n  source: union\n  tokens:\n    \"<|existing_special|>\":\n      source: ./models/special\n      force: true\n", []),
    "model_token_id": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\n"
                       "tokenizer:\n  source: base\n  tokens:\n    _tok_20:\n      source:\n        kind: model_token\n        model: ./models/chatml\n        token_id: 64\n      force: true\n"
                       "    _tok_21:\n      source:\n        kind: model_token\n        model: ./models/base\n        token: <s>\n      force: true\n", []),
    "pad16": (models(["chatml"]) + "merge_method: linear\nbase_model: ./models/chatml\ndtype: float32\ntokenizer:\n  source: base\n  pad_to_multiple_of: 16\n", []),
    "pad16_bf16": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: bfloat16\ntokenizer:\n  source: union\n  pad_to_multiple_of: 16\n", []),
    "avg_bf16": (models(["chatml", "chatml2", "base"], 0.5) + "merge_method: linear\ndtype: bfloat16\ntokenizer_source: union\n", []),
    "avg_native": (models(["chatml", "chatml2", "base"], 0.5) + "merge_method: linear\ntokenizer_source: base\nbase_model: ./models/base\n", []),
    "union_alt": (models(["base", "alt"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: union\n", []),
    "truncate": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\n", ["--unsafe-truncate-embeddings"]),
    "chat_chatml": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: union\nchat_template: chatml\n", []),
    "chat_llama3": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: base\nchat_template: llama3\n", []),
    "tied_union": (models(["tied", "tied_chatml"]) + "merge_method: linear\nbase_model: ./models/tied\ndtype: float32\ntokenizer_source: union\n", []),
    "tied_mixed": (models(["base", "tied_chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: union\n", []),
    "tied_base_untied": (models(["tied_chatml", "chatml"]) + "merge_method: linear\nbase_model: ./models/tied_chatml\ndtype: float32\ntokenizer:\n  source: base\n", []),
    "chat_literal": (models(["base", "chatml"]) + "merge_method: linear\nbase_model: ./models/base\ndtype: float32\ntokenizer_source: base\nchat_template: \"{{messages[0]['content']}}\"\n", []),
}


def run_cases():
    (HERE / "configs").mkdir(exist_ok=True)
    exp = HERE / "expected"
    if exp.exists():
        shutil.rmtree(exp)
    exp.mkdir()
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cases = {}
    for name, (text, flags) in CASES.items():
        cfg = HERE / "configs" / f"{name}.yml"
        cfg.write_text(text)
        cmd = [str(MERGEKIT), f"configs/{name}.yml", f"expected/{name}", *flags]
        r = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
        entry = {"flags": flags, "ok": r.returncode == 0}
        if r.returncode != 0:
            lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
            entry["mergekit_error"] = lines[-1] if lines else ""
            shutil.rmtree(exp / name, ignore_errors=True)
        else:
            (exp / name / "README.md").unlink(missing_ok=True)
        cases[name] = entry
        print(name, "ok" if entry["ok"] else entry["mergekit_error"])
    (HERE / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")
    import mergekit  # noqa: F401
    from importlib.metadata import version
    (HERE / "versions.json").write_text(json.dumps({
        "mergekit": version("mergekit"), "torch": torch.__version__,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}, indent=2) + "\n")


if __name__ == "__main__":
    build_models()
    run_cases()
