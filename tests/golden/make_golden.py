#!/usr/bin/env python3
"""Build the golden conformance suite: tiny seeded checkpoints, merge configs, and mergekit's outputs.

Run from anywhere with the mergekit venv (mergekit 0.1.5 from PyPI, PyTorch CPU, Transformers):

    ~/mk/bin/python tests/golden/make_golden.py            # everything (models, configs, expected)
    ~/mk/bin/python tests/golden/make_golden.py --models   # only rebuild tests/golden/models/
    ~/mk/bin/python tests/golden/make_golden.py --cases    # only configs/, expected/, cases.json
    ~/mk/bin/python tests/golden/make_golden.py --cases ties slerp   # only the named cases

What it writes (all paths relative to tests/golden/, which is also the working directory used for
every merge, so the relative model paths in the configs resolve the same way for mergekit and for
amalgam):

* models/<name>/: Llama-shaped checkpoints (hidden 32, intermediate 64, 4 heads, 2 kv heads,
  4 layers, vocab 64) plus a Qwen2 pair (q/k/v biases), one tied-embedding model (no lm_head
  tensor) and one model with a 72-token vocabulary (for the shape-mismatch rejection). Values come
  from a seeded torch.Generator, so a rerun is byte-identical. Fine-tunes are base + a small delta
  in which some elements are exactly zero (element duplicates of the base), some are copied from
  another fine-tune or negated (sign-consensus ties), some are quantised to a coarse grid (magnitude
  ties, also in f32) and a few whole tensors are identical across models.
  Every Llama model carries the same tiny tokenizer (tokenizer.json, tokenizer_config.json,
  chat_template.jinja) and generation_config.json, so mergekit's random donor choice (a Python set
  order when there is no base_model) cannot change which side files are copied. The Qwen2 pair and
  the tied model have no tokenizer on purpose.
  `ft-b` and `base-f32` are stored as two shards with a model.safetensors.index.json.
* configs/<case>.yml: one merge config per case (the text is in CASES below).
* expected/<case>/: everything mergekit-yaml wrote for a case that succeeded.
* cases.json: per case, the config, the flags given to both CLIs, the exact mergekit command line,
  whether mergekit failed (and its last error line, plus the files a failed run left behind, which
  are then deleted), the tolerance class and its reason.

mergekit is run with PYTHONHASHSEED=0 (its donor model is picked from a set) and HF_HUB_OFFLINE=1.
Model paths are written as ./models/<name> on purpose: mergekit's model card treats an existing
relative path with exactly one '/' as a possible Hub id and asks the Hub (which crashes offline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
CONFIGS = HERE / "configs"
EXPECTED = HERE / "expected"
MERGEKIT = Path.home() / "mk" / "bin" / "mergekit-yaml"
SHARD = "40K"

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

LLAMA_CFG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=4,
    vocab_size=64,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
)


def shapes_of(config, model_cls):
    """Tensor names and shapes of a Transformers model, instantiated on the meta device."""
    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def base_values(shapes, seed):
    """Seeded f32 values: norms around 1, embeddings/linear layers around 0.02-0.05, biases small."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if "norm" in name:
            x = 1.0 + 0.1 * x
        elif name.endswith(".bias"):
            x = 0.05 * x
        elif "embed" in name or "lm_head" in name:
            x = 0.02 * x
        else:
            x = 0.05 * x
        # A handful of exact duplicate magnitudes inside each tensor (sorting ties even in f32).
        flat = x.view(-1)
        n = flat.numel()
        idx = torch.randperm(n, generator=g)[: max(1, n // 20)]
        flat[idx] = torch.round(flat[idx] * 64) / 64
        out[name] = x
    return out


def fine_tune(base, seed, scale=0.3, partner=None):
    """A fine-tune of `base` (f32 values): base + delta with the tie patterns described at the top.

    `partner` is another fine-tune's delta dict: 10% of the elements copy it exactly (duplicates
    across models) and 5% take its negation (equal magnitude, opposite sign).
    """
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for name in sorted(base):
        b = base[name]
        std = float(b.std()) if b.numel() > 1 else 0.05
        if "norm" in name:
            std = 0.1
        d = scale * std * torch.randn(b.shape, generator=g, dtype=torch.float32)
        flat = d.view(-1)
        n = flat.numel()
        u = torch.rand(n, generator=g)
        flat[u < 0.10] = 0.0  # exact element duplicates of the base
        q = (u >= 0.10) & (u < 0.20)  # magnitude ties on a coarse grid
        step = scale * std / 4
        flat[q] = torch.round(flat[q] / step) * step
        if partner is not None:
            p = partner[name].view(-1)
            flat[(u >= 0.20) & (u < 0.30)] = p[(u >= 0.20) & (u < 0.30)]
            flat[(u >= 0.30) & (u < 0.35)] = -p[(u >= 0.30) & (u < 0.35)]
        deltas[name] = d
    return deltas


def apply(base, deltas):
    return {k: base[k] + deltas[k] for k in base}


def write_model(path: Path, tensors, config, dtype, shards=1, tokenizer_dir=None, drop=()):
    """Writes config.json and safetensors (one file, or `shards` files plus an index)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    config = config.__class__.from_dict(config.to_dict())
    config.dtype = dtype
    config.save_pretrained(path)
    t = {k: v.to(dtype).contiguous() for k, v in tensors.items() if k not in drop}
    names = sorted(t)
    if shards == 1:
        save_file(t, path / "model.safetensors", metadata={"format": "pt"})
    else:
        per = (len(names) + shards - 1) // shards
        weight_map = {}
        total = 0
        for i in range(shards):
            part = names[i * per : (i + 1) * per]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: t[k] for k in part}, path / fname, metadata={"format": "pt"})
            for k in part:
                weight_map[k] = fname
                total += t[k].numel() * t[k].element_size()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer_dir is not None:
        for f in sorted(os.listdir(tokenizer_dir)):
            shutil.copy(tokenizer_dir / f, path / f)


def make_tokenizer(dest: Path):
    """A 64-token word-level tokenizer with a chat template, plus a generation config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, 64):
        vocab[f"tok{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for message in messages %}<s>{{ message['role'] }} {{ message['content'] }}</s>"
        "{% endfor %}"
    )
    fast.save_pretrained(dest)
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(dest)


def build_models():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if MODELS.exists():
        shutil.rmtree(MODELS)
    MODELS.mkdir(parents=True)
    tokdir = Path(tempfile.mkdtemp())
    make_tokenizer(tokdir)

    cfg = LlamaConfig(**LLAMA_CFG, tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    shapes = shapes_of(cfg, LlamaForCausalLM)
    base = base_values(shapes, seed=1000)
    da = fine_tune(base, seed=1001)
    db = fine_tune(base, seed=1002, partner=da)
    dc = fine_tune(base, seed=1003, partner=db, scale=0.5)
    # Whole-tensor duplicates: ft-a leaves one norm untouched, ft-c shares a projection with ft-a.
    da["model.layers.1.input_layernorm.weight"].zero_()
    dc["model.layers.2.self_attn.k_proj.weight"] = da["model.layers.2.self_attn.k_proj.weight"].clone()
    a, b, c = apply(base, da), apply(base, db), apply(base, dc)

    bf, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    write_model(MODELS / "base", base, cfg, bf, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-a", a, cfg, bf, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-b", b, cfg, bf, shards=2, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-c", c, cfg, bf, tokenizer_dir=tokdir)
    write_model(MODELS / "base-fp16", base, cfg, f16, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-a-fp16", a, cfg, f16, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-b-fp16", b, cfg, f16, tokenizer_dir=tokdir)
    write_model(MODELS / "base-f32", base, cfg, f32, shards=2, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-a-f32", a, cfg, f32, tokenizer_dir=tokdir)
    write_model(MODELS / "ft-b-f32", b, cfg, f32, tokenizer_dir=tokdir)

    # Tied embeddings: no lm_head tensor in the checkpoint, tie_word_embeddings true, no tokenizer.
    tcfg = LlamaConfig(**LLAMA_CFG, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    dt = fine_tune(base, seed=1004)
    write_model(MODELS / "tied", apply(base, dt), tcfg, bf, drop=("lm_head.weight",))

    # A 72-token vocabulary: mergekit refuses to merge it with the 64-token models.
    vcfg = LlamaConfig(
        **{**LLAMA_CFG, "vocab_size": 72}, tie_word_embeddings=False, architectures=["LlamaForCausalLM"]
    )
    write_model(MODELS / "vocab72", base_values(shapes_of(vcfg, LlamaForCausalLM), 1005), vcfg, bf)

    # Qwen2 pair (q/k/v biases), no tokenizer.
    qcfg = Qwen2Config(**LLAMA_CFG, tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])
    qshapes = shapes_of(qcfg, Qwen2ForCausalLM)
    qa = base_values(qshapes, seed=2000)
    qb = apply(qa, fine_tune(qa, seed=2001))
    write_model(MODELS / "qwen-a", qa, qcfg, bf)
    write_model(MODELS / "qwen-b", qb, qcfg, bf)
    shutil.rmtree(tokdir)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

SEED = ["--random-seed", "42"]

# Tolerance classes (see spec section 11): "exact" = every tensor bit-identical and every shard
# file byte-identical; "ulp1" = up to 1 ulp per element allowed, because the method takes
# full-tensor f32 reductions whose summation order follows PyTorch's vectorised kernels.
ULP_NORMS = "full-tensor f32 norm/dot reductions (PyTorch cascade-sum layout), spec section 11"
# The Qwen2 donor has no tokenizer: mergekit falls back to AutoTokenizer, and Transformers 5
# builds an empty default Qwen2 tokenizer (one token) which mergekit saves. Not worth mirroring.
QWEN_TOK = {
    "files": ["tokenizer.json", "tokenizer_config.json"],
    "why": "donor has no tokenizer; Transformers 5 invents an empty Qwen2 tokenizer that mergekit saves",
}
ULP_RESCALE = "L1 rescale uses full-tensor f32 sums (PyTorch cascade-sum layout), spec section 11"
# "ulp1_scale" = every element within 1 ulp of the tensor's largest magnitude. Only f32 slerp:
# torch.acos/torch.sin on float32 call Intel MKL VML (high-accuracy mode) in x86-64 Linux wheels;
# MKL's last bit is unpublished and changes with its code path (AVX-512/AVX2/SSE4.2), so nothing
# can reproduce it, and a 1-ulp change in a slerp coefficient moves every element by ~1 ulp of
# the inputs (many ulps of elements that cancel). Everything else in f32 slerp is bit-exact
# (crates/amalgam-methods: slerp test with PyTorch's acos/sin injected).
ULP_SCALE_TRIG = (
    "f32 slerp: torch.acos/sin on float32 come from Intel MKL VML (last bit unpublished, varies "
    "with MKL's code path); a 1-ulp coefficient change moves elements by ~1 ulp of the tensor's "
    "scale"
)

CASES = [
    # ---- linear ----
    dict(name="linear_weights", tol="exact", text="""\
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.3
  - model: ./models/ft-b
    parameters:
      weight: 0.45
  - model: ./models/ft-c
    parameters:
      weight: 0.2
merge_method: linear
parameters:
  normalize: false
"""),
    dict(name="linear_normalize_base", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      weight: 2.0
  - model: ./models/ft-b
    parameters:
      weight: 0.5
  - model: ./models/base
    parameters:
      weight: 1.0
merge_method: linear
"""),
    dict(name="linear_gradient_filter", tol="exact", text="""\
models:
  - model: ./models/ft-a
    parameters:
      weight: [0.1, 0.5, 0.9]
  - model: ./models/ft-b
    parameters:
      weight:
        - filter: self_attn
          value: 0.7
        - filter: mlp
          value: [0.2, 0.8]
        - value: 0.4
  - model: ./models/ft-c
merge_method: linear
parameters:
  weight: 0.35
  normalize: false
"""),
    dict(name="linear_f32", tol="exact", text="""\
models:
  - model: ./models/base-f32
    parameters:
      weight: 0.6
  - model: ./models/ft-a-f32
    parameters:
      weight: 0.3
  - model: ./models/ft-b-f32
    parameters:
      weight: 0.1
merge_method: linear
base_model: ./models/base-f32
"""),
    # ---- slerp ----
    dict(name="slerp", tol="ulp1", why=ULP_NORMS, text="""\
slices:
  - sources:
      - model: ./models/base
        layer_range: [0, 4]
      - model: ./models/ft-a
        layer_range: [0, 4]
merge_method: slerp
base_model: ./models/base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""),
    dict(name="slerp_f32", tol="ulp1_scale", why=ULP_SCALE_TRIG, text="""\
models:
  - model: ./models/base-f32
  - model: ./models/ft-b-f32
merge_method: slerp
base_model: ./models/base-f32
parameters:
  t: 0.3
"""),
    # ---- passthrough ----
    dict(name="passthrough_frankenmerge", tol="exact", text="""\
slices:
  - sources:
      - model: ./models/base
        layer_range: [0, 3]
  - sources:
      - model: ./models/ft-a
        layer_range: [1, 4]
merge_method: passthrough
dtype: bfloat16
"""),
    dict(name="passthrough_scale", tol="exact", text="""\
slices:
  - sources:
      - model: ./models/base
        layer_range: [0, 2]
        parameters:
          scale:
            - filter: o_proj
              value: 0.0
            - filter: down_proj
              value: [0.5, 1.0]
            - value: 1.0
  - sources:
      - model: ./models/ft-a
        layer_range: [1, 4]
merge_method: passthrough
"""),
    # ---- generalised task arithmetic ----
    dict(name="task_arithmetic", tol="exact",
         flags=["--no-copy-tokenizer", "--no-write-model-card"], text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      weight: 0.3
merge_method: task_arithmetic
parameters:
  lambda: 0.9
dtype: bfloat16
"""),
    dict(name="ties", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.5
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      density: 0.7
      weight: 0.3
  - model: ./models/ft-c
    parameters:
      density: 0.3
      weight: 0.4
merge_method: ties
parameters:
  normalize: true
dtype: bfloat16
"""),
    dict(name="ties_f32", tol="exact", text="""\
base_model: ./models/base-f32
models:
  - model: ./models/ft-a-f32
    parameters:
      density: 0.4
      weight: 0.6
  - model: ./models/ft-b-f32
    parameters:
      density: [0.2, 0.8]
      weight: 0.5
merge_method: ties
"""),
    dict(name="breadcrumbs", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.8
      gamma: 0.05
      weight: 0.6
  - model: ./models/ft-b
    parameters:
      density: 0.7
      gamma: 0.02
      weight: 0.4
merge_method: breadcrumbs
"""),
    dict(name="breadcrumbs_ties", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.8
      gamma: 0.05
      weight: 0.6
  - model: ./models/ft-b
    parameters:
      density: 0.7
      gamma: 0.02
      weight: 0.4
  - model: ./models/ft-c
    parameters:
      density: 0.9
      weight: 0.3
merge_method: breadcrumbs_ties
"""),
    dict(name="dare_linear", tol="ulp1", why=ULP_RESCALE, flags=SEED, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.66
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      density: 0.5
      weight: 0.5
merge_method: dare_linear
"""),
    dict(name="dare_ties", tol="ulp1", why=ULP_RESCALE, flags=SEED, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.53
      weight: 0.4
  - model: ./models/ft-b
    parameters:
      density: 0.6
      weight: 0.35
  - model: ./models/ft-c
    parameters:
      density: 0.7
      weight: 0.25
merge_method: dare_ties
parameters:
  int8_mask: true
"""),
    dict(name="della", tol="ulp1", why=ULP_RESCALE, flags=SEED, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.5
      epsilon: 0.1
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      density: 0.6
      epsilon: 0.2
      weight: 0.5
merge_method: della
parameters:
  lambda: 1.1
"""),
    dict(name="della_linear", tol="ulp1", why=ULP_RESCALE, flags=SEED, text="""\
base_model: ./models/base-f32
models:
  - model: ./models/ft-a-f32
    parameters:
      density: 0.4
      epsilon: 0.15
      weight: 0.7
  - model: ./models/ft-b-f32
    parameters:
      density: 0.6
      epsilon: 0.1
      weight: 0.3
merge_method: della_linear
"""),
    # ---- other methods ----
    dict(name="model_stock", tol="ulp1", why=ULP_NORMS, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
  - model: ./models/ft-c
merge_method: model_stock
"""),
    dict(name="model_stock_filter_wise", tol="ulp1", why=ULP_NORMS, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
merge_method: model_stock
parameters:
  filter_wise: true
"""),
    dict(name="nuslerp_flatten", tol="ulp1", why=ULP_NORMS, text="""\
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.7
  - model: ./models/ft-b
    parameters:
      weight: 0.3
merge_method: nuslerp
"""),
    dict(name="nuslerp_flatten_base", tol="ulp1", why=ULP_NORMS, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      weight: 1.0
  - model: ./models/ft-c
    parameters:
      weight: 2.0
merge_method: nuslerp
"""),
    dict(name="nuslerp_rows", tol="ulp1", why=ULP_NORMS, text="""\
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.4
  - model: ./models/ft-b
    parameters:
      weight: 0.6
merge_method: nuslerp
parameters:
  nuslerp_flatten: false
"""),
    dict(name="nuslerp_rowwise_base", tol="ulp1", why=ULP_NORMS, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      weight: 0.5
merge_method: nuslerp
parameters:
  nuslerp_flatten: false
  nuslerp_row_wise: true
"""),
    dict(name="multislerp", tol="ulp1", why=ULP_NORMS, text="""\
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      weight: 0.3
  - model: ./models/ft-c
    parameters:
      weight: 0.2
merge_method: multislerp
"""),
    dict(name="multislerp_base", tol="ulp1", why=ULP_NORMS, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      weight: 1.0
  - model: ./models/ft-b
    parameters:
      weight: 1.0
merge_method: multislerp
"""),
    dict(name="karcher", tol="ulp1", why=ULP_NORMS, text="""\
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
  - model: ./models/ft-c
merge_method: karcher
parameters:
  max_iter: 20
"""),
    dict(name="sce", tol="ulp1", why=ULP_NORMS, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
  - model: ./models/ft-c
merge_method: sce
parameters:
  select_topk: 0.5
"""),
    dict(name="nearswap", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
merge_method: nearswap
parameters:
  t: 0.002
"""),
    dict(name="arcee_fusion", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
merge_method: arcee_fusion
dtype: bfloat16
"""),
    dict(name="ram", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
  - model: ./models/ft-c
merge_method: ram
"""),
    dict(name="ramplus_tl", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
  - model: ./models/ft-c
merge_method: ramplus_tl
parameters:
  r: 0.3
  alpha: 0.5
"""),
    # ---- dtypes ----
    dict(name="dtype_fp16_to_bf16", tol="exact", text="""\
base_model: ./models/base-fp16
models:
  - model: ./models/ft-a-fp16
    parameters:
      density: 0.6
      weight: 0.5
  - model: ./models/ft-b-fp16
    parameters:
      density: 0.6
      weight: 0.5
merge_method: ties
dtype: bfloat16
"""),
    dict(name="out_dtype_f32", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      weight: 0.25
merge_method: task_arithmetic
dtype: bfloat16
out_dtype: float32
"""),
    dict(name="fp16_linear_out_bf16", tol="exact", text="""\
models:
  - model: ./models/ft-a-fp16
    parameters:
      weight: 0.5
  - model: ./models/ft-b-fp16
    parameters:
      weight: 0.5
merge_method: linear
base_model: ./models/ft-a-fp16
out_dtype: bfloat16
"""),
    dict(name="mixed_bf16_fp16", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/base
    parameters:
      weight: 0.5
  - model: ./models/ft-a-fp16
    parameters:
      weight: 0.5
merge_method: linear
"""),
    # ---- slices with per-slice parameters ----
    dict(name="slices_params", tol="exact", text="""\
slices:
  - sources:
      - model: ./models/base
        layer_range: [0, 2]
      - model: ./models/ft-a
        layer_range: [0, 2]
        parameters:
          weight: 0.8
      - model: ./models/ft-b
        layer_range: [0, 2]
    parameters:
      weight: 0.3
  - sources:
      - model: ./models/base
        layer_range: [2, 4]
      - model: ./models/ft-a
        layer_range: [2, 4]
      - model: ./models/ft-b
        layer_range: [1, 3]
        parameters:
          weight: [0.1, 0.9]
    parameters:
      weight: 0.6
      density: 0.5
merge_method: ties
base_model: ./models/base
parameters:
  density: 0.9
"""),
    # ---- tied embeddings ----
    dict(name="tied_linear", tol="exact", text="""\
base_model: ./models/base
models:
  - model: ./models/base
    parameters:
      weight: 0.5
  - model: ./models/tied
    parameters:
      weight: 0.5
merge_method: linear
"""),
    dict(name="tied_base_ties", tol="exact", text="""\
base_model: ./models/tied
models:
  - model: ./models/ft-a
    parameters:
      density: 0.5
      weight: 0.5
  - model: ./models/ft-b
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
"""),
    dict(name="tied_only", tol="exact", text="""\
models:
  - model: ./models/tied
merge_method: passthrough
"""),
    # ---- Qwen2 (biases) ----
    dict(name="qwen2_slerp", tol="ulp1", why=ULP_NORMS, optional=QWEN_TOK, text="""\
base_model: ./models/qwen-a
models:
  - model: ./models/qwen-a
  - model: ./models/qwen-b
merge_method: slerp
parameters:
  t: [0.2, 0.8]
"""),
    dict(name="qwen2_ties", tol="exact", optional=QWEN_TOK, text="""\
base_model: ./models/qwen-a
models:
  - model: ./models/qwen-b
    parameters:
      density: 0.5
      weight: 0.8
merge_method: ties
"""),
    # ---- rejected by mergekit ----
    # amalgam's default answers this config with 1/N weights and a warning (a documented
    # extension); --strict restores mergekit's refusal, which is what this case checks.
    dict(name="reject_linear_no_weight", culprit=[["weight"]], amalgam_flags=["--strict"], text="""\
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
merge_method: linear
"""),
    dict(name="reject_slerp_three_models", culprit=[["slerp", "exactly 2"], ["3"]], text="""\
base_model: ./models/base
models:
  - model: ./models/base
  - model: ./models/ft-a
  - model: ./models/ft-b
merge_method: slerp
parameters:
  t: 0.5
"""),
    dict(name="reject_unknown_method", culprit=[["frobnicate"]], text="""\
models:
  - model: ./models/ft-a
  - model: ./models/ft-b
merge_method: frobnicate
parameters:
  weight: 0.5
"""),
    dict(name="reject_shape_mismatch", culprit=[["mismatch", "shape"], ["lm_head", "embed_tokens", "vocab72", "72"]], text="""\
models:
  - model: ./models/base
    parameters:
      weight: 0.5
  - model: ./models/vocab72
    parameters:
      weight: 0.5
merge_method: linear
base_model: ./models/base
"""),
    dict(name="reject_della_epsilon", culprit=[["epsilon"]], flags=SEED, text="""\
base_model: ./models/base
models:
  - model: ./models/ft-a
    parameters:
      density: 0.9
      epsilon: 0.2
      weight: 0.5
merge_method: della
"""),
]


def run_case(case):
    name = case["name"]
    cfg = CONFIGS / f"{name}.yml"
    cfg.write_text(case["text"])
    out = EXPECTED / name
    if out.exists():
        shutil.rmtree(out)
    flags = ["--out-shard-size", SHARD] + case.get("flags", [])
    rel_cfg = f"configs/{name}.yml"
    rel_out = f"expected/{name}"
    argv = [str(MERGEKIT), rel_cfg, rel_out] + flags
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True)
    failed = proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    entry = {
        "name": name,
        "config": rel_cfg,
        "flags": flags,
        "expected": None if failed else rel_out,
        "command": "mergekit-yaml " + " ".join([rel_cfg, rel_out] + flags),
        "mergekit_failed": failed,
        "mergekit_exit_code": proc.returncode,
    }
    if case.get("amalgam_flags"):
        entry["amalgam_flags"] = case["amalgam_flags"]
    if failed:
        entry["mergekit_error"] = lines[-1] if lines else ""
        # Each inner list is a set of alternatives; amalgam's stderr must match one of each.
        entry["culprit"] = case.get("culprit", [])
        entry["left_behind"] = sorted(os.listdir(out)) if out.exists() else None
        if out.exists():
            shutil.rmtree(out)
        if "culprit" not in case:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"case {name} was expected to succeed")
    else:
        if "culprit" in case:
            raise SystemExit(f"case {name} was expected to fail")
        entry["tolerance"] = case["tol"]
        entry["tolerance_reason"] = case.get(
            "why", "bit-exact: no full-tensor f32 reduction whose order could differ"
        )
        entry["files"] = sorted(os.listdir(out))
        if "optional" in case:
            entry["optional_files"] = case["optional"]["files"]
            entry["optional_reason"] = case["optional"]["why"]
        warn = [l for l in lines if "WARNING" in l or "ERROR" in l]
        if warn:
            entry["mergekit_log"] = warn
    print(f"{name}: {'FAILED (as expected): ' + entry['mergekit_error'] if failed else 'ok'}")
    return entry


def build_cases(only):
    CONFIGS.mkdir(exist_ok=True)
    EXPECTED.mkdir(exist_ok=True)
    index_path = HERE / "cases.json"
    existing = {}
    if only and index_path.exists():
        existing = {c["name"]: c for c in json.loads(index_path.read_text())["cases"]}
    names = [c["name"] for c in CASES]
    for n in only:
        if n not in names:
            raise SystemExit(f"unknown case {n}")
    for case in CASES:
        if not only or case["name"] in only:
            existing[case["name"]] = run_case(case)
    doc = {
        "generator": "tests/golden/make_golden.py",
        "mergekit_version": "0.1.5",
        "cwd": "tests/golden",
        "cases": [existing[n] for n in names if n in existing],
    }
    index_path.write_text(json.dumps(doc, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", action="store_true", help="only rebuild models/")
    ap.add_argument("--cases", nargs="*", default=None, help="only rebuild cases (all if none named)")
    args = ap.parse_args()
    do_models = args.models or args.cases is None
    do_cases = args.cases is not None or not args.models
    if do_models:
        build_models()
    if do_cases:
        build_cases(args.cases or [])


if __name__ == "__main__":
    main()
