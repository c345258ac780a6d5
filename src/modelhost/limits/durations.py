"""Durations written the way OpenAI's ``x-ratelimit-reset-*`` headers write them (Go's format)."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """``0.006`` → ``"6ms"``, ``1`` → ``"1s"``, ``90`` → ``"1m30s"``, ``59.7134`` → ``"59.714s"``.

    Rounded up to the millisecond, so a client that waits the stated time is never early.
    """
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
