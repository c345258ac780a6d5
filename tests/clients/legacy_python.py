"""Exercise a running server with the pre-1.0 Python SDK (openai==0.28.1).

Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.
Calls Model.list, Model.retrieve, Engine.list, ChatCompletion.create (plain and
streamed) and prints one JSON object summarising the results on stdout.
Any exception propagates: traceback on stderr, exit status 1.

Run it through tests/clients/runner.py, which puts an isolated install of
openai 0.28.1 first on PYTHONPATH (the project's venv has openai>=1).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import openai

EXPECTED_VERSION = "0.28.1"


def _plain(obj: Any) -> Any:
    """OpenAIObject -> plain dict/list so json.dumps sees ordinary types."""
    if hasattr(obj, "to_dict_recursive"):
        return obj.to_dict_recursive()
    return obj


def main() -> int:
    # The runner's PYTHONPATH must shadow the venv's openai>=1; fail loudly if not.
    if openai.__version__ != EXPECTED_VERSION:
        print(f"expected openai {EXPECTED_VERSION}, imported {openai.__version__} "
              f"from {openai.__file__}", file=sys.stderr)
        return 2

    openai.api_key = os.environ["MODELHOST_API_KEY"]
    openai.api_base = os.environ["MODELHOST_BASE_URL"]
    openai.organization = os.environ["MODELHOST_ORG"]
    model = os.environ["MODELHOST_MODEL"]
    messages = [{"role": "user", "content": "Say hi"}]

    models = openai.Model.list()
    retrieved = openai.Model.retrieve(model)
    engines = openai.Engine.list()

    chat = openai.ChatCompletion.create(model=model, messages=messages, max_tokens=5)
    choice = chat["choices"][0]

    content, finish_reason, n_chunks, stream_object = "", None, 0, None
    for chunk in openai.ChatCompletion.create(model=model, messages=messages, max_tokens=5,
                                              stream=True):
        n_chunks += 1
        stream_object = chunk.get("object")
        for c in chunk.get("choices") or []:  # a usage-only chunk has no choices
            content += c.get("delta", {}).get("content") or ""
            finish_reason = c.get("finish_reason") or finish_reason

    print(json.dumps({
        "sdk": "python-openai",
        "sdk_version": openai.__version__,
        "models": [m["id"] for m in models["data"]],
        "models_object": models.get("object"),
        "retrieved": retrieved["id"],
        "retrieved_object": retrieved.get("object"),
        "engines": [e["id"] for e in engines["data"]],
        "chat": {
            "id": chat.get("id"),
            "object": chat.get("object"),
            "model": chat.get("model"),
            "role": choice["message"].get("role"),
            "content": choice["message"].get("content"),
            "finish_reason": choice.get("finish_reason"),
            "usage": _plain(chat.get("usage")),
        },
        "stream": {
            "object": stream_object,
            "content": content,
            "finish_reason": finish_reason,
            "chunks": n_chunks,
        },
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
