"""Chat request fields that must be refused by validation, before any work is done on them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelhost.protocol.chat import ChatCompletionRequest


@pytest.mark.parametrize("key", ["²", "١", "٣٤", "1²"])
def test_logit_bias_keys_are_ascii_token_ids(key: str) -> None:
    """`str.isdigit` accepts superscripts and other scripts' digits, which `int()` then refuses
    (a 500 after planning); the documented pattern is ^[0-9]{1,9}$."""
    with pytest.raises(ValidationError, match="token ids"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {key: 1}})


def test_unknown_fields_are_logged_bounded() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **{f"x{i:03}" + "y" * 100: 1 for i in range(50)}}
    ignored = ChatCompletionRequest.model_validate(body).ignored_fields()
    assert len(ignored) == 20 and all(len(name) == 64 for name in ignored)
