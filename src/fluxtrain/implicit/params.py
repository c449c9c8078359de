"""Implicit-era parameter collections: ``params``, ``Params`` and ``Grads`` (Zygote/Flux 0.13).

``params(model)`` collects the trainable tensors of a model into a
:class:`Params`, an ordered set of tensors compared by *identity*. The implicit
``gradient(f, ps)`` returns a :class:`Grads`, a mapping from each parameter to
its gradient (or ``None`` when ``f`` did not depend on it).

numpy arrays. ``params`` wraps a numeric numpy array with
:func:`torch.from_numpy` (the tensor shares the array's memory, so updates
through it change the array) and remembers which array the tensor came from:
``arr in ps``, ``gs[arr]`` and ``ps.delete(arr)`` all work with the original
array. The wrapped tensor is what ``ps[i]`` and iteration return. Autograd
cannot see computations done in numpy, so implicit gradients with respect to
numpy arrays are ``None`` unless the loss uses the tensor ``ps[i]``.

Integer tensors. As in Flux, plain integer arrays given to ``params`` are
collected (``params(torch.tensor([1, 2, 3]))`` has one element); they never
receive a gradient, so ``update_`` leaves them alone.

Frozen parameters. An ``nn.Parameter`` with ``requires_grad=False`` (how torch
users freeze part of a model) is not trainable: ``params`` skips it, exactly as
the explicit ``setup`` and ``trainables`` do (and as Flux's ``params`` honours
``trainable``). A plain tensor is collected whatever its ``requires_grad``
(``torch.randn`` gives False), so ``params(w, b)`` of plain tensors works.
``Params([...])`` built by hand keeps what it is given, but the implicit
gradient never switches a frozen Parameter on: its gradient is ``None``.

Views. A tensor that is a reshaping view (transpose, permute, ``view``) of
another tensor with the same number of elements stands for that tensor:
``params(W.T)`` collects ``W``, as Flux looks through ``transpose``. Views of
a part of a tensor (slices) are collected as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, overload

import torch

from fluxtrain.core.base import AbstractRule
from fluxtrain.core.ops import add_grads
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.tree import StateTree

__all__ = ["params", "Params", "Grads", "collect_params", "loadparams_"]

_MIGRATE = "run `fluxtrain-migrate` to rewrite the script in the explicit style"


def _np() -> Any:
    try:
        import numpy

        return numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None


def _is_ndarray(x: object) -> bool:
    np = _np()
    return np is not None and isinstance(x, np.ndarray)


def _looks_through(x: torch.Tensor) -> torch.Tensor:
    base = x._base
    if base is not None and base.numel() == x.numel():
        return base
    return x


def _frozen(x: torch.Tensor) -> bool:
    """An ``nn.Parameter`` with ``requires_grad=False``: frozen, the torch way (not trainable)."""
    return isinstance(x, torch.nn.Parameter) and not x.requires_grad


def _walk(x: object, out: Params, seen: set[int]) -> None:
    if isinstance(x, torch.Tensor):
        if not _frozen(x):
            out._push_one(_looks_through(x))
        return
    if _is_ndarray(x):
        if x.dtype.kind in "biufc":  # type: ignore[attr-defined]
            out._push_one(x)
        return
    if (
        x is None
        or isinstance(x, (str, bytes, int, float, complex, bool))
        or callable(x)
        and not (isinstance(x, torch.nn.Module))
    ):
        return
    if id(x) in seen:
        return
    seen.add(id(x))
    if type(x) is StateTree or type(x) is Leaf or isinstance(x, AbstractRule):
        raise TypeError(
            f"params(...) collects the parameters of a model, but was given a "
            f"{type(x).__name__} (an optimiser state or rule from fluxtrain.optimisers); "
            "pass the model itself: params(model)"
        )
    if isinstance(x, Params):
        for p in x:
            out._push_one(p)
    elif isinstance(x, torch.nn.Module):
        # registered parameters only, in model order (buffers such as
        # BatchNorm running statistics are not trainable)
        for p in x.parameters():
            if p.requires_grad:  # a frozen Parameter is not trainable (as setup)
                out._push_one(p)
    elif isinstance(x, Mapping):
        for v in x.values():
            _walk(v, out, seen)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _walk(v, out, seen)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            _walk(getattr(x, f.name), out, seen)
    # anything else (numbers, functions, plain objects) contributes nothing


def collect_params(*xs: object) -> Params:
    """:func:`params` without the deprecation warning (for fluxtrain's own use)."""
    out = Params()
    seen: set[int] = set()
    for x in xs:
        _walk(x, out, seen)
    return out


def params(*xs: object) -> Params:
    """Collect the trainable tensors of models, trees and tensors into a :class:`Params`.

    Deprecated (as in Flux 0.13): the explicit style works with the model
    itself; ``fluxtrain-migrate`` rewrites scripts that use ``params``.

    Walks every argument in order: an ``nn.Module`` gives its registered
    parameters (not buffers, so BatchNorm gives its weight and bias but not its
    running statistics), except those with ``requires_grad=False``; dicts,
    lists, tuples, namedtuples and dataclasses are walked; tensors and numeric
    numpy arrays are collected, frozen Parameters (``requires_grad=False``)
    skipped; numbers, strings, functions and ``None`` are skipped. Each tensor
    is collected once.

    >>> import warnings, torch
    >>> from fluxtrain import params
    >>> warnings.simplefilter("ignore")
    >>> lin = torch.nn.Linear(3, 2)
    >>> ps = params(lin)
    >>> len(ps), ps[0] is lin.weight
    (2, True)
    >>> len(params(torch.nn.BatchNorm1d(2)))  # weight and bias only
    2
    >>> _ = lin.weight.requires_grad_(False)  # frozen the torch way: skipped
    >>> params(lin)[0] is lin.bias, len(params(lin))
    (True, 1)
    >>> len(params(torch.randn(2), torch.randn(3)))  # plain tensors: always collected
    2
    >>> a = torch.tensor([3.0, 3.0, 3.0])
    >>> ps = params(1, torch.tensor([[2.0, 2.0]]), {"alpha": a, "beta": 4, "gamma": abs})
    >>> [tuple(p.shape) for p in ps]
    [(1, 2), (3,)]
    """
    from fluxtrain.errors import warn_deprecated

    warn_deprecated(
        "params(...) is the implicit style of Flux 0.13 and is deprecated: pass the model "
        "itself instead (opt_state = setup(rule, model); gradient(lambda m: loss(m, x), model)[0]; "
        f"update_(opt_state, model, grad)); {_MIGRATE}",
        stacklevel=2,
        key="params",
    )
    return collect_params(*xs)


def loadparams_(model: object, xs: Iterable[Any]) -> None:
    """Copy the arrays ``xs`` into ``params(model)``, in order (Flux's deprecated ``loadparams!``).

    Each array must have its parameter's shape ("Expected param size ..., got ...");
    everything is checked before anything is copied. Deprecated: save and load
    ``model.state_dict()`` instead (``model.load_state_dict(sd)``).

    >>> import warnings, torch
    >>> from fluxtrain import loadparams_
    >>> warnings.simplefilter("ignore")
    >>> lin = torch.nn.Linear(2, 1)
    >>> loadparams_(lin, [torch.ones(1, 2), torch.zeros(1)])
    >>> lin.weight.tolist(), lin.bias.tolist()
    ([[1.0, 1.0]], [0.0])
    """
    from fluxtrain.errors import warn_deprecated

    warn_deprecated(
        "loadparams_(model, xs) is deprecated (Flux 0.13): save model.state_dict() and load "
        f"it with model.load_state_dict(state_dict); {_MIGRATE}",
        stacklevel=2,
        key="loadparams_",
    )
    ps = list(collect_params(model))
    new = [x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in xs]
    if len(new) != len(ps):
        raise ValueError(
            f"loadparams_(model, xs): the model has {len(ps)} parameters but xs has "
            f"{len(new)} arrays"
        )
    for i, (p, x) in enumerate(zip(ps, new)):
        if tuple(p.shape) != tuple(x.shape):
            raise ValueError(
                f"loadparams_(model, xs): Expected param size {tuple(p.shape)}, got "
                f"{tuple(x.shape)} (parameter {i})"
            )
    with torch.no_grad():
        for p, x in zip(ps, new):
            p.copy_(x)


class Params:
    """An ordered set of tensors, compared by identity (Zygote's ``Params``).

    ``Params(xs)`` collects the tensors of an iterable (deduplicated, order
    kept). Operations: iteration, ``len``, ``x in ps`` (identity), ``ps[i]``
    (by position; a slice gives a list), ``push``/``add`` (no-op for a member),
    ``delete``, ``union``/``union_``/``extend``, ``intersect``/``intersect_``,
    ``copy``, ``issetequal``, ``==`` (element-wise by value and order, as
    Zygote), ``flatten``/``copy_`` (to and from a flat vector).

    >>> import torch
    >>> from fluxtrain import Params
    >>> x, y = torch.zeros(2), torch.zeros(1)
    >>> ps = Params([x, y, x])
    >>> len(ps), x in ps, torch.zeros(2) in ps
    (2, True, False)
    >>> _ = ps.copy_(torch.tensor([1.0, 2.0, 3.0]))
    >>> x.tolist(), y.tolist()
    ([1.0, 2.0], [3.0])
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, xs: Iterable[Any] | Params | None = None) -> None:
        self._order: list[torch.Tensor] = []
        self._ids: dict[int, torch.Tensor] = {}
        # id(numpy array) -> (array, its tensor); the array is kept so its id stays unique
        self._np: dict[int, tuple[Any, torch.Tensor]] = {}
        #: bumped whenever the membership changes (optimisers cache per-Params step plans)
        self._version = 0
        if xs is None:
            return
        if isinstance(xs, Params):
            for p in xs:
                self._push_one(p)
            self._np.update(xs._np)
            return
        if isinstance(xs, (torch.Tensor,)) or _is_ndarray(xs):
            self._push_one(xs)
            return
        for x in xs:
            self._push_one(x)

    # ------------------------------------------------------------------ identity
    def _tensor_for(self, x: object) -> torch.Tensor | None:
        """The member tensor that ``x`` stands for, or None."""
        if isinstance(x, torch.Tensor):
            return self._ids.get(id(x))
        if _is_ndarray(x):
            hit = self._np.get(id(x))
            return hit[1] if hit is not None else None
        return None

    def _push_one(self, x: object) -> None:
        if isinstance(x, torch.Tensor):
            if id(x) not in self._ids:
                self._ids[id(x)] = x
                self._order.append(x)
                self._version += 1
            return
        if _is_ndarray(x):
            if id(x) in self._np:
                return
            t = torch.from_numpy(x)  # type: ignore[arg-type]
            if not x.flags.writeable:  # type: ignore[attr-defined]
                t._fluxtrain_readonly = True  # type: ignore[attr-defined]
            self._np[id(x)] = (x, t)
            self._ids[id(t)] = t
            self._order.append(t)
            self._version += 1
            return
        raise TypeError(
            f"Params holds tensors (or numeric numpy arrays), got {type(x).__name__}; "
            "use params(...) to collect the tensors of a model or tree"
        )

    # ------------------------------------------------------------------ set API
    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, x: object) -> bool:
        return self._tensor_for(x) is not None

    @overload
    def __getitem__(self, i: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, i: slice) -> list[torch.Tensor]: ...
    def __getitem__(self, i: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(i, torch.Tensor) or _is_ndarray(i):
            raise TypeError(
                "Params is indexed by position (ps[0]); to test membership write `x in ps`"
            )
        return self._order[i]

    def push(self, *xs: object) -> Params:
        """Add tensors not already present (by identity); returns ``self``."""
        for x in xs:
            self._push_one(x)
        return self

    add = push
    append = push

    def delete(self, x: object) -> Params:
        """Remove ``x`` (by identity) if present; returns ``self``."""
        t = self._tensor_for(x)
        if t is None:
            return self
        del self._ids[id(t)]
        self._order = [p for p in self._order if p is not t]
        self._version += 1
        for k, (_, tt) in list(self._np.items()):
            if tt is t:
                del self._np[k]
        return self

    discard = delete
    remove = delete

    def union_(self, *itrs: Iterable[Any]) -> Params:
        """Add the elements of every iterable (Julia's ``union!``); returns ``self``."""
        for itr in itrs:
            if isinstance(itr, Params):
                self._np.update(itr._np)
            if isinstance(itr, torch.Tensor) or _is_ndarray(itr):
                self._push_one(itr)
                continue
            for x in itr:
                self._push_one(x)
        return self

    def extend(self, *itrs: Iterable[Any]) -> Params:
        """Same as :meth:`union_`."""
        return self.union_(*itrs)

    def union(self, *itrs: Iterable[Any]) -> Params:
        """A new Params with the elements of ``self`` and of every iterable."""
        return self.copy().union_(*itrs)

    def intersect_(self, *itrs: Iterable[Any]) -> Params:
        """Keep only elements present in every iterable; returns ``self``."""
        for itr in itrs:
            other = itr if isinstance(itr, Params) else Params(itr)
            for p in list(self._order):
                if p not in other:
                    self.delete(p)
        return self

    def intersect(self, *itrs: Iterable[Any]) -> Params:
        """A new Params of the elements present in ``self`` and every iterable."""
        return self.copy().intersect_(*itrs)

    def issetequal(self, other: Iterable[Any]) -> bool:
        """Same elements by identity, in any order."""
        o = other if isinstance(other, Params) else Params(other)
        return len(o) == len(self) and all(p in o for p in self)

    def copy(self) -> Params:
        """A new Params with the same tensors."""
        return Params(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(
            a is b or (a.shape == b.shape and bool(torch.equal(a, b)))
            for a, b in zip(self._order, other._order)
        )

    # ------------------------------------------------------------------ flat vectors
    def flatten(self) -> torch.Tensor:
        """All elements concatenated in order (Julia's ``copy!(flat, ps)``)."""
        if not self._order:
            return torch.zeros(0)
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self._order])

    def copy_(self, flat: torch.Tensor | Iterable[float]) -> Params:
        """Write a flat vector into the tensors in order (Julia's ``copy!(ps, flat)``)."""
        flat = torch.as_tensor(flat)
        total = sum(p.numel() for p in self._order)
        if flat.numel() != total:
            raise ValueError(
                f"copy_ needs a flat vector of {total} elements (the total size of the "
                f"{len(self)} parameters), got {flat.numel()}"
            )
        i = 0
        with torch.no_grad():
            for p in self._order:
                n = p.numel()
                p.copy_(flat.reshape(-1)[i : i + n].reshape(p.shape))
                i += n
        return self

    def __repr__(self) -> str:
        return f"Params([{', '.join(repr(p.detach()) for p in self._order)}])"


# ---------------------------------------------------------------------------- Grads
Grad = torch.Tensor | None


class Grads:
    """Gradients from ``gradient(f, ps)``: each parameter of ``ps`` to its gradient or None.

    ``gs[p]`` is the gradient of ``p`` (``None`` when ``f`` did not use ``p``);
    indexing with a tensor that is not in ``ps`` raises ``KeyError``. As in
    Zygote, *iterating a Grads yields the gradients* (values), in parameter
    order; ``keys()`` (the Params), ``values()``, ``items()``, ``p in gs`` and
    ``len`` work like a dict's. Arithmetic with another Grads over the same
    parameters (``+``, ``-``) and with numbers (``*``, ``/``, ``+``, ``-``,
    unary ``-``) and :meth:`map` give new Grads, treating ``None`` as zeros as
    Zygote does.

    >>> import warnings, torch, fluxtrain
    >>> warnings.simplefilter("ignore")
    >>> w = torch.tensor([3.0])
    >>> gs = fluxtrain.gradient(lambda: (w * w).sum(), fluxtrain.Params([w]))
    >>> gs[w]
    tensor([6.])
    >>> (2 * gs)[w], (gs + gs)[w], (gs - gs)[w]
    (tensor([12.]), tensor([12.]), tensor([0.]))
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, grads: Mapping[Any, Grad] | Iterable[tuple[Any, Grad]], ps: Params):
        self.params = ps
        self._grads: dict[int, Grad] = {id(p): None for p in ps}
        items = grads.items() if isinstance(grads, Mapping) else grads
        for k, v in items:
            self[k] = v

    # ------------------------------------------------------------------ mapping API
    def _key(self, p: object) -> int:
        if isinstance(p, (int, float, complex, bool)):
            raise TypeError(f"Only tensors can be differentiated with Params, got the number {p!r}")
        t = self.params._tensor_for(p)
        if t is None:
            shape = tuple(p.shape) if hasattr(p, "shape") else type(p).__name__
            raise KeyError(
                f"this tensor (shape {shape}) is not one of the {len(self.params)} parameters "
                "these gradients were taken with respect to; add it to the Params given to "
                "gradient(f, ps) (by identity: a copy of a parameter is a different tensor)"
            )
        return id(t)

    def __getitem__(self, p: object) -> Grad:
        return self._grads[self._key(p)]

    def __setitem__(self, p: object, g: Grad) -> None:
        self._grads[self._key(p)] = g

    def __contains__(self, p: object) -> bool:
        return p in self.params

    haskey = __contains__

    def get(self, p: object, default: Any = None) -> Any:
        return self[p] if p in self.params else default

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[Grad]:
        """Iterates over the gradients (values), in parameter order, as Zygote's Grads."""
        return iter(self.values())

    def keys(self) -> Params:
        return self.params

    def values(self) -> list[Grad]:
        return [self._grads.get(id(p)) for p in self.params]

    def items(self) -> list[tuple[torch.Tensor, Grad]]:
        return [(p, self._grads.get(id(p))) for p in self.params]

    pairs = items

    def copy(self) -> Grads:
        """New dictionary, same Params object (the tensors themselves are shared)."""
        return Grads(self.items(), self.params)

    def merge_(self, *others: Grads) -> Grads:
        """Add the others' parameters and gradients to this one (later wins); returns self."""
        for o in others:
            for p, g in o.items():
                self.params.push(p)
                self._grads[id(self.params._tensor_for(p))] = g
        return self

    # ------------------------------------------------------------------ arithmetic
    def _same_params(self, other: Grads) -> None:
        if not self.params.issetequal(other.params):
            raise ValueError(
                "arithmetic between Grads needs Grads objects with the same Params "
                f"(got {len(self.params)} and {len(other.params)} parameters, not the same set)"
            )

    def map(self, f: Callable[..., torch.Tensor], *others: Grads | Mapping[Any, Grad]) -> Grads:
        """``Grads`` of ``f(g, *other_gs)`` for each parameter (None read as zeros)."""
        for o in others:
            if isinstance(o, Grads):
                self._same_params(o)
        out: list[tuple[torch.Tensor, Grad]] = []
        for p in self.params:
            args = [_zeros_if_none(self[p], p)]
            for o in others:
                if not isinstance(o, Grads) and p not in o:
                    raise KeyError(
                        f"Grads arithmetic: the dict has no entry for a parameter of shape "
                        f"{tuple(p.shape)}; give one (or None) for every parameter"
                    )
                args.append(_zeros_if_none(o[p], p))
            with torch.no_grad():
                out.append((p, f(*args)))
        return Grads(out, self.params)

    def __add__(self, other: object) -> Grads:
        if isinstance(other, (Grads, Mapping)):  # another Grads, or a dict keyed by tensor
            return self.map(add_grads, other)
        if isinstance(other, (int, float)):
            return self.map(lambda g: g + other)
        return NotImplemented

    def __radd__(self, other: object) -> Grads:
        return self.__add__(other)

    def __sub__(self, other: object) -> Grads:
        if isinstance(other, (Grads, Mapping)):
            return self.map(lambda a, b: a - b, other)
        if isinstance(other, (int, float)):
            return self.map(lambda g: g - other)
        return NotImplemented

    # in place (Zygote's ``gs .+= gs2``): this Grads object gets the result's entries
    def _assign(self, result: Grads) -> Grads:
        if result is NotImplemented:  # type: ignore[comparison-overlap]
            return result
        self._grads.update(result._grads)
        return self

    def __iadd__(self, other: object) -> Grads:
        return self._assign(self.__add__(other))

    def __isub__(self, other: object) -> Grads:
        return self._assign(self.__sub__(other))

    def __imul__(self, other: object) -> Grads:
        return self._assign(self.__mul__(other))

    def __itruediv__(self, other: object) -> Grads:
        return self._assign(self.__truediv__(other))

    def __rsub__(self, other: object) -> Grads:
        if isinstance(other, (int, float)):
            return self.map(lambda g: other - g)
        return NotImplemented

    def __neg__(self) -> Grads:
        return self.map(lambda g: -g)

    def __pos__(self) -> Grads:
        return self.map(lambda g: g.clone())

    def __mul__(self, other: object) -> Grads:
        if isinstance(other, (int, float)):
            return self.map(lambda g: g * other)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> Grads:
        if isinstance(other, (int, float)):
            return self.map(lambda g: g / other)
        return NotImplemented

    # ------------------------------------------------------------------ flat vectors
    def flatten(self) -> torch.Tensor:
        """All gradients concatenated in parameter order (None as zeros)."""
        vals = [_zeros_if_none(g, p).reshape(-1) for p, g in self.items()]
        return torch.cat(vals) if vals else torch.zeros(0)

    def copy_(self, flat: torch.Tensor) -> Grads:
        """Scatter a flat vector into new gradient tensors, in parameter order."""
        flat = torch.as_tensor(flat).reshape(-1)
        total = sum(p.numel() for p in self.params)
        if flat.numel() != total:
            raise ValueError(f"copy_ needs {total} elements, got {flat.numel()}")
        i = 0
        for p in self.params:
            n = p.numel()
            self[p] = flat[i : i + n].reshape(p.shape).to(p.dtype).clone()
            i += n
        return self

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{tuple(p.shape)} => {None if g is None else tuple(g.shape)}" for p, g in self.items()
        )
        return f"Grads({inner})"


def _zeros_if_none(g: Grad, p: torch.Tensor) -> torch.Tensor:
    if g is None:
        return torch.zeros_like(p)
    return g
