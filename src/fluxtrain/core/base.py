"""The rule protocol: a frozen dataclass of hyperparameters plus pure functions.

A rule (:class:`AbstractRule`) holds hyperparameters only. Per parameter
tensor ``x`` it builds a state with :meth:`AbstractRule.init`; one step is
``new_state, step = rule.apply(state, x, dx)`` after which the caller does
``x -= step`` (see :mod:`fluxtrain.core.ops`). ``step`` may be ``None``,
meaning "leave the parameter alone this step" (AccumGrad mid-accumulation,
MixedPrecision after writing ``x`` itself).

Rules may mutate the *state* tensors they were given and must never mutate
``dx``: inside an OptimiserChain the gradient a member receives may be another
member's state tensor.

:meth:`AbstractRule.apply_many` is the batched path: the same step for many
(state, x, dx) triples that share device and dtype, written with
``torch._foreach_*`` kernels. It must give bit-identical results to calling
:meth:`apply` on each triple (tested for every rule). The default loops.
A rule with ``whole_tree = True`` is the exception: its ``apply_many`` is given
every leaf of the step at once (any devices and dtypes) and may combine them
(one global norm); see :attr:`AbstractRule.whole_tree`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from fluxtrain.core import hyper
from fluxtrain.core import schedules as _schedules

__all__ = ["AbstractRule", "State", "Step", "maywrite", "check_param"]

State = Any
Step = torch.Tensor | None


def maywrite(x: torch.Tensor) -> bool:
    """Whether ``x`` may be updated in place (Optimisers.jl's ``maywrite``).

    Tensors that stand for immutable arrays (a read-only numpy array) are
    marked by the tree layer with the attribute ``_fluxtrain_readonly``.
    """
    return not getattr(x, "_fluxtrain_readonly", False) and not x.is_inference()


def check_param(rule: object, x: torch.Tensor) -> None:
    """Refuse parameters a rule cannot train: only float and complex tensors can.

    Every built-in ``init`` calls this, so an integer or bool tensor fails at
    once with a message naming the dtype (Optimisers.jl never treats integer
    arrays as parameters either).
    """
    name = rule if isinstance(rule, str) else type(rule).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name}: parameters must be torch tensors, got {type(x).__name__}"
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"{name}: cannot optimise a parameter of dtype {x.dtype}; only floating-point "
            f"and complex tensors are trainable (convert it first, e.g. x.float())"
        )


class AbstractRule:
    """Base class of every optimisation rule.

    Subclasses are ``@dataclass(frozen=True, repr=False)`` classes whose fields
    are the hyperparameters, in the original's order. Validation is driven by
    each field's default (a float default makes a real-number field, a tuple
    default a tuple of reals of that length, a bool default a flag, an int
    default an integer); any field
    named ``eta`` must be non-negative. Override :meth:`_validate` for more.
    Any float field may instead hold a :class:`~fluxtrain.core.schedules.Schedule`
    (a value per step count), with no change to the rule's code: see
    :mod:`fluxtrain.core.schedules` and ``docs/schedules.md``.

    Writing your own rule (Optimisers.jl's ``DecayDescent`` example)::

        >>> import dataclasses, math, torch
        >>> from fluxtrain.optimisers import AbstractRule
        >>> @dataclasses.dataclass(frozen=True, repr=False)
        ... class DecayDescent(AbstractRule):
        ...     eta: float = 0.1
        ...     def init(self, x):
        ...         return 1                      # the step counter t
        ...     def apply(self, state, x, dx):
        ...         eta = self.eta / math.sqrt(state)
        ...         return state + 1, dx * eta
        >>> rule = DecayDescent(0.5)
        >>> rule
        DecayDescent(eta=0.5)
        >>> st = rule.init(torch.zeros(2))
        >>> st, step = rule.apply(st, torch.zeros(2), torch.ones(2))
        >>> st, step.tolist()
        (2, [0.5, 0.5])
    """

    #: Number of elements of each tuple-valued field (default: the default's length).
    _tuple_lengths: ClassVar[dict[str, int]] = {}

    #: ``True`` for a rule that needs every leaf of a step in ONE :meth:`apply_many`
    #: call, on mixed devices and dtypes (``ClipGlobalNorm``: one norm over all
    #: leaves; ``SkipNonFinite``: skip the step if any gradient is non-finite).
    #: :func:`fluxtrain.core.batched.apply_batched` then neither groups nor chunks
    #: (see :func:`fluxtrain.core.batched.needs_whole_tree` and ``docs/transforms.md``).
    #: Such a rule's per-leaf :meth:`apply` is its ``apply_many`` on one leaf.
    whole_tree: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if _schedules.has_schedule(self):
            # some hyperparameter is a Schedule: validate at count 0 and bind the
            # scheduled init/apply/apply_many (see fluxtrain.core.schedules)
            _schedules.install(self)
        else:
            self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        name = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.init:
                continue
            value = getattr(self, f.name)
            default = f.default
            if isinstance(default, bool):
                new: Any = hyper.check_bool(f.name, name, value)
            elif isinstance(default, float):
                new = hyper.check_real(f.name, name, value)
            elif isinstance(default, int):
                new = hyper.check_int(f.name, name, value)
            elif isinstance(default, tuple):
                length = self._tuple_lengths.get(f.name, len(default))
                new = hyper.check_tuple(f.name, name, value, length)
            else:
                continue
            object.__setattr__(self, f.name, new)
        if any(f.name == "eta" for f in dataclasses.fields(self)):  # type: ignore[arg-type]
            hyper.check_nonneg_eta(name, self.eta)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ protocol
    def init(self, x: torch.Tensor) -> State:
        """The initial state for parameter ``x`` (``None`` for stateless rules)."""
        return None

    def init_many(self, xs: Sequence[torch.Tensor]) -> list[State]:
        """:meth:`init` of every parameter of ``xs``, in order (what ``setup`` calls).

        The states must equal ``[self.init(x) for x in xs]``, which is the default.
        A rule with several state tensors per parameter may make them slot by slot
        (every parameter's first tensor, then every second one), so that each slot's
        tensors lie next to each other in memory: a step over many small parameters
        then streams each slot through memory without gaps (``benchmarks/layout.py``).

        >>> import torch
        >>> from fluxtrain.core.rules import Adam, Descent
        >>> xs = [torch.ones(2), torch.ones(3)]
        >>> [tuple(s.m.shape) for s in Adam().init_many(xs)], Adam().init_many(xs)[0].beta_t
        ([(2,), (3,)], (0.8999999761581421, 0.9990000128746033))
        >>> Descent().init_many(xs)
        [None, None]
        """
        return [self.init(x) for x in xs]

    def apply(self, state: State, x: torch.Tensor, dx: torch.Tensor) -> tuple[State, Step]:
        """One step: return ``(new_state, step)``; the caller subtracts ``step`` from ``x``."""
        raise NotImplementedError(
            f"{type(self).__name__} must define apply(self, state, x, dx) -> (state, step)"
        )

    def apply_many(
        self,
        states: Sequence[State],
        xs: Sequence[torch.Tensor],
        dxs: Sequence[torch.Tensor],
    ) -> tuple[list[State], list[Step]]:
        """Batched :meth:`apply` over triples that share one device and dtype.

        Results must be bit-identical to ``apply`` on each triple. The default
        loops; built-in rules override it with ``torch._foreach_*`` kernels.
        """
        new_states: list[State] = []
        steps: list[Step] = []
        for s, x, dx in zip(states, xs, dxs):
            s2, step = self.apply(s, x, dx)
            new_states.append(s2)
            steps.append(step)
        return new_states, steps

    # ------------------------------------------------------------------ adjusting
    def adjust(self, eta: float | None = None, **hyperparams: Any) -> AbstractRule:
        """A copy with some hyperparameters changed (Optimisers.jl's rule-level ``adjust``).

        A number sets ``eta``; keywords set fields by name. Unknown keywords are
        ignored, as in Optimisers.jl; a rule without ``eta`` ignores the number.
        """
        if eta is not None:
            hyperparams = {"eta": eta, **hyperparams}
        if not hyperparams:
            raise ValueError("adjust must be given something to act on: a number or keywords")
        names = {f.name for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]
        changes = {k: v for k, v in hyperparams.items() if k in names}
        if not changes:
            return self
        changes = _schedules.keep_scheduled(self, changes)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # ------------------------------------------------------------------ printing
    def __repr__(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.repr
        ]
        return f"{type(self).__name__}({', '.join(parts)})"
