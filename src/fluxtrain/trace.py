"""Stub: to be written (see docs/ARCHITECTURE.md)."""

from collections.abc import Iterable

import torch


def active() -> bool:
    return False


def record_step(style: str, params: Iterable[torch.Tensor], loss: float | None) -> None:
    return None
