"""Issue 22 item 6 (the callbacks' part): ``throttle``'s timeout and ``epochs``' n are checked:
NaN, inf, negative and non-integral values raise ValueError/TypeError naming the argument and
its allowed range; valid values work as before."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import fluxtrain
from fluxtrain import FluxDeprecationWarning


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [(math.nan, ValueError), (-1, ValueError), (-0.5, ValueError), (math.inf, ValueError),
     (-math.inf, ValueError), ("1", TypeError), (None, TypeError), (True, TypeError)],
)
def test_throttle_refuses_bad_timeouts(timeout: object, exc: type) -> None:
    with pytest.raises(exc, match=r"throttle\(f, timeout\): timeout must be .*0 <= timeout < inf"):
        fluxtrain.throttle(print, timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("flag", ["leading", "trailing"])
def test_throttle_refuses_non_bool_flags(flag: str) -> None:
    with pytest.raises(TypeError, match=f"{flag} must be True or False"):
        fluxtrain.throttle(print, 1, **{flag: "yes"})  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, 0.0, 1, 2.5, np.float64(0.1), np.int64(3)])
def test_throttle_accepts_finite_non_negative_numbers(timeout: object) -> None:
    calls: list[int] = []
    g = fluxtrain.throttle(lambda: calls.append(1), timeout)  # type: ignore[arg-type]
    g()
    assert calls == [1]


@pytest.mark.parametrize(
    ("n", "exc"),
    [(-1, ValueError), (-5, ValueError), (1.5, TypeError), (math.nan, TypeError),
     (math.inf, TypeError), ("3", TypeError), (None, TypeError), (True, TypeError)],
)
def test_epochs_refuses_bad_counts(n: object, exc: type) -> None:
    with pytest.raises(exc, match=r"epochs\(n\): n must be a whole number of epochs.*0 <= n"):
        list(fluxtrain.epochs(n))  # type: ignore[arg-type]


def test_epochs_accepts_whole_numbers() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        assert list(fluxtrain.epochs(0)) == []
        assert list(fluxtrain.epochs(3)) == [1, 2, 3]
        assert list(fluxtrain.epochs(np.int64(2))) == [1, 2]
        assert list(fluxtrain.epochs(2.0)) == [1, 2]  # Julia's `@epochs 2.0` ran twice
