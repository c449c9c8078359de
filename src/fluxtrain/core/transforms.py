"""Whole-tree gradient transforms: chain members that see every leaf of a step at once.

:class:`ClipGlobalNorm` scales all gradients by one factor computed from one
norm over all of them (``torch.nn.utils.clip_grad_norm_``, optax's
``clip_by_global_norm``); :class:`SkipNonFinite` drops a whole step when any
gradient holds a NaN or Inf (optax's ``apply_if_finite``). Both set
``whole_tree = True`` (:attr:`fluxtrain.core.base.AbstractRule.whole_tree`):
:func:`fluxtrain.core.batched.apply_batched` then hands their ``apply_many``
every leaf that uses the rule object in this step, in one call, on any mix of
devices and dtypes, and an :class:`~fluxtrain.core.rules.OptimiserChain`
holding one gives it all the leaves still live at its position. Their per-leaf
``apply`` is ``apply_many`` on that one leaf. See ``docs/transforms.md``.

"All leaves" means the leaves that share the rule object and got a gradient in
this step: tied tensors are one leaf (their gradients already summed), frozen
leaves and leaves without a gradient are not passed, and with per-part rules
each rule object sees its own part.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch

from fluxtrain.core import hyper
from fluxtrain.core.base import AbstractRule, State, Step, check_param
from fluxtrain.core.rules import (
    ClipGrad,
    ClipNorm,
    OptimiserChain,
    SignDecay,
    WeightDecay,
    _grads,
    _group,
)
from fluxtrain.errors import DomainError

__all__ = [
    "ClipGlobalNorm",
    "SkipNonFinite",
    "SkipNonFiniteState",
    "check_chain_order",
    "skip_counts",
]

Tensors = list[torch.Tensor]


def _total_norm(grads: Tensors, p: float) -> torch.Tensor:
    """The ``p``-norm of all ``grads`` as one vector, by torch's own ops.

    ``torch.nn.utils.get_total_norm`` is what ``clip_grad_norm_`` calls (torch
    >= 2.6); older versions run the same ops inline in ``clip_grad_norm_``,
    reproduced here: ``_foreach_norm`` per (device, dtype) group, ``stack``,
    ``vector_norm``.
    """
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(grads, p, error_if_nonfinite=False, foreach=None)
    from torch.utils._foreach_utils import (  # pragma: no cover - torch < 2.6
        _group_tensors_by_device_and_dtype,
        _has_foreach_support,
    )

    first_device = grads[0].device  # pragma: no cover
    norms: Tensors = []  # pragma: no cover
    grouped: Any = _group_tensors_by_device_and_dtype([grads])  # type: ignore[list-item]
    for (device, _), ([device_grads], _) in grouped.items():  # pragma: no cover
        if _has_foreach_support(device_grads, device):
            norms.extend(torch._foreach_norm(device_grads, p))
        else:
            norms.extend(torch.linalg.vector_norm(g, p) for g in device_grads)
    return torch.linalg.vector_norm(  # pragma: no cover
        torch.stack([n.to(first_device) for n in norms]), p
    )


class _WholeTreeRule(AbstractRule):
    """Base of the rules here: ``whole_tree`` set, and ``apply`` is ``apply_many`` on one
    leaf (a whole tree of one)."""

    whole_tree: ClassVar[bool] = True
    #: scale the gradients in their own dtype, as ``torch.nn.utils.clip_grad_norm_`` does
    #: (inside a chain on 16-bit parameters they get the chain's float32 gradients)
    opmath: ClassVar[bool] = False

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        states, steps = self.apply_many([state], [x], [dx])
        return states[0], steps[0]


# ---------------------------------------------------------------------------- ClipGlobalNorm
@dataclasses.dataclass(frozen=True, repr=False)
class ClipGlobalNorm(_WholeTreeRule):
    """Scale all gradients together so that their joint ``p``-norm is at most ``max_norm``.

    One norm over every leaf of the step (the leaves that share this rule
    object: tied tensors count once, frozen leaves and leaves without a
    gradient not at all), then every gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))``. These are the ops of
    ``torch.nn.utils.clip_grad_norm_``, so the results are bit-identical to it
    on the same gradients. ``p`` is any positive real or ``math.inf`` (the
    largest ``|entry|``). The given gradients are never changed: the step is
    new tensors.

    A NaN or Inf gradient makes the total norm non-finite. As in torch
    (``error_if_nonfinite=False``, the default) the factor is then used as it
    is: a NaN norm turns every gradient into NaN, an Inf norm (no NaN) makes
    the factor 0, so finite entries become 0 and infinite ones NaN. With
    ``error_if_nonfinite=True`` a non-finite norm raises
    :class:`~fluxtrain.errors.DomainError` instead (the step is then not
    applied at all). To drop such steps, chain :class:`SkipNonFinite` before or
    after this rule.

    >>> import torch
    >>> rule = ClipGlobalNorm(1.0)
    >>> xs = [torch.zeros(1), torch.zeros(1)]
    >>> _, steps = rule.apply_many([None, None], xs, [torch.tensor([3.0]), torch.tensor([4.0])])
    >>> [round(s.item(), 4) for s in steps]   # the joint norm 5 is scaled to 1
    [0.6, 0.8]
    """


    max_norm: float
    p: float = 2.0
    error_if_nonfinite: bool = False

    def _validate(self) -> None:
        super()._validate()
        max_norm = hyper.check_real("max_norm", "ClipGlobalNorm", self.max_norm)
        if not max_norm > 0:
            raise ValueError(
                f"ClipGlobalNorm: max_norm must be positive, got max_norm={max_norm!r}; "
                "it is the largest norm the joint gradient may have (e.g. 1.0)"
            )
        object.__setattr__(self, "max_norm", max_norm)
        if not (self.p > 0):
            raise ValueError(
                f"ClipGlobalNorm: p must be positive (2.0 for the Euclidean norm, 1.0, or "
                f"math.inf for the largest |entry|), got p={self.p!r}"
            )

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return None

    def apply_many(
        self,
        states: Sequence[State],
        xs: Sequence[torch.Tensor],
        dxs: Sequence[torch.Tensor],
    ) -> tuple[list[State], list[Step]]:
        if not xs:
            return [], []
        grads = _grads(dxs, xs)
        with torch.no_grad():
            total = _total_norm(grads, self.p)
            if self.error_if_nonfinite and not math.isfinite(total.item()):
                raise DomainError(
                    f"ClipGlobalNorm: the joint {self.p}-norm of the gradients of "
                    f"{len(grads)} parameters is {total.item()}; some gradient holds NaN or "
                    "Inf. Nothing of this step was applied. Pass error_if_nonfinite=False "
                    "to scale anyway, or chain SkipNonFinite() to skip such steps"
                )
            # torch's expression, op for op: a float over a tensor is reciprocal * float
            coef = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
            steps: list[Step] = [None] * len(grads)
            for idx in _group([(g.device, g.dtype) for g in grads]):
                out = torch._foreach_mul([grads[i] for i in idx], coef.to(grads[idx[0]].device))
                for i, o in zip(idx, out):
                    steps[i] = o
        return list(states), steps


# ---------------------------------------------------------------------------- SkipNonFinite
class SkipNonFiniteState(NamedTuple):
    """SkipNonFinite's counters, the same in every leaf of one rule object.

    ``skipped``: steps skipped so far (NaN/Inf gradient); ``consecutive``:
    skipped steps since the last finite one.
    """

    skipped: int
    consecutive: int


def _all_finite(grads: Tensors) -> bool:
    """Whether no gradient holds a NaN or ±Inf: one ``inf``-norm per tensor, one sync per device.

    The largest ``|entry|`` cannot overflow and is NaN if any entry is NaN.
    """
    per_device: dict[torch.device, Tensors] = {}
    for g in grads:
        if g.numel():
            per_device.setdefault(g.device, []).append(g)
    for ts in per_device.values():
        norms = torch._foreach_norm(ts, math.inf)
        if not bool(torch.isfinite(torch.stack(list(norms))).all()):
            return False
    return True


@dataclasses.dataclass(frozen=True, repr=False)
class SkipNonFinite(_WholeTreeRule):
    """Skip a whole step if any gradient holds NaN or Inf (optax's ``apply_if_finite``).

    The opt-in guard against non-finite gradients. If any gradient this rule
    sees in a step is not finite, the step is ``None`` for every leaf: no
    parameter moves and the later members of the chain do not run, so their
    state (Adam's moments, AccumGrad's sum ...) is unchanged too. A finite step
    passes the gradients on unchanged.

    Counters (:class:`SkipNonFiniteState`, in every leaf's state): ``skipped``
    counts skipped steps, ``consecutive`` the skipped steps in a row (0 after
    a finite step); read them with :func:`fluxtrain.optimisers.skipped_steps`.
    The step that would make ``consecutive`` exceed ``max_consecutive`` raises
    :class:`~fluxtrain.errors.DomainError` instead, inside the step, so nothing
    of it is applied (parameters, state and counters stay as before it);
    ``max_consecutive=None`` never raises, ``0`` raises at the first bad step.

    Put it first in an ``OptimiserChain``, or after stateless transforms only
    (``ClipGrad``, ``ClipNorm``, ``ClipGlobalNorm``, ``WeightDecay``,
    ``SignDecay``): members before it have already run when it decides, and a
    stateful one would have changed its state. The chain refuses anything else.

    >>> import torch
    >>> rule = SkipNonFinite(max_consecutive=2)
    >>> x = torch.zeros(2)
    >>> st = rule.init(x)
    >>> st, step = rule.apply(st, x, torch.tensor([1.0, float("nan")]))
    >>> step is None, st
    (True, SkipNonFiniteState(skipped=1, consecutive=1))
    >>> st, step = rule.apply(st, x, torch.tensor([1.0, 2.0]))
    >>> step.tolist(), st
    ([1.0, 2.0], SkipNonFiniteState(skipped=1, consecutive=0))
    """


    max_consecutive: int | None = 10

    def _validate(self) -> None:
        m = self.max_consecutive
        if m is None:
            return
        m = hyper.check_int("max_consecutive", "SkipNonFinite", m)
        if m < 0:
            raise ValueError(
                f"SkipNonFinite: max_consecutive must be >= 0 (or None to never raise), "
                f"got {m}"
            )
        object.__setattr__(self, "max_consecutive", m)

    def init(self, x: torch.Tensor) -> State:
        check_param(self, x)
        return SkipNonFiniteState(0, 0)

    def apply_many(
        self,
        states: Sequence[State],
        xs: Sequence[torch.Tensor],
        dxs: Sequence[torch.Tensor],
    ) -> tuple[list[State], list[Step]]:
        if not xs:
            return [], []
        for s in states:
            if not isinstance(s, SkipNonFiniteState):
                raise TypeError(
                    f"SkipNonFinite: expected a SkipNonFiniteState from SkipNonFinite.init, "
                    f"got {type(s).__name__}; was the state made by setup with this rule?"
                )
        grads = _grads(dxs, xs)
        # leaves normally carry the same numbers; one that got no gradient for a
        # while lags behind, and the largest counts are the rule's
        skipped = max(s.skipped for s in states)
        consecutive = max(s.consecutive for s in states)
        with torch.no_grad():
            finite = _all_finite(grads)
        if finite:
            new = SkipNonFiniteState(skipped, 0)
            return [new] * len(grads), list(grads)
        m = self.max_consecutive
        if m is not None and consecutive + 1 > m:
            bad = next(g for g in grads if not bool(torch.isfinite(g).all()))
            raise DomainError(
                f"SkipNonFinite: {consecutive + 1} steps in a row had a NaN or Inf gradient "
                f"(this time e.g. in a gradient of shape {tuple(bad.shape)}, {bad.dtype}), "
                f"more than max_consecutive={m}; {skipped} steps skipped in all. Nothing of "
                "this step was applied. Check the loss for log(0), sqrt(0), 0/0 or overflow, "
                "lower the learning rate, or raise max_consecutive (None never raises)"
            )
        new = SkipNonFiniteState(skipped + 1, consecutive + 1)
        return [new] * len(grads), [None] * len(grads)


def skip_counts(state: Any) -> SkipNonFiniteState | None:
    """The :class:`SkipNonFiniteState` inside one leaf's rule state, or ``None``.

    Looks through chain states and ``MixedPrecision`` states; with several
    ``SkipNonFinite`` members, the first.

    >>> import torch
    >>> from fluxtrain.core.rules import Adam, OptimiserChain
    >>> rule = OptimiserChain(SkipNonFinite(), Adam())
    >>> skip_counts(rule.init(torch.zeros(1)))
    SkipNonFiniteState(skipped=0, consecutive=0)
    """
    if isinstance(state, SkipNonFiniteState):
        return state
    if isinstance(state, tuple | list):
        for s in state:
            found = skip_counts(s)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------------------- chain order
_STATELESS: tuple[type[AbstractRule], ...] = (
    ClipGrad,
    ClipNorm,
    ClipGlobalNorm,
    WeightDecay,
    SignDecay,
)


def _stateless(rule: AbstractRule) -> bool:
    if isinstance(rule, OptimiserChain):
        return all(_stateless(o) for o in rule.opts)
    return type(rule) in _STATELESS


def _has_skip(rule: AbstractRule) -> bool:
    if isinstance(rule, OptimiserChain):
        return any(_has_skip(o) for o in rule.opts)
    return isinstance(rule, SkipNonFinite)


def check_chain_order(opts: Sequence[AbstractRule]) -> None:
    """Refuse a chain in which a stateful member runs before a :class:`SkipNonFinite`.

    Called by ``OptimiserChain(...)``. Only ``ClipGrad``, ``ClipNorm``,
    ``ClipGlobalNorm``, ``WeightDecay`` and ``SignDecay`` (or chains of them)
    may come before it: a skipped step must change no state.

    >>> from fluxtrain.core.rules import Adam, ClipGrad
    >>> check_chain_order([ClipGrad(1.0), SkipNonFinite(), Adam()])
    >>> check_chain_order([Adam(), SkipNonFinite()])
    Traceback (most recent call last):
    ...
    ValueError: OptimiserChain: member 0, Adam(...), comes before SkipNonFinite ...
    """
    for k, o in enumerate(opts):
        if not _has_skip(o):
            continue
        for j in range(k):
            if not _stateless(opts[j]):
                raise ValueError(
                    f"OptimiserChain: member {j}, {opts[j]!r}, comes before SkipNonFinite "
                    f"(member {k}) but is not a stateless transform: it would already have "
                    "changed its state in a step that SkipNonFinite then skips. Put "
                    "SkipNonFinite first, or only ClipGrad, ClipNorm, ClipGlobalNorm, "
                    "WeightDecay or SignDecay before it"
                )
