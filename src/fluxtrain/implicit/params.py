"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from typing import Any


def params(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("params")


class Params:
    pass


class Grads:
    pass
