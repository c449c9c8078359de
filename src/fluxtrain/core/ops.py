"""The only arithmetic the tree layers need outside the rules themselves.

Subtracting a step from a parameter, summing the gradients of a tied tensor,
and checking a gradient against its parameter all live here, so that the
explicit and implicit APIs share them and no other layer does arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fluxtrain.core.base import Step, maywrite

__all__ = [
    "check_grad",
    "add_grads",
    "subtract",
    "subtract_",
    "subtract_many_",
]


def check_grad(x: torch.Tensor, dx: object, where: str = "") -> torch.Tensor:
    """Validate ``dx`` as the gradient of ``x``; return it as a tensor on x's device.

    Raises ``TypeError`` for a non-tensor and ``ValueError`` naming both shapes
    when they differ. numpy arrays are accepted and converted.
    """
    at = f" at {where}" if where else ""
    if not isinstance(dx, torch.Tensor):
        try:
            import numpy as np

            if isinstance(dx, np.ndarray):
                dx = torch.from_numpy(dx)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
    if not isinstance(dx, torch.Tensor):
        raise TypeError(
            f"gradient{at} must be a tensor (or None for no gradient), "
            f"got {type(dx).__name__}"
        )
    if dx.shape != x.shape:
        raise ValueError(
            f"gradient{at} has shape {tuple(dx.shape)} but the parameter has shape "
            f"{tuple(x.shape)}; gradients must match their parameters exactly"
        )
    if dx.device != x.device:
        dx = dx.to(x.device)
    return dx


def add_grads(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of two gradients of one (tied) parameter; never mutates either."""
    return a + b


def subtract_(x: torch.Tensor, step: Step) -> torch.Tensor:
    """``x -= step`` in place when ``x`` may be written, else a new tensor.

    Returns the updated parameter (the same object when written in place).
    Optimisers.jl's ``subtract!``: the element type of ``x`` is kept.
    """
    if step is None:
        return x
    if maywrite(x):
        with torch.no_grad():
            x.sub_(step)
        return x
    return subtract(x, step)


def subtract(x: torch.Tensor, step: Step) -> torch.Tensor:
    """``x - step`` as a new tensor of ``x``'s dtype (``x`` is not touched)."""
    if step is None:
        return x
    with torch.no_grad():
        return (x - step).to(x.dtype)


def subtract_many_(xs: Sequence[torch.Tensor], steps: Sequence[Step]) -> None:
    """In-place ``x -= step`` for many writable tensors (one ``_foreach`` kernel).

    Pairs whose step is ``None`` are skipped. All ``xs`` must be writable; the
    results equal :func:`subtract_` on each pair bit for bit.
    """
    pairs = [(x, s) for x, s in zip(xs, steps) if s is not None]
    if not pairs:
        return
    with torch.no_grad():
        torch._foreach_sub_([x for x, _ in pairs], [s for _, s in pairs])
