"""Schemathesis hooks for the contract fuzz (loaded through SCHEMATHESIS_HOOKS=fuzz_hooks).

The chat and completion operations run the real model. Whatever the fuzzer generates, a body
that would generate text names the served model and asks for at most a few tokens and choices, so
a run reaches the model and stays bounded in time. Two things the document cannot know are made
realistic: token ids (logit_bias keys, token prompts) are taken modulo the model's vocabulary, and
model ids name the served models. A `seed` at the int64 boundary is kept inside it (the generator
rounds 2**63 - 1 upward through a float). Everything else (types, ranges, unknown fields, bad
values) is left as generated.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

MAX_TOKENS = 4
MAX_N = 2
MODEL = os.environ.get("FUZZ_MODEL", "smollm2-135m-instruct")
EMBEDDING_MODEL = os.environ.get("FUZZ_EMBEDDING_MODEL", "all-minilm-l6-v2")
VOCAB = int(os.environ.get("FUZZ_VOCAB", "49152"))
INT64 = 2**63
EMBEDDING_DIMENSIONS = int(os.environ.get("FUZZ_EMBEDDING_DIMENSIONS", "384"))


def _is_int(value: Any) -> bool:
    """An integer as JSON Schema sees it: `3` and also `3.0`."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _token(value: Any) -> Any:
    return value % VOCAB if _is_int(value) else value


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or "model" not in body:
        return body
    generates = "messages" in body or "prompt" in body
    if isinstance(body["model"], str):
        body["model"] = MODEL if generates else EMBEDDING_MODEL
    if not generates:
        # The embedding model has one size; other `dimensions` are refused by a per-model rule.
        if _is_int(body.get("dimensions")):
            body["dimensions"] = EMBEDDING_DIMENSIONS
        return body
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is None or (_is_int(value) and value > MAX_TOKENS):
            body[field] = MAX_TOKENS
    for field in ("n", "best_of"):  # the schema allows OpenAI's 128; this server's cap is configured
        if _is_int(body.get(field)) and body[field] > MAX_N:
            body[field] = MAX_N
    if _is_int(body.get("seed")):
        body["seed"] = max(-INT64, min(INT64 - 1, body["seed"]))
    if isinstance(body.get("logit_bias"), dict):
        body["logit_bias"] = {str(int(k) % VOCAB) if k.isdigit() else k: v for k, v in body["logit_bias"].items()}
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not _is_int(prompt[0]):
        # Each prompt is its own generation: keep the work (and the engine queue) bounded like `n`.
        prompt = body["prompt"] = prompt[:MAX_N]
    if isinstance(prompt, list):
        body["prompt"] = [[_token(t) for t in p] if isinstance(p, list) else _token(p) for p in prompt]
    return body
