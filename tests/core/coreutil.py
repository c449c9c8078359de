"""Tiny helpers for the rule-core tests (no tree API: rules on plain tensor lists)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fluxtrain.core import AbstractRule, apply_batched, subtract_, subtract_many_


def init_all(rule: AbstractRule, xs: Sequence[torch.Tensor]) -> list:
    return [rule.init(x) for x in xs]


def step_all(rule: AbstractRule, states: list, xs: Sequence[torch.Tensor],
             grads: Sequence[torch.Tensor]) -> list:
    """One per-leaf update of every tensor in place; returns the new states."""
    out = []
    for s, x, g in zip(states, xs, grads):
        s2, step = rule.apply(s, x, g)
        subtract_(x, step)
        out.append(s2)
    return out


def step_batched(rule: AbstractRule, states: list, xs: Sequence[torch.Tensor],
                 grads: Sequence[torch.Tensor]) -> list:
    """The same through the batched path (apply_batched + subtract_many_)."""
    new, steps = apply_batched(rule, states, xs, grads)
    subtract_many_(xs, steps)
    return new


def bits_equal(a: object, b: object) -> bool:
    """Bitwise equality of tensors, or of (named) tuples/lists of them and numbers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        a_bytes = a.reshape(-1).contiguous().view(torch.uint8)
        return torch.equal(a_bytes, b.reshape(-1).contiguous().view(torch.uint8))
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and type(a) is type(b)
            and len(a) == len(b)
            and all(bits_equal(x, y) for x, y in zip(a, b))
        )
    return type(a) is type(b) and a == b
