"""The old optimisers of Flux.Optimise 0.13.17: mutable, with state per parameter inside.

Each old optimiser is a mutable object whose attributes are the Flux field
names (``eta``, ``rho``, ``beta``, ``epsilon``, ``gamma``, ``wd``, ``thresh``,
...). Assigning one (``opt.eta = 0.01``) takes effect on the next step; an
invalid value is refused at the assignment.

**No arithmetic of their own.** An old optimiser builds the rule-core rule
that it translates to (:meth:`AbstractOptimiser.__fluxtrain_translate__`,
rebuilt whenever a hyperparameter changes) and runs it through
:func:`fluxtrain.core.apply_batched`; the step is subtracted with
:func:`fluxtrain.core.subtract_many_`. An implicit ``Adam`` step and an
explicit step of ``fluxtrain.optimisers.Adam`` are therefore the same bits.
Consequences (deviations from Flux 0.13's own arithmetic, by design):
hyperparameters are cast to the parameter's dtype as Optimisers.jl does
(Flux 0.13 computed old rules in Float64); old ``ClipNorm`` raises
``DomainError`` on a non-finite gradient norm (Flux 0.13's did nothing).

**State** is kept per parameter tensor, keyed by identity, in a
:class:`torch.utils.weak.WeakIdKeyDictionary`: an entry goes away when its
tensor is garbage collected (Flux's ``IdDict`` leaked). The state has the
layout of the new rule (so ``Momentum``'s velocity is Optimisers.jl's ``+v``,
the negation of what Flux 0.13 stored); it is available as ``opt.state`` (and
under Flux's field names ``velocity``, ``acc``, ``current``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import is_
from typing import Any, ClassVar

import torch
from torch.utils.weak import WeakIdKeyDictionary

from fluxtrain.core import plan, tensormeta
from fluxtrain.core import rules as _rules
from fluxtrain.core.base import AbstractRule, State, Step, maywrite
from fluxtrain.core.batched import apply_batched
from fluxtrain.core.guards import clone_state, defer_interrupts, restore_state
from fluxtrain.core.ops import subtract_many_
from fluxtrain.errors import warn_deprecated

__all__ = [
    "AbstractOptimiser",
    "Descent",
    "Momentum",
    "Nesterov",
    "RMSProp",
    "Adam",
    "RAdam",
    "AdaMax",
    "OAdam",
    "AdaGrad",
    "AdaDelta",
    "AMSGrad",
    "NAdam",
    "AdamW",
    "AdaBelief",
    "InvDecay",
    "ExpDecay",
    "WeightDecay",
    "ClipValue",
    "ClipNorm",
    "Optimiser",
    "ADAM",
    "NADAM",
    "ADAMW",
    "RADAM",
    "OADAM",
    "ADAGrad",
    "ADADelta",
    "step_many_",
]

EPS = 1e-8

_MIGRATE = "`fluxtrain-migrate` rewrites old scripts"


def _new(name: str) -> Any:
    """The rule-core class ``name`` (looked up at use, so the core can grow)."""
    try:
        return getattr(_rules, name)
    except AttributeError:
        raise NotImplementedError(
            f"the rule core has no {name} rule yet (fluxtrain.core.rules.{name})"
        ) from None


class _StateField:
    """The per-parameter state under a Flux field name (``state``, ``velocity``, ``acc``,
    ``current``).

    Reading gives fluxtrain's state dictionary. A user's own optimiser (one that
    overrides ``apply_``) may assign the field, as Flux users gave their structs an
    ``IdDict`` field of that name: the value is then its own attribute. On a built-in
    optimiser, assigning an empty dict (``opt.state = {}``, Flux's ``IdDict()``)
    forgets every parameter's state; anything else is refused.
    """

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        if self.name in d:
            return d[self.name]
        return obj._states

    def __set__(self, obj: Any, value: Any) -> None:
        if _is_custom(obj):
            obj.__dict__[self.name] = value
            return
        if isinstance(value, Mapping) and len(value) == 0:
            object.__setattr__(obj, "_states", WeakIdKeyDictionary())
            obj.__dict__.pop("_ps_plan", None)
            return
        raise AttributeError(
            f"{type(obj).__name__}.{self.name} is the optimiser's per-parameter state: it can "
            f"be reset with opt.{self.name} = {{}} but not replaced by a "
            f"{type(value).__name__}; a subclass with its own apply_ may keep any "
            f"{self.name} it likes"
        )


class AbstractOptimiser:
    """Base class of the old (implicit-style) optimisers of ``fluxtrain.optimise``.

    Subclasses list their hyperparameter names in ``_hyper`` and build their
    rule-core rule in :meth:`_new_rule`. The protocol used by the rest of
    fluxtrain:

    * ``__fluxtrain_translate__()`` -> the new-style rule with the same arithmetic;
    * ``__fluxtrain_state__(x)`` -> a copy of the accumulated state for
      parameter ``x`` in that rule's layout, or ``None``;
    * ``apply_(x, dx)`` (also spelled ``apply``) -> the step for ``x``
      (Flux's ``apply!``; advances the state).

    **A user-defined old optimiser** (as Flux 0.13 users wrote them, after
    Flux's own) subclasses this class, sets its own fields in its own
    ``__init__`` (calling ``super().__init__()`` is not needed), may keep its
    own per-parameter state in a field of any name (``self.state = {}``, as
    Flux's ``IdDict`` field; a dict keyed by the tensor finds it by identity),
    and overrides ``apply_(self, x, dx)`` (or ``apply``) to return the step:
    ``update_`` subtracts it, ``x -= step``, as Flux's ``update!`` does with
    ``apply!``'s result. ``dx`` is a private copy of the gradient, which
    ``apply_`` may overwrite and return (Flux's ``apply!`` does). Such an
    optimiser works unchanged with implicit ``update_(opt, ps, gs)``,
    ``update_(opt, x, g)`` and ``train_`` (alone or inside an ``Optimiser``
    chain) but cannot be translated by ``setup``. Its state is its own:
    fluxtrain cannot roll it back when a step fails part way.

    >>> import warnings, torch, fluxtrain
    >>> from fluxtrain.optimise import AbstractOptimiser
    >>> warnings.simplefilter("ignore")
    >>> class MyMomentum(AbstractOptimiser):
    ...     def __init__(self, eta=0.01, rho=0.9):
    ...         self.eta = eta
    ...         self.rho = rho
    ...         self.state = {}
    ...     def apply_(self, x, dx):
    ...         v = self.state.setdefault(x, torch.zeros_like(x))
    ...         v.mul_(self.rho).sub_(self.eta * dx)      # v = rho*v - eta*dx
    ...         return dx.copy_(-v)                       # the step: x -= -v
    >>> x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    >>> opt = MyMomentum()
    >>> _ = fluxtrain.update_(opt, x, torch.tensor([0.5, -0.25], dtype=torch.float64))
    >>> x.tolist(), opt.state[x].tolist()
    ([0.995, -1.9975], [-0.005, 0.0025])
    """

    _hyper: ClassVar[tuple[str, ...]] = ()
    _states: WeakIdKeyDictionary
    _cache: tuple[Any, AbstractRule] | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # the internal fields are made here, so that a user's subclass whose own
        # __init__ does not call super().__init__() (Flux users wrote none) has them
        self = super().__new__(cls)
        object.__setattr__(self, "_states", WeakIdKeyDictionary())
        object.__setattr__(self, "_cache", None)
        return self

    def __init__(self) -> None:
        object.__setattr__(self, "_states", WeakIdKeyDictionary())
        object.__setattr__(self, "_cache", None)

    # ------------------------------------------------------------------ hyperparameters
    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._hyper and "_cache" in self.__dict__:
            old = self.__dict__.get(name)
            object.__setattr__(self, name, value)
            if not all(n in self.__dict__ for n in self._hyper):
                return  # still in __init__
            try:
                self._rule()
            except NotImplementedError:
                object.__setattr__(self, "_cache", None)  # the core rule has not landed yet
            except Exception:
                object.__setattr__(self, name, old)
                object.__setattr__(self, "_cache", None)
                raise
            return
        object.__setattr__(self, name, value)

    def _new_rule(self) -> AbstractRule:
        raise NotImplementedError(f"{type(self).__name__} must define _new_rule()")

    def _key(self) -> tuple[Any, ...]:
        # the types too: 1, 1.0 and True are equal but make different rules
        vals = tuple(map(getattr, repeat(self), self._hyper))
        return tuple(map(type, vals)), vals

    def _rule(self) -> AbstractRule:
        """The rule-core rule for the current hyperparameters (cached until one changes)."""
        key = self._key()
        cache = self._cache
        if cache is None or cache[0] != key:
            cache = (key, self._new_rule())
            object.__setattr__(self, "_cache", cache)
        return cache[1]

    # ------------------------------------------------------------------ state
    state = _StateField(
        "state", "Per-parameter state (tensor -> state in the new rule's layout)."
    )

    def _peek_state(self, x: torch.Tensor) -> State | None:
        return self._states.get(x)

    def _has_state(self, x: torch.Tensor) -> bool:
        return x in self._states

    def _get_state(self, x: torch.Tensor) -> State:
        if x not in self._states:
            self._states[x] = self._rule().init(x)
        return self._states[x]

    def _put_state(self, x: torch.Tensor, s: State) -> None:
        self._states[x] = s

    def _finish_step(self) -> None:
        """Called once after every update step (ExpDecay publishes its decayed eta)."""

    # ------------------------------------------------------------------ protocol
    def __fluxtrain_translate__(self) -> AbstractRule:
        """The new-style rule that computes the same steps (a snapshot)."""
        if _is_custom(self):
            who = type(self).__name__
            if isinstance(self, Optimiser):
                who = next(type(o).__name__ for o in self.os if _is_custom(o))
                who = f"{who}, a member of this Optimiser"
            raise TypeError(
                f"setup does not know how to translate this old-style implicit rule "
                f"({who}, which has its own apply_) to a new-style explicit rule: write it "
                "as a subclass of fluxtrain.optimisers.AbstractRule (init and apply) instead, "
                "or keep the implicit style for it"
            )
        return self._rule()

    def __fluxtrain_state__(self, x: torch.Tensor) -> State | None:
        """A copy of the state accumulated for ``x`` (new layout), or None if none yet."""
        if not self._has_state(x):
            return None
        return clone_state(self._peek_state(x))

    def apply(self, x: torch.Tensor, dx: torch.Tensor) -> Step:
        """Flux's ``apply!``: advance the state of ``x`` and return its step (``x`` unchanged).

        >>> import torch
        >>> from fluxtrain.optimise import ExpDecay
        >>> o = ExpDecay(0.2, 0.5, 1, 1e-3)
        >>> p = torch.zeros(1, dtype=torch.float64)
        >>> [o.apply_(p, torch.ones(1, dtype=torch.float64)).item() for _ in range(3)]
        [0.1, 0.05, 0.025]
        """
        if _is_custom(self):  # a user's class that overrides only apply_: that one
            return _user_apply(self, x, dx)
        return step_many_(self, [x], [dx], subtract=False)[0]

    def apply_(self, x: torch.Tensor, dx: torch.Tensor) -> Step:
        """The same as :meth:`apply` (Julia's ``apply!``, spelled as fluxtrain spells ``!``)."""
        if _is_custom(self):
            return _user_apply(self, x, dx)
        return step_many_(self, [x], [dx], subtract=False)[0]

    # ------------------------------------------------------------------ copying
    def __getstate__(self) -> dict[str, Any]:
        """Pickling and copying keep the hyperparameters, not the per-parameter state.

        The state is keyed by tensor identity, which does not survive pickling;
        to save training state, translate: ``fluxtrain.setup(opt, model)``.
        """
        return {
            k: v for k, v in self.__dict__.items() if k not in ("_states", "_cache", "_ps_plan")
        }

    def __setstate__(self, d: dict[str, Any]) -> None:
        object.__setattr__(self, "_states", WeakIdKeyDictionary())
        object.__setattr__(self, "_cache", None)
        for k, v in d.items():
            object.__setattr__(self, k, v)

    # ------------------------------------------------------------------ printing
    def __repr__(self) -> str:
        names: Sequence[str] = self._hyper
        if not names and _is_custom(self):  # a user's optimiser: its own scalar fields
            names = [
                k for k, v in self.__dict__.items()
                if not k.startswith("_") and isinstance(v, (int, float, tuple, str))
            ]
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__name__}({args})"


def _user_apply(opt: AbstractOptimiser, x: torch.Tensor, dx: torch.Tensor) -> Step:
    """The step of a user's optimiser (its own ``apply_``/``apply``), or of an ``Optimiser``
    chain holding one (each member's step fed to the next, as Flux's ``apply!`` of a chain)."""
    if isinstance(opt, Optimiser):
        step: Step = dx
        for o in opt.os:
            if step is None:
                break
            step = _user_apply(o, x, step) if _is_custom(o) else o.apply(x, step)
        return step
    t = type(opt)
    f = t.apply_ if t.apply_ is not AbstractOptimiser.apply_ else t.apply
    return f(opt, x, dx)  # type: ignore[no-any-return]


def step_many_(
    opt: AbstractOptimiser,
    xs: Sequence[torch.Tensor],
    dxs: Sequence[torch.Tensor],
    *,
    subtract: bool = True,
) -> list[Step]:
    """One optimiser step for many parameters at once; ``x -= step`` when ``subtract``.

    Runs ``opt``'s rule-core rule through :func:`fluxtrain.core.apply_batched`
    and subtracts with :func:`fluxtrain.core.subtract_many_`. Parameters must
    be writable in place (the implicit style mutates the model). Plain
    ``Descent``/``Momentum``/``Adam`` with ``subtract`` take the fused path of
    :mod:`fluxtrain.core.plan` (same bits, no allocation); their steps were
    subtracted in place and are returned as ``None``.
    """
    if subtract:
        for x in xs:
            if not maywrite(x):
                raise TypeError(
                    f"implicit update_ changes parameters in place, but a parameter of shape "
                    f"{tuple(x.shape)} is read-only (e.g. a numpy array with writeable=False); "
                    "make it writable or use the explicit style, whose update returns new arrays"
                )
            if torch._debug_has_internal_overlap(x) == 1:
                raise TypeError(
                    f"implicit update_ changes parameters in place, but a parameter of shape "
                    f"{tuple(x.shape)} and strides {x.stride()} has elements sharing memory "
                    "(an expanded, stride-0 view); train a real tensor (x.clone()) instead"
                )
    if _is_custom(opt):
        # A user's apply_ keeps its own state: fluxtrain cannot roll it back. The steps
        # are all computed before any parameter changes. The callers hand over private
        # copies of the gradients, which apply_ may overwrite (as Flux's apply! did).
        steps: list[Step] = [_user_apply(opt, x, dx) for x, dx in zip(xs, dxs)]
        for i, st in enumerate(steps):
            if st is not None and not isinstance(st, torch.Tensor):
                raise TypeError(
                    f"{type(opt).__name__}.apply_(x, dx) must return the step (a tensor "
                    f"subtracted from x), got {type(st).__name__} for parameter {i}"
                )
        if subtract:
            subtract_many_(list(xs), steps)
        return steps
    rule = opt._rule()
    # The rules update state tensors in place (as Flux's did): keep a copy, and
    # if anything fails before the commit, write it back, so that an exception
    # (or KeyboardInterrupt) leaves the parameters and the optimiser's state
    # exactly as they were.
    # Plain Descent/Momentum/Adam take the fused path (fluxtrain.core.plan): the
    # rule itself runs inside the commit, on checked inputs, so there is nothing
    # to back up and nothing is allocated per step.
    had = [opt._has_state(x) for x in xs]
    if not all(had) and type(opt)._get_state is AbstractOptimiser._get_state:
        # the missing states made together, as setup makes them (Adam: every m, then
        # every v, so that each slot's tensors lie next to each other); rolled back below
        # with the rest if the step fails
        fresh = list({id(x): x for x, h in zip(xs, had) if not h}.values())
        for x, s in zip(fresh, rule.init_many(fresh)):
            opt._states[x] = s  # (what _get_state would store)
    origs = [opt._get_state(x) for x in xs]
    backup: list[Any] = []
    committed = [False]  # set inside the commit, before a held-back SIGINT is raised
    try:
        pending = plan.prepare(rule, origs, xs, dxs) if subtract else None
        if pending is not None:
            def store(order: list[int] | None, new: list[State]) -> None:
                for i, s in zip(range(len(new)) if order is None else order, new):
                    opt._put_state(xs[i], s)

            _commit_fused(opt, pending, store, committed)
            return [None] * len(xs)
        backup = [clone_state(s) for s in origs]
        new_states, steps = apply_batched(rule, origs, list(xs), list(dxs))
        with defer_interrupts():  # commit: parameters and state together
            if subtract:
                subtract_many_(list(xs), steps)
            for x, s in zip(xs, new_states):
                opt._put_state(x, s)
            opt._finish_step()
            committed[0] = True  # a SIGINT held back above is raised after this
    except BaseException:
        if committed[0]:
            raise
        with defer_interrupts():
            for x, h, o, b in zip(xs, had, origs, backup or origs):
                if backup:
                    restore_state(o, b)
                if h:
                    opt._put_state(x, o)
                else:
                    _forget(opt, x)
        raise
    return steps


_NONE: Any = object()


def fast_states(opt: AbstractOptimiser) -> bool:
    """Whether ``opt`` keeps its state the plain way (``opt._states``, a built-in rule).

    Only such optimisers take :func:`step_fused_`, which reads and writes that
    dictionary through cached keys (see :func:`state_keys`).
    """
    t = type(opt)
    return (
        t._get_state is AbstractOptimiser._get_state
        and t._put_state is AbstractOptimiser._put_state
        and t._has_state is AbstractOptimiser._has_state
        and type(opt.__dict__.get("_states")) is WeakIdKeyDictionary
        and not _is_custom(opt)
    )


def state_keys(opt: AbstractOptimiser, xs: Sequence[torch.Tensor]) -> list[Any]:
    """The keys ``opt.state`` stores for ``xs`` (``None`` where ``x`` has no state yet).

    A stored key found by identity makes a later lookup a plain dict hit (a
    fresh ``WeakIdRef`` per lookup costs about 2 us, mostly in its ``__eq__``).
    Any live reference to ``x`` still finds ``x``'s entry (the keys compare by
    referent identity), so a key made stale by a delete and re-insert of the
    entry only costs speed. The keys are weak: nothing here keeps ``x`` alive.
    """
    by_id: dict[int, Any] = {}
    for ref in list(opt._states.data):
        by_id.setdefault(ref._id, []).append(ref)
    out: list[Any] = []
    for x in xs:
        hit = None
        for ref in by_id.get(id(x), ()):
            if ref() is x:
                hit = ref
                break
        out.append(hit)
    return out


def step_fused_(
    opt: AbstractOptimiser, xs: list[torch.Tensor], dxs: list[torch.Tensor], keys: list[Any]
) -> bool | None:
    """:func:`step_many_` for a plain optimiser whose rule takes the fused path.

    ``keys[i]`` is the stored ``opt.state`` key of ``xs[i]`` (from
    :func:`state_keys`); every ``xs[i]`` must already have a state. Returns
    ``True`` when done; ``None`` (a state is missing) or ``False`` (the rule is
    not a plain Descent/Momentum/Adam, or :func:`fluxtrain.core.plan.prepare`
    refuses a leaf), having changed nothing, when it cannot; the caller then runs
    :func:`step_many_`. The gradients are read, never written or kept, so the
    caller need not copy them. Same commit as :func:`step_many_`'s fused branch.
    """
    rule = opt._rule()
    if not plan.trusted(rule):
        return False
    data = opt._states.data
    origs = _stored(data, keys)
    if origs is None:
        return None
    pending = plan.prepare(rule, origs, xs, dxs)
    if pending is None:
        return False
    done = [False]

    def store(order: list[int] | None, new: list[State]) -> None:
        # existing entries: the stored keys are kept
        if order is None:  # one group, in order: the usual case
            if not all(map(is_, new, origs)):  # (Descent/Momentum keep their state objects)
                data.update(zip(keys, new))
            return
        for i, s in zip(order, new):
            if s is not origs[i]:
                data[keys[i]] = s

    try:
        _commit_fused(opt, pending, store, done)
    except BaseException:
        if not done[0]:
            with defer_interrupts():
                for k, o in zip(keys, origs):
                    data[k] = o
        raise
    return True


def _stored(data: dict[Any, Any], keys: list[Any]) -> list[Any] | None:
    """The states stored under ``keys`` in ``data`` (``opt._states.data``); ``None`` if one
    is missing.

    The usual case, every entry and in ``keys``' order, is read without hashing a key
    (a weak key's ``__hash__`` is a Python call):
    :func:`fluxtrain.core.tensormeta.values_if_keys`.
    """
    got = tensormeta.values_if_keys(data, keys)
    if got is not None:
        return got
    origs = list(map(data.get, keys, repeat(_NONE)))
    if any(map(is_, origs, repeat(_NONE))):
        return None
    return origs


def _commit_fused(
    opt: AbstractOptimiser,
    pending: list[plan.Pending],
    store: Callable[[list[int] | None, list[State]], None],
    done: list[bool],
) -> None:
    """The commit of a fused step: run the checked steps (parameters and state in place),
    ``store(order, states)`` (``states[j]`` is the new state of the ``order[j]``-th leaf
    given to ``plan.prepare``; ``order`` None: of the ``j``-th), finish the step; all with
    SIGINT deferred. ``done[0]`` is set before a held-back interrupt is raised."""
    with defer_interrupts():
        # stored before the runs (which raise nothing), while the old states are in cache
        if len(pending) == 1:  # one group: all the leaves, in order
            store(None, pending[0].states)
        else:
            store([i for p in pending for i in p.idx], [s for p in pending for s in p.states])
        for p in pending:
            p.run()  # parameters and states in place: nothing left to subtract
        opt._finish_step()
        done[0] = True


def _forget(opt: AbstractOptimiser, x: torch.Tensor) -> None:
    """Drop the state of ``x`` (made by a step that then failed)."""
    if isinstance(opt, Optimiser):
        for o in opt.os:
            _forget(o, x)
    else:
        opt._states.pop(x, None)


def _is_custom(opt: AbstractOptimiser) -> bool:
    """A user's old optimiser that defines its own ``apply_``/``apply`` (Flux's ``apply!``),
    or an ``Optimiser`` chain with such a member."""
    t = type(opt)
    if t is Optimiser:
        return any(map(_is_custom, opt.os))  # type: ignore[attr-defined]
    return t.apply_ is not AbstractOptimiser.apply_ or t.apply is not AbstractOptimiser.apply


def is_custom(opt: AbstractOptimiser) -> bool:
    """Whether ``opt`` runs a user's own ``apply_`` (see :class:`AbstractOptimiser`)."""
    return _is_custom(opt)


def _check_hyper_tuple(name: str, owner: str, value: Any) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{owner}: {name}={value!r} is not a tuple; pass e.g. {name}=(0.9, 0.999)")


# ---------------------------------------------------------------------------- the rules
class Descent(AbstractOptimiser):
    """Plain gradient descent: ``x -= eta * dx`` (Flux.Optimise.Descent, ``eta=0.1``).

    >>> import torch
    >>> from fluxtrain.optimise import Descent
    >>> opt = Descent(0.1)
    >>> x = torch.tensor([1.0, -2.0])
    >>> opt.apply(x, torch.tensor([0.5, -0.25])).tolist()
    [0.05000000074505806, -0.02500000037252903]
    >>> opt.eta = 0.01   # mutable: takes effect on the next step
    >>> opt
    Descent(eta=0.01)
    """

    _hyper = ("eta",)

    def __init__(self, eta: float = 0.1) -> None:
        super().__init__()
        self.eta = eta

    def _new_rule(self) -> AbstractRule:
        return _new("Descent")(self.eta)  # type: ignore[no-any-return]


class Momentum(AbstractOptimiser):
    """Gradient descent with momentum (``eta=0.01, rho=0.9``); state: the velocity."""

    _hyper = ("eta", "rho")

    def __init__(self, eta: float = 0.01, rho: float = 0.9) -> None:
        super().__init__()
        self.eta = eta
        self.rho = rho

    velocity = _StateField("velocity", "Flux's field name for the per-parameter state.")

    def _new_rule(self) -> AbstractRule:
        return _new("Momentum")(self.eta, self.rho)  # type: ignore[no-any-return]


class Nesterov(AbstractOptimiser):
    """Nesterov momentum (``eta=0.001, rho=0.9``); state: the velocity."""

    _hyper = ("eta", "rho")

    def __init__(self, eta: float = 0.001, rho: float = 0.9) -> None:
        super().__init__()
        self.eta = eta
        self.rho = rho

    velocity = _StateField("velocity", "Flux's field name for the per-parameter state.")

    def _new_rule(self) -> AbstractRule:
        return _new("Nesterov")(self.eta, self.rho)  # type: ignore[no-any-return]


class RMSProp(AbstractOptimiser):
    """RMSProp, never centred (``eta=0.001, rho=0.9, epsilon=1e-8``)."""

    _hyper = ("eta", "rho", "epsilon")

    def __init__(self, eta: float = 0.001, rho: float = 0.9, epsilon: float = EPS) -> None:
        super().__init__()
        self.eta = eta
        self.rho = rho
        self.epsilon = epsilon

    acc = _StateField("acc", "Flux's field name for the per-parameter state.")

    def _new_rule(self) -> AbstractRule:
        return _new("RMSProp")(self.eta, self.rho, self.epsilon)  # type: ignore[no-any-return]


class _AdamLike(AbstractOptimiser):
    _hyper = ("eta", "beta", "epsilon")
    _new_name: ClassVar[str] = "Adam"

    def __init__(
        self, eta: float = 0.001, beta: tuple[float, float] = (0.9, 0.999), epsilon: float = EPS
    ) -> None:
        super().__init__()
        self.eta = eta
        self.beta = beta
        self.epsilon = epsilon

    def _new_rule(self) -> AbstractRule:
        _check_hyper_tuple("beta", type(self).__name__, self.beta)
        return _new(self._new_name)(self.eta, self.beta, self.epsilon)  # type: ignore[no-any-return]


class Adam(_AdamLike):
    """Adam (``eta=0.001, beta=(0.9, 0.999), epsilon=1e-8``).

    >>> import torch
    >>> from fluxtrain.optimise import Adam
    >>> x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    >>> opt = Adam()
    >>> _ = opt.apply(x, torch.tensor([0.5, -0.25], dtype=torch.float64))
    >>> opt.state[x].beta_t  # doctest: +SKIP
    (0.81, 0.998001)
    """

    _new_name = "Adam"


class RAdam(_AdamLike):
    """Rectified Adam (``eta=0.001, beta=(0.9, 0.999), epsilon=1e-8``)."""

    _new_name = "RAdam"


class AdaMax(_AdamLike):
    """AdaMax, Adam with the infinity norm (``eta=0.001, beta=(0.9, 0.999)``)."""

    _new_name = "AdaMax"


class OAdam(_AdamLike):
    """Optimistic Adam (``eta=0.001, beta=(0.5, 0.9), epsilon=1e-8``; the code's default)."""

    _new_name = "OAdam"

    def __init__(
        self, eta: float = 0.001, beta: tuple[float, float] = (0.5, 0.9), epsilon: float = EPS
    ) -> None:
        super().__init__(eta, beta, epsilon)


class AMSGrad(_AdamLike):
    """AMSGrad (``eta=0.001, beta=(0.9, 0.999), epsilon=1e-8``)."""

    _new_name = "AMSGrad"


class NAdam(_AdamLike):
    """Nesterov Adam (``eta=0.001, beta=(0.9, 0.999), epsilon=1e-8``)."""

    _new_name = "NAdam"


class AdaBelief(_AdamLike):
    """AdaBelief (``eta=0.001, beta=(0.9, 0.999), epsilon=1e-8``).

    Flux 0.13's AdaBelief used ``epsilon**2`` wherever the new rule uses
    ``epsilon``, so this one runs (and translates to) the new
    ``AdaBelief(eta, beta, epsilon**2)``: the same numbers as Flux 0.13
    (Flux's own translation passed ``epsilon`` unchanged, which did not).
    """

    _new_name = "AdaBelief"

    def _new_rule(self) -> AbstractRule:
        _check_hyper_tuple("beta", "AdaBelief", self.beta)
        eps = float(self.epsilon) ** 2
        return _new("AdaBelief")(self.eta, self.beta, eps)  # type: ignore[no-any-return]


class AdaGrad(AbstractOptimiser):
    """AdaGrad (``eta=0.1, epsilon=1e-8``); the accumulator starts at ``epsilon``."""

    _hyper = ("eta", "epsilon")

    def __init__(self, eta: float = 0.1, epsilon: float = EPS) -> None:
        super().__init__()
        self.eta = eta
        self.epsilon = epsilon

    acc = _StateField("acc", "Flux's field name for the per-parameter state.")

    def _new_rule(self) -> AbstractRule:
        return _new("AdaGrad")(self.eta, self.epsilon)  # type: ignore[no-any-return]


class AdaDelta(AbstractOptimiser):
    """AdaDelta (``rho=0.9, epsilon=1e-8``); no learning rate."""

    _hyper = ("rho", "epsilon")

    def __init__(self, rho: float = 0.9, epsilon: float = EPS) -> None:
        super().__init__()
        self.rho = rho
        self.epsilon = epsilon

    def _new_rule(self) -> AbstractRule:
        return _new("AdaDelta")(self.rho, self.epsilon)  # type: ignore[no-any-return]


class WeightDecay(AbstractOptimiser):
    """L2 weight decay: ``dx + wd * x`` (field ``wd``, default ``0``)."""

    _hyper = ("wd",)

    def __init__(self, wd: float = 0) -> None:
        super().__init__()
        self.wd = wd

    def _new_rule(self) -> AbstractRule:
        return _new("WeightDecay")(self.wd)  # type: ignore[no-any-return]


class ClipValue(AbstractOptimiser):
    """Clamp each gradient entry to ``[-thresh, thresh]`` (translates to ``ClipGrad``)."""

    _hyper = ("thresh",)

    def __init__(self, thresh: float) -> None:
        super().__init__()
        self.thresh = thresh

    def _new_rule(self) -> AbstractRule:
        return _new("ClipGrad")(self.thresh)  # type: ignore[no-any-return]


class ClipNorm(AbstractOptimiser):
    """Rescale a gradient whose 2-norm exceeds ``thresh`` (per array).

    Runs the new ``ClipNorm(thresh)`` (p=2, throw=True): a non-finite norm
    raises ``DomainError`` where Flux 0.13's silently did nothing.
    """

    _hyper = ("thresh",)

    def __init__(self, thresh: float) -> None:
        super().__init__()
        self.thresh = thresh

    def _new_rule(self) -> AbstractRule:
        return _new("ClipNorm")(self.thresh)  # type: ignore[no-any-return]


class InvDecay(AbstractOptimiser):
    """Inverse decay ``dx / (1 + gamma*n)`` with a counter ``n`` per parameter (``gamma=0.001``).

    Runs (and translates to) fluxtrain's own rule ``fluxtrain.optimisers.InvDecay``:
    Optimisers.jl has none.
    """

    _hyper = ("gamma",)

    def __init__(self, gamma: float = 0.001) -> None:
        super().__init__()
        self.gamma = gamma

    def _new_rule(self) -> AbstractRule:
        return _new("InvDecay")(self.gamma)  # type: ignore[no-any-return]


class ExpDecay(AbstractOptimiser):
    """Exponential decay of the step size (``eta=0.001, decay=0.1, decay_step=1000,
    clip=1e-4, start=0``; Flux's constructor default ``start=0``).

    Runs (and translates to) fluxtrain's own rule ``fluxtrain.optimisers.ExpDecay``,
    whose state per parameter carries the step counter and the current
    (decayed) rate. After every step this object publishes the decayed rate as
    ``opt.eta``, as Flux 0.13 mutated its ``eta`` field, so old code reading
    ``opt.eta`` sees the schedule. Parameters seen for the first time later
    start from the current ``opt.eta``. Assigning ``opt.eta`` yourself resets
    the current rate of every parameter to the new value (the counters keep
    running).

    >>> import torch
    >>> from fluxtrain.optimise import ExpDecay
    >>> o = ExpDecay(0.2, 0.5, 1, 1e-3)
    >>> p = torch.zeros(1, dtype=torch.float64)
    >>> [o.apply(p, torch.ones(1, dtype=torch.float64)).item() for _ in range(3)]  # doctest: +SKIP
    [0.1, 0.05, 0.025]
    """

    _hyper = ("eta", "decay", "decay_step", "clip", "start")
    _published: float | None

    def __init__(
        self,
        eta: float = 0.001,
        decay: float = 0.1,
        decay_step: int = 1000,
        clip: float = 1e-4,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.eta = eta
        self.decay = decay
        self.decay_step = decay_step
        self.clip = clip
        self.start = start
        object.__setattr__(self, "_published", None)

    @property
    def step(self) -> int:
        """Flux's field name for ``decay_step``."""
        return self.decay_step

    current = _StateField("current", "Flux's field name for the per-parameter state.")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "eta" and "_published" in self.__dict__ and value != self._published:
            # the user set the rate: every parameter continues from the new value
            for x in list(self._states.keys()):
                self._states[x] = _with_eta(self._states[x], float(value))

    def _new_rule(self) -> AbstractRule:
        return _new("ExpDecay")(  # type: ignore[no-any-return]
            self.eta, self.decay, self.decay_step, self.clip, self.start
        )

    def _finish_step(self) -> None:
        etas = [e for e in (_eta_of(s) for s in self._states.values()) if e is not None]
        if etas:
            new = min(etas)
            object.__setattr__(self, "_published", new)
            object.__setattr__(self, "eta", new)


def _eta_of(s: State) -> float | None:
    for name in ("eta", "eta_current", "current"):
        v = getattr(s, name, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _with_eta(s: State, eta: float) -> State:
    for name in ("eta", "eta_current", "current"):
        if isinstance(getattr(s, name, None), (int, float)) and hasattr(s, "_replace"):
            return s._replace(**{name: eta})
    return s


class Optimiser(AbstractOptimiser):
    """Compose old optimisers: each transforms the previous one's step (``OptimiserChain``).

    List-like: ``opt[0]``, ``opt[1:]`` (a new Optimiser sharing the members and
    hence their state), ``len``, iteration, ``opt[i] = o``, ``push``/``append``.
    Translates to ``fluxtrain.optimisers.OptimiserChain`` of the members'
    translations; its state for a parameter is the tuple of the members' states.

    >>> from fluxtrain.optimise import Optimiser, ClipValue, Adam
    >>> opt = Optimiser(ClipValue(1e-3), Adam(1e-3))
    >>> opt[1].eta = 1e-4
    >>> opt
    Optimiser(ClipValue(thresh=0.001), Adam(eta=0.0001, beta=(0.9, 0.999), epsilon=1e-08))
    """

    os: list[AbstractOptimiser]

    def __init__(self, *os: Any) -> None:
        super().__init__()
        members: list[Any]
        if len(os) == 1 and not isinstance(os[0], AbstractOptimiser):
            members = list(os[0])
        else:
            members = list(os)
        for i, o in enumerate(members):
            _check_member(o, i)
        object.__setattr__(self, "os", members)

    def _key(self) -> tuple[Any, ...]:
        return tuple((id(o), o._key()) for o in self.os)

    def _new_rule(self) -> AbstractRule:
        return _new("OptimiserChain")(*(o._rule() for o in self.os))  # type: ignore[no-any-return,unused-ignore]

    def _has_state(self, x: torch.Tensor) -> bool:
        return any(o._has_state(x) for o in self.os)

    def _peek_state(self, x: torch.Tensor) -> State | None:
        if not self._has_state(x):
            return None
        return tuple(o._peek_state(x) if o._has_state(x) else o._rule().init(x) for o in self.os)

    def _get_state(self, x: torch.Tensor) -> State:
        return tuple(o._get_state(x) for o in self.os)

    def _put_state(self, x: torch.Tensor, s: State) -> None:
        for o, si in zip(self.os, s):
            o._put_state(x, si)

    def _finish_step(self) -> None:
        for o in self.os:
            o._finish_step()

    @property
    def state(self) -> WeakIdKeyDictionary:
        raise AttributeError("an Optimiser keeps no state itself: see opt[i].state")

    # ------------------------------------------------------------------ list API
    def __len__(self) -> int:
        return len(self.os)

    def __iter__(self) -> Iterator[AbstractOptimiser]:
        return iter(list(self.os))

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return Optimiser(self.os[i])
        return self.os[i]

    def __setitem__(self, i: int, o: AbstractOptimiser) -> None:
        _check_member(o, i)
        self.os[i] = o

    def push(self, *os: AbstractOptimiser) -> Optimiser:
        for o in os:
            _check_member(o, len(self.os))
            self.os.append(o)
        return self

    append = push

    def first(self) -> AbstractOptimiser:
        return self.os[0]

    def last(self) -> AbstractOptimiser:
        return self.os[-1]

    def __repr__(self) -> str:
        return f"Optimiser({', '.join(map(repr, self.os))})"


def _check_member(o: object, i: int) -> None:
    if not isinstance(o, AbstractOptimiser):
        hint = ""
        if isinstance(o, AbstractRule):
            hint = (
                "; this is a new-style rule: use fluxtrain.optimisers.OptimiserChain for "
                "new rules, or the old optimiser of the same name from fluxtrain.optimise"
            )
        raise TypeError(f"Optimiser: member {i} is {type(o).__name__}, not an old optimiser{hint}")


def AdamW(
    eta: float = 0.001, beta: tuple[float, float] = (0.9, 0.999), decay: float = 0
) -> Optimiser:
    """Adam with decoupled weight decay, as Flux 0.13: Adam, then WeightDecay.

    ``AdamW(eta, beta, decay)`` is ``Optimiser(Adam(eta, beta), WeightDecay(decay))``.

    Change its learning rate with ``opt[0].eta = ...``. Translates to
    ``OptimiserChain(Adam(eta, beta, 1e-8), WeightDecay(decay))``, which computes
    the same as the new ``AdamW(eta, beta, decay, couple=False)``.

    >>> from fluxtrain.optimise import AdamW
    >>> AdamW(0.001, (0.9, 0.999), 0.1)
    Optimiser(Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08), WeightDecay(wd=0.1))
    """
    return Optimiser(Adam(eta, beta), WeightDecay(decay))


# ---------------------------------------------------------------------------- deprecated names
def _alias(old: str, new: Any) -> Any:
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_deprecated(
            f"{old} is deprecated, use {new.__name__} instead (renamed in Flux 0.13.4); {_MIGRATE}",
            stacklevel=2,
            key=old,
        )
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of :func:`{new.__name__}` (warns)."
    return alias


ADAM = _alias("ADAM", Adam)
NADAM = _alias("NADAM", NAdam)
ADAMW = _alias("ADAMW", AdamW)
RADAM = _alias("RADAM", RAdam)
OADAM = _alias("OADAM", OAdam)
ADAGrad = _alias("ADAGrad", AdaGrad)
ADADelta = _alias("ADADelta", AdaDelta)
