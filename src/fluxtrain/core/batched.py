"""Apply one rule to many leaves at once, grouped by (device, dtype).

This module does no tree walking: callers (the explicit tree API, the old
optimisers) hand it flat lists. Each group of triples that share the
parameter's device and dtype and the gradient's dtype goes to the rule's
``apply_many`` (``torch._foreach_*`` kernels); results come back in the
callers' order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fluxtrain.core.base import AbstractRule, State, Step

__all__ = ["group_key", "apply_batched"]


def group_key(x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.device, torch.dtype, torch.dtype]:
    """Triples with equal keys can share one ``_foreach`` kernel call."""
    return (x.device, x.dtype, dx.dtype)


def apply_batched(
    rule: AbstractRule,
    states: Sequence[State],
    xs: Sequence[torch.Tensor],
    dxs: Sequence[torch.Tensor],
) -> tuple[list[State], list[Step]]:
    """``rule.apply`` over many triples, batched per (device, dtype) group.

    Returns new states and steps in the order given. Bit-identical to calling
    ``rule.apply`` on each triple.
    """
    n = len(xs)
    if not (len(states) == n == len(dxs)):
        raise ValueError(
            f"apply_batched needs equally many states, parameters and gradients, "
            f"got {len(states)}, {n}, {len(dxs)}"
        )
    groups: dict[tuple[torch.device, torch.dtype, torch.dtype], list[int]] = {}
    for i in range(n):
        groups.setdefault(group_key(xs[i], dxs[i]), []).append(i)
    new_states: list[State] = [None] * n
    steps: list[Step] = [None] * n
    with torch.no_grad():
        for idx in groups.values():
            gs, gsteps = rule.apply_many(
                [states[i] for i in idx], [xs[i] for i in idx], [dxs[i] for i in idx]
            )
            for j, i in enumerate(idx):
                new_states[i] = gs[j]
                steps[i] = gsteps[j]
    return new_states, steps
