#!/usr/bin/env python3
"""Records mergekit 0.1.5's verdict on every config of tests/corpus/real/.

Run with the interpreter of a venv that has mergekit 0.1.5 installed:

    ~/mk/bin/python tests/corpus/make_verdicts.py

It writes tests/corpus/verdicts.tsv and tests/corpus/methods.json; both are committed, and
the Rust tests read only those files (CI has no Python).

Two verdicts are recorded per file:

* `load`: what `mergekit-yaml` decides before it touches any model: `yaml.safe_load`, then
  `MergeConfiguration.model_validate`, then the merge-method lookup (`merge_methods.get`,
  done by `MergePlanner.__init__`).
* `final`: `load`, plus every later check of mergekit that does not depend on the model files,
  called through mergekit's own objects where mergekit has one:
  - the method's input contract per output slice (`MergeMethod.validate_inputs`, as
    `MergePlanner.normalize_config` calls it, with the base model appended to `models:` when
    it is not listed, and module name `default` for `models:`/`slices:` configs);
  - equal layer counts of the sources of each slice (`MergePlanner.plan_slice`);
  - every scalar of every parameter the method declares, validated with the parameter's own
    pydantic validator (`ParameterSpec.validate`, what `evaluate_setting` applies);
  - required parameters that no scope mentions at all (`resolve_parameter` raises
    `Missing required parameter` for every tensor then, whatever the architecture);
  - `dtype` / `out_dtype` names (`dtype_from_name`, which mergekit calls only when it executes).

amalgam reports all of these at validation time, so its tests compare against `final`.
"""

import json
import os
import sys
from typing import Any, Dict, List, Optional

import yaml
from pydantic import ValidationError

from mergekit import merge_methods
from mergekit.common import dtype_from_name
from mergekit.config import (
    ConditionalParameter,
    InputSliceDefinition,
    MergeConfiguration,
    OutputSliceDefinition,
)
from mergekit.merge_methods.base import ParameterScope

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = os.path.join(HERE, "real")


def one_line(err: BaseException) -> str:
    """First meaningful line of an exception, as mergekit-yaml would end its traceback."""
    text = f"{type(err).__name__}: {err}"
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:400]


def scalars(setting: Any) -> List[Any]:
    """Every scalar of a validated ParameterSetting (filters and gradients flattened)."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, list):
        out = []
        for e in setting:
            out.extend(scalars(e.value) if isinstance(e, ConditionalParameter) else [e])
        return out
    return [setting]


def slices_of(cfg: MergeConfiguration) -> Dict[str, List[OutputSliceDefinition]]:
    """Output slices per module, normalised the way MergePlanner.normalize_config does."""

    def from_models(models) -> List[OutputSliceDefinition]:
        sources = [
            InputSliceDefinition(model=m.model, layer_range=(0, 1), parameters=m.parameters)
            for m in models
        ]
        if cfg.base_model and not any(m.model == cfg.base_model for m in models):
            sources.append(InputSliceDefinition(model=cfg.base_model, layer_range=(0, 1)))
        return [OutputSliceDefinition(sources=sources)]

    if cfg.models:
        return {"default": from_models(cfg.models)}
    if cfg.slices:
        return {"default": list(cfg.slices)}
    out = {}
    for name, module in (cfg.modules or {}).items():
        out[name] = from_models(module.models) if module.models else list(module.slices)
    return out


def later_checks(cfg: MergeConfiguration, method) -> None:
    """The model-independent checks mergekit makes after loading (see the module doc)."""
    modules = slices_of(cfg)
    module_params = {
        name: (cfg.modules[name].parameters if cfg.modules else None) for name in modules
    }
    for name, slices in modules.items():
        for idx, s in enumerate(slices):
            method.validate_inputs(
                [src.model for src in s.sources],
                s.base_model or cfg.base_model,
                group_name=f"{name}.slices[{idx}]",
            )
    for name, slices in modules.items():
        for s in slices:
            lengths = [src.layer_range[1] - src.layer_range[0] for src in s.sources]
            if not all(n == lengths[0] for n in lengths):
                raise RuntimeError(
                    "All inputs to a slice must contain the same number of layers"
                )
    spec = method.spec
    for name, slices in modules.items():
        for s in slices:
            base = s.base_model or cfg.base_model
            shared_scopes = [s.parameters, module_params[name], cfg.parameters]
            for p in spec.parameters:
                if p.scope == ParameterScope.SHARED:
                    chains = [(None, shared_scopes)]
                else:
                    chains = []
                    for src in s.sources:
                        if src.model == base and p.scope != ParameterScope.INPUT:
                            continue
                        own = [x.parameters for x in s.sources if x.model == src.model]
                        chains.append((src.model, own + shared_scopes))
                for model, chain in chains:
                    present = [sc[p.name] for sc in chain if sc and p.name in sc]
                    for setting in present:
                        for v in scalars(setting):
                            p.validate(v)
                    if not present and p.required:
                        where = f"{model}." if model is not None else ""
                        raise RuntimeError(
                            f"Missing required parameter {p.name} for {where}<any tensor>"
                        )
    for field in ("dtype", "out_dtype"):
        dtype_from_name(getattr(cfg, field))


def verdict(path: str):
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
        cfg = MergeConfiguration.model_validate(data)
        method = merge_methods.get(cfg.merge_method)
    except (yaml.YAMLError, ValidationError, RuntimeError, ValueError) as e:
        return "reject", "reject", one_line(e)
    try:
        later_checks(cfg, method)
    except (ValidationError, RuntimeError, ValueError) as e:
        return "accept", "reject", one_line(e)
    return "accept", "accept", ""


def method_schemas() -> List[Dict[str, Any]]:
    """mergekit 0.1.5's registry, for amalgam's method-aware validation tests."""
    kinds = {float: "float", bool: "bool", int: "int", Optional[float]: "optional_float"}
    out = []
    for m in merge_methods.registered_methods():
        c = m.spec.contract
        out.append(
            {
                "name": m.spec.name,
                "params": [
                    {
                        "name": p.name,
                        "kind": kinds[p.value_type],
                        "scope": p.scope.value,
                        "required": p.required,
                    }
                    for p in m.spec.parameters
                ],
                "contract": {
                    "base": c.base.value,
                    "min_inputs": c.min_inputs,
                    "max_inputs": c.max_inputs,
                    "min_non_base": c.min_non_base,
                    "max_non_base": c.max_non_base,
                },
            }
        )
    return out


def main() -> int:
    rows = []
    for name in sorted(os.listdir(REAL)):
        if not name.endswith(".yml"):
            continue
        load, final, err = verdict(os.path.join(REAL, name))
        rows.append((name, load, final, err.replace("\t", " ")))
    with open(os.path.join(HERE, "verdicts.tsv"), "w", encoding="utf-8") as f:
        f.write("file\tload\tfinal\tmergekit_error\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    with open(os.path.join(HERE, "methods.json"), "w", encoding="utf-8") as f:
        json.dump(method_schemas(), f, indent=1)
        f.write("\n")
    n_load = sum(r[1] == "accept" for r in rows)
    n_final = sum(r[2] == "accept" for r in rows)
    print(f"{len(rows)} configs: load accepts {n_load}, final accepts {n_final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
