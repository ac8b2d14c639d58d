"""Writes multi_verdicts.tsv: for each real config holding several YAML documents (a
mergekit-multi config, which mergekit-yaml rejects), whether mergekit-multi 0.1.5 loads it
(`mergekit.scripts.multimerge.load_config`: names, documents, dependencies; no model is read).

Run with mergekit 0.1.5's Python: ~/mk/bin/python tests/corpus/make_multi_verdicts.py
"""
import pathlib

import yaml
from mergekit.scripts.multimerge import load_config

here = pathlib.Path(__file__).resolve().parent
rows = ["file\tmergekit_multi\terror"]
for f in sorted((here / "real").iterdir()):
    text = f.read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        continue
    if len(docs) < 2:
        continue
    try:
        load_config(text, "/nonexistent-intermediate")
        rows.append(f"{f.name}\taccept\t")
    except Exception as e:  # noqa: BLE001 - the verdict is the point
        rows.append(f"{f.name}\treject\t{type(e).__name__}: {e}".replace("\n", " | "))
(here / "multi_verdicts.tsv").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
