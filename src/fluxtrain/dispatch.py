"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def train_(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("train_")


def update_(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("update_")


def gradient(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("gradient")


def withgradient(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("withgradient")
