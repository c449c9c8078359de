"""``adjust``/``adjust_`` (change hyperparameters), ``freeze_``/``thaw_`` (stop/resume training).

All four act on a state tree from :func:`~fluxtrain.optimisers.setup` or any
part of one (``adjust_(state.layers[0], 0.01)``), never on a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fluxtrain.core.base import AbstractRule
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.interface import copy_tree
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.tree import StateTree

__all__ = ["adjust", "adjust_", "freeze_", "thaw_"]


def _leaves(tree: Any, fname: str) -> list[Leaf]:
    """Every distinct Leaf in a state tree; a TypeError if ``tree`` is (part of) a model."""
    out: list[Leaf] = []
    seen: set[int] = set()

    def walk(s: Any) -> None:
        t = type(s)
        if t is Leaf:
            if id(s) not in seen:
                seen.add(id(s))
                out.append(s)
            return
        if t is StateTree:
            for v in s._children.values():
                walk(v)
            return
        if isinstance(s, torch.Tensor) or isinstance(s, nn.Module) or T.kind(s) == T.NUMPY:
            raise TypeError(
                f"`{fname}` must not be applied to a model, only to the state tree from "
                f"`setup` (or a part of it, e.g. {fname}(state.layers[0])); got a "
                f"{type(s).__name__}"
            )
        if isinstance(s, dict):
            for v in s.values():
                walk(v)
        elif isinstance(s, tuple | list):
            for v in s:
                walk(v)
        elif isinstance(s, AbstractRule):
            raise TypeError(
                f"`{fname}` acts on the state tree from `setup`, not on a rule; got the rule "
                f"{s!r}. A rule is immutable: adjust(rule, ...) returns a new one, or "
                f"{fname}(state, ...) changes the rules inside a state tree"
            )
        else:
            raise TypeError(
                f"`{fname}` must not be applied to a model, only to the state tree from "
                f"`setup` (or a part of it); got a {type(s).__name__}"
            )

    walk(tree)
    return out


def adjust_(tree: Any, eta: float | None = None, **hyper: Any) -> None:
    """Change hyperparameters of every rule in ``tree`` in place; states are kept.

    A number sets the learning rate ``eta``; keywords set fields by their
    ASCII names (``beta=``, ``rho=``, ``delta=``, ``lambda_=`` for Julia's
    ``lambda``); they reach every member of an ``OptimiserChain`` and the rule
    inside ``MixedPrecision``. Keywords that no rule has are ignored, as in
    Optimisers.jl. Works on any part of a state tree. Returns ``None``.

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum, setup
    >>> st = setup(Momentum(0.1), {"w": torch.zeros(2, dtype=torch.float64)})
    >>> adjust_(st, 0.5)
    >>> st["w"].rule
    Momentum(eta=0.5, rho=0.9)
    >>> adjust_(st, rho=0.8, no_such_field=1)
    >>> st["w"].rule
    Momentum(eta=0.5, rho=0.8)
    """
    if eta is None and not hyper:
        raise ValueError(
            "adjust_ must be given something to act on: a learning rate "
            "(adjust_(state, 0.01)) or keywords (adjust_(state, beta=(0.8, 0.99)))"
        )
    leaves = _leaves(tree, "adjust_")
    new_rules = _adjusted(leaves, lambda r: r.adjust(eta, **hyper))
    for leaf, rule in zip(leaves, new_rules):
        leaf.rule = rule


def _adjusted(leaves: list[Leaf], f: Callable[[AbstractRule], AbstractRule]) -> list[AbstractRule]:
    """New rules for ``leaves``, computed before anything is changed.

    Leaves that share one rule object keep sharing one (so the batched update
    still groups them together).
    """
    cache: dict[int, AbstractRule] = {}
    out = []
    for leaf in leaves:
        r = cache.get(id(leaf.rule))
        if r is None:
            r = cache[id(leaf.rule)] = f(leaf.rule)
        out.append(r)
    return out


def adjust(tree: Any, eta: float | None = None, **hyper: Any) -> Any:
    """Like :func:`adjust_` but returns an adjusted copy; ``tree`` is untouched.

    Given a rule instead of a tree, returns the adjusted rule (``rule.adjust``).

    State tensors are copied (ties kept), so training the copy does not
    change the original.

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum, setup
    >>> st = setup(Momentum(), {"vec": torch.zeros(2, dtype=torch.float64)})
    >>> adjust(st, 0.123)["vec"].rule.eta, st["vec"].rule.eta
    (0.123, 0.01)
    """
    if eta is None and not hyper:
        raise ValueError(
            "adjust must be given something to act on: a learning rate "
            "(adjust(state, 0.01)) or keywords (adjust(state, beta=(0.8, 0.99)))"
        )
    if isinstance(tree, AbstractRule):  # the rule-level adjust of Optimisers.jl
        return tree.adjust(eta, **hyper)
    _leaves(tree, "adjust")  # refuse a model before copying it
    new = copy_tree(tree, {})
    adjust_(new, eta, **hyper)
    return new


def freeze_(tree: Any) -> None:
    """Stop training every parameter under ``tree`` (until :func:`thaw_`); returns ``None``.

    Frozen leaves skip their rule entirely: neither the parameter nor the state
    changes, whatever gradient is given.

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum, setup
    >>> st = setup(Momentum(), {"x": (torch.zeros(1, dtype=torch.float64), 2.0)})
    >>> freeze_(st["x"])
    >>> st
    {'x': (Leaf(Momentum(eta=0.01, rho=0.9), [0.0], frozen=True), ())}
    """
    for leaf in _leaves(tree, "freeze_"):
        leaf.frozen = True


def thaw_(tree: Any) -> None:
    """Undo :func:`freeze_` for every parameter under ``tree``; returns ``None``."""
    for leaf in _leaves(tree, "thaw_"):
        leaf.frozen = False
