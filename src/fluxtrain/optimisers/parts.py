"""Per-part rules for ``setup``: pick each trainable parameter's rule by its path.

``setup(rules, model, default=None)`` accepts, besides one rule:

* a **mapping** from path patterns to rules, ``{"enc.*": Adam(1e-3), "*.bias": Descent(0.1)}``;
* a **function** ``(path, parameter) -> rule | "freeze" | None``.

**Paths** are the dotted names ``model.named_parameters(remove_duplicate=False)``
gives for an ``nn.Module`` (``"0.weight"``, ``"enc.layers.1.bias"``); other trees
use the same form built from dict keys, list/tuple indices and namedtuple or
dataclass field names (``{"enc": [w, b]}`` has ``"enc.0"`` and ``"enc.1"``). A
model that is itself one tensor has the path ``""``.

**Patterns** match a path exactly or as a glob (:func:`fnmatch.fnmatchcase`:
``*`` matches any run of characters *including dots*, ``?`` one character,
``[ab]`` a set). So ``"enc.*"`` is everything below ``enc``, ``"*.bias"`` every
bias below the top level (a top-level ``"bias"``, as in a bare ``nn.Linear``,
needs ``"bias"`` or ``"*bias"``).

**Values** are rules, old-style optimisers (translated as ``setup`` translates
them, with a :class:`~fluxtrain.FluxDeprecationWarning`), or ``"freeze"``.

Rules, checked before any state is built (every error names what is wrong):

* every parameter matched by **two or more patterns** is an error naming the
  patterns and the parameter. An exact path and a glob that both match count
  as two matches: patterns never override each other, so make them disjoint;
* a pattern that matches **no trainable parameter** is an error (typo
  protection) naming the pattern, the closest paths and some available ones;
* **unmatched** parameters (no pattern matches, or the function returned
  ``None``) take ``default``: a rule, or ``"freeze"``. With ``default=None``
  (the default) an unmatched parameter is an error listing them;
* a **tied** tensor (one object at two paths) gets one ``Leaf``: it is matched
  if any of its paths is, and two paths choosing different rules is an error
  naming both paths.

**Rule objects and groups.** All parameters given one rule object share it
(their ``Leaf.rule`` is that object): ``update_`` batches leaves by rule object,
and a whole-tree member of an ``OptimiserChain`` sees exactly the leaves that
share its rule object. In a mapping each pattern's value is one object (use the
same object under two patterns to make one group). For a function, the rules
it returns are pooled by equality: leaves for which it returns equal rules
share the first such object, so ``lambda path, x: Adam(1e-3)`` still makes one
group.

**Frozen** parameters (``"freeze"``) get ``Leaf(Descent(0.0), None,
frozen=True)``: ``update_`` skips them, and the placeholder rule changes nothing
even after :func:`~fluxtrain.optimisers.thaw_`. To freeze a part you mean to
thaw later, give it its real rule and call ``freeze_`` on that subtree.

>>> import torch
>>> from fluxtrain.optimisers import Adam, Descent, setup
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
>>> st = setup({"0.*": Adam(1e-3), "2.weight": Descent(0.1)}, model, default="freeze")
>>> st[0].weight.rule, st[2].weight.rule, st[2].bias.frozen
(Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08), Descent(eta=0.1), True)
>>> st[0].weight.rule is st[0].bias.rule
True
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fluxtrain.core.base import AbstractRule, State
from fluxtrain.core.rules import Descent
from fluxtrain.errors import external_stacklevel, warn_deprecated
from fluxtrain.optimisers import tree as T

__all__ = [
    "FREEZE",
    "describe",
    "Choice",
    "as_rule",
    "is_per_part",
    "assign",
    "param_paths",
    "dotted_path",
    "no_decay_on_bias_and_norm",
]

#: The value (in a mapping, from a function, or as ``default``) that freezes parameters.
FREEZE = "freeze"

Init = Callable[[torch.Tensor], State]
#: What a parameter gets: ``(rule, init, frozen)``; ``init(tensor)`` builds its state.
Choice = tuple[AbstractRule, Init, bool]

_SHOW = 8  # how many available paths an error lists


# ============================================================================ rules
def as_rule(value: Any) -> tuple[AbstractRule, Init] | None:
    """``(rule, init)`` for a rule or an old-style optimiser; ``None`` for anything else.

    An old optimiser (anything with ``__fluxtrain_translate__``) is translated to
    its new rule with a :class:`~fluxtrain.FluxDeprecationWarning`; ``init`` then
    starts from the old optimiser's accumulated state where it has one.

    >>> from fluxtrain.optimisers import Momentum
    >>> rule, init = as_rule(Momentum(0.1))
    >>> rule, as_rule("adam")
    (Momentum(eta=0.1, rho=0.9), None)
    """
    if hasattr(type(value), "__fluxtrain_translate__"):
        new_rule = value.__fluxtrain_translate__()
        warn_deprecated(
            f"setup: {type(value).__name__} is an old-style (implicit) optimiser from "
            f"fluxtrain.optimise; it was translated to the new rule {new_rule!r} "
            f"(fluxtrain.optimisers.{type(new_rule).__name__}). Pass that rule to setup "
            "instead; fluxtrain-migrate rewrites old scripts.",
            stacklevel=external_stacklevel(),
        )
        old = value

        def init(x: torch.Tensor) -> Any:
            st = old.__fluxtrain_state__(x)
            return new_rule.init(x) if st is None else st

        return new_rule, init
    if isinstance(value, AbstractRule):
        return value, value.init
    return None


def is_per_part(rules: Any) -> bool:
    """Whether ``setup``'s first argument is per-part rules (a mapping or a function)."""
    if isinstance(rules, Mapping):
        return True
    return (
        callable(rules)
        and not isinstance(rules, AbstractRule | type | nn.Module | torch.Tensor)
        and not hasattr(type(rules), "__fluxtrain_translate__")
    )


def describe(v: Any) -> str:
    if isinstance(v, type):
        if issubclass(v, AbstractRule):
            return f"the class {v.__name__} (a type, not a rule: did you mean {v.__name__}()?)"
        return f"the class {v.__name__} (a type)"
    return f"{type(v).__name__} {v!r}" if isinstance(v, str | int | float) else type(v).__name__


# ============================================================================ paths
def dotted_path(path: Any) -> str:
    """The dotted name of a tree path (the ``(parent, key, kind)`` linked list of :mod:`.tree`).

    The counterpart of :func:`~fluxtrain.optimisers.tree.format_path`, in the
    spelling of ``named_parameters()``: keys joined by dots, the root ``""``.
    """
    return ".".join(map(str, T.path_keys(path)))


def param_paths(model: Any) -> list[tuple[str, Any]]:
    """``(dotted path, parameter)`` for every trainable position of ``model``, ties repeated.

    Walks exactly what ``setup`` walks (parameters with ``requires_grad=False``
    and dataclass fields with ``metadata={"trainable": False}`` are skipped).

    >>> import torch
    >>> w = torch.zeros(2)
    >>> [p for p, _ in param_paths({"enc": [w, torch.zeros(1)], "tied": w, "n": 3})]
    ['enc.0', 'enc.1', 'tied']
    """
    return [(dotted_path(path), x) for path, x, _ in T.trainable_positions(model)]


# ============================================================================ assign
class _Freeze:
    """The shared placeholder for frozen parameters of one ``setup`` call."""

    def __init__(self) -> None:
        self.rule = Descent(0.0)
        self.choice: Choice = (self.rule, self.rule.init, True)


def _resolve_value(value: Any, what: str, frozen: _Freeze) -> Choice:
    if isinstance(value, str) and value == FREEZE:
        return frozen.choice
    r = as_rule(value)
    if r is None:
        raise TypeError(
            f"setup: {what} must be a rule such as Adam(1e-3), an old-style optimiser, "
            f"or {FREEZE!r}; got {describe(value)}"
        )
    return (r[0], r[1], False)


class _ByPattern:
    """Choose by the first (and only allowed) matching pattern of a mapping."""

    def __init__(self, rules: Mapping[Any, Any], frozen: _Freeze) -> None:
        self.choices: dict[str, Choice] = {}
        for pat, value in rules.items():
            if not isinstance(pat, str):
                raise TypeError(
                    f"setup: the keys of a per-part mapping are path patterns (strings such "
                    f"as '0.*' or '*.bias'); got {describe(pat)} (with value {value!r})"
                )
            self.choices[pat] = _resolve_value(value, f"the value for pattern {pat!r}", frozen)
        self.used: set[str] = set()

    def __call__(self, path: str, x: Any) -> tuple[Choice | None, str]:
        hits = [p for p in self.choices if p == path or fnmatch.fnmatchcase(path, p)]
        if not hits:
            return None, ""
        if len(hits) > 1:
            pats = " and ".join(repr(p) for p in hits)
            raise ValueError(
                f"setup: the parameter {path!r} is matched by {len(hits)} patterns, {pats}; "
                "each parameter may match only one pattern (an exact path and a glob both "
                "count). Make the patterns disjoint"
            )
        self.used.add(hits[0])
        return self.choices[hits[0]], f"pattern {hits[0]!r}"

    def check_used(self, paths: list[str]) -> None:
        for pat in self.choices:
            if pat in self.used:
                continue
            if not paths:
                raise ValueError(
                    f"setup: the pattern {pat!r} matches nothing: the model has no "
                    "trainable parameters"
                )
            close = difflib.get_close_matches(pat, paths, n=3, cutoff=0.5)
            near = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"setup: the pattern {pat!r} matches no trainable parameter of the model"
                f"{near} Available paths: {_some(paths)} (dotted names as "
                "model.named_parameters() gives; '*' matches across dots)"
            )


class _ByFunction:
    """Choose by calling ``fn(path, parameter)``; equal rules are pooled into one object."""

    def __init__(self, fn: Callable[[str, Any], Any], frozen: _Freeze) -> None:
        self.fn = fn
        self.frozen = frozen
        self.pool: list[Choice] = []
        self.hashed: dict[Any, Choice] = {}
        self.by_id: dict[int, tuple[Any, Choice]] = {}  # keeps returned objects alive

    def __call__(self, path: str, x: Any) -> tuple[Choice | None, str]:
        value = self.fn(path, x)
        if value is None:
            return None, ""
        hit = self.by_id.get(id(value))
        if hit is not None:
            return hit[1], "the function"
        what = f"the value the function returned for {path!r}"
        choice = _resolve_value(value, what, self.frozen)
        if not hasattr(type(value), "__fluxtrain_translate__"):
            choice = self._pooled(choice)
        self.by_id[id(value)] = (value, choice)
        return choice, "the function"

    def _pooled(self, choice: Choice) -> Choice:
        rule = choice[0]
        try:
            return self.hashed.setdefault(rule, choice)
        except TypeError:  # an unhashable user rule: compare by ==
            for c in self.pool:
                if c[0] == rule:
                    return c
            self.pool.append(choice)
            return choice

    def check_used(self, paths: list[str]) -> None:
        pass


def _some(paths: list[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:_SHOW])
    more = f", ... ({len(paths)} in all)" if len(paths) > _SHOW else ""
    return f"[{shown}{more}]"


def _same(a: Choice, b: Choice) -> bool:
    return a[2] == b[2] and (a[0] is b[0] or bool(a[0] == b[0]))


def assign(rules: Any, model: Any, default: Any = None) -> dict[int, Choice]:
    """The per-part rule choice: ``{id(parameter): (rule, init, frozen)}`` for ``setup``.

    ``rules`` is a mapping of path patterns or a function (see this module's
    docs); ``default`` is ``None`` (unmatched parameters are an error), a rule,
    or ``"freeze"``. Everything is checked here, before any state is built.

    >>> import torch
    >>> from fluxtrain.optimisers import Descent
    >>> m = {"a": torch.zeros(1), "b": torch.zeros(1)}
    >>> ch = assign({"a": Descent(0.5)}, m, default="freeze")
    >>> [(c[0], c[2]) for c in ch.values()]
    [(Descent(eta=0.5), False), (Descent(eta=0.0), True)]
    """
    frozen = _Freeze()
    if isinstance(rules, Mapping):
        pick: _ByPattern | _ByFunction = _ByPattern(rules, frozen)
    elif is_per_part(rules):
        pick = _ByFunction(rules, frozen)
    else:
        raise TypeError(f"setup: per-part rules must be a mapping or a function, got "
                        f"{describe(rules)}")
    default_choice: Choice | None = None
    if default is not None:
        default_choice = _resolve_value(default, "default", frozen)

    positions = param_paths(model)
    # id(parameter) -> [first path, choice or None, how it was chosen, path of the choice]
    found: dict[int, list[Any]] = {}
    for path, x in positions:
        choice, how = pick(path, x)
        ent = found.get(id(x))
        if ent is None:
            found[id(x)] = [path, choice, how, path]
        elif choice is not None:
            if ent[1] is None:
                ent[1], ent[2], ent[3] = choice, how, path
            elif not _same(ent[1], choice):
                raise ValueError(
                    f"setup: the parameter at {ent[3]!r} is tied to (is the same tensor as) "
                    f"the one at {path!r}, but they get different rules: {_show(ent[1])} "
                    f"(from {ent[2]}) and {_show(choice)} (from {how}). A tied parameter has "
                    "one state: give both paths the same rule"
                )
    pick.check_used([p for p, _ in positions])

    unmatched = [ent[0] for ent in found.values() if ent[1] is None]
    if unmatched and default_choice is None:
        raise ValueError(
            f"setup: {len(unmatched)} trainable parameter(s) match no pattern"
            f"{'' if isinstance(rules, Mapping) else ' (the function returned None)'}: "
            f"{_some(unmatched)}. Add patterns for them, or pass default=rule to train them "
            f"with one rule or default={FREEZE!r} to leave them unchanged"
        )
    out: dict[int, Choice] = {}
    for i, ent in found.items():
        c = ent[1] if ent[1] is not None else default_choice
        assert c is not None  # unmatched parameters without a default raised above
        out[i] = c
    return out


def _show(c: Choice) -> str:
    return FREEZE if c[2] else repr(c[0])


# ============================================================================ presets
class _NoDecaySplit:
    """The per-part function of :func:`no_decay_on_bias_and_norm`."""

    def __init__(self, decay: AbstractRule, no_decay: AbstractRule) -> None:
        self.decay = decay
        self.no_decay = no_decay

    def __call__(self, path: str, x: Any) -> AbstractRule:
        last = path.rsplit(".", 1)[-1]
        return self.no_decay if last == "bias" or x.ndim <= 1 else self.decay

    def __repr__(self) -> str:
        return f"no_decay_on_bias_and_norm({self.decay!r})"


def no_decay_on_bias_and_norm(rule: AbstractRule) -> Callable[[str, Any], AbstractRule]:
    """Per-part rules without weight decay on biases and normalisation parameters.

    Returns a function for ``setup(f, model)``: parameters whose last name is
    ``bias`` or that have at most one dimension get ``rule.adjust(lambda_=0.0)``
    (AdamW's decay, and every ``WeightDecay``/``SignDecay`` member of a chain,
    set to 0); all others get ``rule`` itself. The one-dimension test is the
    common heuristic (nanoGPT, timm): it covers every bias and the scale and
    shift of ``LayerNorm``, ``BatchNorm*``, ``GroupNorm``, ``InstanceNorm*`` and
    ``RMSNorm``, works for non-Module trees, and also spares other scalar or
    vector parameters (PReLU's slope, a learned temperature). Weights of
    ``Linear``, ``Conv*`` and ``Embedding`` (two or more dimensions) are decayed.

    Equivalent to ``torch.optim.AdamW`` with two parameter groups,
    ``weight_decay=wd`` and ``weight_decay=0``, when ``rule`` is
    ``AdamW(lr, (beta1, beta2), wd, eps)`` (``couple=True``, the default).

    >>> import torch
    >>> from fluxtrain.optimisers import AdamW, setup
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    >>> st = setup(no_decay_on_bias_and_norm(AdamW(1e-3, lambda_=0.01)), model)
    >>> st[0].weight.rule.lambda_, st[0].bias.rule.lambda_, st[1].weight.rule.lambda_
    (0.01, 0.0, 0.0)
    """
    if not isinstance(rule, AbstractRule):
        raise TypeError(
            f"no_decay_on_bias_and_norm needs a rule with weight decay such as "
            f"AdamW(1e-3, lambda_=0.01), got {describe(rule)}"
        )
    no_decay = rule.adjust(lambda_=0.0)
    if no_decay == rule:
        raise ValueError(
            f"no_decay_on_bias_and_norm: {rule!r} has no weight decay to remove (no "
            "lambda_ > 0 in it); use AdamW(eta, lambda_=...) or "
            "OptimiserChain(WeightDecay(...), Adam(...))"
        )
    return _NoDecaySplit(rule, no_decay)
