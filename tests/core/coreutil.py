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
