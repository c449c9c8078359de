"""``setup``, ``update``, ``update_``: Optimisers.jl's tree interface over torch models.

Shapes of the trees (``model`` → state tree → gradient tree):

===========================  ===========================  ==========================
model node                   state                        gradient
===========================  ===========================  ==========================
trainable tensor / ndarray   ``Leaf`` (one per object)    tensor / ndarray / ``None``
anything non-trainable       ``()``                       anything (ignored)
``nn.Module``, dataclass     ``StateTree`` (by name)      ``StateTree`` / dict / ``None``
dict                         dict (same keys)             dict (missing key = ``None``)
list / tuple                 list / tuple                 list or tuple, same length
namedtuple                   same namedtuple              same namedtuple / tuple
===========================  ===========================  ==========================

``update_`` also takes, for a ``Module``, a flat mapping of the dotted names
``model.named_parameters()`` gives to gradients (missing names = no gradient).

``update_`` walks the three trees once and validates everything (structure,
gradient shapes) *before* it changes anything; then it groups the leaves by
rule object and calls :func:`fluxtrain.core.apply_batched` once per rule and
:func:`fluxtrain.core.subtract_many_` once for all writable parameters. If a
rule itself raises (``ClipNorm`` on a non-finite norm), parameters and
states are left as before the step (docs/guarantees.md).

Speed: the per-step Python work is the walk in :func:`_collect` (one pass,
about a few microseconds per leaf). Plain ``Descent``/``Momentum``/``Adam``
then take :mod:`fluxtrain.core.plan`'s fused path (whole step inside the
commit, no backup copy, reused scratch, state in flat buffers, same bits);
other rules go through one ``apply_batched`` per rule object and one
``subtract_many_``. After one successful step on a ``(state, model)`` pair
the walk is cached (:mod:`fluxtrain.optimisers.stepplan`): later steps check
the recorded structure by identity and flatten the gradient with a
specialised walk; anything unusual (a changed structure, an odd gradient)
falls back to :func:`_collect`, so results and errors are unchanged.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from itertools import repeat
from operator import attrgetter, is_, itemgetter
from typing import Any

import torch
from torch import nn

from fluxtrain import core
from fluxtrain.core import plan, tensormeta
from fluxtrain.core.base import AbstractRule
from fluxtrain.core.guards import clone_state, defer_interrupts, restore_state
from fluxtrain.errors import external_stacklevel
from fluxtrain.optimisers import parts, stepplan
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.leaf import Leaf, shared_rule
from fluxtrain.optimisers.tree import StateTree

__all__ = ["setup", "update", "update_", "copy_tree", "external_stacklevel"]

_MISSING: Any = object()


# ============================================================================ setup
def setup(rule: Any, model: Any, *, default: Any = None) -> Any:
    """Build the state tree for training ``model`` with ``rule``.

    Every trainable tensor or float numpy array becomes a :class:`Leaf` holding
    ``rule`` and ``rule.init(x)``; everything else becomes ``()``; containers
    are mirrored (see the table in this module's docs). A tensor reached twice
    (tied weights) gets one ``Leaf`` object. An old-style optimiser
    (``fluxtrain.optimise.Adam()`` ...) is translated into its new rule, keeping
    its accumulated state, with a :class:`~fluxtrain.FluxDeprecationWarning`.

    Per-part rules: ``rule`` may instead be a mapping from parameter paths or
    glob patterns to rules (``{"enc.*": Adam(), "*.bias": Descent()}``) or a
    function ``(path, parameter) -> rule | "freeze" | None``; parameters nothing
    matches take ``default`` (a rule or ``"freeze"``; ``None``: an error). See
    :mod:`fluxtrain.optimisers.parts` for the matching rules.

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum
    >>> m = {"x": torch.zeros(3, dtype=torch.float64), "y": (True, False), "z": torch.tanh}
    >>> setup(Momentum(), m)
    {'x': Leaf(Momentum(eta=0.01, rho=0.9), [0.0, 0.0, 0.0]), 'y': ((), ()), 'z': ()}
    >>> setup({"x": Momentum(0.1)}, {"x": torch.zeros(1, dtype=torch.float64), "w": m["x"]},
    ...       default="freeze")
    {'x': Leaf(Momentum(eta=0.1, rho=0.9), [0.0]), 'w': Leaf(Descent(eta=0.0), None, frozen=True)}
    """
    choices = None
    init: Any = None
    if parts.is_per_part(rule):
        choices = parts.assign(rule, model, default)
    else:
        resolved = parts.as_rule(rule)
        if resolved is None:
            hint = ""
            if (
                isinstance(model, AbstractRule)
                or hasattr(type(model), "__fluxtrain_translate__")
                or isinstance(rule, nn.Module)
            ):
                hint = " (the arguments are the other way round: setup(rule, model))"
            raise TypeError(
                f"setup needs an optimisation rule such as Adam() as its first argument "
                f"(or per-part rules: a mapping from parameter paths to rules, or a function "
                f"(path, parameter) -> rule), got {parts.describe(rule)}{hint}"
            )
        if default is not None:
            raise TypeError(
                f"setup: default= is for per-part rules (a mapping or a function); the single "
                f"rule {resolved[0]!r} already applies to every parameter"
            )
        rule, init = resolved
    cache: dict[int, tuple[Any, Leaf]] = {}
    inits: list[tuple[Leaf, Any, torch.Tensor]] = []
    state = _setup_walk(rule, init, model, True, cache, choices, inits)
    _init_leaves(inits)
    if not cache:
        warnings.warn(
            "setup found no trainable parameters in this model",
            UserWarning,
            stacklevel=external_stacklevel(),
        )
    return state


def _setup_walk(
    rule: AbstractRule, init: Any, x: Any, enabled: bool, cache: dict, choices: Any,
    inits: list[tuple[Leaf, Any, torch.Tensor]],
) -> Any:
    """The state tree, with every new ``Leaf``'s state still to make: ``(leaf, init,
    parameter)`` appended to ``inits`` in walk order (see :func:`_init_leaves`).
    ``choices`` (per-part rules): ``{id(x): (rule, init, frozen)}`` from ``parts.assign``."""
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if not enabled or not T.is_trainable(x, k):
            return ()
        hit = cache.get(id(x))
        if hit is not None:
            return hit[1]
        if choices is None:
            leaf, ini = Leaf(rule, None), init
        else:
            r, ini, frozen = choices[id(x)]
            leaf = Leaf(r, None, frozen)
        inits.append((leaf, ini, T.as_tensor(x, k)))
        cache[id(x)] = (x, leaf)  # keep x alive so its id stays unique
        return leaf
    if k == T.OTHER or not enabled:
        return ()
    subs = [
        (key, _setup_walk(rule, init, c, en, cache, choices, inits))
        for key, c, en in T.children(x, k)
    ]
    return T.mirror(x, k, subs)


def _init_leaves(inits: list[tuple[Leaf, Any, torch.Tensor]]) -> None:
    """Make the states of the leaves ``setup`` found: ``leaf.state = init(x)``.

    Where ``init`` is a rule's own ``init``, the rule's leaves are made together with
    ``rule.init_many`` (the same states; Adam makes every ``m`` before every ``v``, so
    that each slot's tensors lie next to each other). Any other ``init`` (an old-style
    optimiser's, which starts from its accumulated state) runs leaf by leaf.
    """
    batches: dict[int, tuple[AbstractRule, list[Leaf], list[torch.Tensor]]] = {}
    with torch.no_grad():
        for leaf, ini, x in inits:
            r = leaf.rule
            if getattr(ini, "__self__", None) is r and getattr(ini, "__func__", None) is type(
                    r).init:
                batch = batches.setdefault(id(r), (r, [], []))
                batch[1].append(leaf)
                batch[2].append(x)
            else:
                leaf.state = ini(x)
        for r, leaves, xs in batches.values():
            states = r.init_many(xs)
            if len(states) != len(xs):
                raise TypeError(
                    f"{type(r).__name__}.init_many returned {len(states)} states for "
                    f"{len(xs)} parameters; it must return one per parameter, in order"
                )
            for leaf, st in zip(leaves, states):
                leaf.state = st


# ============================================================================ update_
class _Step:
    """What one ``update_`` call gathered: per Leaf, its summed gradient and parameters."""

    __slots__ = ("entries", "flat")

    def __init__(self, flat: bool) -> None:
        # id(leaf) -> [leaf, summed grad or None, {id(xobj): (xobj, kind, tensor)}, last grad]
        self.entries: dict[int, list[Any]] = {}
        self.flat = flat


def update_(state: Any, model: Any, grads: Any) -> tuple[Any, Any]:
    """One optimisation step, in place: returns ``(state, model)``.

    Writable parameters (tensors, writable numpy arrays) are changed in place
    and the ``Leaf`` states are replaced; a read-only numpy array cannot be,
    so the returned model holds a new (read-only) array there: use the
    returned model. ``None`` in ``grads`` skips that branch; a tied parameter's
    gradients from all its places are added first. Nothing is changed if the
    trees disagree or a gradient has the wrong shape (the error names the path).

    >>> import torch
    >>> from fluxtrain.optimisers import Descent, setup
    >>> m = ([1.0, 2.0],)
    >>> m = (torch.tensor([1.0, 2.0], dtype=torch.float64),)
    >>> st = setup(Descent(0.1), m)
    >>> st, m2 = update_(st, m, (torch.tensor([25.0, 33.0], dtype=torch.float64),))
    >>> m2[0].tolist(), m2[0] is m[0]
    ([-1.5, -1.3000000000000003], True)
    """
    if isinstance(state, nn.Module) or isinstance(grads, nn.Module) or type(model) in _STATES:
        _refuse_swapped(state, model, grads, "update_")
    is_module = T.kind(model) == T.MODULE
    flat = is_module and _is_flat_names(grads)
    step_plan = stepplan.lookup(state, model)
    if step_plan is not None:
        fused = step_plan.fused(grads, flat)
        if fused is not None:  # the whole step on the fused path (one rule, checked)
            _commit_fused(*fused)
            return state, model
        entries = step_plan.collect(grads, flat)
        if entries is not None:  # the cached walk (fluxtrain.optimisers.stepplan)
            acc = _Step(flat)
            acc.entries = entries
            replaced = _apply(acc)
            if replaced:
                model = _rebuild_model(model, replaced, {})
            return state, model
    elif grads is not None and stepplan.lookup(state, grads) is not None:
        # (a missed plan only) the gradient is the very model this state last stepped
        raise TypeError(
            "update_(opt_state, model, grads): the third argument (grads) is the model this "
            "state was last used with, and the second is not; did you pass the model last? "
            + _ORDER.format(f="update_")
        )
    if flat:
        grads = _nest_flat(model, grads)
    elif is_module and isinstance(grads, tuple) and len(grads) == 1:
        raise ValueError(
            "update_: the gradient for a Module is a 1-tuple; did you pass the whole result "
            "of gradient(loss, model, ...)? Pass its first element: grads[0]"
        )
    acc = _Step(flat)
    _collect(state, model, grads, None, True, acc)
    replaced = _apply(acc)
    if replaced:
        model = _rebuild_model(model, replaced, {})
    elif step_plan is None:  # the structure is known good now: cache it for the next step
        stepplan.store(state, model, stepplan.build(state, model))
    return state, model


_STATES = (StateTree, Leaf)
_ORDER = "the order is {f}(opt_state, model, grads), with opt_state = setup(rule, model)"


def _refuse_swapped(state: Any, model: Any, grads: Any, fname: str) -> None:
    """Arguments of ``update_``/``update`` in the wrong places: a ``TypeError`` saying which."""
    order = _ORDER.format(f=fname)
    if isinstance(state, nn.Module):
        raise TypeError(
            f"{fname}(opt_state, model, grads): the first argument is an nn.Module "
            f"({type(state).__name__}); did you swap opt_state and model? {order}"
        )
    if isinstance(grads, nn.Module):
        raise TypeError(
            f"{fname}(opt_state, model, grads): the third argument (grads) is an nn.Module "
            f"({type(grads).__name__}); did you pass the model last? {order}"
        )
    raise TypeError(
        f"{fname}(opt_state, model, grads): the second argument (model) is a "
        f"{type(model).__name__}, part of a state or gradient tree, not a model; did you swap "
        f"opt_state and model? {order}"
    )


def _commit_fused(leaves: list[Leaf], pending: list[plan.Pending]) -> None:
    """Run checked fused steps and store the new states, together, SIGINT deferred."""
    with defer_interrupts():
        _run_fused(leaves, pending)


def _run_fused(leaves: list[Leaf], pending: list[plan.Pending]) -> None:
    """Run checked fused steps over ``leaves`` and store their new states (inside a commit)."""
    for p in pending:
        # stored before the run (which raises nothing): the old states are dropped while
        # they are still in cache, not after the kernel has streamed the arrays through it
        if p.kept:  # Descent/Momentum: the leaves hold these very states
            pass
        elif len(p.idx) == len(leaves):  # one group, in order: the usual case
            meta = tensormeta.module()
            if meta is None or meta.store_states(leaves, p.states) is not True:
                list(map(setattr, leaves, repeat("state"), p.states))
        else:
            for i, s in zip(p.idx, p.states):
                leaves[i].state = s
        p.run()


def _is_flat_names(grads: Any) -> bool:
    if not isinstance(grads, Mapping) or isinstance(grads, StateTree) or not grads:
        return False
    if not all(isinstance(k, str) for k in grads):
        return False
    if any("." in k for k in grads):
        return True
    return all(
        v is None or isinstance(v, torch.Tensor) or T.kind(v) == T.NUMPY for v in grads.values()
    )


def _nest_flat(model: nn.Module, grads: Mapping[str, Any]) -> dict[str, Any]:
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    unknown = [k for k in grads if k not in names]
    if unknown:
        raise ValueError(
            f"update_: gradient names {unknown} are not parameters of the model; "
            f"the model has {sorted(names)} (the names model.named_parameters() gives)"
        )
    nested: dict[str, Any] = {}
    for name, g in grads.items():
        *heads, last = name.split(".")
        d = nested
        for h in heads:
            d = d.setdefault(h, {})
        d[last] = g
    return nested


def _where(path: Any) -> str:
    return T.format_path(path)


def _state_mismatch(path: Any, msg: str) -> ValueError:
    return ValueError(
        f"update_: the state tree does not match the model at {_where(path)}: {msg}. "
        "Was the state made by setup(rule, model) for this model (and has the model "
        "changed since)? Call setup again."
    )


def _grad_mismatch(path: Any, msg: str) -> ValueError:
    return ValueError(f"update_: the gradient does not match the model at {_where(path)}: {msg}")


def _is_empty_state(st: Any) -> bool:
    return (type(st) is tuple and not st) or (type(st) is StateTree and not st._children)


def _has_leaf(st: Any) -> bool:
    if type(st) is Leaf:
        return True
    if type(st) is StateTree:
        return any(_has_leaf(v) for v in st._children.values())
    if isinstance(st, dict):
        return any(_has_leaf(v) for v in st.values())
    if isinstance(st, tuple | list):
        return any(_has_leaf(v) for v in st)
    return False


def _collect(st: Any, x: Any, g: Any, path: Any, enabled: bool, acc: _Step) -> None:
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if type(st) is not Leaf:
            if not _is_empty_state(st):
                raise _state_mismatch(path, f"the state is a {type(st).__name__}, not a Leaf")
            if g is not None and enabled and T.is_trainable(x, k):
                raise _state_mismatch(
                    path, "the model has a trainable parameter here but the state has none"
                )
            return
        if not enabled or not T.is_trainable(x, k):
            raise _state_mismatch(path, f"the state has a Leaf but the model has {_describe(x)}")
        ent = acc.entries.get(id(st))
        if ent is None:
            ent = acc.entries[id(st)] = [st, None, {}, None]
        xs = ent[2]
        hit = xs.get(id(x))
        if hit is None:
            t = T.as_tensor(x, k)
            xs[id(x)] = (x, k, t)
        else:
            t = hit[2]
        if g is None:
            return
        try:
            dx = core.check_grad(t, g)
        except (TypeError, ValueError):
            core.check_grad(t, g, where=_where(path))  # re-raise, naming the path
            raise
        if not (dx.is_floating_point() or dx.is_complex()):
            dx = dx.to(t.dtype)  # an integer gradient: promote as Julia would
        if ent[1] is None:
            ent[1] = dx
        elif not (acc.flat and g is ent[3]):  # flat names may list one tied grad twice
            ent[1] = core.add_grads(ent[1], dx)
        ent[3] = g
        return
    if k == T.OTHER or not enabled:
        if type(x) is Leaf:
            raise TypeError(
                f"update_: the model has a Leaf (part of a state tree from setup) at "
                f"{_where(path)}; did you swap opt_state and model? "
                + _ORDER.format(f="update_")
            )
        if type(st) is Leaf:
            raise _state_mismatch(path, f"the state has a Leaf but the model has {_describe(x)}")
        return
    if k == T.MODULE:
        _collect_module(st, x, g, path, acc)
    elif k == T.DATACLASS:
        _collect_named(st, x, g, path, k, acc)
    elif k == T.DICT:
        _collect_dict(st, x, g, path, acc)
    else:
        _collect_seq(st, x, g, path, k, acc)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        frozen = " with requires_grad=False" if x.is_floating_point() else ""
        return f"a {x.dtype} tensor{frozen}"
    if T.kind(x) == T.NUMPY:
        return f"a numpy array of dtype {x.dtype}"
    return f"a {type(x).__name__}"


def _collect_named(st: Any, x: Any, g: Any, path: Any, k: int, acc: _Step) -> None:
    if type(st) is not StateTree:
        raise _state_mismatch(path, f"the model has a {type(x).__name__} but the state has "
                                    f"a {type(st).__name__}, not a StateTree")
    kids = T.children(x, k)
    stch = st._children
    if len(stch) != len(kids) or any(name not in stch for name, _, _ in kids):
        raise _state_mismatch(
            path, f"the model has children {[n for n, _, _ in kids]}, the state {list(stch)}"
        )
    if g is None:
        return
    if isinstance(g, StateTree):
        gmap: Any = g._children
    elif isinstance(g, Mapping):
        gmap = g
    elif k == T.DATACLASS and T.kind(g) in (T.DATACLASS, T.NAMEDTUPLE):
        gmap = None  # a gradient shaped like the model itself: by attribute
    else:
        raise _grad_mismatch(
            path, f"the model has a {type(x).__name__} (children {[n for n, _, _ in kids]}) but "
                  f"the gradient is a {type(g).__name__}; expected a StateTree or dict by name"
        )
    matched = 0
    for name, child, en in kids:
        sub_g = gmap.get(name, _MISSING) if gmap is not None else getattr(g, name, _MISSING)
        if sub_g is _MISSING:
            if en and not acc.flat and _has_leaf(stch[name]):
                raise _grad_mismatch(
                    (path, name, k),
                    "the gradient has no entry here (use None to skip a part of the model)",
                )
            sub_g = None
        else:
            matched += 1
        _collect(stch[name], child, sub_g, (path, name, k), en, acc)
    if gmap is not None and len(gmap) > matched:
        names = {n for n, _, _ in kids}
        extra = [key for key in gmap if key not in names]
        raise _grad_mismatch(path, f"the gradient has entries {extra} that the model lacks")


def _collect_module(st: Any, x: nn.Module, g: Any, path: Any, acc: _Step) -> None:
    """``_collect_named`` for an ``nn.Module``, without building child lists (the hot path)."""
    params, mods = x._parameters, x._modules
    if type(st) is not StateTree or len(st._children) != len(params) + len(mods):
        return _collect_named(st, x, g, path, T.MODULE, acc)  # raises the full message
    stch = st._children
    if g is None:
        if not all(n in stch for n in params) or not all(n in stch for n in mods):
            _collect_named(st, x, g, path, T.MODULE, acc)
        return
    if type(g) is StateTree:
        gmap: Any = g._children
    elif isinstance(g, Mapping):
        gmap = g
    else:
        return _collect_named(st, x, g, path, T.MODULE, acc)
    matched = 0
    for items in (params.items(), mods.items()):
        for name, child in items:
            sub_st = stch.get(name, _MISSING)
            if sub_st is _MISSING:
                return _collect_named(st, x, g, path, T.MODULE, acc)
            sub_g = gmap.get(name, _MISSING)
            if sub_g is _MISSING:
                if not acc.flat and _has_leaf(sub_st):
                    raise _grad_mismatch(
                        (path, name, T.MODULE),
                        "the gradient has no entry here (use None to skip a part of the model)",
                    )
                sub_g = None
            else:
                matched += 1
            _collect(sub_st, child, sub_g, (path, name, T.MODULE), True, acc)
    if len(gmap) > matched:
        extra = [key for key in gmap if key not in params and key not in mods]
        raise _grad_mismatch(path, f"the gradient has entries {extra} that the model lacks")
    return None


def _collect_dict(st: Any, x: Any, g: Any, path: Any, acc: _Step) -> None:
    if not isinstance(st, dict) or st.keys() != x.keys():
        what = f"a dict with keys {list(st)}" if isinstance(st, dict) else type(st).__name__
        raise _state_mismatch(path, f"the model is a dict with keys {list(x)}, the state {what}")
    if g is None:
        return
    if isinstance(g, StateTree):
        g = g._children
    if not isinstance(g, Mapping):
        raise _grad_mismatch(path, f"the model is a dict but the gradient is a {type(g).__name__}")
    matched = 0
    for key, child in x.items():
        sub_g = g.get(key, _MISSING)
        if sub_g is _MISSING:
            sub_g = None
        else:
            matched += 1
        _collect(st[key], child, sub_g, (path, key, T.DICT), True, acc)
    if len(g) > matched:
        extra = [key for key in g if key not in x]
        raise _grad_mismatch(path, f"the gradient has keys {extra} that the model lacks")


def _collect_seq(st: Any, x: Any, g: Any, path: Any, k: int, acc: _Step) -> None:
    if not isinstance(st, tuple | list) or len(st) != len(x):
        n = f" of length {len(st)}" if isinstance(st, tuple | list) else ""
        raise _state_mismatch(
            path, f"the model is a {type(x).__name__} of length {len(x)}, "
                  f"the state a {type(st).__name__}{n}"
        )
    if g is None:
        return
    if k == T.NAMEDTUPLE and not isinstance(g, tuple | list):
        if isinstance(g, StateTree | Mapping) or T.kind(g) == T.DATACLASS:
            gm = g._children if isinstance(g, StateTree) else g
            vals = []
            for f in x._fields:
                v = gm.get(f, None) if isinstance(gm, Mapping) else getattr(gm, f, None)
                vals.append(v)
            g = vals
    if not isinstance(g, tuple | list):
        raise _grad_mismatch(
            path, f"the model is a {type(x).__name__} but the gradient is a {type(g).__name__}"
        )
    if len(g) != len(x):
        raise _grad_mismatch(
            path, f"the model has {len(x)} elements but the gradient has {len(g)}"
        )
    for i, child in enumerate(x):
        _collect(st[i], child, g[i], (path, x._fields[i] if k == T.NAMEDTUPLE else i, k),
                 True, acc)


def _apply(acc: _Step) -> dict[int, tuple[Any, Any]]:
    """Run the rules (batched per rule object) and subtract the steps.

    Returns ``{id(old parameter object): (old, new)}`` for immutable parameters.
    """
    groups = _group_by_rule(list(acc.entries.values()))
    # Plain Descent/Momentum/Adam groups take the fused path (fluxtrain.core.plan):
    # checked now, run entirely inside the commit, so their states need no backup.
    fused: list[tuple[list[list[Any]], list[plan.Pending]]] = []
    for rid, (rule, ents) in list(groups.items()):
        if not plan.trusted(rule):
            continue
        places = list(map(_places, ents))
        if list(map(len, places)).count(1) != len(ents):
            continue
        leaves = list(map(_leaf_of, ents))
        pending = plan.prepare(rule, list(map(_state_of, leaves)),
                               list(map(_tensor_of, map(_only, places))),
                               list(map(_grad_of, ents)))
        if pending is not None:
            fused.append((ents, pending))
            del groups[rid]
    # Atomic step: the other rules update Leaf states in place, so keep copies first
    # and, if anything fails before the commit, write them back; parameters are
    # subtracted and states committed together at the end, with SIGINT deferred.
    leaves = [e[0] for _, ents in groups.values() for e in ents]
    origs = [leaf.state for leaf in leaves]
    backup = [clone_state(st) for st in origs]
    done = [False]
    try:
        return _apply_steps(groups, done, fused)
    except BaseException:
        if not done[0]:
            with defer_interrupts():
                for leaf, o, b in zip(leaves, origs, backup):
                    restore_state(o, b)
                    leaf.state = o
        raise


_leaf_of = itemgetter(0)
_grad_of = itemgetter(1)
_places = itemgetter(2)
_tensor_of = itemgetter(2)
_state_of = attrgetter("state")


def _only(d: dict[int, Any]) -> Any:
    """The one value of a one-entry dict."""
    for v in d.values():
        return v


def _group_by_rule(ents: list[list[Any]]) -> dict[int, tuple[AbstractRule, list[list[Any]]]]:
    """The entries with a gradient and not frozen, by rule object, in first-seen order."""
    rule = shared_rule(list(map(_leaf_of, ents)))
    if rule is not None and not any(map(is_, map(_grad_of, ents), repeat(None))):
        return {id(rule): (rule, ents)}  # one rule, every entry: the usual case
    groups: dict[int, tuple[AbstractRule, list[list[Any]]]] = {}
    for ent in ents:
        leaf = ent[0]
        if ent[1] is None or leaf.frozen:
            continue
        grp = groups.get(id(leaf.rule))
        if grp is None:
            groups[id(leaf.rule)] = (leaf.rule, [ent])
        else:
            grp[1].append(ent)
    return groups


def _apply_steps(
    groups: dict[int, tuple[AbstractRule, list[list[Any]]]],
    done: list[bool],
    fused: list[tuple[list[list[Any]], list[plan.Pending]]],
) -> dict[int, tuple[Any, Any]]:
    replaced: dict[int, tuple[Any, Any]] = {}
    sub_x: list[torch.Tensor] = []
    sub_s: list[Any] = []
    new_state: dict[int, tuple[Leaf, Any]] = {}
    extra: list[tuple[AbstractRule, list[Any], tuple[Any, int, torch.Tensor]]] = []
    for rule, ents in groups.values():
        firsts = [next(iter(e[2].values())) for e in ents]
        new_states, steps = core.apply_batched(
            rule, [e[0].state for e in ents], [f[2] for f in firsts], [e[1] for e in ents]
        )
        for e, f, s, step in zip(ents, firsts, new_states, steps):
            new_state[id(e[0])] = (e[0], s)
            _take_step(f, step, sub_x, sub_s, replaced)
            if len(e[2]) > 1:  # one Leaf placed on several distinct arrays (hand-made tie)
                extra.extend((rule, e, xf) for xf in list(e[2].values())[1:])
    for rule, e, xf in extra:
        s1, steps1 = core.apply_batched(rule, [new_state[id(e[0])][1]], [xf[2]], [e[1]])
        new_state[id(e[0])] = (e[0], s1[0])
        _take_step(xf, steps1[0], sub_x, sub_s, replaced)
    with defer_interrupts():  # commit: parameters and states together
        core.subtract_many_(sub_x, sub_s)
        for ents, pending in fused:  # the fused rules: whole steps, in place
            _run_fused(list(map(_leaf_of, ents)), pending)
        for leaf, s in new_state.values():
            leaf.state = s
        done[0] = True  # a SIGINT held back here is raised after the commit
    return replaced


def _take_step(
    xf: tuple[Any, int, torch.Tensor],
    step: Any,
    sub_x: list[torch.Tensor],
    sub_s: list[Any],
    replaced: dict[int, tuple[Any, Any]],
) -> None:
    if step is None:
        return
    xobj, k, t = xf
    if core.maywrite(t) and not T.is_expanded(t):
        sub_x.append(t)
        sub_s.append(step)
    else:
        new = core.subtract(t, step)
        replaced[id(xobj)] = (xobj, T.from_tensor_like(new, xobj, k))


def _rebuild_model(x: Any, replaced: dict[int, tuple[Any, Any]], memo: dict[int, Any]) -> Any:
    """``x`` with the parameters in ``replaced`` swapped for their new versions."""
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        hit = replaced.get(id(x))
        return x if hit is None else hit[1]
    if k == T.OTHER:
        return x
    if id(x) in memo:
        return memo[id(x)]
    changes = {}
    for key, child, _ in T.children(x, k):
        new = _rebuild_model(child, replaced, memo)
        if new is not child:
            changes[key] = new
    out = T.rebuild(x, k, changes)
    memo[id(x)] = out
    return out


# ============================================================================ update
def update(state: Any, model: Any, grads: Any) -> tuple[Any, Any]:
    """One optimisation step without touching the inputs: returns new ``(state, model)``.

    The state tree and every writable array of the model are copied (ties
    kept), then :func:`update_` runs on the copies. The gradient is never
    modified either.

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum, setup
    >>> m = (torch.tensor([1.0, 2.0], dtype=torch.float64),)
    >>> st = setup(Momentum(0.1), m)
    >>> st2, m2 = update(st, m, (torch.tensor([25.0, 33.0], dtype=torch.float64),))
    >>> st2[0].state.tolist(), st[0].state.tolist(), m[0].tolist()
    ([2.5, 3.3000000000000003], [0.0, 0.0], [1.0, 2.0])
    """
    if isinstance(state, nn.Module) or isinstance(grads, nn.Module) or type(model) in _STATES:
        _refuse_swapped(state, model, grads, "update")
    memo: dict[int, Any] = {}
    state2 = copy_tree(state, memo)
    model2 = copy_tree(model, memo)
    return update_(state2, model2, grads)


def copy_tree(x: Any, memo: dict[int, Any]) -> Any:
    """Copy a model or state tree: tensors cloned, writable arrays copied, ties kept.

    Read-only numpy arrays, functions, numbers and other leaves are shared (they
    are never written); ``nn.Module``\\ s are ``copy.deepcopy``\\ ed with the same memo.
    """
    hit = memo.get(id(x), _MISSING)
    if hit is not _MISSING:
        return hit
    t = type(x)
    if t is Leaf:
        out: Any = Leaf(x.rule, copy_tree(x.state, memo), x.frozen)
    elif t is StateTree:
        out = StateTree({key: copy_tree(v, memo) for key, v in x._children.items()})
    else:
        k = T.kind(x)
        if k == T.TENSOR:
            with torch.no_grad():
                y = x.detach().clone()
            if isinstance(x, nn.Parameter):
                y = nn.Parameter(y, requires_grad=x.requires_grad)
            elif x.requires_grad and x.is_leaf:
                y.requires_grad_(True)
            if getattr(x, "_fluxtrain_readonly", False):
                y._fluxtrain_readonly = True  # type: ignore[attr-defined]
            out = y
        elif k == T.NUMPY:
            out = x.copy() if x.flags.writeable else x
        elif k == T.MODULE:
            out = copy.deepcopy(x, memo)
        elif k == T.OTHER:
            return x
        else:
            changes = {}
            for key, child, _ in T.children(x, k):
                new = copy_tree(child, memo)
                if new is not child:
                    changes[key] = new
            out = T.rebuild(x, k, changes)
            if out is x:  # nothing inside needed copying; still a new mutable container
                out = copy.copy(x) if k in (T.DICT, T.LIST, T.DATACLASS) else x
    memo[id(x)] = out
    memo.setdefault(id(memo), []).append(x)  # keep x alive: ids stay unique (as deepcopy does)
    return out
