"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def gradient_explicit(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("gradient_explicit")


def withgradient_explicit(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("withgradient_explicit")
