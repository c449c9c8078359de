"""Every optimisation rule, once (reference/optimisers.md §2).

Each rule is a frozen dataclass of hyperparameters with ``init``, ``apply``
(one leaf) and ``apply_many`` (many leaves of one device/dtype, with
``torch._foreach_*``). Both paths perform the same elementwise operations in
the same order, so they agree bit for bit. Hyperparameters are cast to the
parameter dtype at use with :func:`fluxtrain.core.hyper.cast`; scalar
sub-expressions such as ``1 - beta1`` are rounded to that dtype too, as Julia
evaluates them in ``T``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch

from fluxtrain.core.base import AbstractRule, State, Step
from fluxtrain.core.hyper import cast, eps_for

__all__ = [
    "Descent",
    "Momentum",
    "Adam",
    "OptimiserChain",
]


# ---------------------------------------------------------------------------- Descent
@dataclasses.dataclass(frozen=True, repr=False)
class Descent(AbstractRule):
    """Plain gradient descent: ``step = eta * dx``.

    >>> import torch
    >>> Descent(0.1).apply(None, torch.zeros(3), torch.tensor([4.0, 5.0, 6.0]))[1]
    tensor([0.4000, 0.5000, 0.6000])
    """

    eta: float = 0.1

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        return state, dx * cast(self.eta, x.dtype)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta = cast(self.eta, xs[0].dtype)
        return list(states), list(torch._foreach_mul(list(dxs), eta))


# ---------------------------------------------------------------------------- Momentum
@dataclasses.dataclass(frozen=True, repr=False)
class Momentum(AbstractRule):
    """Gradient descent with momentum: ``v = rho*v + eta*dx``; ``step = v``.

    The step is the state tensor itself, as in Optimisers.jl.
    """

    eta: float = 0.01
    rho: float = 0.9

    def init(self, x: torch.Tensor) -> State:
        return torch.zeros_like(x)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        eta, rho = cast(self.eta, x.dtype), cast(self.rho, x.dtype)
        v = state
        v.mul_(rho).add_(dx * eta)
        return v, v

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta, rho = cast(self.eta, xs[0].dtype), cast(self.rho, xs[0].dtype)
        vs = list(states)
        torch._foreach_mul_(vs, rho)
        torch._foreach_add_(vs, torch._foreach_mul(list(dxs), eta))
        return vs, list(vs)


# ---------------------------------------------------------------------------- Adam
class AdamState(NamedTuple):
    """State of Adam-family rules: moments ``m``, ``v`` and the powers ``beta_t``."""

    m: torch.Tensor
    v: torch.Tensor
    beta_t: tuple[float, float]


@dataclasses.dataclass(frozen=True, repr=False)
class Adam(AbstractRule):
    """Adam (Kingma & Ba): bias-corrected first and second moments.

    ``step = m/(1-βt1) / (sqrt(v/(1-βt2)) + ε) * η`` with ``βt = β^t`` stored in
    the state in the parameter's dtype.

    >>> Adam(0.01)
    Adam(eta=0.01, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-8

    def init(self, x: torch.Tensor) -> State:
        dt = x.dtype
        return AdamState(
            torch.zeros_like(x),
            torch.zeros_like(x),
            (cast(self.beta[0], dt), cast(self.beta[1], dt)),
        )

    def _scalars(self, dtype: torch.dtype) -> tuple[float, float, float, float, float, float]:
        b1, b2 = cast(self.beta[0], dtype), cast(self.beta[1], dtype)
        return (
            cast(self.eta, dtype),
            b1,
            b2,
            cast(1 - b1, dtype),
            cast(1 - b2, dtype),
            eps_for(dtype, self.epsilon),
        )

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, c2, eps = self._scalars(dt)
        m, v, (bt1, bt2) = state
        m.mul_(b1).add_(dx * c1)
        v.mul_(b2).add_(_abs2(dx) * c2)
        step = m / cast(1 - bt1, dt)
        denom = (v / cast(1 - bt2, dt)).sqrt_().add_(eps)
        step.div_(denom).mul_(eta)
        return AdamState(m, v, (cast(bt1 * b1, dt), cast(bt2 * b2, dt))), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps = self._scalars(dt)
        dxs = list(dxs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, torch._foreach_mul(dxs, c1))
        torch._foreach_mul_(vs, b2)
        torch._foreach_add_(vs, torch._foreach_mul(_abs2_many(dxs), c2))
        steps = torch._foreach_div(ms, [cast(1 - s.beta_t[0], dt) for s in states])
        denoms = torch._foreach_div(vs, [cast(1 - s.beta_t[1], dt) for s in states])
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, eps)
        torch._foreach_div_(steps, denoms)
        torch._foreach_mul_(steps, eta)
        new_states = [
            AdamState(m, v, (cast(s.beta_t[0] * b1, dt), cast(s.beta_t[1] * b2, dt)))
            for m, v, s in zip(ms, vs, states)
        ]
        return new_states, list(steps)


def _abs2(dx: torch.Tensor) -> torch.Tensor:
    """Julia's ``abs2``: ``dx*dx`` for reals, ``|dx|^2`` (real) for complex."""
    if dx.is_complex():
        return (dx * dx.conj()).real
    return dx * dx


def _abs2_many(dxs: list[torch.Tensor]) -> list[torch.Tensor]:
    if any(d.is_complex() for d in dxs):
        return [_abs2(d) for d in dxs]
    return list(torch._foreach_mul(dxs, dxs))


# ---------------------------------------------------------------------------- OptimiserChain
class OptimiserChain(AbstractRule):
    """Compose rules: each member transforms the previous member's step.

    ``OptimiserChain()`` is the identity (subtracts the whole gradient). A member
    returning ``None`` (AccumGrad mid-accumulation) stops the chain for that
    step, leaving the later members' states unchanged.

    >>> OptimiserChain(ClipGrad(1.0), Descent(0.1))  # doctest: +SKIP
    OptimiserChain(ClipGrad(delta=1.0), Descent(eta=0.1))
    """

    opts: tuple[AbstractRule, ...]

    def __init__(self, *opts: AbstractRule) -> None:
        for i, o in enumerate(opts):
            if not isinstance(o, AbstractRule):
                raise TypeError(
                    f"OptimiserChain: member {i} is {type(o).__name__}, not a rule; "
                    "pass rules such as ClipGrad(1.0), Adam()"
                )
            if type(o).__name__ == "MixedPrecision":
                raise ValueError(
                    "MixedPrecision optimisers should wrap the entire OptimiserChain, "
                    "not be inside it"
                )
        object.__setattr__(self, "opts", tuple(opts))

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.opts == self.opts  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.opts))

    def __repr__(self) -> str:
        return f"OptimiserChain({', '.join(map(repr, self.opts))})"

    def init(self, x: torch.Tensor) -> State:
        return tuple(o.init(x) for o in self.opts)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        new_states = list(state)
        g: Step = dx
        for k, o in enumerate(self.opts):
            if g is None:
                break
            new_states[k], g = o.apply(state[k], x, g)
        return tuple(new_states), g

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        n = len(xs)
        member_states = [list(s) for s in states]
        gs: list[Step] = list(dxs)
        for k, o in enumerate(self.opts):
            live = [i for i in range(n) if gs[i] is not None]
            if not live:
                break
            ks, kg = o.apply_many(
                [member_states[i][k] for i in live], [xs[i] for i in live], [gs[i] for i in live]
            )
            for j, i in enumerate(live):
                member_states[i][k] = ks[j]
                gs[i] = kg[j]
        return [tuple(s) for s in member_states], gs

    def adjust(self, eta: float | None = None, **hyperparams: Any) -> AbstractRule:
        if eta is None and not hyperparams:
            raise ValueError("adjust must be given something to act on: a number or keywords")
        return OptimiserChain(*(o.adjust(eta, **hyperparams) for o in self.opts))


