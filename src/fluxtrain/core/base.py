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
import functools
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, ClassVar

import torch

from fluxtrain.core import hyper
from fluxtrain.core import schedules as _schedules

__all__ = ["AbstractRule", "State", "Step", "maywrite", "check_param", "OPMATH",
           "sparse_error", "check_sparse"]

State = Any
Step = torch.Tensor | None

#: 16-bit parameter dtypes and the dtype their rules compute in (torch's "opmath" type):
#: see :func:`_opmath` and ``docs/numerics.md``
OPMATH: dict[torch.dtype, torch.dtype] = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.complex32: torch.complex64,
}
_dtype = attrgetter("dtype")
_layout = attrgetter("layout")
_STRIDED = torch.strided


def sparse_error(rule: object, dx: torch.Tensor) -> TypeError:
    """The error of a rule given a sparse gradient it cannot apply (torch's Adam refuses
    them too); raised before anything of the step is changed."""
    name = type(rule).__name__
    for member in getattr(rule, "opts", ()):  # a chain: name the member that refuses
        if not member._accepts_sparse():
            name = f"{type(member).__name__} (in {type(rule).__name__})"
            break
    return TypeError(
        f"{name} does not support sparse gradients (a gradient of shape {tuple(dx.shape)} "
        f"has layout {dx.layout}, as nn.Embedding(..., sparse=True) gives). Only Descent "
        "applies sparse gradients (as torch.optim.SGD does); for other rules make them "
        "dense: nn.Embedding(..., sparse=False), or pass grad.to_dense() (torch's own "
        "sparse Adam is torch.optim.SparseAdam)"
    )


def check_sparse(rule: AbstractRule, dxs: Sequence[torch.Tensor]) -> None:
    """Refuse sparse gradients for a rule that does not apply them (before any change).

    One layout read per gradient; the rule is asked only if some layout is not strided.
    """
    if set(map(_layout, dxs)) - {_STRIDED} and not rule._accepts_sparse():
        raise sparse_error(rule, next(d for d in dxs if d.layout is not _STRIDED))


# ---------------------------------------------------------------------------- 16-bit opmath
def _widen(t: Any, made: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """``t`` (a state: tensors, (named) tuples, lists, dicts, numbers) with every 16-bit tensor
    replaced by an opmath copy; ``made[id(copy)] = (copy, original)``."""
    if isinstance(t, torch.Tensor):
        wide = OPMATH.get(t.dtype)
        if wide is None:
            made[id(t)] = (t, t)  # kept as it is (and not narrowed afterwards)
            return t
        w = t.to(wide)
        made[id(w)] = (w, t)
        return w
    if isinstance(t, tuple):
        if hasattr(t, "_fields"):
            return type(t)(*(_widen(e, made) for e in t))
        return tuple(_widen(e, made) for e in t)
    if type(t) is list:
        return [_widen(e, made) for e in t]
    if type(t) is dict:
        return {k: _widen(v, made) for k, v in t.items()}
    return t


def _narrow(t: Any, made: dict[int, tuple[torch.Tensor, torch.Tensor]],
            back: dict[torch.dtype, torch.dtype]) -> Any:
    """The new state ``t`` stored in the parameters' dtypes: an opmath copy made by
    :func:`_widen` is written back into its original (``copy_``: the state objects stay);
    a new tensor of an opmath dtype becomes the 16-bit dtype it stands for (``back``)."""
    if isinstance(t, torch.Tensor):
        hit = made.get(id(t))
        if hit is not None and hit[0] is t:
            if hit[1] is not t:
                hit[1].copy_(t)
            return hit[1]
        narrow = back.get(t.dtype)
        return t if narrow is None else t.to(narrow)
    if isinstance(t, tuple):
        if hasattr(t, "_fields"):
            return type(t)(*(_narrow(e, made, back) for e in t))
        return tuple(_narrow(e, made, back) for e in t)
    if type(t) is list:
        return [_narrow(e, made, back) for e in t]
    if type(t) is dict:
        return {k: _narrow(v, made, back) for k, v in t.items()}
    return t


def _opmath_apply(f: Callable[..., Any]) -> Callable[..., Any]:
    """``apply`` checked for sparse gradients, computing in float32 for a 16-bit parameter.

    A sparse ``dx`` for a rule that does not accept one
    (:meth:`AbstractRule._accepts_sparse`) raises :func:`sparse_error` first. For 16-bit
    parameters (``docs/numerics.md``): the parameter, its gradient and its state's
    16-bit tensors are copied to the opmath dtype, ``f`` runs on the copies (so the
    rule's scalars and every operation are those of a float32 parameter), then the
    state's tensors are written back into the 16-bit tensors they came from. The step
    stays in float32: the caller's ``x -= step`` then computes in float32 and rounds
    once, as torch.optim's last ``addcdiv_`` does. If ``f`` raises, nothing given was
    changed. Other dtypes: ``f`` itself.
    """

    @functools.wraps(f)
    def apply(self: AbstractRule, state: State, x: torch.Tensor,
              dx: torch.Tensor) -> tuple[State, Step]:
        if dx.layout is not _STRIDED and not self._accepts_sparse():
            raise sparse_error(self, dx)
        wide = OPMATH.get(x.dtype)
        if wide is None or not self.opmath:
            return f(self, state, x, dx)  # type: ignore[no-any-return]
        made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            s2, step = f(self, _widen(state, made), x.to(wide),
                         dx.to(wide) if dx.dtype in OPMATH else dx)
            return _narrow(s2, made, {wide: x.dtype}), step

    apply._fluxtrain_opmath = True  # type: ignore[attr-defined]
    return apply


def _opmath_apply_many(f: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`_opmath_apply` for ``apply_many``: every gradient checked for a sparse
    layout first, then the 16-bit leaves of the lists computed in float32, the others
    as given (bit-identical to ``apply`` leaf by leaf)."""

    @functools.wraps(f)
    def apply_many(self: AbstractRule, states: Sequence[State], xs: Sequence[torch.Tensor],
                   dxs: Sequence[torch.Tensor]) -> tuple[list[State], list[Step]]:
        check_sparse(self, dxs)
        # the lists share one dtype (apply_batched's groups), except for rules given a
        # whole step at once (needs_whole_tree): those are read in full
        if not xs or not self.opmath or (
            OPMATH.get(xs[0].dtype) is None
            and (not self._mixed_dtypes or set(map(_dtype, xs)).isdisjoint(OPMATH))
        ):
            return f(self, states, xs, dxs)  # type: ignore[no-any-return]
        made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        back: dict[torch.dtype, torch.dtype] = {}
        wxs: list[torch.Tensor] = []
        wdxs: list[torch.Tensor] = []
        wstates: list[State] = []
        half: list[bool] = []
        with torch.no_grad():
            for s, x, dx in zip(states, xs, dxs):
                wide = OPMATH.get(x.dtype)
                half.append(wide is not None)
                if wide is None:
                    wstates.append(s)
                    wxs.append(x)
                    wdxs.append(dx)
                    continue
                back[wide] = x.dtype
                wstates.append(_widen(s, made))
                wxs.append(x.to(wide))
                wdxs.append(dx.to(wide) if dx.dtype in OPMATH else dx)
            new, steps = f(self, wstates, wxs, wdxs)
            out = [_narrow(s2, made, {OPMATH[x.dtype]: x.dtype}) if h else s2
                   for s2, x, h in zip(new, xs, half)]
        return out, list(steps)

    apply_many._fluxtrain_opmath = True  # type: ignore[attr-defined]
    return apply_many


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
    named ``eta`` must be non-negative, and each real field must lie in its
    :attr:`_ranges` entry. Override :meth:`_validate` for more.
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

    #: The allowed values of each real hyperparameter, by field name (``"beta[0]"`` for
    #: an element of a tuple field), checked at construction (``hyper.check_range``:
    #: a ValueError naming the field and the range; NaN and ``inf`` outside every range
    #: but ``hyper.ANY``). Every built-in rule lists all of its real fields.
    _ranges: ClassVar[dict[str, hyper.Range]] = {}

    #: ``True`` for a rule that needs every leaf of a step in ONE :meth:`apply_many`
    #: call, on mixed devices and dtypes (``ClipGlobalNorm``: one norm over all
    #: leaves; ``SkipNonFinite``: skip the step if any gradient is non-finite).
    #: :func:`fluxtrain.core.batched.apply_batched` then neither groups nor chunks
    #: (see :func:`fluxtrain.core.batched.needs_whole_tree` and ``docs/transforms.md``).
    #: Such a rule's per-leaf :meth:`apply` is its ``apply_many`` on one leaf.
    whole_tree: ClassVar[bool] = False

    #: ``True``: for float16/bfloat16/complex32 parameters, :meth:`apply` and
    #: :meth:`apply_many` compute in float32 (complex64) and store the state in the
    #: parameter's dtype (``docs/numerics.md``); every subclass's own ``apply`` and
    #: ``apply_many`` are wrapped so at class creation. ``False`` for a rule that
    #: handles precision itself (``MixedPrecision``) or must act in the gradient's
    #: dtype (the whole-tree transforms, as ``torch.nn.utils.clip_grad_norm_``).
    opmath: ClassVar[bool] = True

    #: whether :meth:`apply_many` may be given lists of several dtypes (whole-tree
    #: rules and chains, which may hold one): the opmath wrapper then reads every dtype
    _mixed_dtypes: ClassVar[bool] = False

    #: whether the rule applies sparse gradients (``Descent``, as ``torch.optim.SGD``);
    #: any other rule given one raises :func:`sparse_error` before changing anything
    sparse: ClassVar[bool] = False

    def _accepts_sparse(self) -> bool:
        """Whether this rule applies sparse gradients (a chain: all its members do)."""
        return self.sparse

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.whole_tree:
            cls._mixed_dtypes = True
        for name, wrap in (("apply", _opmath_apply), ("apply_many", _opmath_apply_many)):
            f = cls.__dict__.get(name)
            if callable(f) and not getattr(f, "_fluxtrain_opmath", False):
                setattr(cls, name, wrap(f))

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
                new = hyper.check_real(f.name, name, value, self._ranges.get(f.name))
            elif isinstance(default, int):
                new = hyper.check_int(f.name, name, value)
            elif isinstance(default, tuple):
                length = self._tuple_lengths.get(f.name, len(default))
                new = hyper.check_tuple(f.name, name, value, length, self._ranges)
            else:
                continue
            object.__setattr__(self, f.name, new)
        if any(f.name == "eta" for f in dataclasses.fields(self)):  # type: ignore[arg-type]
            hyper.check_nonneg_eta(name, self.eta)  # type: ignore[attr-defined]
        for label, allowed in self._ranges.items():
            field, _, index = label.partition("[")
            value = getattr(self, field)
            if index:
                value = value[int(index.rstrip("]"))]
            hyper.check_range(label, name, value, allowed)

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


# the default apply_many (a loop over apply) gets the same door: the sparse check of
# every gradient before the first leaf is stepped, and the 16-bit conversions
AbstractRule.apply_many = _opmath_apply_many(AbstractRule.apply_many)  # type: ignore[method-assign]
