"""``adjust``/``adjust_`` (change hyperparameters), ``freeze_``/``thaw_`` (stop/resume training).

All four act on a state tree from :func:`~fluxtrain.optimisers.setup` or any
part of one (``adjust_(state.layers[0], 0.01)``), never on a model.

``member=`` targets one member of an ``OptimiserChain`` (by position, or by rule
type when exactly one member has it), for chains whose members share a field
name (two ``Descent``s; ``WeightDecay`` and ``SignDecay`` both have ``lambda_``).
A rule that gains its first schedule (``adjust_(st, WarmupCosine(...))`` on a
plain ``Adam``) gets its state wrapped in ``ScheduledState(0, ...)``: the
schedule starts at that step; an existing counter is always kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fluxtrain.core.base import AbstractRule
from fluxtrain.core.rules import (
    MixedPrecision,
    MixedPrecisionState,
    OptimiserChain,
    WeightDecay,
)
from fluxtrain.core.schedules import ScheduledState, is_scheduled
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
        elif hasattr(type(s), "__fluxtrain_translate__"):
            raise TypeError(
                f"`{fname}` acts on the state tree from `setup`, not on an old optimiser; got "
                f"{type(s).__name__}. Change an old optimiser's field directly (opt.eta = 0.01), "
                "or use the explicit style: opt_state = setup(opt, model), then "
                f"{fname}(opt_state, ...)"
            )
        else:
            raise TypeError(
                f"`{fname}` must not be applied to a model, only to the state tree from "
                f"`setup` (or a part of it); got a {type(s).__name__}"
            )

    walk(tree)
    return out


def adjust_(tree: Any, eta: Any = None, *, member: int | type | None = None,
            **hyper: Any) -> None:
    """Change hyperparameters of every rule in ``tree`` in place; states are kept.

    A number sets the learning rate ``eta``; keywords set fields by their
    ASCII names (``beta=``, ``rho=``, ``delta=``, ``lambda_=`` for Julia's
    ``lambda``); they reach every member of an ``OptimiserChain`` and the rule
    inside ``MixedPrecision``. A rule that lacks a field ignores it (the
    rule-level ``rule.adjust``, as in Optimisers.jl), but a field that NO rule
    in the tree has is a mistake (a typo): ``ValueError`` naming it and the
    fields that exist, and nothing changes (Optimisers.jl ignores it
    silently). Works on any part of a state tree. Returns ``None``.

    ``member=k`` (a position, negative from the end) or ``member=RuleType``
    changes only that member of each leaf's ``OptimiserChain`` (looking through
    a ``MixedPrecision`` around it); it is an error if the rule is no chain, the
    position is out of range, no member or several members have that type, or
    the member has none of the given fields. Any value may be a schedule.

    >>> import torch
    >>> from fluxtrain.optimisers import Descent, OptimiserChain, WeightDecay, setup
    >>> st = setup(OptimiserChain(WeightDecay(0.1), Descent(0.1)),
    ...            {"w": torch.zeros(2, dtype=torch.float64)})
    >>> adjust_(st, lambda_=0.01, member=WeightDecay)
    >>> adjust_(st, 0.5, member=1)
    >>> st["w"].rule
    OptimiserChain(WeightDecay(lambda_=0.01), Descent(eta=0.5))

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum, setup
    >>> st = setup(Momentum(0.1), {"w": torch.zeros(2, dtype=torch.float64)})
    >>> adjust_(st, 0.5)
    >>> st["w"].rule
    Momentum(eta=0.5, rho=0.9)
    >>> adjust_(st, rho=0.8)
    >>> adjust_(st, rho=0.7, no_such_field=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: adjust_: no rule in this state tree has the field 'no_such_field'; ...
    >>> st["w"].rule
    Momentum(eta=0.5, rho=0.8)
    """
    if eta is None and not hyper:
        raise ValueError(
            "adjust_ must be given something to act on: a learning rate "
            "(adjust_(state, 0.01)) or keywords (adjust_(state, beta=(0.8, 0.99)))"
        )
    leaves = _leaves(tree, "adjust_")
    _check_fields(leaves, eta, hyper, "adjust_")
    new_rules = _adjusted(leaves, lambda r: _adjust_rule(r, eta, hyper, member, "adjust_"))
    new_states = [_restate(leaf.rule, rule, leaf.state) for leaf, rule in zip(leaves, new_rules)]
    for leaf, rule, state in zip(leaves, new_rules, new_states):
        leaf.rule = rule
        leaf.state = state


def _rule_fields(rule: Any) -> set[str] | None:
    """The fields ``rule.adjust`` acts on (through chains and ``MixedPrecision``); ``None``
    when they cannot be known (a user's rule with its own ``adjust``, not a dataclass)."""
    if isinstance(rule, OptimiserChain):
        out: set[str] = set()
        for o in rule.opts:
            f = _rule_fields(o)
            if f is None:
                return None
            out |= f
        return out
    if isinstance(rule, MixedPrecision):
        return _rule_fields(rule.rule)
    t = type(rule)
    if not dataclasses.is_dataclass(rule) or (
        t.adjust is not AbstractRule.adjust and not t.__module__.startswith("fluxtrain.")
    ):
        return None
    names = {f.name for f in dataclasses.fields(rule) if f.init}
    if isinstance(rule, WeightDecay):
        names.add("gamma")  # the deprecated name of lambda_ (adjust warns and renames it)
    return names


def _check_fields(leaves: list[Leaf], eta: Any, hyper: dict[str, Any], fname: str) -> None:
    """A ``ValueError`` for a field that no rule under ``leaves`` has (nothing changed yet)."""
    if not leaves:
        return
    asked = (["eta"] if eta is not None else []) + list(hyper)
    have: set[str] = set()
    seen: set[int] = set()
    for leaf in leaves:
        if id(leaf.rule) in seen:
            continue
        seen.add(id(leaf.rule))
        f = _rule_fields(leaf.rule)
        if f is None:
            return  # a rule whose fields cannot be known may take anything
        have |= f
    missing = [k for k in asked if k not in have]
    if missing:
        s = "" if len(missing) == 1 else "s"
        names = ", ".join(repr(k) for k in missing)
        raise ValueError(
            f"{fname}: no rule in this state tree has the field{s} {names}; its rules' fields "
            f"are {', '.join(sorted(have)) or 'none'}. Nothing was changed"
        )


def _adjust_rule(rule: AbstractRule, eta: Any, hyper: dict[str, Any],
                 member: int | type | None, fname: str) -> AbstractRule:
    if member is None:
        return rule.adjust(eta, **hyper)
    if isinstance(rule, MixedPrecision):
        return MixedPrecision(rule.dtype, _adjust_rule(rule.rule, eta, hyper, member, fname))
    if not isinstance(rule, OptimiserChain):
        raise TypeError(
            f"{fname}(..., member={_name(member)}) picks a member of an OptimiserChain, but "
            f"the rule here is {rule!r}; drop member= to adjust it directly"
        )
    k = _member_index(rule, member, fname)
    old = rule.opts[k]
    new = old.adjust(eta, **hyper)
    if new is old:
        given = (["eta"] if eta is not None else []) + list(hyper)
        raise ValueError(
            f"{fname}(..., member={_name(member)}): member {k} of {rule!r} is {old!r}, which "
            f"has none of the fields {', '.join(given)}; check the member or the keyword"
        )
    opts = list(rule.opts)
    opts[k] = new
    return OptimiserChain(*opts)


def _name(member: Any) -> str:
    return member.__name__ if isinstance(member, type) else repr(member)


def _member_index(chain: OptimiserChain, member: Any, fname: str) -> int:
    n = len(chain.opts)
    if isinstance(member, int) and not isinstance(member, bool):
        if not -n <= member < n:
            raise IndexError(
                f"{fname}(..., member={member}): out of range, {chain!r} has {n} member"
                f"{'' if n == 1 else 's'} (positions 0 to {n - 1}, or -{n} to -1)"
            )
        return member % n
    if isinstance(member, type) and issubclass(member, AbstractRule):
        hits = [i for i, o in enumerate(chain.opts) if isinstance(o, member)]
        if not hits:
            have = ", ".join(f"{i}: {type(o).__name__}" for i, o in enumerate(chain.opts))
            raise ValueError(
                f"{fname}(..., member={member.__name__}): {chain!r} has no member of type "
                f"{member.__name__} (its members are {have or 'none'})"
            )
        if len(hits) > 1:
            found = ", ".join(f"{i}: {chain.opts[i]!r}" for i in hits)
            raise ValueError(
                f"{fname}(..., member={member.__name__}) is ambiguous: {chain!r} has "
                f"{len(hits)} members of that type ({found}); pass a position instead, e.g. "
                f"member={hits[0]}"
            )
        return hits[0]
    raise TypeError(
        f"{fname}: member= must be a position (int) or a rule type such as Adam, got {member!r}"
    )


def _restate(old: AbstractRule, new: AbstractRule, state: Any) -> Any:
    """The state for ``new`` from ``old``'s: schedules gained start a counter at 0."""
    if old is new:
        return state
    was, now = is_scheduled(old), is_scheduled(new)
    if now and not was:
        return ScheduledState(0, state)
    if was and not now and type(state) is ScheduledState:
        return state.state
    if isinstance(old, OptimiserChain) and isinstance(new, OptimiserChain) and type(
        state
    ) is tuple and len(old.opts) == len(new.opts) == len(state):
        return tuple(_restate(a, b, s) for a, b, s in zip(old.opts, new.opts, state))
    if isinstance(old, MixedPrecision) and isinstance(new, MixedPrecision) and type(
        state
    ) is MixedPrecisionState:
        return MixedPrecisionState(state.xT, _restate(old.rule, new.rule, state.state))
    return state


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


def adjust(tree: Any, eta: Any = None, *, member: int | type | None = None,
           **hyper: Any) -> Any:
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
        return _adjust_rule(tree, eta, hyper, member, "adjust")
    # refuse a model, or a field no rule has, before copying
    _check_fields(_leaves(tree, "adjust"), eta, hyper, "adjust")
    new = copy_tree(tree, {})
    adjust_(new, eta, member=member, **hyper)
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
