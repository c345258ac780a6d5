"""Checking a batch's input lines: each line's shape, the batch-wide checks (the lines are read by the Files
API's `numbered_lines`, tested in tests/files/test_batch_input.py), output lines and usage."""

from __future__ import annotations

import json

from modelhost.batches.lines import InputLine, LineChecks, parse_line
from modelhost.batches.answers import output_line, usage_of
from modelhost.protocol.batches import BatchError
from modelhost.store.batches import BatchLine


def _line(custom_id: str = "a", url: str = "/v1/chat/completions", model: str = "m") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": model}}).encode()


def test_parse_line_names_what_is_wrong() -> None:
    assert parse_line(1, _line()) == InputLine(1, "a", "/v1/chat/completions", {"model": "m"})
    for raw, code, param in (
        (b"{x", "invalid_json_line", None),
        (b"[1]", "invalid_request", None),
        (json.dumps({"method": "POST", "url": "u", "body": {}}).encode(), "invalid_request", "custom_id"),
        (json.dumps({"custom_id": "a", "method": "GET", "url": "u", "body": {}}).encode(), "invalid_request", "method"),
        (json.dumps({"custom_id": "a", "method": "POST", "url": "u", "body": []}).encode(), "invalid_request", "body"),
    ):
        error = parse_line(7, raw)
        assert isinstance(error, BatchError) and (error.line, error.code, error.param) == (7, code, param)


def test_checks_want_one_endpoint_one_model_unique_ids_and_a_bounded_count() -> None:
    checks = LineChecks("/v1/chat/completions", max_lines=4, max_errors=10)
    for number, raw in enumerate([_line("a"), _line("a"), _line("b", url="/v1/completions"), _line("c", model="n"), _line("d"), _line("e")], 1):
        checks.add(parse_line(number, raw))
    assert checks.model == "m" and checks.total == 6
    assert [(e.line, e.code) for e in checks.errors] == [
        (2, "duplicate_custom_id"),
        (3, "mismatched_endpoint"),
        (4, "mismatched_model"),
        (5, "too_many_requests"),
    ]


def test_an_output_line_carries_the_body_bytes_unchanged() -> None:
    row = BatchLine(record_id="batch_req_1", custom_id="c", status_code=200, request_id="req_1", body='{"b":  1,"u":"\\u00e9"}', error=None)
    text = output_line(row)
    assert text.endswith(b"\n") and b'"body": {"b":  1,"u":"\\u00e9"}' in text
    assert json.loads(text) == {"id": "batch_req_1", "custom_id": "c", "response": {"status_code": 200, "request_id": "req_1", "body": {"b": 1, "u": "é"}}, "error": None}
    expired = BatchLine(record_id="batch_req_2", custom_id="d", error={"code": "batch_expired", "message": "m"})
    assert json.loads(output_line(expired)) == {"id": "batch_req_2", "custom_id": "d", "response": None, "error": {"code": "batch_expired", "message": "m"}}


def test_usage_is_read_from_each_endpoints_answer() -> None:
    assert usage_of(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 1}}}') == (3, 1, 4)
    assert usage_of(b'{"usage": {"input_tokens": 5, "output_tokens": 6, "input_tokens_details": {"cached_tokens": 2}}}') == (5, 2, 6)
    assert usage_of(b'{"usage": {"prompt_tokens": 7, "total_tokens": 7}}') == (7, 0, 0)
    assert usage_of(b"not json") == (0, 0, 0)


def test_the_input_a_line_enqueues_is_its_text_and_token_arrays() -> None:
    from modelhost.batches.enqueued import line_input

    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert line_input("/v1/chat/completions", chat) == ["Be brief.", "Hi"]
    assert line_input("/v1/completions", {"prompt": [[1, 2, 3], [4]]}) == [3, 1]
    assert line_input("/v1/embeddings", {"input": ["a", "b"]}) == ["a", "b"]
    response = {"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}, {"type": "function_call_output", "output": "42"}]}
    assert line_input("/v1/responses", response) == ["Be brief.", "Hi", "42"]
