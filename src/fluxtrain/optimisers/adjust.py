"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def adjust(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("adjust")


def adjust_(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("adjust_")


def freeze_(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("freeze_")


def thaw_(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("thaw_")
