"""Guards that keep one optimisation step atomic.

:func:`defer_interrupts` holds back a ``SIGINT`` (Ctrl-C) that arrives while a
step commits its results (parameters and optimiser state), and re-delivers it
as ``KeyboardInterrupt`` once the commit is complete, so that an interrupted
step is either fully applied or not applied at all. See ``docs/guarantees.md``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["defer_interrupts"]


@contextmanager
def defer_interrupts() -> Iterator[None]:
    """Delay ``KeyboardInterrupt`` from ``SIGINT`` until the ``with`` block ends.

    Only in the main thread and only while Python's default SIGINT handler is
    installed (a handler the application set is left alone); elsewhere it does
    nothing. An interrupt received inside the block is raised right after it.

    >>> with defer_interrupts():
    ...     x = 1
    >>> x
    1
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        old = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    if old is not signal.default_int_handler:
        yield
        return
    got: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        got.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got:
            raise KeyboardInterrupt
