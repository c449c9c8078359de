"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def throttle(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("throttle")


def stop(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("stop")


def skip(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("skip")


def epochs(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("epochs")
