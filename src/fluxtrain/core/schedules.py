"""Hyperparameter schedules: any float hyperparameter of a rule may vary with the step.

A schedule is a frozen dataclass (hashable, readable ``repr``, parameters
validated at construction) called with the *count*, the number of steps the
rule has already taken, and returning a float. The first step uses
``schedule(0)`` (optax's and ``torch.optim.lr_scheduler.LambdaLR``'s
convention)::

    >>> from fluxtrain.optimisers import Adam
    >>> sched = WarmupCosine(init=0.0, peak=1e-3, warmup_steps=10, decay_steps=100)
    >>> sched(0), sched(5), sched(10), sched(100), sched(1000)
    (0.0, 0.0005, 0.001, 0.0, 0.0)
    >>> Adam(eta=sched)
    Adam(eta=WarmupCosine(init=0.0, peak=0.001, warmup_steps=10, decay_steps=100, \
end=0.0, exponent=1.0), beta=(0.9, 0.999), epsilon=1e-08)

Built-ins: :class:`Constant`, :class:`LinearRamp`, :class:`StepDecay`,
:class:`ExponentialDecay`, :class:`InverseTimeDecay`, :class:`WarmupCosine`
and :class:`Join` (optax's ``join_schedules``). A plain function becomes a
schedule with :meth:`Schedule.from_function`; rules accept only
:class:`Schedule` instances (a bare ``lambda`` is refused with that hint),
so that every rule stays hashable, printable and, for the built-ins,
checkpointable.

How it works (for every rule, built-in or your own ``AbstractRule``
subclass, with no change to the rule's code): at construction
``AbstractRule.__post_init__`` finds the fields holding a schedule (also inside
a tuple field such as ``beta``) and, only then, calls :func:`install`, which
validates the rule with every schedule replaced by its value at count 0 and
binds three instance attributes ``init``/``apply``/``apply_many`` that shadow
the class's methods:

* ``init(x)`` returns ``ScheduledState(count=0, state=<the concrete rule's init>)``;
* ``apply``/``apply_many`` read the count from the state, build the *concrete*
  rule (the same rule with each schedule replaced by its value, through
  ``dataclasses.replace``, so it is validated like any rule; a few recent
  counts are cached), call its method on the inner states and return
  ``ScheduledState(count + 1, new_inner)``. ``apply_many`` groups the states by
  count (normally all equal) so it stays bit-identical to ``apply``.

Rules without schedules are untouched: no wrapper, no extra test per step;
the class methods run exactly as before. Composite rules need nothing
special: each member of an ``OptimiserChain`` (or the rule inside
``MixedPrecision``) keeps its own counter, which advances only when that
member is applied (not while an earlier ``AccumGrad`` accumulates, not for
frozen leaves). ``adjust`` keeps the counter: a scheduled field adjusted to
a plain number becomes :class:`Constant` (bitwise the same numbers), and the
tree-level ``adjust_`` wraps the state of a rule that gains its first
schedule in ``ScheduledState(0, ...)`` (the schedule starts then).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import types
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any, NamedTuple

__all__ = [
    "Schedule",
    "Constant",
    "LinearRamp",
    "StepDecay",
    "ExponentialDecay",
    "InverseTimeDecay",
    "WarmupCosine",
    "Join",
    "FunctionSchedule",
    "ScheduledState",
    "has_schedule",
    "is_scheduled",
    "install",
    "concrete",
]


# ============================================================================ validation
def _real(cls: str, name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{cls}: {name}={value!r} is not a real number (got {type(value).__name__})"
        )
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{cls}: {name} must be finite, got {out!r}")
    if positive and out <= 0:
        raise ValueError(f"{cls}: {name} must be positive, got {out!r}")
    return out


def _int(cls: str, name: str, value: Any, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"{cls}: {name}={value!r} must be an integer number of steps "
            f"(got {type(value).__name__})"
        )
    out = int(value)
    if minimum is not None and out < minimum:
        raise ValueError(f"{cls}: {name} must be at least {minimum}, got {out}")
    return out


def _pow(a: float, p: float) -> float:
    """``a ** p`` for ``a > 0``, ``inf`` instead of Python's OverflowError."""
    try:
        return a**p
    except OverflowError:
        return math.inf


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


# ============================================================================ the base class
class Schedule:
    """Base class: a frozen dataclass whose :meth:`compute` maps the count to a float.

    Call it (``schedule(count)``) rather than ``compute``: the call checks the
    count (a non-negative integer) and the result (a real, non-NaN number).
    Subclass it as a ``@dataclasses.dataclass(frozen=True)`` for your own
    schedules, or wrap a function with :meth:`from_function`.

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Halve(Schedule):
    ...     init: float
    ...     def compute(self, count):
    ...         return self.init / 2 ** count
    >>> Halve(1.0)(3)
    0.125
    """

    def compute(self, count: int) -> float:
        """The hyperparameter's value when ``count`` steps have been taken."""
        raise NotImplementedError(f"{type(self).__name__} must define compute(self, count)")

    def __call__(self, count: int) -> float:
        if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
            raise TypeError(
                f"{self!r}: the count must be a non-negative integer, got {count!r}"
            )
        v = self.compute(int(count))
        if isinstance(v, bool) or not isinstance(v, Real) or math.isnan(v):
            raise TypeError(
                f"{self!r} returned {v!r} at count {count}; a schedule must return a real "
                "number (not NaN)"
            )
        return float(v)

    def __float__(self) -> float:
        raise TypeError(
            f"{self!r} is a schedule, not a number. A rule turns it into a number per step "
            "only if AbstractRule.__post_init__ runs (call super().__post_init__() in yours)"
        )

    @staticmethod
    def from_function(f: Callable[[int], float], name: str | None = None) -> FunctionSchedule:
        """Wrap a function ``count -> float`` as a schedule.

        Equality and hashing go by the function's identity; a wrapped function
        cannot be saved by :mod:`fluxtrain.checkpoint` (use a built-in or a
        ``Schedule`` subclass for that).

        >>> s = Schedule.from_function(lambda t: 0.1 * 0.5 ** t, name="halving")
        >>> s
        Schedule.from_function(halving)
        >>> s(2)
        0.025
        """
        return FunctionSchedule(f, name)


@dataclasses.dataclass(frozen=True, repr=False)
class FunctionSchedule(Schedule):
    """A function ``count -> float`` as a schedule (see :meth:`Schedule.from_function`)."""

    f: Callable[[int], float]
    name: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.f) or isinstance(self.f, Schedule):
            raise TypeError(
                f"Schedule.from_function needs a function of the count, got {self.f!r}"
            )
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"Schedule.from_function: name must be a string, got {self.name!r}")

    def compute(self, count: int) -> float:
        return self.f(count)

    def __repr__(self) -> str:
        label = self.name or getattr(self.f, "__qualname__", None) or repr(self.f)
        return f"Schedule.from_function({label})"


# ============================================================================ built-ins
@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """Always ``value``: bitwise the same steps as the plain float.

    >>> Constant(0.01)(12345)
    0.01
    """

    value: float

    def __post_init__(self) -> None:
        _set(self, "value", _real("Constant", "value", self.value))

    def compute(self, count: int) -> float:
        return self.value


@dataclasses.dataclass(frozen=True)
class LinearRamp(Schedule):
    """From ``init`` to ``end`` linearly over ``steps`` counts, then ``end``.

    ``init + (end - init) * min(count, steps) / steps`` (optax's ``linear_schedule``).

    >>> LinearRamp(0.0, 1.0, 4)(1), LinearRamp(0.0, 1.0, 4)(9)
    (0.25, 1.0)
    """

    init: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        _set(self, "init", _real("LinearRamp", "init", self.init))
        _set(self, "end", _real("LinearRamp", "end", self.end))
        _set(self, "steps", _int("LinearRamp", "steps", self.steps, 1))

    def compute(self, count: int) -> float:
        return self.init + (self.end - self.init) * (min(count, self.steps) / self.steps)


@dataclasses.dataclass(frozen=True)
class StepDecay(Schedule):
    """Multiply by ``decay`` every ``step_size`` counts: ``init * decay**(count // step_size)``.

    torch's ``StepLR(step_size, gamma)``.

    >>> s = StepDecay(1.0, 0.5, 10)
    >>> s(9), s(10), s(25)
    (1.0, 0.5, 0.25)
    """

    init: float
    decay: float
    step_size: int

    def __post_init__(self) -> None:
        _set(self, "init", _real("StepDecay", "init", self.init))
        _set(self, "decay", _real("StepDecay", "decay", self.decay))
        _set(self, "step_size", _int("StepDecay", "step_size", self.step_size, 1))

    def compute(self, count: int) -> float:
        k = count // self.step_size
        if self.decay < 0:  # sign alternates; the magnitude may still overflow
            return self.init * (-1) ** k * _pow(-self.decay, k)
        return self.init * _pow(self.decay, k)


def _shifted(count: int, start: int, steps: int, staircase: bool) -> float:
    c = max(count - start, 0)
    return float(c // steps) if staircase else c / steps


@dataclasses.dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """``init * decay**p`` with ``p = max(count - start, 0) / decay_steps`` (floored if
    ``staircase``), bounded by ``clip`` (a floor when ``decay < 1``, a ceiling when
    ``decay > 1``): optax's ``exponential_decay`` with ``start`` = ``transition_begin``.

    ``start`` may be negative (the decay then starts before the first step).
    The old ``ExpDecay(eta, decay, decay_step, clip, start)``'s rate, for a
    ``start`` that is a multiple of ``decay_step``, is
    ``ExponentialDecay(eta, decay, decay_step, start=start - 1, staircase=True, clip=clip)``
    (it decays when its own 1-based counter reaches a multiple of ``decay_step``).

    >>> s = ExponentialDecay(1.0, 0.5, 2)
    >>> s(0), s(1), s(2)
    (1.0, 0.7071067811865476, 0.5)
    >>> ExponentialDecay(1.0, 0.1, 1, clip=0.05)(5)
    0.05
    """

    init: float
    decay: float
    decay_steps: int = 1
    start: int = 0
    staircase: bool = False
    clip: float | None = None

    def __post_init__(self) -> None:
        name = "ExponentialDecay"
        _set(self, "init", _real(name, "init", self.init))
        _set(self, "decay", _real(name, "decay", self.decay, positive=True))
        _set(self, "decay_steps", _int(name, "decay_steps", self.decay_steps, 1))
        _set(self, "start", _int(name, "start", self.start, None))
        if not isinstance(self.staircase, bool):
            raise TypeError(f"{name}: staircase must be True or False, got {self.staircase!r}")
        if self.clip is not None:
            _set(self, "clip", _real(name, "clip", self.clip))

    def compute(self, count: int) -> float:
        v = self.init * _pow(self.decay, _shifted(count, self.start, self.decay_steps,
                                                  self.staircase))
        if self.clip is not None:
            v = max(v, self.clip) if self.decay < 1 else min(v, self.clip)
        return v


@dataclasses.dataclass(frozen=True)
class InverseTimeDecay(Schedule):
    """``init / (1 + decay * p)`` with ``p = max(count - start, 0) / decay_steps``
    (floored if ``staircase``): Keras' ``InverseTimeDecay``.

    The old ``InvDecay(gamma)`` scales the step by ``1 / (1 + gamma * n)`` with
    its own 1-based counter ``n``: that factor is ``InverseTimeDecay(1.0, gamma,
    start=-1)`` (the same float64 operations, so the same bits).

    >>> InverseTimeDecay(1.0, 1.0)(3)
    0.25
    """

    init: float
    decay: float
    decay_steps: int = 1
    start: int = 0
    staircase: bool = False

    def __post_init__(self) -> None:
        name = "InverseTimeDecay"
        _set(self, "init", _real(name, "init", self.init))
        _set(self, "decay", _real(name, "decay", self.decay))
        if self.decay < 0:
            raise ValueError(f"{name}: decay must be non-negative, got {self.decay!r}")
        _set(self, "decay_steps", _int(name, "decay_steps", self.decay_steps, 1))
        _set(self, "start", _int(name, "start", self.start, None))
        if not isinstance(self.staircase, bool):
            raise TypeError(f"{name}: staircase must be True or False, got {self.staircase!r}")

    def compute(self, count: int) -> float:
        p = _shifted(count, self.start, self.decay_steps, self.staircase)
        return self.init / (1 + self.decay * p)


@dataclasses.dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warm-up from ``init`` to ``peak`` over ``warmup_steps``, then a cosine
    decay to ``end`` reached at count ``decay_steps`` (the total, warm-up included),
    then ``end``: optax's ``warmup_cosine_decay_schedule``.

    For ``warmup_steps <= count``, with ``t = min(count - warmup_steps, D) / D`` and
    ``D = decay_steps - warmup_steps``: ``end + (peak - end) * (0.5 * (1 + cos(pi t)))**exponent``.

    >>> s = WarmupCosine(0.0, 1.0, 2, 6)
    >>> [round(s(c), 4) for c in range(8)]
    [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """

    init: float
    peak: float
    warmup_steps: int
    decay_steps: int
    end: float = 0.0
    exponent: float = 1.0

    def __post_init__(self) -> None:
        name = "WarmupCosine"
        _set(self, "init", _real(name, "init", self.init))
        _set(self, "peak", _real(name, "peak", self.peak))
        _set(self, "warmup_steps", _int(name, "warmup_steps", self.warmup_steps, 0))
        _set(self, "decay_steps", _int(name, "decay_steps", self.decay_steps, 1))
        _set(self, "end", _real(name, "end", self.end))
        _set(self, "exponent", _real(name, "exponent", self.exponent, positive=True))
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"{name}: decay_steps ({self.decay_steps}) is the total length, warm-up "
                f"included, so it must exceed warmup_steps ({self.warmup_steps})"
            )

    def compute(self, count: int) -> float:
        w = self.warmup_steps
        if count < w:
            return self.init + (self.peak - self.init) * (count / w)
        d = self.decay_steps - w
        t = min(count - w, d) / d
        cosine = 0.5 * (1 + math.cos(math.pi * t))
        return self.end + (self.peak - self.end) * cosine**self.exponent


@dataclasses.dataclass(frozen=True)
class Join(Schedule):
    """Piecewise schedule: ``schedules[i]`` from ``boundaries[i-1]`` on, each seeing the
    count relative to its start (optax's ``join_schedules``).

    ``boundaries`` are strictly increasing positive counts, one fewer than the
    schedules. Piecewise constant: ``Join([Constant(a), Constant(b)], [100])``.

    >>> s = Join([LinearRamp(0.0, 1.0, 10), StepDecay(1.0, 0.5, 5)], [10])
    >>> s(5), s(10), s(15)
    (0.5, 1.0, 0.5)
    """

    schedules: Sequence[Schedule]
    boundaries: Sequence[int]

    def __post_init__(self) -> None:
        if not isinstance(self.schedules, list | tuple) or not self.schedules:
            raise TypeError(f"Join: schedules must be a non-empty list, got {self.schedules!r}")
        for i, s in enumerate(self.schedules):
            if not isinstance(s, Schedule):
                raise TypeError(
                    f"Join: schedules[{i}] is {s!r}, not a Schedule (wrap a number as "
                    "Constant(x), a function as Schedule.from_function(f))"
                )
        if not isinstance(self.boundaries, list | tuple):
            raise TypeError(f"Join: boundaries must be a list of counts, got {self.boundaries!r}")
        bs = tuple(_int("Join", f"boundaries[{i}]", b, 1) for i, b in enumerate(self.boundaries))
        if len(bs) != len(self.schedules) - 1:
            raise ValueError(
                f"Join: {len(self.schedules)} schedules need {len(self.schedules) - 1} "
                f"boundaries, got {len(bs)}"
            )
        if any(a >= b for a, b in zip(bs, bs[1:])):
            raise ValueError(f"Join: boundaries must be strictly increasing, got {list(bs)}")
        _set(self, "schedules", tuple(self.schedules))
        _set(self, "boundaries", bs)

    def compute(self, count: int) -> float:
        i = bisect.bisect_right(self.boundaries, count)
        return self.schedules[i](count - (self.boundaries[i - 1] if i else 0))


# ============================================================================ rules with schedules
class ScheduledState(NamedTuple):
    """State of a rule with schedules: steps taken so far and the rule's own state."""

    count: int  # type: ignore[assignment]  # (shadows tuple.count, on purpose)
    state: Any


def _holds(v: Any) -> bool:
    return isinstance(v, Schedule) or (
        type(v) is tuple and any(isinstance(e, Schedule) for e in v)
    )


def _evaluate(v: Any, count: int) -> Any:
    if isinstance(v, Schedule):
        return v(count)
    return tuple(e(count) if isinstance(e, Schedule) else e for e in v)


def has_schedule(rule: Any) -> bool:
    """Whether some field of the dataclass ``rule`` holds a schedule."""
    return any(_holds(getattr(rule, f.name)) for f in dataclasses.fields(rule) if f.init)


def is_scheduled(rule: Any) -> bool:
    """Whether ``rule`` was installed with schedules (its states are ``ScheduledState``)."""
    return bool(getattr(rule, "_fluxtrain_schedules", ()))


_CACHE_SIZE = 8


def _build(rule: Any, count: int) -> Any:
    names = rule._fluxtrain_schedules
    values = {n: _evaluate(getattr(rule, n), count) for n in names}
    try:
        try:
            return dataclasses.replace(rule, **values)
        except TypeError:
            # a constructor that does not take its fields by keyword: copy the
            # fields and validate (raises again if the TypeError was validation's)
            new = object.__new__(type(rule))
            for f in dataclasses.fields(rule):
                _set(new, f.name, values.get(f.name, getattr(rule, f.name)))
            new._validate()
            return new
    except Exception as e:
        shown = ", ".join(f"{n}={getattr(rule, n)!r} is {values[n]!r}" for n in names)
        msg = f"{e} (at count {count}: {shown})"
        try:
            err = type(e)(msg)
        except Exception:
            raise e from None
        raise err from e


def concrete(rule: Any, count: int) -> Any:
    """``rule`` with every schedule replaced by its value at ``count`` (cached)."""
    cache = rule._fluxtrain_cache
    r = cache.get(count)
    if r is None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        r = cache[count] = _build(rule, count)
    return r


def _check_state(rule: Any, state: Any) -> ScheduledState:
    if type(state) is not ScheduledState or isinstance(state.count, bool) or not isinstance(
        state.count, int
    ):
        raise TypeError(
            f"{rule!r} has schedules, so its state must be a ScheduledState(count, state) "
            f"from its own init, got {type(state).__name__}; was the state made by setup "
            "with this rule? (adjust_ converts states; assigning Leaf.rule does not)"
        )
    return state


def _init(self: Any, x: Any) -> ScheduledState:
    return ScheduledState(0, concrete(self, 0).init(x))


def _apply(self: Any, state: Any, x: Any, dx: Any) -> tuple[ScheduledState, Any]:
    count, inner = _check_state(self, state)
    new, step = concrete(self, count).apply(inner, x, dx)
    return ScheduledState(count + 1, new), step


def _apply_many(self: Any, states: Sequence[Any], xs: Sequence[Any],
                dxs: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    sts = [_check_state(self, s) for s in states]
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(sts):
        groups.setdefault(s.count, []).append(i)
    new_states: list[Any] = [None] * len(sts)
    steps: list[Any] = [None] * len(sts)
    for count, idx in groups.items():
        if len(idx) == len(sts):
            inner, out = concrete(self, count).apply_many([s.state for s in sts], xs, dxs)
        else:
            inner, out = concrete(self, count).apply_many(
                [sts[i].state for i in idx], [xs[i] for i in idx], [dxs[i] for i in idx]
            )
        for j, i in enumerate(idx):
            new_states[i] = ScheduledState(count + 1, inner[j])
            steps[i] = out[j]
    return new_states, steps


def install(rule: Any) -> None:
    """Set ``rule`` up for its schedules (called by ``AbstractRule.__post_init__``).

    Validates the rule with each schedule's value at count 0 (so bad values
    fail at construction, naming the schedule), stores the normalised plain
    fields, and binds the scheduled ``init``/``apply``/``apply_many``.
    """
    names = tuple(f.name for f in dataclasses.fields(rule) if f.init
                  and _holds(getattr(rule, f.name)))
    _set(rule, "_fluxtrain_schedules", names)
    _set(rule, "_fluxtrain_cache", {})
    first = concrete(rule, 0)
    for f in dataclasses.fields(rule):
        if f.init and f.name not in names:
            _set(rule, f.name, getattr(first, f.name))
    _set(rule, "init", types.MethodType(_init, rule))
    _set(rule, "apply", types.MethodType(_apply, rule))
    _set(rule, "apply_many", types.MethodType(_apply_many, rule))
    # pickle and copy look __reduce_ex__ up on the instance: rebuild from the fields
    # (the bound methods above must not be pickled by name)
    _set(rule, "__reduce_ex__", types.MethodType(_reduce_ex, rule))


def _reduce_ex(self: Any, protocol: Any) -> tuple[Any, ...]:
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return _rebuild, (type(self), fields)


def _rebuild(cls: type, fields: dict[str, Any]) -> Any:
    obj: Any = object.__new__(cls)
    for k, v in fields.items():
        _set(obj, k, v)
    obj.__post_init__()
    return obj


def keep_scheduled(rule: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """For ``adjust``: a scheduled field set to plain numbers becomes :class:`Constant`.

    The rule then stays scheduled, so its states (``ScheduledState``) and their
    counters remain valid; the numbers equal those of the plain value.
    """
    names = getattr(rule, "_fluxtrain_schedules", ())
    if not names:
        return changes
    out = dict(changes)
    for k, v in changes.items():
        if k in names and not _holds(v):
            if isinstance(v, tuple):
                out[k] = tuple(Constant(e) if _is_number(e) else e for e in v)
            elif _is_number(v):
                out[k] = Constant(v)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)
