"""Every optimisation rule, once (reference/optimisers.md §2).

Each rule is a frozen dataclass of hyperparameters with ``init``, ``apply``
(one leaf) and ``apply_many`` (many leaves of one device/dtype, with
``torch._foreach_*``). Both paths perform the same elementwise operations in
the same order, so they agree bit for bit on the CPU. Hyperparameters are cast
to the parameter dtype at use with :func:`fluxtrain.core.hyper.cast`; scalar
sub-expressions such as ``1 - beta1`` are rounded to that dtype too, as Julia
evaluates them in ``T``. Every elementwise line follows Optimisers.jl's
operation order (Julia evaluates ``a * b / c`` as ``(a * b) / c``), because a
different order gives different last bits.

Gradients of another floating dtype than the parameter are combined with
torch's type promotion, one operation at a time; integer gradients are first
converted to the parameter's dtype (Julia's ``Int * T`` is a ``T``).

Two rules are fluxtrain's own: :class:`InvDecay` and :class:`ExpDecay`, the
explicit-style equivalents of Flux.Optimise's old optimisers of those names
(Optimisers.jl has none). They keep the old optimisers' arithmetic: each step
is computed in float64 and rounded once to the gradient's dtype.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, NamedTuple

import torch

from fluxtrain.core import hyper
from fluxtrain.core.base import AbstractRule, State, Step, check_param, maywrite
from fluxtrain.core.hyper import ANY, NONNEG, UNIT, UNIT_OPEN, Range, cast, eps_for
from fluxtrain.core.schedules import Schedule
from fluxtrain.errors import DomainError, FluxDeprecationWarning

__all__ = [
    "Descent",
    "Momentum",
    "Nesterov",
    "RMSProp",
    "Rprop",
    "Adam",
    "Lion",
    "RAdam",
    "AdaMax",
    "OAdam",
    "AdaGrad",
    "AdaDelta",
    "AMSGrad",
    "NAdam",
    "AdamW",
    "AdaBelief",
    "WeightDecay",
    "SignDecay",
    "ClipGrad",
    "ClipNorm",
    "AccumGrad",
    "MixedPrecision",
    "OptimiserChain",
    "InvDecay",
    "ExpDecay",
    # state types
    "RMSPropState",
    "RpropState",
    "AdamState",
    "RAdamState",
    "AdaMaxState",
    "OAdamState",
    "AdaDeltaState",
    "AMSGradState",
    "AdaBeliefState",
    "AccumGradState",
    "MixedPrecisionState",
    "ExpDecayState",
]

Tensors = list[torch.Tensor]


# ---------------------------------------------------------------------------- helpers
def _grad(dx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Integer/bool gradients become ``x``'s dtype (torch would make them float32)."""
    if dx.is_floating_point() or dx.is_complex():
        return dx
    return dx.to(x.dtype)


def _grads(dxs: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> Tensors:
    return [_grad(d, x) for d, x in zip(dxs, xs)]


def _abs2(dx: torch.Tensor) -> torch.Tensor:
    """Julia's ``abs2``: ``dx*dx`` for reals, ``|dx|^2`` (real) for complex."""
    if dx.is_complex():
        return (dx * dx.conj()).real
    return dx * dx


def _abs2_many(dxs: Tensors) -> Tensors:
    if any(d.is_complex() for d in dxs):
        return [_abs2(d) for d in dxs]
    return list(torch._foreach_mul(dxs, dxs))


def _sign(t: torch.Tensor) -> torch.Tensor:
    """Julia's ``sign``: ``z/|z|`` for complex numbers, ``sign(0) == 0``."""
    return torch.sgn(t) if t.is_complex() else torch.sign(t)


def _sign_many(ts: Tensors) -> Tensors:
    if any(t.is_complex() for t in ts):
        return [_sign(t) for t in ts]
    return list(torch._foreach_sign(ts))


def _fdiv(a: float, b: float) -> float:
    """IEEE division of Python floats (Julia's ``/``): x/0 is ±Inf, 0/0 is NaN.

    Reachable with coarse dtypes: in bfloat16, 0.999 rounds to 1.0 and ``1 - β2 == 0``.
    """
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _fsqrt(a: float) -> float:
    return math.sqrt(a) if a >= 0 else math.nan  # also NaN for NaN (comparison is False)


#: the ranges of the Adam family's hyperparameters (``docs/numerics.md``)
_ADAM_RANGES: dict[str, Range] = {
    "eta": NONNEG, "beta[0]": UNIT_OPEN, "beta[1]": UNIT_OPEN, "epsilon": NONNEG,
}


def _group(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, in first-seen order (for per-leaf scalars)."""
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def _betas(beta: tuple[float, ...], dt: torch.dtype) -> tuple[float, float]:
    return cast(beta[0], dt), cast(beta[1], dt)


def _advance(beta_t: tuple[float, float], b1: float, b2: float, dt: torch.dtype) -> tuple[
    float, float
]:
    """``βt .* β`` rounded in the parameter dtype."""
    return cast(beta_t[0] * b1, dt), cast(beta_t[1] * b2, dt)


def _moments(ms: Tensors, vs: Tensors, dxs: Tensors, b1: float, b2: float, c1: float,
             c2: float) -> None:
    """Adam's moment updates ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·|g|²`` (batched)."""
    torch._foreach_mul_(ms, b1)
    torch._foreach_add_(ms, torch._foreach_mul(dxs, c1))
    torch._foreach_mul_(vs, b2)
    torch._foreach_add_(vs, torch._foreach_mul(_abs2_many(dxs), c2))


def _moment(m: torch.Tensor, v: torch.Tensor, dx: torch.Tensor, b1: float, b2: float,
            c1: float, c2: float) -> None:
    m.mul_(b1).add_(dx * c1)
    v.mul_(b2).add_(_abs2(dx) * c2)


# ---------------------------------------------------------------------------- Descent
@dataclasses.dataclass(frozen=True, repr=False)
class Descent(AbstractRule):
    """Plain gradient descent: ``step = eta * dx``.

    >>> import torch
    >>> Descent(0.1).apply(None, torch.zeros(3), torch.tensor([4.0, 5.0, 6.0]))[1]
    tensor([0.4000, 0.5000, 0.6000])
    """

    eta: float = 0.1

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG}

    #: a sparse gradient gives a sparse step, subtracted as torch.optim.SGD adds it
    sparse: ClassVar[bool] = True

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return None

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        return state, _grad(dx, x) * cast(self.eta, x.dtype)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta = cast(self.eta, xs[0].dtype)
        return list(states), list(torch._foreach_mul(_grads(dxs, xs), eta))


# ---------------------------------------------------------------------------- Momentum
@dataclasses.dataclass(frozen=True, repr=False)
class Momentum(AbstractRule):
    """Gradient descent with momentum: ``v = rho*v + eta*dx``; ``step = v``.

    The step is the state tensor itself, as in Optimisers.jl.

    >>> import torch
    >>> rule = Momentum(0.1, 0.9)
    >>> v, step = rule.apply(rule.init(torch.zeros(2)), torch.zeros(2), torch.tensor([1.0, 2.0]))
    >>> step is v, v.tolist()
    (True, [0.10000000149011612, 0.20000000298023224])
    """

    eta: float = 0.01
    rho: float = 0.9

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG, "rho": UNIT}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return torch.zeros_like(x)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        eta, rho = cast(self.eta, x.dtype), cast(self.rho, x.dtype)
        v = state
        v.mul_(rho).add_(_grad(dx, x) * eta)
        return v, v

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta, rho = cast(self.eta, xs[0].dtype), cast(self.rho, xs[0].dtype)
        vs = list(states)
        torch._foreach_mul_(vs, rho)
        torch._foreach_add_(vs, torch._foreach_mul(_grads(dxs, xs), eta))
        return vs, list(vs)


# ---------------------------------------------------------------------------- Nesterov
@dataclasses.dataclass(frozen=True, repr=False)
class Nesterov(AbstractRule):
    """Nesterov momentum.

    ``step = -(rho^2)*v + ((1+rho)*eta)*dx`` with the *old* velocity, then
    ``v = rho*v - eta*dx``. After one step from zero: ``step = (1+rho)*eta*dx``.

    >>> import torch
    >>> rule = Nesterov(0.1, 0.5)
    >>> x = torch.zeros(1, dtype=torch.float64)
    >>> v, step = rule.apply(rule.init(x), x, torch.ones(1, dtype=torch.float64))
    >>> step.item(), v.item()
    (0.15000000000000002, -0.1)
    """

    eta: float = 0.001
    rho: float = 0.9

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG, "rho": UNIT}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return torch.zeros_like(x)

    def _scalars(self, dt: torch.dtype) -> tuple[float, float, float, float]:
        eta, rho = cast(self.eta, dt), cast(self.rho, dt)
        # Julia: -ρ^2 * v + (1+ρ) * η * dx, scalars evaluated in T
        return eta, rho, -cast(rho * rho, dt), cast(cast(1 + rho, dt) * eta, dt)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        eta, rho, a, b = self._scalars(x.dtype)
        dx = _grad(dx, x)
        v = state
        step = v * a
        step.add_(dx * b)
        v.mul_(rho).sub_(dx * eta)
        return v, step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta, rho, a, b = self._scalars(xs[0].dtype)
        dxs = _grads(dxs, xs)
        vs = list(states)
        steps = torch._foreach_mul(vs, a)
        torch._foreach_add_(steps, torch._foreach_mul(dxs, b))
        torch._foreach_mul_(vs, rho)
        torch._foreach_sub_(vs, torch._foreach_mul(dxs, eta))
        return vs, list(steps)


# ---------------------------------------------------------------------------- RMSProp
class RMSPropState(NamedTuple):
    """RMSProp state: running mean square ``quad`` and (centred only) mean ``lin``."""

    quad: torch.Tensor
    lin: torch.Tensor | bool


@dataclasses.dataclass(frozen=True, repr=False, init=False)
class RMSProp(AbstractRule):
    """RMSProp, plain or centred.

    ``quad = rho*quad + (1-rho)*|dx|^2``; centred also ``lin = rho*lin + (1-rho)*dx``;
    ``step = dx*eta / (sqrt(quad - |lin|^2) + epsilon)``. ``centered=`` is accepted
    as an alias of ``centred=``; ``adjust`` cannot switch between the variants.

    >>> RMSProp(centred=True)
    RMSProp(eta=0.001, rho=0.9, epsilon=1e-08, centred=True)
    >>> RMSProp(0.01, centered=True) == RMSProp(0.01, centred=True)
    True
    """

    eta: float = 0.001
    rho: float = 0.9
    epsilon: float = 1e-8
    centred: bool = False

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG, "rho": UNIT, "epsilon": NONNEG}

    def __init__(
        self,
        eta: float = 0.001,
        rho: float = 0.9,
        epsilon: float = 1e-8,
        centred: bool = False,
        *,
        centered: bool = False,
    ) -> None:
        hyper.check_bool("centered", "RMSProp", centered)
        hyper.check_bool("centred", "RMSProp", centred)
        object.__setattr__(self, "eta", eta)
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "centred", centred or centered)
        self.__post_init__()

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return RMSPropState(torch.zeros_like(x), torch.zeros_like(x) if self.centred else False)

    def _scalars(self, dt: torch.dtype) -> tuple[float, float, float, float]:
        rho = cast(self.rho, dt)
        return cast(self.eta, dt), rho, cast(1 - rho, dt), eps_for(dt, self.epsilon)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        eta, rho, c, eps = self._scalars(x.dtype)
        dx = _grad(dx, x)
        quad, lin = state
        quad.mul_(rho).add_(_abs2(dx) * c)
        if self.centred:
            lin.mul_(rho).add_(dx * c)
            denom = (quad - _abs2(lin)).sqrt_()
        else:
            denom = quad.sqrt()
        denom.add_(eps)
        return RMSPropState(quad, lin), (dx * eta).div_(denom)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta, rho, c, eps = self._scalars(xs[0].dtype)
        dxs = _grads(dxs, xs)
        quads = [s.quad for s in states]
        torch._foreach_mul_(quads, rho)
        torch._foreach_add_(quads, torch._foreach_mul(_abs2_many(dxs), c))
        if self.centred:
            lins = [s.lin for s in states]
            torch._foreach_mul_(lins, rho)
            torch._foreach_add_(lins, torch._foreach_mul(dxs, c))
            denoms = torch._foreach_sub(quads, _abs2_many(lins))
            torch._foreach_sqrt_(denoms)
        else:
            denoms = torch._foreach_sqrt(quads)
        torch._foreach_add_(denoms, eps)
        steps = torch._foreach_mul(dxs, eta)
        torch._foreach_div_(steps, denoms)
        return [RMSPropState(q, s.lin) for q, s in zip(quads, states)], list(steps)

    def adjust(self, eta: float | None = None, **hyperparams: Any) -> AbstractRule:
        if "centred" in hyperparams:
            raise ValueError(
                "adjust(RMSProp; centred=...) is not allowed, as the variants store "
                "different states; build a new RMSProp and call setup again"
            )
        return super().adjust(eta, **hyperparams)


# ---------------------------------------------------------------------------- Rprop
class RpropState(NamedTuple):
    """Rprop state: previous gradient ``grad`` and per-element step sizes ``eta``."""

    grad: torch.Tensor
    eta: torch.Tensor


@dataclasses.dataclass(frozen=True, repr=False)
class Rprop(AbstractRule):
    """Resilient backpropagation: per-element step sizes driven by gradient signs.

    Step sizes grow by ``ell[1]`` (capped at ``gamma[1]``) while the gradient keeps
    its sign and shrink by ``ell[0]`` (floored at ``gamma[0]``) when it flips; a
    flipped gradient is forgotten for one step. ``step = eta_arr * sign(grad)``.
    ``eta`` is only read by ``init``.

    >>> Rprop()
    Rprop(eta=0.001, ell=(0.5, 1.2), gamma=(1e-06, 50.0))
    """

    eta: float = 1e-3
    ell: tuple[float, float] = (0.5, 1.2)
    gamma: tuple[float, float] = (1e-6, 50.0)

    _ranges: ClassVar[dict[str, Range]] = {
        "eta": NONNEG, "ell[0]": Range(0.0, 1.0, lo_open=True),
        "ell[1]": Range(1.0, math.inf, hi_open=True), "gamma[0]": NONNEG, "gamma[1]": NONNEG,
    }

    def _validate(self) -> None:
        super()._validate()
        lo, hi = self.gamma
        if not isinstance(lo, Schedule) and not isinstance(hi, Schedule) and lo > hi:
            raise ValueError(
                f"Rprop: gamma=({lo!r}, {hi!r}) are the (smallest, largest) step sizes, so "
                "gamma[0] must be at most gamma[1]"
            )

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return RpropState(torch.zeros_like(x), torch.full_like(x, cast(self.eta, x.dtype)))

    @staticmethod
    def _select(eta: torch.Tensor, dx: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                prod: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """New (grad, eta) from the sign of old_grad*dx: selections only, so exact."""
        eta2 = torch.where(prod > 0, up, torch.where(prod < 0, down, eta))
        g2 = dx.masked_fill(prod < 0, 0).to(dt)
        return g2, eta2

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        l1, l2 = _betas(self.ell, dt)
        g1, g2 = _betas(self.gamma, dt)
        dx = _grad(dx, x)
        g, eta = state
        prod = g * dx
        up = (eta * l2).clamp_max_(g2)      # min(η·ℓ2, Γ2)
        down = (eta * l1).clamp_min_(g1)    # max(η·ℓ1, Γ1)
        gnew, etanew = self._select(eta, dx, up, down, prod, dt)
        return RpropState(gnew, etanew), etanew * _sign(gnew)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        l1, l2 = _betas(self.ell, dt)
        g1, g2 = _betas(self.gamma, dt)
        dxs = _grads(dxs, xs)
        gs = [s.grad for s in states]
        etas = [s.eta for s in states]
        prods = torch._foreach_mul(gs, dxs)
        ups = torch._foreach_mul(etas, l2)
        torch._foreach_clamp_max_(ups, g2)
        downs = torch._foreach_mul(etas, l1)
        torch._foreach_clamp_min_(downs, g1)
        new = [
            self._select(e, d, u, dn, p, dt) for e, d, u, dn, p in zip(etas, dxs, ups, downs, prods)
        ]
        gnews = [n[0] for n in new]
        etanews = [n[1] for n in new]
        steps = torch._foreach_mul(etanews, _sign_many(gnews))
        return [RpropState(g, e) for g, e in new], list(steps)


# ---------------------------------------------------------------------------- Adam
class AdamState(NamedTuple):
    """State of Adam-family rules: moments ``m``, ``v`` and the powers ``beta_t``."""

    m: torch.Tensor
    v: torch.Tensor
    beta_t: tuple[float, float]


def _adam_init(x: torch.Tensor, beta: tuple[float, ...]) -> AdamState:
    return AdamState(torch.zeros_like(x), torch.zeros_like(x), _betas(beta, x.dtype))


@dataclasses.dataclass(frozen=True, repr=False)
class Adam(AbstractRule):
    """Adam (Kingma & Ba): bias-corrected first and second moments.

    ``step = m/(1-βt1) / (sqrt(v/(1-βt2)) + ε) * η`` with ``βt = β^t`` stored in
    the state in the parameter's dtype.

    >>> Adam(0.01)
    Adam(eta=0.01, beta=(0.9, 0.999), epsilon=1e-08)
    >>> import torch
    >>> rule = Adam(0.1)
    >>> x = torch.zeros(2, dtype=torch.float64)
    >>> state, step = rule.apply(rule.init(x), x, torch.tensor([3.0, -0.5], dtype=torch.float64))
    >>> step.tolist()  # the first Adam step is about eta * sign(dx)
    [0.09999999966666667, -0.09999999800000003]
    >>> state.beta_t
    (0.81, 0.998001)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return _adam_init(x, self.beta)

    def init_many(self, xs: Sequence[torch.Tensor]) -> list[State]:
        """``[self.init(x) for x in xs]``, with every ``m`` made before every ``v``.

        Made one after another, the ``m`` tensors lie next to each other in memory, and
        so do the ``v`` tensors: the fused step over 2,000 small leaves streams each
        slot without gaps (``m`` beside its own ``v`` cost the kernel 3-6%,
        ``benchmarks/layout.py``). The values are ``init``'s; a subclass with its own
        ``init`` gets that one, leaf by leaf.
        """
        if type(self).init is not Adam.init or "init" in vars(self):
            return super().init_many(xs)  # (an instance init: a scheduled rule's)
        for x in xs:
            check_param(self, x)
        ms = [torch.zeros_like(x) for x in xs]
        vs = [torch.zeros_like(x) for x in xs]
        return [AdamState(m, v, _betas(self.beta, x.dtype)) for m, v, x in zip(ms, vs, xs)]

    def _scalars(self, dtype: torch.dtype) -> tuple[float, float, float, float, float, float]:
        b1, b2 = _betas(self.beta, dtype)
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
        dx = _grad(dx, x)
        m, v, (bt1, bt2) = state
        _moment(m, v, dx, b1, b2, c1, c2)
        step = m / cast(1 - bt1, dt)
        denom = (v / cast(1 - bt2, dt)).sqrt_().add_(eps)
        step.div_(denom).mul_(eta)
        return AdamState(m, v, _advance((bt1, bt2), b1, b2, dt)), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps = self._scalars(dt)
        dxs = _grads(dxs, xs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        _moments(ms, vs, dxs, b1, b2, c1, c2)
        steps = torch._foreach_div(ms, [cast(1 - s.beta_t[0], dt) for s in states])
        denoms = torch._foreach_div(vs, [cast(1 - s.beta_t[1], dt) for s in states])
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, eps)
        torch._foreach_div_(steps, denoms)
        torch._foreach_mul_(steps, eta)
        new_states = [
            AdamState(m, v, _advance(s.beta_t, b1, b2, dt)) for m, v, s in zip(ms, vs, states)
        ]
        return new_states, list(steps)


# ---------------------------------------------------------------------------- Lion
@dataclasses.dataclass(frozen=True, repr=False)
class Lion(AbstractRule):
    """Lion (evolved sign momentum), exactly as Optimisers.jl codes it.

    ``m = β2*dx + (1-β2)*m``; ``step = η * sign((β2-β1)*dx + β1*m)`` with the new
    ``m`` (this weighting differs from the paper's; Optimisers.jl's code wins).

    >>> Lion()
    Lion(eta=0.001, beta=(0.9, 0.999))
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG, "beta[0]": UNIT, "beta[1]": UNIT}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return torch.zeros_like(x)

    def _scalars(self, dt: torch.dtype) -> tuple[float, float, float, float, float]:
        b1, b2 = _betas(self.beta, dt)
        return cast(self.eta, dt), b1, b2, cast(1 - b2, dt), cast(b2 - b1, dt)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        eta, b1, b2, c2, d = self._scalars(x.dtype)
        dx = _grad(dx, x)
        m = state
        m.mul_(c2).add_(dx * b2)
        u = dx * d
        u.add_(m * b1)
        return m, _sign(u).mul_(eta)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta, b1, b2, c2, d = self._scalars(xs[0].dtype)
        dxs = _grads(dxs, xs)
        ms = list(states)
        torch._foreach_mul_(ms, c2)
        torch._foreach_add_(ms, torch._foreach_mul(dxs, b2))
        us = torch._foreach_mul(dxs, d)
        torch._foreach_add_(us, torch._foreach_mul(ms, b1))
        steps = _sign_many(list(us))
        torch._foreach_mul_(steps, eta)
        return ms, steps


# ---------------------------------------------------------------------------- RAdam
class RAdamState(NamedTuple):
    """RAdam state: Adam's plus the 1-based step counter ``t``."""

    m: torch.Tensor
    v: torch.Tensor
    beta_t: tuple[float, float]
    t: int


@dataclasses.dataclass(frozen=True, repr=False)
class RAdam(AbstractRule):
    """Rectified Adam: plain bias-corrected momentum until the variance is tractable.

    With ``ρ∞ = 2/(1-β2) - 1`` and ``ρ = ρ∞ - 2t·βt2/(1-βt2)``: if ``ρ > 4`` the
    step is Adam's times ``r = sqrt((ρ-4)(ρ-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρ))``, else
    ``m/(1-βt1) * η``. All scalars are evaluated in the parameter dtype.

    >>> RAdam()
    RAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        m, v, bt = _adam_init(x, self.beta)
        return RAdamState(m, v, bt, 1)

    def _rect(self, dt: torch.dtype, t: int, bt2: float) -> float | None:
        """The rectification factor ``r`` for step ``t``, or None when ``ρ <= 4``."""

        def c(v: float) -> float:
            return cast(v, dt)

        b2 = cast(self.beta[1], dt)
        rinf = c(c(_fdiv(2, c(1 - b2))) - 1)
        rho = c(rinf - c(_fdiv(c(2 * t * bt2), c(1 - bt2))))
        if not rho > 4:
            return None
        num = c(c(c(rho - 4) * c(rho - 2)) * rinf)
        den = c(c(c(rinf - 4) * c(rinf - 2)) * rho)
        return c(_fsqrt(c(_fdiv(num, den))))

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dx = _grad(dx, x)
        m, v, (bt1, bt2), t = state
        _moment(m, v, dx, b1, b2, c1, c2)
        r = self._rect(dt, t, bt2)
        step = m / cast(1 - bt1, dt)
        if r is not None:
            step.div_((v / cast(1 - bt2, dt)).sqrt_().add_(eps)).mul_(eta).mul_(r)
        else:
            step.mul_(eta)
        return RAdamState(m, v, _advance((bt1, bt2), b1, b2, dt), t + 1), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dxs = _grads(dxs, xs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        _moments(ms, vs, dxs, b1, b2, c1, c2)
        steps: list[Step] = [None] * len(xs)
        # leaves at different step counts take different branches: group by (t, βt)
        for idx in _group([(s.t, s.beta_t) for s in states]):
            t, (bt1, bt2) = states[idx[0]].t, states[idx[0]].beta_t
            r = self._rect(dt, t, bt2)
            gs = torch._foreach_div([ms[i] for i in idx], cast(1 - bt1, dt))
            if r is not None:
                den = torch._foreach_div([vs[i] for i in idx], cast(1 - bt2, dt))
                torch._foreach_sqrt_(den)
                torch._foreach_add_(den, eps)
                torch._foreach_div_(gs, den)
                torch._foreach_mul_(gs, eta)
                torch._foreach_mul_(gs, r)
            else:
                torch._foreach_mul_(gs, eta)
            for j, i in enumerate(idx):
                steps[i] = gs[j]
        new_states = [
            RAdamState(m, v, _advance(s.beta_t, b1, b2, dt), s.t + 1)
            for m, v, s in zip(ms, vs, states)
        ]
        return new_states, steps


# ---------------------------------------------------------------------------- AdaMax
class AdaMaxState(NamedTuple):
    """AdaMax state: first moment ``m``, infinity norm ``u``, powers ``beta_t``."""

    m: torch.Tensor
    u: torch.Tensor
    beta_t: tuple[float, float]


@dataclasses.dataclass(frozen=True, repr=False)
class AdaMax(AbstractRule):
    """AdaMax: Adam with the infinity norm.

    ``u = max(β2*u, |dx|)``; ``step = (η/(1-βt1)) * m / (u + ε)``.

    >>> AdaMax(0.002)
    AdaMax(eta=0.002, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        m, u, bt = _adam_init(x, self.beta)
        return AdaMaxState(m, u, bt)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, _, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dx = _grad(dx, x)
        m, u, (bt1, bt2) = state
        m.mul_(b1).add_(dx * c1)
        u.mul_(b2)
        torch.maximum(u, dx.abs(), out=u)
        step = m * cast(_fdiv(eta, cast(1 - bt1, dt)), dt)
        step.div_(u + eps)
        return AdaMaxState(m, u, _advance((bt1, bt2), b1, b2, dt)), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, _, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dxs = _grads(dxs, xs)
        ms = [s.m for s in states]
        us = [s.u for s in states]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, torch._foreach_mul(dxs, c1))
        torch._foreach_mul_(us, b2)
        torch._foreach_maximum_(us, torch._foreach_abs(dxs))
        scales = [cast(_fdiv(eta, cast(1 - s.beta_t[0], dt)), dt) for s in states]
        steps = torch._foreach_mul(ms, scales)
        torch._foreach_div_(steps, torch._foreach_add(us, eps))
        new_states = [
            AdaMaxState(m, u, _advance(s.beta_t, b1, b2, dt)) for m, u, s in zip(ms, us, states)
        ]
        return new_states, list(steps)


# ---------------------------------------------------------------------------- OAdam
class OAdamState(NamedTuple):
    """OAdam state: Adam's plus the previous step's Adam ``term``."""

    m: torch.Tensor
    v: torch.Tensor
    beta_t: tuple[float, float]
    term: torch.Tensor


@dataclasses.dataclass(frozen=True, repr=False)
class OAdam(AbstractRule):
    """Optimistic Adam: ``term = η*m/(1-βt1) / (sqrt(v/(1-βt2)) + ε)``; ``step = 2*term - prev``.

    >>> OAdam()
    OAdam(eta=0.001, beta=(0.5, 0.9), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.5, 0.9)
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        m, v, bt = _adam_init(x, self.beta)
        return OAdamState(m, v, bt, torch.zeros_like(x))

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dx = _grad(dx, x)
        m, v, (bt1, bt2), prev = state
        _moment(m, v, dx, b1, b2, c1, c2)
        term = (m * eta).div_(cast(1 - bt1, dt))
        term.div_((v / cast(1 - bt2, dt)).sqrt_().add_(eps))
        step = (term * 2).sub_(prev)
        return OAdamState(m, v, _advance((bt1, bt2), b1, b2, dt), term), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dxs = _grads(dxs, xs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        _moments(ms, vs, dxs, b1, b2, c1, c2)
        terms = torch._foreach_mul(ms, eta)
        torch._foreach_div_(terms, [cast(1 - s.beta_t[0], dt) for s in states])
        den = torch._foreach_div(vs, [cast(1 - s.beta_t[1], dt) for s in states])
        torch._foreach_sqrt_(den)
        torch._foreach_add_(den, eps)
        torch._foreach_div_(terms, den)
        steps = torch._foreach_mul(terms, 2.0)
        torch._foreach_sub_(steps, [s.term for s in states])
        new_states = [
            OAdamState(m, v, _advance(s.beta_t, b1, b2, dt), tm)
            for m, v, s, tm in zip(ms, vs, states, terms)
        ]
        return new_states, list(steps)


# ---------------------------------------------------------------------------- AdaGrad
@dataclasses.dataclass(frozen=True, repr=False)
class AdaGrad(AbstractRule):
    """AdaGrad: ``acc += |dx|^2`` (``acc`` starts at ε); ``step = dx*η / (sqrt(acc) + ε)``.

    >>> AdaGrad()
    AdaGrad(eta=0.1, epsilon=1e-08)
    """

    eta: float = 0.1
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG, "epsilon": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        # Optimisers.jl fills with convert(float(T), epsilon): no float16 floor here
        return torch.full_like(x, cast(self.epsilon, x.dtype))

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, eps = cast(self.eta, dt), eps_for(dt, self.epsilon)
        dx = _grad(dx, x)
        acc = state
        acc.add_(_abs2(dx))
        return acc, (dx * eta).div_(acc.sqrt().add_(eps))

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, eps = cast(self.eta, dt), eps_for(dt, self.epsilon)
        dxs = _grads(dxs, xs)
        accs = list(states)
        torch._foreach_add_(accs, _abs2_many(dxs))
        den = torch._foreach_sqrt(accs)
        torch._foreach_add_(den, eps)
        steps = torch._foreach_mul(dxs, eta)
        torch._foreach_div_(steps, den)
        return accs, list(steps)


# ---------------------------------------------------------------------------- AdaDelta
class AdaDeltaState(NamedTuple):
    """AdaDelta state: mean square gradient ``acc`` and mean square step ``delta_acc``."""

    acc: torch.Tensor
    delta_acc: torch.Tensor


@dataclasses.dataclass(frozen=True, repr=False)
class AdaDelta(AbstractRule):
    """AdaDelta (no learning rate).

    ``acc = ρ*acc + (1-ρ)*|dx|^2``; ``step = dx*sqrt(Δacc + ε) / sqrt(acc + ε)``
    with the old ``Δacc``; then ``Δacc = ρ*Δacc + (1-ρ)*|step|^2``.

    >>> AdaDelta()
    AdaDelta(rho=0.9, epsilon=1e-08)
    """

    rho: float = 0.9
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = {"rho": UNIT, "epsilon": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return AdaDeltaState(torch.zeros_like(x), torch.zeros_like(x))

    def _scalars(self, dt: torch.dtype) -> tuple[float, float, float]:
        rho = cast(self.rho, dt)
        return rho, cast(1 - rho, dt), eps_for(dt, self.epsilon)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        rho, c, eps = self._scalars(x.dtype)
        dx = _grad(dx, x)
        acc, dacc = state
        acc.mul_(rho).add_(_abs2(dx) * c)
        step = dx * (dacc + eps).sqrt_()
        step.div_((acc + eps).sqrt_())
        dacc.mul_(rho).add_(_abs2(step) * c)
        return AdaDeltaState(acc, dacc), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        rho, c, eps = self._scalars(xs[0].dtype)
        dxs = _grads(dxs, xs)
        accs = [s.acc for s in states]
        daccs = [s.delta_acc for s in states]
        torch._foreach_mul_(accs, rho)
        torch._foreach_add_(accs, torch._foreach_mul(_abs2_many(dxs), c))
        num = torch._foreach_add(daccs, eps)
        torch._foreach_sqrt_(num)
        steps = torch._foreach_mul(dxs, num)
        den = torch._foreach_add(accs, eps)
        torch._foreach_sqrt_(den)
        torch._foreach_div_(steps, den)
        torch._foreach_mul_(daccs, rho)
        torch._foreach_add_(daccs, torch._foreach_mul(_abs2_many(list(steps)), c))
        return [AdaDeltaState(a, d) for a, d in zip(accs, daccs)], list(steps)


# ---------------------------------------------------------------------------- AMSGrad
class AMSGradState(NamedTuple):
    """AMSGrad state: moments ``m``, ``v`` and the running maximum ``v_hat``."""

    m: torch.Tensor
    v: torch.Tensor
    v_hat: torch.Tensor


@dataclasses.dataclass(frozen=True, repr=False)
class AMSGrad(AbstractRule):
    """AMSGrad: Adam's moments (no bias correction) with ``v̂ = max(v̂, v)``.

    ``step = η*m / (sqrt(v̂) + ε)``; ``m``, ``v``, ``v̂`` all start at ε.

    >>> AMSGrad()
    AMSGrad(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        e = cast(self.epsilon, x.dtype)
        return AMSGradState(torch.full_like(x, e), torch.full_like(x, e), torch.full_like(x, e))

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, x.dtype)  # type: ignore[arg-type]
        dx = _grad(dx, x)
        m, v, vh = state
        _moment(m, v, dx, b1, b2, c1, c2)
        torch.maximum(vh, v, out=vh)
        return AMSGradState(m, v, vh), (m * eta).div_(vh.sqrt().add_(eps))

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, xs[0].dtype)  # type: ignore[arg-type]
        dxs = _grads(dxs, xs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        vhs = [s.v_hat for s in states]
        _moments(ms, vs, dxs, b1, b2, c1, c2)
        torch._foreach_maximum_(vhs, vs)
        den = torch._foreach_sqrt(vhs)
        torch._foreach_add_(den, eps)
        steps = torch._foreach_mul(ms, eta)
        torch._foreach_div_(steps, den)
        return [AMSGradState(*t) for t in zip(ms, vs, vhs)], list(steps)


# ---------------------------------------------------------------------------- NAdam
@dataclasses.dataclass(frozen=True, repr=False)
class NAdam(AbstractRule):
    """NAdam: Adam with Nesterov momentum.

    ``step = (β1*m/(1-β1*βt1) + (1-β1)*dx/(1-βt1)) / (sqrt(v*β2/(1-βt2)) + ε) * η``.

    >>> NAdam()
    NAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-8

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return _adam_init(x, self.beta)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dx = _grad(dx, x)
        m, v, (bt1, bt2) = state
        _moment(m, v, dx, b1, b2, c1, c2)
        step = (m * b1).div_(cast(1 - cast(b1 * bt1, dt), dt))
        step.add_((dx * c1).div_(cast(1 - bt1, dt)))
        den = (v * b2).div_(cast(1 - bt2, dt)).sqrt_().add_(eps)
        step.div_(den).mul_(eta)
        return AdamState(m, v, _advance((bt1, bt2), b1, b2, dt)), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dxs = _grads(dxs, xs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        _moments(ms, vs, dxs, b1, b2, c1, c2)
        steps = torch._foreach_mul(ms, b1)
        torch._foreach_div_(steps, [cast(1 - cast(b1 * s.beta_t[0], dt), dt) for s in states])
        second = torch._foreach_mul(dxs, c1)
        torch._foreach_div_(second, [cast(1 - s.beta_t[0], dt) for s in states])
        torch._foreach_add_(steps, second)
        den = torch._foreach_mul(vs, b2)
        torch._foreach_div_(den, [cast(1 - s.beta_t[1], dt) for s in states])
        torch._foreach_sqrt_(den)
        torch._foreach_add_(den, eps)
        torch._foreach_div_(steps, den)
        torch._foreach_mul_(steps, eta)
        new_states = [
            AdamState(m, v, _advance(s.beta_t, b1, b2, dt)) for m, v, s in zip(ms, vs, states)
        ]
        return new_states, list(steps)


# ---------------------------------------------------------------------------- AdamW
@dataclasses.dataclass(frozen=True, repr=False)
class AdamW(AbstractRule):
    """Adam with weight decay.

    With ``a`` Adam's direction at unit learning rate and ``x`` the parameter
    before the step: ``couple=True`` (default, like ``torch.optim.AdamW``) steps
    by ``η*(a + λ*x)``, ``couple=False`` (the paper's form, Optimisers.jl < 0.4)
    by ``η*a + λ*x``. Unlike the other Adam variants, epsilon has no float16 floor.

    >>> AdamW(lambda_=0.3, eta=0.1) == AdamW(0.1, (0.9, 0.999), 0.3, 1e-8)
    True
    >>> AdamW()
    AdamW(eta=0.001, beta=(0.9, 0.999), lambda_=0.0, epsilon=1e-08, couple=True)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    lambda_: float = 0.0
    epsilon: float = 1e-8
    couple: bool = True

    _ranges: ClassVar[dict[str, Range]] = {**_ADAM_RANGES, "lambda_": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return _adam_init(x, self.beta)

    def _scalars(self, dt: torch.dtype) -> tuple[float, float, float, float, float, float, float]:
        b1, b2 = _betas(self.beta, dt)
        return (
            cast(self.eta, dt), b1, b2, cast(1 - b1, dt), cast(1 - b2, dt),
            cast(self.epsilon, dt),  # plain T(epsilon): AdamW has no _eps floor
            cast(self.lambda_, dt),
        )

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, c2, eps, lam = self._scalars(dt)
        dx = _grad(dx, x)
        m, v, (bt1, bt2) = state
        _moment(m, v, dx, b1, b2, c1, c2)
        step = m / cast(1 - bt1, dt)
        step.div_((v / cast(1 - bt2, dt)).sqrt_().add_(eps))
        if self.couple:
            step.add_(x * lam).mul_(eta)
        else:
            step.mul_(eta).add_(x * lam)
        return AdamState(m, v, _advance((bt1, bt2), b1, b2, dt)), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps, lam = self._scalars(dt)
        dxs = _grads(dxs, xs)
        xs = list(xs)
        ms = [s.m for s in states]
        vs = [s.v for s in states]
        _moments(ms, vs, dxs, b1, b2, c1, c2)
        steps = torch._foreach_div(ms, [cast(1 - s.beta_t[0], dt) for s in states])
        den = torch._foreach_div(vs, [cast(1 - s.beta_t[1], dt) for s in states])
        torch._foreach_sqrt_(den)
        torch._foreach_add_(den, eps)
        torch._foreach_div_(steps, den)
        if self.couple:
            torch._foreach_add_(steps, torch._foreach_mul(xs, lam))
            torch._foreach_mul_(steps, eta)
        else:
            torch._foreach_mul_(steps, eta)
            torch._foreach_add_(steps, torch._foreach_mul(xs, lam))
        new_states = [
            AdamState(m, v, _advance(s.beta_t, b1, b2, dt)) for m, v, s in zip(ms, vs, states)
        ]
        return new_states, list(steps)


# ---------------------------------------------------------------------------- AdaBelief
class AdaBeliefState(NamedTuple):
    """AdaBelief state: first moment ``m``, belief ``s``, powers ``beta_t``."""

    m: torch.Tensor
    s: torch.Tensor
    beta_t: tuple[float, float]


@dataclasses.dataclass(frozen=True, repr=False)
class AdaBelief(AbstractRule):
    """AdaBelief: Adam with the variance of the gradient around its mean.

    ``s = β2*s + (1-β2)*|dx - m|^2 + ε`` (new ``m``);
    ``step = η*m/(1-βt1) / (sqrt(s/(1-βt2)) + ε)``.

    >>> AdaBelief()
    AdaBelief(eta=0.001, beta=(0.9, 0.999), epsilon=1e-16)
    """

    eta: float = 0.001
    beta: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-16

    _ranges: ClassVar[dict[str, Range]] = _ADAM_RANGES

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        m, s, bt = _adam_init(x, self.beta)
        return AdaBeliefState(m, s, bt)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dt = x.dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dx = _grad(dx, x)
        m, s, (bt1, bt2) = state
        m.mul_(b1).add_(dx * c1)
        s.mul_(b2).add_(_abs2(dx - m) * c2).add_(eps)
        step = (m * eta).div_(cast(1 - bt1, dt))
        step.div_((s / cast(1 - bt2, dt)).sqrt_().add_(eps))
        return AdaBeliefState(m, s, _advance((bt1, bt2), b1, b2, dt)), step

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dt = xs[0].dtype
        eta, b1, b2, c1, c2, eps = Adam._scalars(self, dt)  # type: ignore[arg-type]
        dxs = _grads(dxs, xs)
        ms = [st.m for st in states]
        ss = [st.s for st in states]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, torch._foreach_mul(dxs, c1))
        torch._foreach_mul_(ss, b2)
        diffs = _abs2_many(list(torch._foreach_sub(dxs, ms)))
        torch._foreach_add_(ss, torch._foreach_mul(diffs, c2))
        torch._foreach_add_(ss, eps)
        steps = torch._foreach_mul(ms, eta)
        torch._foreach_div_(steps, [cast(1 - st.beta_t[0], dt) for st in states])
        den = torch._foreach_div(ss, [cast(1 - st.beta_t[1], dt) for st in states])
        torch._foreach_sqrt_(den)
        torch._foreach_add_(den, eps)
        torch._foreach_div_(steps, den)
        new_states = [
            AdaBeliefState(m, s, _advance(st.beta_t, b1, b2, dt))
            for m, s, st in zip(ms, ss, states)
        ]
        return new_states, list(steps)


# ---------------------------------------------------------------------------- decays, clipping
@dataclasses.dataclass(frozen=True, repr=False)
class WeightDecay(AbstractRule):
    """L2 regularisation: ``step = dx + λ*x``.

    As the first member of an OptimiserChain this equals adding ``λ/2*sum(x^2)``
    to the loss. ``adjust(gamma=...)`` still works (deprecated old field name).

    >>> import torch
    >>> WeightDecay(0.1).apply(None, torch.tensor([10.0]), torch.tensor([1.0]))[1]
    tensor([2.])
    """

    lambda_: float = 5e-4

    _ranges: ClassVar[dict[str, Range]] = {"lambda_": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return None

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        return state, _grad(dx, x) + x * cast(self.lambda_, x.dtype)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        lam = cast(self.lambda_, xs[0].dtype)
        steps = torch._foreach_mul(list(xs), lam)
        return list(states), list(torch._foreach_add(_grads(dxs, xs), steps))

    def adjust(self, eta: float | None = None, **hyperparams: Any) -> AbstractRule:
        if "gamma" in hyperparams:
            # Optimisers.jl: Base.depwarn(...; force=true), so it warns every time
            warnings.warn(
                "The strength of WeightDecay is now field lambda_, not gamma; "
                "write adjust(..., lambda_=...)",
                FluxDeprecationWarning,
                stacklevel=2,
            )
            hyperparams = {"lambda_": hyperparams.pop("gamma"), **hyperparams}
        return super().adjust(eta, **hyperparams)


@dataclasses.dataclass(frozen=True, repr=False)
class SignDecay(AbstractRule):
    """L1 regularisation: ``step = dx + λ*sign(x)`` (``sign(0) == 0``).

    >>> import torch
    >>> SignDecay(0.1).apply(None, torch.tensor([-3.0, 0.0]), torch.tensor([1.0, 1.0]))[1]
    tensor([0.9000, 1.0000])
    """

    lambda_: float = 1e-3

    _ranges: ClassVar[dict[str, Range]] = {"lambda_": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return None

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        return state, _grad(dx, x) + _sign(x).mul_(cast(self.lambda_, x.dtype))

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        lam = cast(self.lambda_, xs[0].dtype)
        signs = _sign_many(list(xs))
        torch._foreach_mul_(signs, lam)
        return list(states), list(torch._foreach_add(_grads(dxs, xs), signs))


@dataclasses.dataclass(frozen=True, repr=False)
class ClipGrad(AbstractRule):
    """Clip every gradient component to ``[-delta, delta]``.

    >>> import torch
    >>> ClipGrad(1.0).apply(None, torch.zeros(3), torch.tensor([0.3, 1.0, 7.0]))[1]
    tensor([0.3000, 1.0000, 1.0000])
    """

    delta: float = 10.0

    _ranges: ClassVar[dict[str, Range]] = {"delta": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return None

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        d = cast(self.delta, x.dtype)
        return state, _grad(dx, x).clamp(-d, d)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        d = cast(self.delta, xs[0].dtype)
        steps = torch._foreach_clamp_min(_grads(dxs, xs), -d)
        torch._foreach_clamp_max_(steps, d)
        return list(states), list(steps)


def _clip_factor(omega: float, n: float) -> float:
    """Julia's ``min(ω/n, 1)`` in Float64, including ω/0 = ±Inf and NaN propagation."""
    if n == 0:
        q = math.nan if omega == 0 else math.copysign(math.inf, omega)
    else:
        q = omega / n
    return q if (math.isnan(q) or q < 1) else 1.0


@dataclasses.dataclass(frozen=True, repr=False)
class ClipNorm(AbstractRule):
    """Scale each gradient tensor whose ``p``-norm exceeds ``omega`` down to ``omega``.

    The norm is over the whole tensor (``p`` = 2 Euclidean, 1, ``inf``, ``-inf``,
    0 counts non-zeros). With ``throw=True`` a non-finite norm raises
    :class:`fluxtrain.errors.DomainError`; with ``throw=False`` the factor
    ``min(omega/norm, 1)`` is used as is (so an ``inf`` entry becomes NaN).

    >>> import torch
    >>> ClipNorm(5.0).apply(None, torch.zeros(2), torch.tensor([3.0, 4.0]))[1]
    tensor([3., 4.])
    >>> ClipNorm(1.0).apply(None, torch.zeros(2), torch.tensor([3.0, 4.0]))[1]
    tensor([0.6000, 0.8000])
    """

    omega: float = 10.0
    p: float = 2.0
    throw: bool = True

    _ranges: ClassVar[dict[str, Range]] = {"omega": NONNEG, "p": ANY}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return None

    def _factor(self, n: float, x: torch.Tensor) -> float:
        if self.throw and not math.isfinite(n):
            raise DomainError(
                f"ClipNorm: gradient has {self.p}-norm {n}, for a tensor of shape "
                f"{tuple(x.shape)} and dtype {x.dtype}; pass throw=False to scale it anyway"
            )
        return cast(_clip_factor(self.omega, n), x.dtype)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        dx = _grad(dx, x)
        n = float(torch.linalg.vector_norm(dx, ord=self.p))
        return state, dx * self._factor(n, x)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        dxs = _grads(dxs, xs)
        # one device sync for the whole group; on the CPU _foreach_norm calls the
        # same linalg.vector_norm per tensor as apply does
        norms = torch.stack(list(torch._foreach_norm(dxs, ord=self.p))).tolist()
        factors = [self._factor(n, x) for n, x in zip(norms, xs)]
        return list(states), list(torch._foreach_mul(dxs, factors))


# ---------------------------------------------------------------------------- AccumGrad
class AccumGradState(NamedTuple):
    """AccumGrad state: running mean ``acc`` and 1-based ``counter``."""

    acc: torch.Tensor
    counter: int


@dataclasses.dataclass(frozen=True, repr=False)
class AccumGrad(AbstractRule):
    """Accumulate ``n`` gradients, then step once with their mean.

    Use as the first member of an OptimiserChain: in between, the step is
    ``None`` (the parameter is left alone and later members are skipped).

    >>> import torch
    >>> rule = AccumGrad(2)
    >>> s = rule.init(torch.zeros(1))
    >>> s, step = rule.apply(s, torch.zeros(1), torch.tensor([1.0]))
    >>> step is None
    True
    >>> s, step = rule.apply(s, torch.zeros(1), torch.tensor([3.0]))
    >>> step
    tensor([2.])
    """

    n: int

    def _validate(self) -> None:
        n = hyper.check_int("n", "AccumGrad", self.n)
        if n <= 0:
            raise ValueError(f"AccumGrad must accumulate at least one gradient (got n={n})")
        object.__setattr__(self, "n", n)

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return AccumGradState(torch.zeros_like(x), 1)

    def _finish(self, acc: torch.Tensor, counter: int) -> tuple[State, Step]:
        if counter == self.n:
            return AccumGradState(acc, 1), acc
        return AccumGradState(acc, counter + 1), None

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        acc, counter = state
        part = _grad(dx, x) / self.n
        if counter == 1:
            acc.copy_(part)
        else:
            acc.add_(part)
        return self._finish(acc, counter)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        parts = torch._foreach_div(_grads(dxs, xs), float(self.n))
        first = [i for i, s in enumerate(states) if s.counter == 1]
        later = [i for i, s in enumerate(states) if s.counter != 1]
        if first:
            torch._foreach_copy_([states[i].acc for i in first], [parts[i] for i in first])
        if later:
            torch._foreach_add_([states[i].acc for i in later], [parts[i] for i in later])
        out = [self._finish(s.acc, s.counter) for s in states]
        return [o[0] for o in out], [o[1] for o in out]


# ---------------------------------------------------------------------------- MixedPrecision
class MixedPrecisionState(NamedTuple):
    """MixedPrecision state: the high-precision copy ``xT`` and the inner rule's state."""

    xT: torch.Tensor
    state: Any


_MP_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True, repr=False, init=False)
class MixedPrecision(AbstractRule):
    """Keep a high-precision copy of each parameter and let ``rule`` update that.

    ``MixedPrecision(rule)`` means ``MixedPrecision(torch.float32, rule)``. Each
    step the inner rule updates ``xT`` (its hyperparameters cast to ``dtype``);
    then a writable ``x`` is overwritten with ``xT`` rounded to ``x``'s dtype and
    the returned step is ``None``; a read-only ``x`` gets the step ``x - xT``
    instead. Gradients are converted to ``dtype`` first. Wrap a whole
    OptimiserChain, never put this inside one.

    >>> import torch
    >>> rule = MixedPrecision(Descent(0.1))
    >>> rule
    MixedPrecision(dtype=torch.float32, rule=Descent(eta=0.1))
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float16)
    >>> st = rule.init(x)
    >>> st, step = rule.apply(st, x, torch.tensor([1.0, 1.0], dtype=torch.float16))
    >>> step is None, x.tolist(), st.xT.dtype
    (True, [0.89990234375, 1.900390625], torch.float32)
    """

    dtype: torch.dtype
    rule: AbstractRule

    #: (its inner rule computes in ``dtype``; a 16-bit ``x`` is written from ``xT``)
    opmath: ClassVar[bool] = False

    def __init__(self, *args: Any) -> None:
        if len(args) == 1:
            dtype, rule = torch.float32, args[0]
        elif len(args) == 2:
            dtype, rule = args
        else:
            raise TypeError(
                "MixedPrecision takes (rule) or (dtype, rule), "
                f"got {len(args)} arguments"
            )
        if dtype not in _MP_DTYPES:
            raise TypeError(
                f"MixedPrecision: dtype must be one of {', '.join(map(str, _MP_DTYPES))}, "
                f"got {dtype!r}"
            )
        if not isinstance(rule, AbstractRule):
            raise TypeError(
                f"MixedPrecision: expected a rule such as Adam(), got {type(rule).__name__}"
            )
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "rule", rule)

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        xT = x.detach().to(self.dtype, copy=True)
        return MixedPrecisionState(xT, self.rule.init(xT))

    def _finish(self, xT: torch.Tensor, x: torch.Tensor) -> Step:
        if maywrite(x):
            with torch.no_grad():
                x.copy_(xT)
            return None
        return (x - xT).to(x.dtype)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        xT, st = state
        st2, step = self.rule.apply(st, xT, _grad(dx, x).to(self.dtype))
        if step is not None:
            xT.sub_(step)
        return MixedPrecisionState(xT, st2), self._finish(xT, x)

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        xTs = [s.xT for s in states]
        dxs = [_grad(d, x).to(self.dtype) for d, x in zip(dxs, xs)]
        inner, steps = self.rule.apply_many([s.state for s in states], xTs, dxs)
        live = [i for i, s in enumerate(steps) if s is not None]
        if live:
            torch._foreach_sub_([xTs[i] for i in live], [steps[i] for i in live])
        outs = [self._finish(xT, x) for xT, x in zip(xTs, xs)]
        return [MixedPrecisionState(xT, s) for xT, s in zip(xTs, inner)], outs

    def adjust(self, eta: float | None = None, **hyperparams: Any) -> AbstractRule:
        return MixedPrecision(self.dtype, self.rule.adjust(eta, **hyperparams))


# ---------------------------------------------------------------------------- OptimiserChain
class OptimiserChain(AbstractRule):
    """Compose rules: each member transforms the previous member's step.

    ``OptimiserChain()`` is the identity (subtracts the whole gradient). A member
    returning ``None`` (AccumGrad mid-accumulation) stops the chain for that
    step, leaving the later members' states unchanged.

    Whole-tree members (``ClipGlobalNorm``, ``SkipNonFinite``; see
    ``AbstractRule.whole_tree``) get, in one call, every leaf of the step that
    is still live at their position; the other members then run batched per
    (device, dtype) as usual. Only stateless transforms (``ClipGrad``,
    ``ClipNorm``, ``ClipGlobalNorm``, ``WeightDecay``, ``SignDecay``) may come
    before a ``SkipNonFinite``.

    >>> OptimiserChain(ClipGrad(1.0), Descent(0.1))
    OptimiserChain(ClipGrad(delta=1.0), Descent(eta=0.1))
    """

    opts: tuple[AbstractRule, ...]

    #: (a whole-tree member makes apply_batched give the chain every dtype at once)
    _mixed_dtypes: ClassVar[bool] = True

    def __init__(self, *opts: AbstractRule) -> None:
        for i, o in enumerate(opts):
            if not isinstance(o, AbstractRule):
                raise TypeError(
                    f"OptimiserChain: member {i} is {type(o).__name__}, not a rule; "
                    "pass rules such as ClipGrad(1.0), Adam()"
                )
            if isinstance(o, MixedPrecision):
                raise ValueError(
                    "MixedPrecision optimisers should wrap the entire OptimiserChain, "
                    "not be inside it"
                )
        # imported here: transforms.py builds on this module
        from fluxtrain.core.transforms import check_chain_order

        check_chain_order(opts)
        object.__setattr__(self, "opts", tuple(opts))

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def _accepts_sparse(self) -> bool:
        return all(o._accepts_sparse() for o in self.opts)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.opts == self.opts  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.opts))

    def __repr__(self) -> str:
        return f"OptimiserChain({', '.join(map(repr, self.opts))})"

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return tuple(o.init(x) for o in self.opts)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        new_states = list(state)
        g: Step = _grad(dx, x)
        for k, o in enumerate(self.opts):
            if g is None:
                break
            new_states[k], g = o.apply(state[k], x, g)
        return tuple(new_states), g

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        # imported here: batched.py looks up this class lazily too
        from fluxtrain.core.batched import apply_batched, needs_whole_tree

        n = len(xs)
        member_states = [list(s) for s in states]
        gs: list[Step] = list(_grads(dxs, xs))
        whole = needs_whole_tree(self)
        for k, o in enumerate(self.opts):
            live = [i for i in range(n) if gs[i] is not None]
            if not live:
                break
            # A chain with a whole-tree member is given the whole step (any devices
            # and dtypes): apply_batched hands whole-tree members everything at
            # once and groups the others. Without one, today's direct call.
            args = (
                [member_states[i][k] for i in live], [xs[i] for i in live], [gs[i] for i in live]
            )
            ks, kg = apply_batched(o, *args) if whole else o.apply_many(*args)
            for j, i in enumerate(live):
                member_states[i][k] = ks[j]
                gs[i] = kg[j]
        return [tuple(s) for s in member_states], gs

    def adjust(self, eta: float | None = None, **hyperparams: Any) -> AbstractRule:
        if eta is None and not hyperparams:
            raise ValueError("adjust must be given something to act on: a number or keywords")
        return OptimiserChain(*(o.adjust(eta, **hyperparams) for o in self.opts))


# ---------------------------------------------------------------------------- fluxtrain's own
def _scale_f64(dxs: Tensors, factors: Sequence[float]) -> Tensors:
    """``dx * s`` computed in float64 and rounded once to dx's dtype (old Flux arithmetic)."""
    wide = [
        d if d.dtype in (torch.float64, torch.complex128)
        else d.to(torch.complex128 if d.is_complex() else torch.float64)
        for d in dxs
    ]
    out = torch._foreach_mul(wide, list(factors))
    return [o if o.dtype == d.dtype else o.to(d.dtype) for o, d in zip(out, dxs)]


@dataclasses.dataclass(frozen=True, repr=False)
class InvDecay(AbstractRule):
    """Inverse decay of the step (fluxtrain's own; Flux.Optimise's ``InvDecay``).

    State is a counter ``n`` starting at 1: ``step = dx * (1/(1 + gamma*n))``,
    then ``n += 1``. As in Flux 0.13 the factor is a float64 and the product is
    computed in float64 and rounded once. Place it after a rule in a chain:
    ``OptimiserChain(Adam(), InvDecay(0.01))``. Optimisers.jl has no such rule.

    >>> import torch
    >>> rule = InvDecay(1.0)
    >>> n, step = rule.apply(rule.init(torch.zeros(1)), torch.zeros(1), torch.tensor([1.0]))
    >>> n, step
    (2, tensor([0.5000]))
    """

    gamma: float = 0.001

    _ranges: ClassVar[dict[str, Range]] = {"gamma": NONNEG}

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return 1

    def _factor(self, n: int) -> float:
        return _fdiv(1.0, 1 + self.gamma * n)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        return state + 1, _scale_f64([_grad(dx, x)], [self._factor(state)])[0]

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        steps = _scale_f64(_grads(dxs, xs), [self._factor(n) for n in states])
        return [n + 1 for n in states], steps


class ExpDecayState(NamedTuple):
    """ExpDecay state: step counter ``n`` (starts at 0) and the current learning rate."""

    n: int
    eta: float


@dataclasses.dataclass(frozen=True, repr=False)
class ExpDecay(AbstractRule):
    """Exponentially decaying learning rate (fluxtrain's own; Flux.Optimise's ``ExpDecay``).

    Each step ``n += 1``; when ``n > start`` and ``n % decay_step == 0`` the
    current rate becomes ``max(eta_current*decay, clip)``; ``step = dx *
    eta_current`` (float64, rounded once, as in Flux 0.13). The current rate
    lives in the per-parameter state (Flux kept one shared rate and decayed it
    once per global step; with all parameters stepping together the numbers
    agree). ``adjust(eta=...)`` changes the starting rate of new states only.

    >>> import torch
    >>> rule = ExpDecay(0.2, 0.5, 1, 1e-3)
    >>> st = rule.init(torch.zeros(1, dtype=torch.float64))
    >>> st, step = rule.apply(st, torch.zeros(1, dtype=torch.float64),
    ...                       torch.ones(1, dtype=torch.float64))
    >>> st, step.item()
    (ExpDecayState(n=1, eta=0.1), 0.1)
    """

    eta: float = 0.001
    decay: float = 0.1
    decay_step: int = 1000
    clip: float = 1e-4
    start: int = 0

    _ranges: ClassVar[dict[str, Range]] = {"eta": NONNEG, "decay": UNIT, "clip": NONNEG}

    def _validate(self) -> None:
        super()._validate()
        if self.decay_step <= 0:
            raise ValueError(f"ExpDecay: decay_step must be positive, got {self.decay_step}")

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return ExpDecayState(0, self.eta)

    def _next(self, state: ExpDecayState) -> ExpDecayState:
        n, eta = state.n + 1, state.eta
        if n > self.start and n % self.decay_step == 0:
            eta = max(eta * self.decay, self.clip)
        return ExpDecayState(n, eta)

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        new = self._next(state)
        return new, _scale_f64([_grad(dx, x)], [new.eta])[0]

    def apply_many(self, states, xs, dxs):  # type: ignore[no-untyped-def]
        new = [self._next(s) for s in states]
        return new, _scale_f64(_grads(dxs, xs), [s.eta for s in new])

