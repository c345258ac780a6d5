"""`ShutdownDeadline` (api/shutdown_deadline.py): once armed, the process ends on time whatever else is stuck."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from modelhost.api.shutdown_deadline import EXIT_STATUS, LAST_WORDS_SECONDS, ShutdownDeadline


def _exits() -> tuple[list[int], threading.Event, object]:
    codes: list[int] = []
    done = threading.Event()

    def exit(code: int) -> None:
        codes.append(code)
        done.set()

    return codes, done, exit


def test_an_armed_deadline_exits_with_70_after_its_seconds_naming_the_threads_still_running(caplog: pytest.LogCaptureFixture) -> None:
    codes, done, exit = _exits()
    stuck = threading.Event()
    worker = threading.Thread(target=stuck.wait, name="stuck-worker", daemon=True)
    worker.start()
    deadline = ShutdownDeadline(0.3, exit=exit)  # type: ignore[arg-type]
    started = time.monotonic()
    with caplog.at_level(logging.CRITICAL, logger="modelhost.api.shutdown_deadline"):
        deadline.arm()
        deadline.arm()  # a second signal does not move the deadline
        assert done.wait(5)
    assert 0.3 <= time.monotonic() - started < 2 and codes == [EXIT_STATUS]
    assert "stuck-worker" in caplog.text and ", in wait" in caplog.text  # its name and its stack
    stuck.set()


def test_an_unarmed_deadline_never_exits() -> None:
    codes, done, exit = _exits()
    ShutdownDeadline(0.1, exit=exit)  # type: ignore[arg-type]
    assert not done.wait(0.4) and codes == []


class _HangingHandler(logging.Handler):
    """A log handler whose lock a stuck thread holds: emitting blocks forever."""

    def __init__(self) -> None:
        super().__init__()
        self.unblock = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.unblock.wait()


def test_the_exit_happens_even_if_the_last_words_cannot_be_logged() -> None:
    codes, done, exit = _exits()
    hanging = _HangingHandler()
    logger = logging.getLogger("modelhost.api.shutdown_deadline")
    logger.addHandler(hanging)
    try:
        started = time.monotonic()
        ShutdownDeadline(0.1, exit=exit).arm()  # type: ignore[arg-type]
        assert done.wait(LAST_WORDS_SECONDS + 3)
        assert codes == [EXIT_STATUS]
        assert LAST_WORDS_SECONDS <= time.monotonic() - started < LAST_WORDS_SECONDS + 2
    finally:
        hanging.unblock.set()
        logger.removeHandler(hanging)
