"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def trainables(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("trainables")
