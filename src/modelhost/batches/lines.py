"""A batch's input file, line by line: parsed and checked against the batch.

The lines come from the Files API's reader (`files.batch_input.numbered_lines`: split as the chunks
come, each at most `max_line_bytes`, a longer one a `LineTooLong`, reported as the batch's validation
error). Line numbers are the file's own, counted from 1 (blank lines are skipped but keep their number),
as OpenAI's `errors.data[].line` counts them::

    async for number, raw in numbered_lines(chunks, max_line_bytes=1 << 20):
        line = parse_line(number, raw)      # an InputLine, or a BatchError naming `number`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelhost.files.batch_input import MAX_CUSTOM_ID
from modelhost.protocol.batches import BatchError


@dataclass(frozen=True)
class InputLine:
    """One request of the batch: ``{"custom_id", "method": "POST", "url", "body"}``."""

    number: int
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None


def _error(number: int, code: str, message: str, param: str | None = None) -> BatchError:
    return BatchError(code=code, message=message, param=param, line=number)


def parse_line(number: int, raw: bytes) -> InputLine | BatchError:
    """The request on line `number`, or the error that says why it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
    if not isinstance(data, dict):
        return _error(number, "invalid_request", "Each line must be a JSON object with custom_id, method, url and body.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID or "\x00" in custom_id:
        return _error(
            number, "invalid_request", f"Each line needs a custom_id: a string of 1 to {MAX_CUSTOM_ID} characters.", "custom_id"
        )
    if data.get("method") != "POST":
        return _error(number, "invalid_request", "The only supported method is POST.", "method")
    url = data.get("url")
    if not isinstance(url, str):
        return _error(number, "invalid_request", "Each line needs a url: the endpoint of the request.", "url")
    body = data.get("body")
    if not isinstance(body, dict):
        return _error(number, "invalid_request", "Each line needs a body: the request, as a JSON object.", "body")
    return InputLine(number, custom_id, url, body)


class LineChecks:
    """What the batch needs of all its lines together: its endpoint, one model, unique custom_ids, a count.

    Fed one parsed line at a time; `errors` collects at most `max_errors` (the first ones), so a
    file of 50,000 bad lines costs a bounded answer.
    """

    def __init__(self, endpoint: str, *, max_lines: int, max_errors: int = 100) -> None:
        self.endpoint = endpoint
        self.max_lines = max_lines
        self.max_errors = max_errors
        self.errors: list[BatchError] = []
        self.total = 0
        self.model: str | None = None
        self.model_line = 0
        self._custom_ids: set[str] = set()

    def add(self, line: InputLine | BatchError) -> None:
        self.total += 1
        if isinstance(line, BatchError):
            self._report(line)
            return
        if self.total > self.max_lines:
            if self.total == self.max_lines + 1:
                self._report(
                    _error(line.number, "too_many_requests", f"The batch input file has more than {self.max_lines} requests.")
                )
            return
        if line.url != self.endpoint:
            self._report(
                _error(line.number, "mismatched_endpoint", f"The url of this request does not match the batch's endpoint {self.endpoint}.", "url")
            )
        if line.custom_id in self._custom_ids:
            self._report(_error(line.number, "duplicate_custom_id", "The custom_id for this request is a duplicate of another request.", "custom_id"))
        self._custom_ids.add(line.custom_id)
        model = line.model
        if model is None:
            self._report(_error(line.number, "missing_required_parameter", "The request body has no model.", "body.model"))
        elif self.model is None:
            self.model, self.model_line = model, line.number
        elif model != self.model:
            self._report(
                _error(
                    line.number,
                    "mismatched_model",
                    f"Every request of a batch must use the same model; line {self.model_line} uses {self.model!r}.",
                    "body.model",
                )
            )

    def fail(self, error: BatchError) -> None:
        self._report(error)

    def _report(self, error: BatchError) -> None:
        if len(self.errors) < self.max_errors:
            self.errors.append(error)
