"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def setup(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("setup")


def train_explicit(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("train_explicit")


def update_explicit(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("update_explicit")
