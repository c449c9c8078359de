"""Callback helpers of Flux 0.13: ``throttle``, ``stop``, ``skip``, ``epochs`` and the
patience helpers ``patience``, ``early_stopping``, ``plateau``.

``throttle`` and the patience helpers are not deprecated (they work in any loop).
``stop``/``skip`` and ``epochs`` are: a plain ``for`` loop with ``break``/``continue``
replaces them.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fluxtrain.errors import warn_deprecated

__all__ = [
    "throttle", "stop", "skip", "epochs", "StopException", "SkipException", "runall",
    "patience", "early_stopping", "plateau",
]

_MIGRATE = "`fluxtrain-migrate` rewrites old scripts to the explicit style"

#: The clock throttle reads (seconds, monotonic). Tests replace it with a fake clock.
_now: Callable[[], float] = time.monotonic


def _schedule(delay: float, fn: Callable[[], None]) -> Any:
    """Run ``fn`` after ``delay`` seconds on a daemon thread (tests may replace this)."""
    t = threading.Timer(max(delay, 0.0), fn)
    t.daemon = True
    t.start()
    return t


class StopException(Exception):
    """Raised by :func:`stop`; ``train_`` ends the loop when it sees it."""


class SkipException(Exception):
    """Raised by :func:`skip`; ``train_`` goes on to the next data item."""


def stop() -> None:
    """End implicit ``train_`` after the current item (deprecated: use ``break``).

    Raises :class:`StopException` (outside ``train_`` it propagates). Called
    from the loss it ends training before that item's update; from a callback,
    after it.
    """
    warn_deprecated(
        "stop() is deprecated (removed in Flux 0.14): write the training loop yourself "
        f"(for d in data: ... update_(opt_state, model, grad)) and use `break`; {_MIGRATE}",
        stacklevel=2,
        key="stop",
    )
    raise StopException()


def skip() -> None:
    """Skip the rest of the current item in implicit ``train_`` (deprecated: use ``continue``).

    Raises :class:`SkipException`. Called from the loss it prevents that item's
    update; from a callback the update has already happened.
    """
    warn_deprecated(
        "skip() is deprecated (removed in Flux 0.14): write the training loop yourself "
        f"(for d in data: ... update_(opt_state, model, grad)) and use `continue`; {_MIGRATE}",
        stacklevel=2,
        key="skip",
    )
    raise SkipException()


def runall(cb: Callable[[], Any] | list[Callable[[], Any]] | None) -> Callable[[], None]:
    """One function calling a callback or each of a list of callbacks, in order."""
    if cb is None:
        return lambda: None
    if callable(cb):
        return cb  # type: ignore[return-value]
    if isinstance(cb, (list, tuple)):
        cbs = list(cb)
        for i, c in enumerate(cbs):
            if not callable(c):
                raise TypeError(f"cb[{i}] is {type(c).__name__}, not a function of no arguments")

        def all_() -> None:
            for c in cbs:
                c()

        return all_
    raise TypeError(
        f"cb must be a function of no arguments or a list of them, got {type(cb).__name__}"
    )


class _Throttled:
    """The function returned by :func:`throttle`."""

    def __init__(self, f: Callable[..., Any], timeout: float, leading: bool, trailing: bool):
        self.f = f
        self.timeout = float(timeout)
        self.leading = leading
        self.trailing = trailing
        self._lock = threading.RLock()
        self._ready = True  # "may fire now"
        self._end = 0.0  # when the current cooldown ends
        self._pending: tuple[tuple[Any, ...], dict[str, Any], bool] | None = None
        self._result: Any = None
        self.__wrapped__ = f

    def _tick(self, now: float | None = None) -> None:
        """End cooldowns that are over, running remembered calls (the timer's job)."""
        with self._lock:
            if now is None:
                now = _now()
            while not self._ready and now >= self._end:
                if self._pending is not None:
                    args, kwargs, keep = self._pending
                    self._pending = None
                    self._end += self.timeout
                    r = self.f(*args, **kwargs)
                    if keep:
                        self._result = r
                else:
                    self._ready = True

    def _on_timer(self) -> None:
        try:
            self._tick()
        finally:
            with self._lock:
                if not self._ready:
                    _schedule(max(self._end - _now(), 1e-3), self._on_timer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            now = _now()
            self._tick(now)
            if self._ready:
                if self.leading:
                    self._result = self.f(*args, **kwargs)
                else:
                    self._pending = (args, kwargs, False)
                self._ready = False
                self._end = now + self.timeout
                _schedule(self.timeout, self._on_timer)
            elif self.trailing:
                self._pending = (args, kwargs, True)
            return self._result

    def __repr__(self) -> str:
        return (
            f"throttle({self.f!r}, {self.timeout}, leading={self.leading}, "
            f"trailing={self.trailing})"
        )


def throttle(
    f: Callable[..., Any], timeout: float, leading: bool = True, trailing: bool = False
) -> Callable[..., Any]:
    """A function that calls ``f`` at most once per ``timeout`` seconds (Flux's ``throttle``).

    A call when not cooling down runs ``f`` now (``leading=True``) or
    remembers it for the end of the cooldown (``leading=False``), then starts
    a cooldown of ``timeout`` seconds. Calls during the cooldown are dropped,
    or with ``trailing=True`` the latest one is remembered. When a cooldown
    ends with a remembered call, that call runs and another cooldown starts.
    Returns the result of the last leading or trailing call that ran
    (``None`` before any). Remembered calls run on a daemon timer thread,
    which does not keep the process alive.

    >>> from fluxtrain import throttle
    >>> calls = []
    >>> g = throttle(lambda: calls.append(1) or len(calls), 10)
    >>> g(), g(), g()
    (1, 1, 1)
    """
    if not callable(f):
        raise TypeError(
            f"throttle: f must be callable (a function to throttle), got {type(f).__name__}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(
            f"throttle(f, timeout): timeout must be a number of seconds (0 <= timeout < inf), "
            f"got {type(timeout).__name__} {timeout!r}"
        )
    if not (0 <= float(timeout) < math.inf):  # (False for NaN too)
        raise ValueError(
            f"throttle(f, timeout): timeout must be a finite, non-negative number of seconds "
            f"(0 <= timeout < inf), got {timeout!r}"
        )
    for name, v in (("leading", leading), ("trailing", trailing)):
        if v not in (True, False):
            raise TypeError(f"throttle: {name} must be True or False, got {v!r}")
    return _Throttled(f, timeout, bool(leading), bool(trailing))


# ---------------------------------------------------------------------------- epochs
class _VisibleInfo(logging.Handler):
    """Prints ``[ Info: message`` to the current stderr when logging is not configured."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # the application configured logging: the record propagates there
        try:
            sys.stderr.write(f"[ Info: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover
            self.handleError(record)


logger = logging.getLogger("fluxtrain.epochs")
logger.setLevel(logging.INFO)
if not any(isinstance(h, _VisibleInfo) for h in logger.handlers):
    logger.addHandler(_VisibleInfo())


def epochs(n: int) -> Iterator[int]:
    """Iterate over ``1..n``, logging ``Epoch i`` before each (Flux's ``@epochs n``).

    Deprecated: write ``for epoch in range(1, n + 1):`` (Flux 0.14 removed
    ``@epochs``). The message is logged at INFO on the logger
    ``fluxtrain.epochs`` and, when logging is not configured, printed to
    stderr as ``[ Info: Epoch i``, as Flux prints it.

    >>> import warnings
    >>> from fluxtrain import epochs
    >>> warnings.simplefilter("ignore")
    >>> [i for i in epochs(2)]  # also prints "[ Info: Epoch 1" and "[ Info: Epoch 2"
    [1, 2]
    """
    given: Any = n
    if isinstance(given, bool) or not isinstance(given, numbers.Integral):
        if not (isinstance(given, float) and given.is_integer()):
            raise TypeError(
                f"epochs(n): n must be a whole number of epochs (an int, 0 <= n), got "
                f"{type(given).__name__} {given!r}"
            )
        # (Julia's `@epochs 2.0` ran 1:2.0, two epochs)
    if given < 0:
        raise ValueError(f"epochs(n): n must be a whole number of epochs with 0 <= n, got {n!r}")
    n = int(given)
    warn_deprecated(
        "epochs(n) is deprecated (Flux 0.14 removed @epochs): write an ordinary loop, "
        f"`for epoch in range(1, n + 1):`; {_MIGRATE}",
        stacklevel=2,
        key="epochs",
    )
    return _epochs(n)


def _epochs(n: int) -> Iterator[int]:
    for i in range(1, n + 1):
        logger.info("Epoch %d", i)
        yield i


# ---------------------------------------------------------------------------- patience helpers
def patience(predicate: Callable[..., Any], wait: int) -> Callable[..., bool]:
    """A function that is ``True`` once ``predicate`` held on ``wait`` calls in a row (Flux's).

    Each call passes its arguments to ``predicate``; a true result counts up, a false one
    resets the count. Not deprecated (it works in any loop).

    >>> from fluxtrain import patience
    >>> trigger = patience(lambda: True, 3)
    >>> [trigger() for _ in range(3)]
    [False, False, True]
    """
    if not callable(predicate):
        raise TypeError(f"patience(predicate, wait): predicate must be callable, got "
                        f"{type(predicate).__name__}")
    _check_wait("patience", "wait", wait)
    count = 0

    def trigger(*args: Any, **kwargs: Any) -> bool:
        nonlocal count
        count = count + 1 if predicate(*args, **kwargs) else 0
        return count >= wait

    return trigger


def _check_wait(fname: str, name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{fname}: {name} must be a whole number of calls (1 <= {name}), got "
                        f"{type(v).__name__} {v!r}")
    if v < 1:
        raise ValueError(f"{fname}: {name} must be a whole number of calls with 1 <= {name}, "
                         f"got {v!r}")


def early_stopping(
    f: Callable[..., Any],
    delay: int,
    distance: Callable[[Any, Any], Any] = lambda best, score: best - score,
    init_score: Any = 0,
    min_dist: Any = 0,
) -> Callable[..., bool]:
    """Stop when a metric has not improved by ``min_dist`` for ``delay`` calls (Flux's).

    Each call computes ``score = f(...)`` and ``d = distance(best, score)`` (by default
    ``best - score``: a decreasing metric such as a loss); ``best`` becomes ``score``
    unless ``d < 0``; the call returns ``True`` once ``d < min_dist`` held ``delay`` times
    in a row. Keyword arguments as Flux's: ``distance``, ``init_score``, ``min_dist``.

    >>> from fluxtrain import early_stopping
    >>> es = early_stopping(lambda x: x, 2, init_score=10)
    >>> [es(v) for v in (9, 8, 9, 9)]   # the last two are worse than the best, 8
    [False, False, False, True]
    """
    if not callable(f) or not callable(distance):
        raise TypeError("early_stopping(f, delay; distance=...): f and distance must be callable")
    best = init_score

    def improved_too_little(*args: Any, **kwargs: Any) -> bool:
        nonlocal best
        score = f(*args, **kwargs)
        d = distance(best, score)
        if not d < 0:
            best = score
        return bool(d < min_dist)

    return patience(improved_too_little, delay)


def plateau(
    f: Callable[..., Any],
    width: int,
    distance: Callable[[Any, Any], Any] = lambda last, score: last - score,
    init_score: Any = 0,
    min_dist: Any = 1e-6,
) -> Callable[..., bool]:
    """Stop when a metric stayed within ``min_dist`` of its last value ``width`` times (Flux's).

    Each call computes ``score = f(...)`` and ``d = |distance(last, score)|``; ``last``
    becomes ``score``; the call returns ``True`` once ``d < min_dist`` held ``width``
    times in a row (``min_dist`` defaults to Flux's ``1f-6``).

    >>> from fluxtrain import plateau
    >>> p = plateau(lambda x: x, 2, min_dist=0.5)
    >>> [p(v) for v in (5, 5.1, 5.2, 7)]
    [False, False, True, False]
    """
    if not callable(f) or not callable(distance):
        raise TypeError("plateau(f, width; distance=...): f and distance must be callable")
    last = init_score

    def flat(*args: Any, **kwargs: Any) -> bool:
        nonlocal last
        score = f(*args, **kwargs)
        d = abs(distance(last, score))
        last = score
        return bool(d < min_dist)

    return patience(flat, width)
