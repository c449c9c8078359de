"""``dispatch._takes_arguments`` (the fast zero-argument check of gradient/withgradient)
agrees with ``inspect.signature`` on every kind of callable."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

import fluxtrain
from fluxtrain.dispatch import _takes_arguments


def _zero() -> int:
    return 0


def _pos(x):  # type: ignore[no-untyped-def]
    return x


def _posonly(x, /):  # type: ignore[no-untyped-def]
    return x


def _kwonly(*, x=1):  # type: ignore[no-untyped-def]
    return x


def _star(*a):  # type: ignore[no-untyped-def]
    return a


def _kw(**k):  # type: ignore[no-untyped-def]
    return k


@functools.wraps(_pos)
def _wrapped_pos(*a, **k):  # type: ignore[no-untyped-def]
    return _pos(*a, **k)


@functools.wraps(_zero)
def _wrapped_zero(*a, **k):  # type: ignore[no-untyped-def]
    return _zero()


def _with_signature(*a):  # type: ignore[no-untyped-def]
    return 0


_with_signature.__signature__ = inspect.Signature()  # type: ignore[attr-defined]


class _Call:
    def __call__(self, m):  # type: ignore[no-untyped-def]
        return m

    def method(self):  # type: ignore[no-untyped-def]
        return 0


CALLABLES = [
    _zero, _pos, _posonly, _kwonly, _star, _kw, _wrapped_pos, _wrapped_zero, _with_signature,
    lambda: 0, lambda m: m, lambda m=1: m, _Call(), _Call().method, functools.partial(_pos, 1),
    functools.partial(_pos), torch.nn.Linear(1, 1), len, print,
]


@pytest.mark.parametrize("f", CALLABLES, ids=lambda f: getattr(f, "__name__", type(f).__name__))
def test_takes_arguments_agrees_with_inspect(f) -> None:  # type: ignore[no-untyped-def]
    try:
        want = bool(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        want = True  # cannot tell: never raise the zero-argument error
    assert _takes_arguments(f) is want


def test_zero_argument_function_with_a_model_is_refused() -> None:
    w = torch.ones(2)
    with pytest.raises(TypeError, match="f takes no arguments, which is the implicit style"):
        fluxtrain.gradient(lambda: (w * w).sum(), w)
    with pytest.raises(TypeError, match="f takes no arguments"):
        fluxtrain.gradient(_wrapped_zero, w)
    assert torch.equal(fluxtrain.gradient(lambda v: (v * v).sum(), w)[0], 2 * w)
