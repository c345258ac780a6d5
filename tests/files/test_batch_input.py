"""A `batch` file's check at upload, line by line from a stream (files/batch_input.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from modelhost.errors import InvalidRequest
from modelhost.files.batch_input import MAX_LINES, BatchInput, LineTooLong, check_batch_input, numbered_lines


def line(custom_id: str, model: str = "m", url: str = "/v1/chat/completions") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": model}}).encode()


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def check(data: bytes, *, chunk: int = 7, max_line_bytes: int = 1000) -> BatchInput:
    return asyncio.run(check_batch_input(in_chunks(data, chunk), max_line_bytes=max_line_bytes))


def refusal(data: bytes, **kwargs: int) -> str:
    with pytest.raises(InvalidRequest) as info:
        check(data, **kwargs)
    assert info.value.param == "file" and info.value.status == 400
    return info.value.message


@pytest.mark.parametrize("chunk", [1, 3, 64, 10_000])
def test_lines_are_found_across_any_chunking(chunk: int) -> None:
    data = b"\n" + line("a") + b"\r\n\n  \n" + line("b") + b"\n" + line("c")  # CRLF, blank lines, no final newline

    async def numbers() -> list[int]:
        return [n async for n, _ in numbered_lines(in_chunks(data, chunk), max_line_bytes=1000)]

    assert asyncio.run(numbers()) == [2, 5, 6]
    assert check(data, chunk=chunk) == BatchInput(lines=3, url="/v1/chat/completions", model="m")


def test_a_line_longer_than_the_bound_is_named_whether_or_not_it_ends() -> None:
    long = line("x" * 600)
    assert "line 2: the line is longer than 500 bytes" in refusal(line("a") + b"\n" + long + b"\n", max_line_bytes=500)
    assert "line 2: the line is longer than 500 bytes" in refusal(line("a") + b"\n" + long, max_line_bytes=500, chunk=100)
    with pytest.raises(LineTooLong) as refused:  # the batch runner names the line in errors.data[].line
        check(line("a") + b"\n\n" + long, max_line_bytes=500, chunk=64)
    assert refused.value.number == 3


def test_at_most_fifty_thousand_requests() -> None:
    ok = b"\n".join(line(str(i)) for i in range(MAX_LINES))
    assert check(ok, chunk=1 << 20).lines == MAX_LINES
    assert f"line {MAX_LINES + 1}: a batch file holds at most {MAX_LINES}" in refusal(ok + b"\n" + line("one more"), chunk=1 << 20)


def test_each_custom_id_once_and_valid_unicode() -> None:
    assert "line 3: `custom_id` 'a' is used by an earlier line" in refusal(line("a") + b"\n" + line("b") + b"\n" + line("a"))
    surrogate = b'{"custom_id": "\\ud800", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}'
    assert "line 1: `custom_id`" in refusal(surrogate)
    assert "line 1: `custom_id`" in refusal(line("x" * 513))
    assert "line 1: the line is not valid JSON" in refusal(b"\xff\xfe{}")


def test_one_url_and_one_model_per_file() -> None:
    assert "line 2: every request of a batch file must have the same `url` (/v1/chat/completions)" in refusal(
        line("a") + b"\n" + line("b", url="/v1/responses")
    )
    assert "line 2: every request of a batch file must have the same `body.model` (m)" in refusal(
        line("a") + b"\n" + line("b", model="n")
    )
    for url in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        assert check(line("a", url=url)).url == url
