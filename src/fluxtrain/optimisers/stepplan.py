"""A cached walk for explicit ``update_``: the model/state structure, flattened once.

``update_``'s general walk (:func:`fluxtrain.optimisers.interface._collect`)
visits the model, state and gradient trees together and validates
everything, at a few microseconds per leaf. After one successful step on a
``(state, model)`` pair, :func:`build` records that structure as a
:class:`StepPlan`: the containers of both trees with the identity of every
child, the trainable positions in walk order, and the ``Leaf`` of each.
The next ``update_`` on the same pair then

1. re-checks the structure by identity (:meth:`StepPlan.valid`): a list or
   dict entry, a module's ``_parameters``/``_modules`` entry or a state
   container entry that was replaced, added or removed, and a parameter that
   stopped being trainable (``requires_grad=False``, a non-float ``.data``),
   all make the plan stale; ``.data`` reassignment and ``adjust_``/``freeze_``/
   ``thaw_`` (which change ``Leaf`` objects in place) are read live each step;
2. flattens the gradient with a walk specialised to the recorded structure
   (:meth:`StepPlan.gather`; in C++ once ``fluxtrain.core.tensormeta`` is built, as are
   the identity checks of step 1), accepting only the plain cases: tensors of the
   parameter's shape and device, containers of the model's kinds, ``None``
   for skipped parts, and flat ``named_parameters`` mappings.

For the usual step (one plain Descent/Momentum/Adam rule object on every leaf,
nothing frozen or tied, a tensor gradient everywhere), :meth:`StepPlan.fused`
goes further and hands the whole step to ``fluxtrain.core.plan.prepare``, whose
checks of parameters, states and gradients include everything step 2 checks, so
that ``update_`` neither builds per-leaf entries nor groups them.

Anything else (a stale structure, a gradient of another shape, numpy
gradients, a missing entry...) returns ``None`` and ``update_`` runs its
general walk, which raises the usual errors with the usual text before
anything changes (so errors and results are exactly those of the general
walk). Models with numpy leaves, read-only or expanded tensors, or dataclass
nodes are not planned.

The plans are cached per state tree: a weak reference when the root can have
one (a ``StateTree``, for ``nn.Module`` models), otherwise a strong reference
in a small least-recently-used table (:data:`MAX_STRONG`).

>>> import torch
>>> from fluxtrain.optimisers import Descent, setup, update_
>>> m = [torch.zeros(2), torch.zeros(3)]
>>> st = setup(Descent(0.5), m)
>>> _ = update_(st, m, [torch.ones(2), None])      # general walk; plan built
>>> lookup(st, m) is not None
True
>>> _ = update_(st, m, [torch.ones(2), torch.ones(3)])  # the cached walk
>>> m[0].tolist(), m[1].tolist()
([-1.0, -1.0], [-0.5, -0.5, -0.5])
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from operator import attrgetter, is_
from typing import Any

import torch
from torch import nn

from fluxtrain import core
from fluxtrain.core import plan, tensormeta
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.leaf import Leaf, shared_rule
from fluxtrain.optimisers.tree import StateTree

__all__ = ["StepPlan", "build", "lookup", "store", "forget", "MAX_STRONG", "MAX_STALE"]

#: plans kept by strong reference (state roots that take no weak reference)
MAX_STRONG = 4

_MISSING: Any = object()
_UNSEEN: Any = object()  # a position the general walk would not reach
_TENSORS = (torch.Tensor, nn.Parameter)
_shape = attrgetter("shape")
_device = attrgetter("device")
_state_of = attrgetter("state")

# node kinds of the compiled tree (tensormeta.plan_walk reads them as these numbers)
_LEAF, _NOGRAD, _IGNORE, _SEQ, _DICT, _MOD = range(6)


class StepPlan:
    """The recorded structure of one ``(state, model)`` pair (see the module docs)."""

    __slots__ = ("model", "root", "seqs", "dicts", "mods", "params", "is_param",
                 "leaves", "pos_entry", "entries", "names", "npos", "tied", "trained",
                 "__weakref__")

    def __init__(self) -> None:
        self.model: Any = None
        self.root: Any = None  # the compiled node of the model root
        self.seqs: list[tuple[Any, tuple[Any, ...]]] = []
        self.dicts: list[tuple[Any, tuple[Any, ...], tuple[Any, ...]]] = []
        self.mods: list[tuple[nn.Module, tuple[str, ...], tuple[Any, ...],
                              tuple[str, ...], tuple[Any, ...]]] = []
        self.params: list[torch.Tensor] = []  # per trainable position
        self.is_param: list[bool] = []
        self.leaves: list[Leaf] = []  # per entry, first-visit order
        self.pos_entry: list[int] = []  # per trainable position: its entry
        self.entries: list[dict[int, tuple[Any, int, torch.Tensor]]] = []
        self.names: dict[str, int] = {}  # flat parameter name -> trainable position
        self.npos = 0
        self.tied = False  # some Leaf sits at several positions (tied weights)
        self.trained: list[torch.Tensor] = []  # the Parameters among params (requires_grad)

    # ------------------------------------------------------------------ checks
    def valid(self) -> bool:
        """Whether the trees still have the recorded structure (identity checks)."""
        for c, exp in self.seqs:
            if not tensormeta.identical(c, exp):
                return False
        meta = tensormeta.module()
        # one C++ pass where it can say (601 modules: 1.2 ms -> 150 us), else the loops
        same = meta.entries_unchanged(self.dicts, self.mods) if meta is not None else None
        if same is None:
            same = self._entries_unchanged()
        return (same and tensormeta.all_float_or_complex(self.params)
                and tensormeta.all_require_grad(self.trained))

    def _entries_unchanged(self) -> bool:
        """Every recorded dict, and every module's ``_parameters``/``_modules``, holds the
        recorded keys (in order) and values (by identity)."""
        for d, keys, vals in self.dicts:
            if len(d) != len(keys) or not all(map(is_, d.values(), vals)) or tuple(d) != keys:
                return False
        for m, pk, pv, mk, mv in self.mods:
            p, s = m._parameters, m._modules
            if (
                len(p) != len(pk) or len(s) != len(mk)
                or not all(map(is_, p.values(), pv)) or not all(map(is_, s.values(), mv))
                or tuple(p) != pk or tuple(s) != mk
            ):
                return False
        return True

    # ------------------------------------------------------------------ gradients
    def gather(self, grads: Any, flat: bool) -> list[Any] | None:
        """The gradient of every trainable position (``None``: none), or ``None`` if unsure."""
        out: list[Any] = [_UNSEEN if self.tied else None] * self.npos
        if flat:
            if self.tied:
                return None  # which tied places the general walk visits: let it decide
            names = self.names
            for name, g in grads.items():
                p = names.get(name, _MISSING)
                if p is _MISSING:
                    return None  # unknown or untrainable name: the general walk decides
                if p >= 0:
                    out[p] = g
                elif g is not None:
                    return None
            return out
        meta = tensormeta.module()
        walked = (meta.plan_walk(self.root, grads, out, StateTree) if meta is not None
                  else None)
        if walked is None:  # only the Python walk can say (or no C++ reads): from scratch
            out = [_UNSEEN if self.tied else None] * self.npos
            walked = _walk(self.root, grads, out)
        return out if walked else None

    def collect(self, grads: Any, flat: bool) -> dict[int, list[Any]] | None:
        """``_Step.entries`` as the general walk would build them, or ``None``."""
        if self.root is None:
            return None
        gs = self.gather(grads, flat)
        if gs is None:
            return None
        tensors = _TENSORS
        if self.tied:
            # entries in the order the general walk first reaches them (it does not
            # enter a part whose gradient is None)
            made: dict[int, list[Any]] = {}
            ents: list[Any] = [None] * len(self.leaves)
            for p, g in enumerate(gs):
                if g is _UNSEEN:
                    continue
                e = self.pos_entry[p]
                if ents[e] is None:
                    leaf = self.leaves[e]
                    ents[e] = made[id(leaf)] = [leaf, None, self.entries[e], None]
        else:
            fast = self._collect_untied(gs)
            if fast is not None:
                return fast
            ents = [[leaf, None, xs, None] for leaf, xs in zip(self.leaves, self.entries)]
        for p, g in enumerate(gs):
            if g is None or g is _UNSEEN:
                continue
            t = self.params[p]
            if (
                type(g) not in tensors
                or g.shape != t.shape
                or g.device != t.device
                or not (g.is_floating_point() or g.is_complex())
            ):
                return None
            ent = ents[self.pos_entry[p]]
            if ent[1] is None:
                ent[1] = g
            elif not (flat and g is ent[3]):  # flat names may list one tied grad twice
                ent[1] = core.add_grads(ent[1], g)
            ent[3] = g
        if self.tied:
            return made
        return {id(e[0]): e for e in ents}


    def fused(self, grads: Any, flat: bool) -> list[Any] | None:
        """The fused-path inputs of a step, if the whole step can take it; else ``None``.

        For the usual step: no ties, one plain Descent/Momentum/Adam rule object on
        every leaf, none frozen, a tensor gradient everywhere, and
        ``fluxtrain.core.plan.prepare`` accepting the leaf set (its checks of the
        parameters, states and gradients are a superset of :meth:`collect`'s for
        such a step). Returns ``[leaves, pending]``: run every ``Pending`` and store
        the states in the leaves, in one commit. ``None``: take :meth:`collect`
        (nothing has been changed or checked for good).
        """
        if self.root is None or self.tied or not self.leaves:
            return None
        leaves = self.leaves
        rule = leaves[0].rule
        if not plan.trusted(rule):
            return None
        # the states, if every leaf holds this rule object unfrozen: one C++ pass over the
        # leaves once built (None: another rule somewhere, frozen, or unreadable: the
        # general walk decides), else shared_rule's
        meta = tensormeta.module()
        if meta is not None:
            states = meta.leaf_states(leaves, rule)
        else:
            states = list(map(_state_of, leaves)) if shared_rule(leaves) is rule else None
        if states is None:
            return None
        gs = self.gather(grads, flat)
        if gs is None:
            return None
        types = list(map(type, gs))
        if types.count(torch.Tensor) + types.count(nn.Parameter) != len(gs):
            return None  # a None branch or another type: the per-position checks
        pending = plan.prepare(rule, states, self.params, gs)
        if pending is None:
            return None
        return [leaves, pending]

    def _collect_untied(self, gs: list[Any]) -> dict[int, list[Any]] | None:
        """:meth:`collect` without ties when every position has a real floating-point
        gradient of its parameter's shape and device (the usual step), checked list by
        list; ``None`` where the per-position loop must decide."""
        types = list(map(type, gs))
        if types.count(torch.Tensor) + types.count(nn.Parameter) != len(gs):
            return None
        params = self.params
        if (list(map(_shape, gs)) != list(map(_shape, params))
                or list(map(_device, gs)) != list(map(_device, params))
                or not all(map(torch.Tensor.is_floating_point, gs))):
            return None
        # untied: position p is entry p (build appends both together)
        ents = list(map(list, zip(self.leaves, gs, self.entries, gs)))
        return dict(zip(map(id, self.leaves), ents))


def _walk(node: Any, g: Any, out: list[Any]) -> bool:
    kind = node[0]
    if kind == _LEAF:
        out[node[1]] = g
        return True
    if kind == _IGNORE or g is None:
        return True
    if kind == _NOGRAD:
        return False  # a gradient for a parameter without state: the general walk decides
    if kind == _SEQ:
        kids = node[1]
        if type(g) not in (list, tuple) or len(g) != len(kids):
            return False
        run = node[2]
        if run is not None:  # every child a leaf, positions run[0], run[0] + 1, ...
            out[run[0]:run[1]] = g
            return True
        for child, sub in zip(kids, g):
            if child[0] == _LEAF:  # inline: a call per parameter is most of this walk
                out[child[1]] = sub
            elif not _walk(child, sub, out):
                return False
        return True
    # _DICT / _MOD: a mapping by name; every entry present
    keys, kids = node[1], node[2]
    if type(g) is StateTree:
        g = g._children
    elif type(g) is not dict and not isinstance(g, Mapping):
        return False
    if len(g) != len(keys):
        return False
    for key, child in zip(keys, kids):
        sub = g.get(key, _MISSING)
        if sub is _MISSING:
            return False
        if child[0] == _LEAF:
            out[child[1]] = sub
        elif not _walk(child, sub, out):
            return False
    return True


def _leaf_run(kids: list[Any]) -> tuple[int, int] | None:
    """``(a, b)`` if ``kids`` are leaves at positions ``a, a + 1, ..., b - 1``, else ``None``."""
    if not kids or any(k[0] != _LEAF for k in kids):
        return None
    a = kids[0][1]
    if [k[1] for k in kids] != list(range(a, a + len(kids))):
        return None
    return a, a + len(kids)


# ---------------------------------------------------------------------- building
class _Unplannable(Exception):
    pass


def build(state: Any, model: Any) -> StepPlan | None:
    """Record the structure of ``(state, model)``; ``None`` if it is not plannable.

    Call it only after a step of the general walk succeeded on the pair (so the
    trees are known to match).
    """
    plan = StepPlan()
    seen: dict[int, int] = {}
    try:
        plan.root = _build(plan, state, model, True, seen, "")
    except _Unplannable:
        return None
    plan.model = model
    plan.npos = len(plan.params)
    plan.trained = [x for x, isp in zip(plan.params, plan.is_param) if isp]
    return plan


def _build(plan: StepPlan, st: Any, x: Any, enabled: bool, seen: dict[int, int],
           name: str) -> Any:
    k = T.kind(x)
    if k == T.NUMPY or k == T.DATACLASS:
        raise _Unplannable
    if k == T.TENSOR:
        if type(st) is not Leaf:
            if name:
                plan.names[name] = -1
            return (_NOGRAD,) if enabled else (_IGNORE,)
        if not core.maywrite(x) or T.is_expanded(x):
            raise _Unplannable
        e = seen.get(id(st))
        if e is not None:
            plan.tied = True
        else:
            e = seen[id(st)] = len(plan.leaves)
            plan.leaves.append(st)
            plan.entries.append({})
        xs = plan.entries[e]
        if id(x) not in xs:
            if xs:
                raise _Unplannable  # one Leaf on several arrays: the general walk
            xs[id(x)] = (x, k, x)
        p = len(plan.params)
        plan.params.append(x)
        plan.is_param.append(isinstance(x, nn.Parameter))
        plan.pos_entry.append(e)
        if name:
            plan.names[name] = p
        return (_LEAF, p)
    if k == T.OTHER or not enabled:
        return (_IGNORE,)
    prefix = name + "." if name else ""
    if k == T.MODULE:
        if type(st) is not StateTree:
            raise _Unplannable
        p, s = x._parameters, x._modules
        plan.mods.append((x, tuple(p), tuple(p.values()), tuple(s), tuple(s.values())))
        stch = st._children
        plan.dicts.append((stch, tuple(stch), tuple(stch.values())))
        keys = tuple(p) + tuple(s)
        kids = [_build(plan, stch[n], c, True, seen, prefix + n)
                for n, c in list(p.items()) + list(s.items())]
        return (_MOD, keys, kids)
    # names only matter below a Module (flat named_parameters mappings)
    if k == T.DICT:
        if type(x) is not dict or type(st) is not dict:
            raise _Unplannable
        plan.dicts.append((x, tuple(x), tuple(x.values())))
        plan.dicts.append((st, tuple(st), tuple(st.values())))
        keys = tuple(x)
        return (_DICT, keys, [_build(plan, st[key], x[key], True, seen, "") for key in keys])
    if k in (T.LIST, T.TUPLE, T.NAMEDTUPLE):
        if not isinstance(st, tuple | list) or len(st) != len(x):
            raise _Unplannable
        plan.seqs.append((x, tuple(x)))
        plan.seqs.append((st, tuple(st)))
        kids = [_build(plan, s, c, True, seen, "") for s, c in zip(st, x)]
        return (_SEQ, kids, _leaf_run(kids))
    raise _Unplannable


# ---------------------------------------------------------------------- the cache
#: after this many plans of one state tree went stale, that state is no longer planned
MAX_STALE = 4

# id(state) -> [weak or strong reference to the state, plan, stale count]
_WEAK: dict[int, list[Any]] = {}
_STRONG: dict[int, list[Any]] = {}


def _entry(state: Any) -> list[Any] | None:
    sid = id(state)
    hit = _WEAK.get(sid)
    if hit is not None:
        return hit if hit[0]() is state else None
    hit = _STRONG.get(sid)
    return hit if hit is not None and hit[0] is state else None


def lookup(state: Any, model: Any) -> StepPlan | None:
    """The plan cached for ``state`` with this very ``model`` if still valid, else ``None``.

    A plan that records "not plannable" is returned too (its :meth:`StepPlan.collect`
    always answers ``None``), so that ``update_`` does not try to build it again.
    """
    hit = _entry(state)
    if hit is None:
        return None
    plan = hit[1]
    if plan.model is not model:
        return None
    if plan.root is None or plan.valid():
        return plan
    hit[2] += 1  # stale: the structure changed
    return None


def store(state: Any, model: Any, plan: StepPlan | None) -> None:
    """Cache ``plan`` (``None``: not plannable) for ``state`` and ``model``."""
    old = _entry(state)
    stale = old[2] if old is not None else 0
    forget(state)
    if plan is None or stale >= MAX_STALE:
        plan = StepPlan()  # root None: "use the general walk"
        plan.model = model
    sid = id(state)
    try:
        ref = weakref.ref(state, lambda _r: _WEAK.pop(sid, None))
    except TypeError:
        _STRONG[sid] = [state, plan, stale]
        while len(_STRONG) > MAX_STRONG:
            del _STRONG[next(iter(_STRONG))]
        return
    _WEAK[sid] = [ref, plan, stale]


def forget(state: Any) -> None:
    """Drop the plan cached for ``state``, if any."""
    sid = id(state)
    _WEAK.pop(sid, None)
    _STRONG.pop(sid, None)
