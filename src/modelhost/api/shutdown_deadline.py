"""The hard deadline of a shutdown: a process told to stop is gone within a bounded time.

A graceful shutdown waits for things to end: requests (cut at the grace period), their ledger
writes, the engines' threads. A thread that never returns — a runaway compile on a worker thread,
a database call that hangs forever — makes it wait for good: asyncio cannot cancel a thread,
``asyncio.run`` waits for the task awaiting it, and the interpreter joins its (non-daemon) worker
threads before it exits. One such server ignored SIGTERM and kept two cores busy for 20 minutes.

`ShutdownDeadline(seconds).arm()` is called at the first SIGTERM/SIGINT. If the process still lives
`seconds` later, a daemon thread logs which threads are still running (with their stacks), flushes
the log handlers and standard streams, and ends the process with ``os._exit(70)`` (EX_SOFTWARE:
the shutdown did not complete). It never waits for a lock a stuck thread may hold: the last words
get `LAST_WORDS_SECONDS`, then the exit happens regardless. A process that exits in time takes the
daemon thread with it, so a clean shutdown still exits 0. Requests still running when it fires have
pending rows in the ledger, which another replica or the next to start settles as interrupted
(`pipeline/ledger_writer.py`); usage writes waiting in memory for the database are spooled to disk
only on the graceful path (`LedgerWriter.close`), which `SHUTDOWN_SETTLE_SECONDS` leaves time for.

The signal handler runs on the main thread between bytecodes; a main thread blocked inside one C
call (not a worker thread, whatever it does) delays arming until that call returns.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

logger = logging.getLogger(__name__)

EXIT_STATUS = 70  # EX_SOFTWARE, sysexits.h
LAST_WORDS_SECONDS = 2.0


class ShutdownDeadline:
    """``arm()`` at the first stop signal; the process exits with `EXIT_STATUS` if it lives `seconds` longer."""

    def __init__(self, seconds: float, *, exit: Callable[[int], object] = os._exit) -> None:
        assert seconds > 0, "the deadline is a positive number of seconds"
        self.seconds = seconds
        self._exit = exit
        self._thread: threading.Thread | None = None

    @property
    def armed(self) -> bool:
        return self._thread is not None

    def arm(self) -> None:
        """Start the countdown (once: later signals do not move the deadline)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="modelhost-shutdown-deadline", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        time.sleep(self.seconds)
        words = threading.Thread(target=self._last_words, name="modelhost-last-words", daemon=True)
        words.start()
        words.join(LAST_WORDS_SECONDS)
        self._exit(EXIT_STATUS)

    def _last_words(self) -> None:
        me = {threading.get_ident(), self._thread.ident if self._thread else None}
        frames = sys._current_frames()
        running = [t for t in threading.enumerate() if t.ident not in me and t.ident in frames]
        stacks = "\n".join(
            f"thread {t.name!r}:\n{''.join(traceback.format_stack(frames[t.ident]))}"  # type: ignore[index]
            for t in running
        )
        logger.critical(
            "the shutdown did not finish within %g s of the stop signal (SHUTDOWN_GRACE_SECONDS + "
            "SHUTDOWN_SETTLE_SECONDS); exiting with status %d. Threads still running: %s\n%s",
            self.seconds,
            EXIT_STATUS,
            ", ".join(t.name for t in running) or "none",
            stacks,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing more to save there
                pass
