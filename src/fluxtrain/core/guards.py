"""Guards that keep one optimisation step atomic.

:func:`defer_interrupts` holds back a ``SIGINT`` (Ctrl-C) that arrives while a
step commits its results (parameters and optimiser state), and re-delivers it
as ``KeyboardInterrupt`` once the commit is complete, so that an interrupted
step is either fully applied or not applied at all. See ``docs/guarantees.md``.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["defer_interrupts", "clone_state", "restore_state"]

# ``signal.getsignal``/``signal.signal`` are Python wrappers around the C module
# ``_signal`` that only convert between ints and the ``Handlers``/``Signals`` enums;
# for a function handler the conversion costs an exception each time (about 3 us a
# call, twice per step). The C functions take the same arguments and set the same
# handlers; the enum conversion does not matter here (only ``default_int_handler``,
# a function, is compared and restored).
try:
    _sig: Any = importlib.import_module("_signal")
    _getsignal, _setsignal = _sig.getsignal, _sig.signal
except (ImportError, AttributeError):  # pragma: no cover - other Python implementations
    _getsignal, _setsignal = signal.getsignal, signal.signal
_SIGINT = int(signal.SIGINT)


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
        old = _getsignal(_SIGINT)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    if old is not signal.default_int_handler:
        yield
        return
    got: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        got.append(signum)

    _setsignal(_SIGINT, hold)
    try:
        yield
    finally:
        _setsignal(_SIGINT, old)
        if got:
            raise KeyboardInterrupt


def clone_state(s: Any) -> Any:
    """A copy of a rule state whose tensors are new (numbers, structure and types kept).

    Rules update the state tensors they are given in place; running them on a
    clone keeps the committed state intact until the whole step has succeeded.

    >>> a = torch.zeros(2)
    >>> b = clone_state((a, 0.9))
    >>> b[0] is a, b[1]
    (False, 0.9)
    """
    if isinstance(s, torch.Tensor):
        return s.clone()
    if isinstance(s, tuple):
        items = [clone_state(v) for v in s]
        if hasattr(s, "_fields"):
            return type(s)(*items)
        return tuple(items)
    if isinstance(s, list):
        return [clone_state(v) for v in s]
    return s


def restore_state(orig: Any, backup: Any) -> None:
    """Write ``backup`` (from :func:`clone_state`) back into the tensors of ``orig``.

    After a failed step the rules may have advanced some state tensors in
    place; this puts their values back, keeping every tensor object (callers
    also put back the original state structure, which holds the old numbers).
    """
    if isinstance(orig, torch.Tensor):
        with torch.no_grad():
            orig.copy_(backup)
    elif isinstance(orig, tuple | list):
        for o, b in zip(orig, backup):
            restore_state(o, b)
