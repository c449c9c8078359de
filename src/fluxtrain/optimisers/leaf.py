"""``Leaf``: one trainable parameter's rule, state and frozen flag (Optimisers.jl's ``Leaf``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

import torch

from fluxtrain.core.base import AbstractRule, State

__all__ = ["Leaf", "show_compact", "shared_rule"]

_DTYPE_PREFIX = {
    torch.float64: "",
    torch.float32: "Float32",
    torch.float16: "Float16",
    torch.bfloat16: "BFloat16",
    torch.complex128: "ComplexF64",
    torch.complex64: "ComplexF32",
    torch.complex32: "ComplexF16",
}


def _num(v: float) -> str:
    """Julia's compact float printing: 6 significant digits, ``.0`` kept, ``1.0e-8``."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    s = f"{v:.6g}"
    if "e" in s:
        mant, exp = s.split("e")
        if "." not in mant:
            mant += ".0"
        return f"{mant}e{int(exp)}"
    if "." not in s:
        s += ".0"
    return s


def _elem(v: Any) -> str:
    if isinstance(v, complex):
        im = _num(v.imag)
        sign = "" if im.startswith("-") else "+"
        return f"{_num(v.real)}{sign}{im}im"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return _num(v)


def _row(vals: list[Any], sep: str, limit: int = 10) -> str:
    if len(vals) > limit:
        head = [_elem(v) for v in vals[:3]]
        tail = [_elem(v) for v in vals[-3:]]
        return sep.join([*head, "…", *tail])
    return sep.join(_elem(v) for v in vals)


def show_compact(t: torch.Tensor) -> str:
    """A tensor in Julia's compact style: ``[0.0 0.0]``, ``Float32[0.1, 0.2]``.

    >>> show_compact(torch.tensor([[-2.018, 3.027]], dtype=torch.float64))
    '[-2.018 3.027]'
    >>> show_compact(torch.zeros(2))
    'Float32[0.0, 0.0]'
    """
    prefix = _DTYPE_PREFIX.get(t.dtype, str(t.dtype).replace("torch.", ""))
    t = t.detach()
    if t.is_complex():
        vals = t.cpu().tolist()
    else:
        vals = t.cpu().tolist()
    if t.dim() == 0:
        return f"fill({_elem(vals)})" if not prefix else f"fill({prefix}({_elem(vals)}))"
    if t.dim() == 1:
        return f"{prefix}[{_row(vals, ', ')}]"
    if t.dim() == 2:
        rows = [_row(r, " ") for r in vals]
        if len(rows) > 10:
            rows = [*rows[:3], "…", *rows[-3:]]
        return f"{prefix}[{'; '.join(rows)}]"
    shape = "×".join(str(s) for s in t.shape)
    return f"{prefix}[{shape} array]"


def show_state(s: Any) -> str:
    """A rule state in compact form (tuples and namedtuples both as ``(a, b)``)."""
    if s is None:
        return "None"
    if isinstance(s, torch.Tensor):
        return show_compact(s)
    if isinstance(s, tuple):
        inner = ", ".join(show_state(v) for v in s)
        return f"({inner},)" if len(s) == 1 else f"({inner})"
    if isinstance(s, float):
        return _num(s)
    return repr(s)


class Leaf:
    """The optimiser state of one trainable parameter: ``Leaf(rule, state, frozen=False)``.

    Mutable on purpose: the same ``Leaf`` object at two places of a state tree
    means a tied parameter, and :func:`~fluxtrain.optimisers.adjust_`,
    :func:`~fluxtrain.optimisers.freeze_` and ``update_`` change it in place.
    Equality is structural (rule, state tensors by value, frozen flag).

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum
    >>> Leaf(Momentum(0.1, 0.9), torch.zeros(1, 2, dtype=torch.float64))
    Leaf(Momentum(eta=0.1, rho=0.9), [0.0 0.0])
    >>> Leaf(Momentum(), torch.zeros(1, dtype=torch.float64), frozen=True)
    Leaf(Momentum(eta=0.01, rho=0.9), [0.0], frozen=True)
    """

    __slots__ = ("rule", "state", "frozen")

    rule: AbstractRule
    state: State
    frozen: bool

    def __init__(self, rule: AbstractRule, state: State, frozen: bool = False) -> None:
        if not isinstance(frozen, bool):
            raise TypeError(f"Leaf: frozen must be True or False, got {frozen!r}")
        self.rule = rule
        self.state = state
        self.frozen = frozen

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Leaf):
            return NotImplemented
        from fluxtrain.optimisers.tree import tree_equal

        return (
            self.rule == other.rule
            and self.frozen == other.frozen
            and tree_equal(self.state, other.state)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        tail = ", frozen=True" if self.frozen else ""
        return f"Leaf({self.rule!r}, {show_state(self.state)}{tail})"


_rule_of = attrgetter("rule")
_frozen_of = attrgetter("frozen")


def shared_rule(leaves: Sequence[Leaf]) -> AbstractRule | None:
    """The one rule object all of ``leaves`` hold, if there are any and none is frozen.

    What lets a step treat them as one group (read list by list, not per leaf).

    >>> from fluxtrain.core.rules import Descent
    >>> r = Descent(0.1)
    >>> shared_rule([Leaf(r, None), Leaf(r, None)]) is r
    True
    >>> shared_rule([Leaf(r, None), Leaf(Descent(0.1), None)]) is None  # equal, not the same
    True
    """
    if not leaves:
        return None
    rule = leaves[0].rule
    if not all(map(is_, map(_rule_of, leaves), repeat(rule))) or any(map(_frozen_of, leaves)):
        return None
    return rule
