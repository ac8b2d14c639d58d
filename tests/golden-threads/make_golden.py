#!/usr/bin/env python3
"""Golden cases for `--torch-threads`: mergekit 0.1.5 run with 1, 2 and 4 PyTorch threads.

Run with mergekit 0.1.5's interpreter (torch 2.15 CPU):

    ~/mk/bin/python tests/golden-threads/make_golden.py

Why: PyTorch splits a reduction to one value over 32,768+ elements per intra-op thread
(docs/threads.md), so mergekit's output depends on `torch.get_num_threads()`. The models here are
one-layer Llamas (hidden 64, intermediate 704, vocabulary 1100, tied embeddings) whose MLP
matrices have 45,056 elements (2 chunks with 2+ threads) and whose embedding has 70,400 (3 chunks
with 3+ threads), stored as bf16 so they are small; each case merges them in bf16, f16 and f32.

mergekit's `run_merge` (what mergekit-yaml runs) is called in one process after
`torch.set_num_threads(T)` (which also sets MKL's threads), with PYTHONHASHSEED=0 and
HF_HUB_OFFLINE=1 set for the process, `copy_tokenizer=False` (the models have none), and
`random_seed=7` for the random methods; `OMP_NUM_THREADS=T mergekit-yaml ...` (recorded per run)
is the command-line equivalent. Written, relative to this folder:

* models/<name>/: the four models (base, ft-a, ft-b, ft-c), from a seeded torch.Generator.
* configs/<case>.yml: one config per case (method x dtype).
* cases.json: per case and thread count, the sha256 of every output tensor's bytes, and (for
  the trig-dependent methods, whose tolerance needs the values) the name of the file below.
* expected/<case>-t<T>.safetensors: for slerp-family methods only, the tensors of 32,768+
  elements (the small ones are covered by tests/golden).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
MERGEKIT = Path.home() / "mk" / "bin" / "mergekit-yaml"
THREADS = [1, 2, 4]
SEED = 7
HIDDEN, INTER, VOCAB = 64, 704, 1100
DTYPES = ["bfloat16", "float16", "float32"]
TRIG = {"multislerp", "nuslerp", "karcher"}


def llama_config():
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }


def shapes():
    s = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "model.layers.0.input_layernorm.weight": (HIDDEN,),
        "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
        "model.layers.0.mlp.gate_proj.weight": (INTER, HIDDEN),
        "model.layers.0.mlp.up_proj.weight": (INTER, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": (HIDDEN, INTER),
    }
    for p in "qkvo":
        s[f"model.layers.0.self_attn.{p}_proj.weight"] = (HIDDEN, HIDDEN)
    return s


def build_models():
    gen = torch.Generator().manual_seed(2026)
    base = {}
    for name, shape in shapes().items():
        if name.endswith("norm.weight"):
            base[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            base[name] = 0.05 * torch.randn(shape, generator=gen)
    models = {"base": base}
    for k, ft in enumerate(["ft-a", "ft-b", "ft-c"]):
        t = {}
        for name, v in base.items():
            d = 0.02 * torch.randn(v.shape, generator=gen)
            # some exact zeros (element equal to the base) and shared deltas for sign ties
            d[torch.rand(v.shape, generator=gen) < 0.05] = 0
            t[name] = v + d
        models[ft] = t
    for name, tensors in models.items():
        d = HERE / "models" / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
                  d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(llama_config(), indent=2) + "\n")


def method_configs():
    three = ["./models/ft-a", "./models/ft-b", "./models/ft-c"]
    def models(params):
        return [{"model": m, "parameters": p} for m, p in zip(three, params)] if params else [{"model": m} for m in three]
    c = {}
    c["ties"] = {"base_model": "./models/base", "merge_method": "ties",
                 "models": models([{"density": 0.5, "weight": 0.5}, {"density": 0.7, "weight": 0.3},
                                   {"density": 0.3, "weight": 0.4}]),
                 "parameters": {"normalize": True, "rescale": True}}
    c["dare_ties"] = {"base_model": "./models/base", "merge_method": "dare_ties",
                      "models": models([{"density": 0.53, "weight": 0.4}, {"density": 0.6, "weight": 0.35},
                                        {"density": 0.7, "weight": 0.25}]),
                      "parameters": {"rescale": True}}
    c["della"] = {"base_model": "./models/base", "merge_method": "della",
                  "models": models([{"density": 0.5, "epsilon": 0.1, "weight": 0.5},
                                    {"density": 0.6, "epsilon": 0.2, "weight": 0.3},
                                    {"density": 0.4, "epsilon": 0.1, "weight": 0.2}]),
                  "parameters": {"lambda": 1.1, "rescale": True}}
    c["breadcrumbs"] = {"base_model": "./models/base", "merge_method": "breadcrumbs",
                        "models": models([{"density": 0.8, "gamma": 0.05, "weight": 0.6},
                                          {"density": 0.7, "gamma": 0.02, "weight": 0.4},
                                          {"density": 0.9, "gamma": 0.01, "weight": 0.3}]),
                        "parameters": {"rescale": True}}
    c["dare_linear"] = {"base_model": "./models/base", "merge_method": "dare_linear",
                        "models": models([{"density": 0.66, "weight": 0.5}, {"density": 0.5, "weight": 0.3},
                                          {"density": 0.6, "weight": 0.2}]),
                        "parameters": {"rescale": True}}
    c["model_stock"] = {"base_model": "./models/base", "merge_method": "model_stock", "models": models(None)}
    c["sce"] = {"base_model": "./models/base", "merge_method": "sce", "models": models(None),
                "parameters": {"select_topk": 0.5}}
    c["arcee_fusion"] = {"base_model": "./models/base", "merge_method": "arcee_fusion",
                         "models": [{"model": "./models/ft-a"}]}
    c["multislerp"] = {"merge_method": "multislerp",
                       "models": models([{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}])}
    c["nuslerp"] = {"base_model": "./models/base", "merge_method": "nuslerp",
                    "models": [{"model": "./models/ft-a", "parameters": {"weight": 0.6}},
                               {"model": "./models/ft-b", "parameters": {"weight": 0.4}}]}
    c["karcher"] = {"merge_method": "karcher", "models": models(None), "parameters": {"max_iter": 20}}
    return c


def run(cfg_path, out, threads, random):
    """mergekit's `run_merge` in this process (what `mergekit-yaml` calls), after
    `torch.set_num_threads(threads)`: starting mergekit-yaml per run costs ~15 s of imports. The
    equivalent command line is recorded in cases.json."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    import yaml
    torch.set_num_threads(threads)
    cfg = MergeConfiguration.model_validate(yaml.safe_load(cfg_path.read_text()))
    opts = MergeOptions(copy_tokenizer=False, random_seed=SEED if random else None, quiet=True)
    run_merge(cfg, out_path=str(out), options=opts)
    argv = [str(cfg_path.relative_to(HERE)), str(out), "--no-copy-tokenizer"]
    if random:
        argv += ["--random-seed", str(SEED)]
    return argv


def read_output(out):
    tensors = {}
    for f in sorted(Path(out).glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ.update(PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
        os.execv(sys.executable, [sys.executable] + sys.argv)
    os.chdir(HERE)
    import mergekit  # noqa: F401  (the version is recorded below)
    from importlib.metadata import version
    build_models()
    (HERE / "configs").mkdir(exist_ok=True)
    exp = HERE / "expected"
    if exp.exists():
        shutil.rmtree(exp)
    exp.mkdir()
    import yaml
    cases = []
    for method, cfg in method_configs().items():
        for dt in DTYPES:
            name = f"{method}_{dt}"
            cfg_path = HERE / "configs" / f"{name}.yml"
            cfg_path.write_text(yaml.safe_dump(dict(cfg, dtype=dt), sort_keys=False))
            random = method in ("dare_ties", "della", "dare_linear", "arcee_fusion")
            case = {"name": name, "method": method, "dtype": dt, "config": f"configs/{name}.yml",
                    "random_seed": SEED if random else None, "runs": []}
            for t in THREADS:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "out"
                    argv = run(cfg_path, out, t, random)
                    tensors = read_output(out)
                run_ = {"torch_threads": t,
                        "command": f"OMP_NUM_THREADS={t} mergekit-yaml " + " ".join(argv[:1] + ["OUT"] + argv[2:]),
                        "sha256": {k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
                                   for k, v in sorted(tensors.items())}}
                if method in TRIG and dt == "float32" and t in (2, 4) and (method == "karcher" or t == 4):
                    big = {k: v.contiguous() for k, v in tensors.items()}
                    f = f"expected/{name}-t{t}.safetensors"
                    save_file(big, HERE / f)
                    run_["values"] = f
                case["runs"].append(run_)
            print(name, flush=True)
            cases.append(case)
    meta = {"generator": "tests/golden-threads/make_golden.py", "mergekit_version": version("mergekit"),
            "torch_version": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env": {"PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "T", "MKL_NUM_THREADS": "T"},
            "cwd": "tests/golden-threads", "cases": cases}
    (HERE / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
