"""R15: a batch line may not stream nor run as a background response, however it spells `true`.

The endpoints read a bool the lax way ("true", 1, "on" are true), but the batch only refused the JSON
literal `true`: `"background": "true"` in a /v1/responses batch returned at once with a queued
response and went on running detached, so every line of the batch ran at the same moment, past the
runner's per-batch and per-organization bounds (a batch line takes no key concurrency lease)."""

from __future__ import annotations

import pytest

from modelhost.batches.answers import refusal
from modelhost.batches.lines import InputLine
from modelhost.protocol.responses import CreateResponse


@pytest.mark.parametrize("value", [True, "true", "True", 1, "1", "on", "yes"])
@pytest.mark.parametrize("param", ["stream", "background"])
def test_every_spelling_of_true_is_refused(param: str, value: object) -> None:
    body = {"model": "m", "input": "hi", param: value}
    assert getattr(CreateResponse.model_validate(body), param) is True  # what the endpoint would do
    answer = refusal(InputLine(1, "a", "/v1/responses", body), "/v1/responses")
    assert answer is not None and answer.status == 400


@pytest.mark.parametrize("value", [False, "false", 0, None, "maybe", [1]])
def test_false_or_invalid_is_left_to_the_endpoint(value: object) -> None:
    body = {"model": "m", "input": "hi", "stream": value}
    assert refusal(InputLine(1, "a", "/v1/responses", body), "/v1/responses") is None
