"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def setup(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("setup")


def update(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("update")


def update_(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("update_")
