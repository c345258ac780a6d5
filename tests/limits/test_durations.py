"""Reset durations are written as OpenAI writes them in x-ratelimit-reset-* headers."""

from __future__ import annotations

import pytest

from modelhost.limits.durations import format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),  # rounded up: waiting the stated time is never too early
        (0.006, "6ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (20, "20s"),
        (59.7134, "59.714s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (432.2, "7m12.2s"),
        (3600, "1h0m0s"),
        (86_399.5, "23h59m59.5s"),
    ],
)
def test_durations_read_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
