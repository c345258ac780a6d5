"""Turning token bytes into text that never shows a half character or a partial stop string."""

from __future__ import annotations

import codecs


class TextAssembler:
    """Feeds token pieces (bytes) in, gets safe-to-send text out, and reports a stop string hit.

    Text that could still turn into a stop string is held back until it cannot; a stop string
    itself is never emitted (OpenAI's behaviour).
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to send."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._longest_stop_prefix_suffix()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        """At the end of generation: everything still held (it can no longer become a stop)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest tail of the held text that begins some stop string."""
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._held)), best, -1):
                if stop.startswith(self._held[-length:]):
                    best = length
                    break
        return best
