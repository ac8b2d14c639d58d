#!/usr/bin/env python3
"""Reference renderings of mergekit 0.1.5's built-in chat templates (`chat_template: alpaca |
chatml | exaone | llama3 | mistral`), for amalgam's own templates to be checked against.

    PYTHONHASHSEED=0 OMP_NUM_THREADS=1 ~/mk/bin/python tests/chat-templates/make_renders.py

Each template is read from the installed mergekit package (never copied here) and rendered by
transformers' own `render_jinja_template`, the function behind `apply_chat_template` (jinja2
sandbox, trim_blocks, lstrip_blocks, `raise_exception`), over the conversations below, with and
without `add_generation_prompt`, and two sets of bos/eos token strings. A rendering that raises
is stored as `"error": true` (the message is mergekit's text, so it is not kept). The result is
renders.json next to this script, with the versions used.
"""

from __future__ import annotations

import importlib.resources
import json
from importlib.metadata import version
from pathlib import Path

import jinja2
import torch
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

HERE = Path(__file__).resolve().parent
NAMES = ["alpaca", "chatml", "exaone", "llama3", "mistral"]

SYS = {"role": "system", "content": "You are terse."}
U1 = {"role": "user", "content": "Hello there"}
A1 = {"role": "assistant", "content": "Hi. How can I help?"}
U2 = {"role": "user", "content": "  Tell me a joke.\n"}
A2 = {"role": "assistant", "content": "\nNo jokes today. "}
CTX = {"role": "user_context", "content": "some context\n"}

CONVERSATIONS = {
    "user": [U1],
    "system_user": [SYS, U1],
    "system_user_assistant": [SYS, U1, A1],
    "multi_turn": [U1, A1, U2, A2],
    "system_multi_turn": [SYS, U1, A1, U2],
    "multi_turn_ends_assistant": [SYS, U1, A1, U2, A2],
    "two_systems": [SYS, U1, {"role": "system", "content": " Be kind. "}, A1],
    "user_context": [U1, CTX, A1],
    "assistant_first": [A1, U1],
    "two_users": [U1, U2],
    "empty": [],
    "empty_content": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    "other_role": [U1, {"role": "tool", "content": "42"}],
}

TOKENS = {
    "llama": {"bos_token": "<s>", "eos_token": "</s>"},
    "special": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
}


def main():
    templates = importlib.resources.files("mergekit") / "_data" / "chat_templates"
    cases = []
    for name in NAMES:
        text = (templates / f"{name}.jinja").read_text()
        for conv, messages in CONVERSATIONS.items():
            for agp in (False, True):
                for tok, kw in TOKENS.items():
                    entry = {"template": name, "conversation": conv,
                             "add_generation_prompt": agp, "tokens": tok}
                    try:
                        out, _ = render_jinja_template(
                            conversations=[messages], chat_template=text,
                            add_generation_prompt=agp, **kw)
                        entry["output"] = out[0]
                    except (jinja2.TemplateError, IndexError, TypeError, ValueError):
                        entry["error"] = True
                    cases.append(entry)
    (HERE / "renders.json").write_text(json.dumps({
        "versions": {"mergekit": version("mergekit"), "transformers": transformers.__version__,
                     "jinja2": jinja2.__version__, "torch": torch.__version__,
                     "PYTHONHASHSEED": "0"},
        "conversations": CONVERSATIONS,
        "tokens": TOKENS,
        "cases": cases,
    }, indent=1, ensure_ascii=False) + "\n")
    print(len(cases), "renderings;", sum("error" in c for c in cases), "errors")


if __name__ == "__main__":
    main()
