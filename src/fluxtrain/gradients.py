"""Explicit ``gradient``/``withgradient`` over ``torch.autograd`` (Zygote's explicit mode).

``gradient_explicit(f, *args)`` returns one gradient tree per argument, shaped
like the state trees of :mod:`fluxtrain.optimisers` (a ``Module`` gives a
``StateTree`` reached by the model's own names, dicts give dicts, ...):

* a trainable leaf (float tensor, float numpy array, ``nn.Parameter`` with
  ``requires_grad=True``) gets its gradient, or ``None`` when ``f`` does not
  depend on it;
* a tensor that appears more than once (tied weights) gets its total gradient
  at its **first** occurrence and ``None`` at the others, so that
  ``update_``, which adds the gradients of all occurrences, counts it once;
* non-trainable leaves, and containers without any trainable leaf, are ``None``;
  an argument without any float leaf gives ``None``.
* numpy leaves: ``f`` is called with a tensor in their place (sharing memory
  with the array; a read-only array gives a copy) and their gradient is
  returned as a numpy array of the same dtype.

Tensors that did not require gradients get ``requires_grad`` only for the
call; afterwards every tensor's ``requires_grad`` and ``.grad`` are exactly as
before (``torch.autograd.grad`` never writes ``.grad``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.tree import StateTree

__all__ = [
    "gradient_explicit", "withgradient_explicit", "pullback_explicit", "WithGradient",
    "mirror_gradient",
]


class WithGradient(NamedTuple):
    """``withgradient``'s result: ``val`` (the loss, detached), ``grad`` (a tree per argument)."""

    val: Any
    grad: tuple[Any, ...]


def gradient_explicit(f: Any, *args: Any) -> tuple[Any, ...]:
    """Gradients of the scalar ``f(*args)`` with respect to each argument.

    >>> import torch
    >>> m = {"w": torch.tensor([1.0, 2.0]), "name": "layer"}
    >>> gradient_explicit(lambda m, x: (m["w"] * x).sum(), m, 3.0)
    ({'w': tensor([3., 3.]), 'name': None}, None)
    >>> m["w"].requires_grad, m["w"].grad
    (False, None)
    """
    return _differentiate(f, args)[1]


def withgradient_explicit(f: Any, *args: Any) -> WithGradient:
    """Value and gradients of ``f(*args)``: ``(val, grad)`` (a :class:`WithGradient`).

    ``f`` must return a scalar: a 1-element real tensor or a Python number. It
    may also return a tuple whose first element is the loss (Zygote's
    auxiliary output); then ``val`` is the whole tuple with the loss detached.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> val, (g,) = withgradient_explicit(lambda m: m(torch.ones(2)).sum(), lin)
    >>> g.weight.tolist(), g.bias.tolist()
    ([[1.0, 1.0]], [1.0])
    """
    out, grads = _differentiate(f, args)
    if isinstance(out, torch.Tensor):
        val: Any = out.detach()
    elif isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        val = (out[0].detach(), *out[1:])
    else:
        val = out
    return WithGradient(val, grads)


def pullback_explicit(f: Any, *args: Any) -> tuple[Any, Any]:
    """Zygote's ``pullback(f, *args)``: ``(y, back)`` with ``back(dy)`` -> one gradient tree
    per argument (as :func:`gradient_explicit` gives them).

    ``f(*args)`` runs once, now; ``back(dy)`` (``dy`` of ``y``'s shape, ``1`` by
    default) may be called many times; ``back(None)`` gives no gradients.

    >>> import torch
    >>> w = torch.tensor([3.0])
    >>> y, back = pullback_explicit(lambda v: (v * v).sum(), w)
    >>> y.item(), back(1.0), back(2.0)
    (9.0, (tensor([6.]),), (tensor([12.]),))
    """
    firsts, _keep, call_args = _leaves(args)  # _keep: leaf objects alive while ids are used
    tensors = [t for t in firsts.values() if not t.is_inference()]
    toggled = [t for t in tensors if not t.requires_grad]
    try:
        for t in toggled:
            t.requires_grad_(True)
        with torch.enable_grad():
            out = f(*call_args)
    finally:
        for t in toggled:
            t.requires_grad_(False)

    def back(dy: Any = 1.0) -> tuple[Any, ...]:
        gs: tuple[Any, ...] = (None,) * len(tensors)
        if dy is not None and isinstance(out, torch.Tensor) and out.requires_grad and tensors:
            seed = torch.as_tensor(dy, dtype=out.dtype, device=out.device)
            if seed.shape != out.shape:
                seed = seed.expand(out.shape)
            try:
                for t in toggled:
                    t.requires_grad_(True)
                gs = torch.autograd.grad(
                    out, tensors, grad_outputs=seed, retain_graph=True, allow_unused=True
                )
            finally:
                for t in toggled:
                    t.requires_grad_(False)
        return _grad_trees(args, firsts, tensors, gs)

    return (out.detach() if isinstance(out, torch.Tensor) else out), back


def _differentiate(f: Any, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """``f(*args)`` as returned, and the gradient tree of each argument."""
    # 1. find the trainable leaves (first occurrence wins), give numpy leaves tensors
    firsts, _keep, call_args = _leaves(args)  # _keep: leaf objects alive while ids are used
    tensors = [t for t in firsts.values() if not t.is_inference()]
    toggled = [t for t in tensors if not t.requires_grad]
    # 2. run f and differentiate, restoring requires_grad afterwards
    try:
        for t in toggled:
            t.requires_grad_(True)
        with torch.enable_grad():
            out = f(*call_args)
            loss = out[0] if isinstance(out, tuple) and out else out
            _check_loss(loss)
            if isinstance(loss, torch.Tensor) and loss.requires_grad and tensors:
                gs: tuple[Any, ...] = torch.autograd.grad(loss, tensors, allow_unused=True)
            else:
                gs = (None,) * len(tensors)
    finally:
        for t in toggled:
            t.requires_grad_(False)
    # 3. gradient trees shaped like the arguments
    return out, _grad_trees(args, firsts, tensors, gs)


def _leaves(args: tuple[Any, ...]) -> tuple[dict[int, torch.Tensor], list[Any], tuple[Any, ...]]:
    """The trainable leaves of ``args`` (id of the leaf object -> tensor to differentiate,
    first occurrence wins), the leaf objects (kept alive while their ids are in use), and
    the arguments to call ``f`` with (numpy leaves replaced by tensors)."""
    firsts: dict[int, torch.Tensor] = {}
    keep: list[Any] = []
    numpy_tensors: dict[int, tuple[Any, Any]] = {}
    for a in args:
        _find(a, True, firsts, keep, numpy_tensors)
    call_args = (
        tuple(_substitute(a, numpy_tensors, {}) for a in args) if numpy_tensors else args
    )
    return firsts, keep, call_args


def _grad_trees(args: tuple[Any, ...], firsts: dict[int, torch.Tensor],
                tensors: list[torch.Tensor], gs: tuple[Any, ...]) -> tuple[Any, ...]:
    """One gradient tree per argument, from the gradients ``gs`` of ``tensors``."""
    by_id = {id(t): g for t, g in zip(tensors, gs)}
    grads_of: dict[int, Any] = {key: by_id.get(id(t)) for key, t in firsts.items()}
    seen: set[int] = set()
    return tuple(_mirror_grad(a, True, grads_of, seen)[0] for a in args)


def _check_loss(loss: Any) -> None:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"gradient: the function must return a scalar loss, got a tensor of shape "
                f"{tuple(loss.shape)}; reduce it first, e.g. with .sum() or .mean()"
            )
        if not loss.is_floating_point():
            raise TypeError(
                f"gradient: the loss must be a real floating-point number, got a {loss.dtype} "
                "tensor"
            )
        return
    if isinstance(loss, bool) or not isinstance(loss, int | float | np.floating | np.integer):
        raise TypeError(
            f"gradient: the function must return a scalar loss (a 1-element tensor or a "
            f"number), got {type(loss).__name__}"
        )


def _find(
    x: Any,
    enabled: bool,
    firsts: dict[int, torch.Tensor],
    keep: list[Any],
    numpy_tensors: dict[int, tuple[Any, Any]],
) -> None:
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if enabled and id(x) not in firsts and T.is_trainable(x, k):
            if k == T.NUMPY:
                t = T.as_tensor(x, k)
                numpy_tensors[id(x)] = (x, t)
            else:
                t = x
            firsts[id(x)] = t
            keep.append(x)
        return
    if k == T.OTHER or not enabled:
        return
    if k == T.MODULE:
        _find_module(x, firsts, keep, set())
        return
    for _, child, en in T.children(x, k):
        _find(child, en, firsts, keep, numpy_tensors)


def _find_module(
    m: torch.nn.Module, firsts: dict[int, torch.Tensor], keep: list[Any], seen: set[int]
) -> None:
    """``m.parameters()``'s order (each module once, its own parameters before its
    children's), read from ``_parameters``/``_modules`` directly: the generator behind
    ``parameters()`` costs several microseconds per module on every gradient call."""
    seen.add(id(m))
    for p in m._parameters.values():
        if p is not None and id(p) not in firsts and T.is_trainable(p, T.TENSOR):
            firsts[id(p)] = p
            keep.append(p)
    for sub in m._modules.values():
        if sub is not None and id(sub) not in seen:
            _find_module(sub, firsts, keep, seen)


def _substitute(x: Any, repl: dict[int, tuple[Any, Any]], memo: dict[int, Any]) -> Any:
    k = T.kind(x)
    if k == T.NUMPY:
        hit = repl.get(id(x))
        return x if hit is None else hit[1]
    if k in (T.TENSOR, T.OTHER, T.MODULE):
        return x
    if id(x) in memo:
        return memo[id(x)]
    changes = {}
    for key, child, _ in T.children(x, k):
        new = _substitute(child, repl, memo)
        if new is not child:
            changes[key] = new
    out = T.rebuild(x, k, changes)
    memo[id(x)] = out
    return out


def mirror_gradient(model: Any, grads_of: dict[int, Any]) -> Any:
    """The gradient tree of ``model`` that :func:`gradient_explicit` builds, from
    ``{id(tensor): its gradient}`` (tied tensors: at the first position only).

    >>> import torch
    >>> w = torch.zeros(2)
    >>> mirror_gradient({"w": w, "tied": w, "n": 3}, {id(w): torch.ones(2)})
    {'w': tensor([1., 1.]), 'tied': None, 'n': None}
    """
    return _mirror_grad(model, True, grads_of, set())[0]


def _mirror_module(
    m: torch.nn.Module, grads_of: dict[int, Any], seen: set[int]
) -> tuple[Any, bool]:
    """:func:`_mirror_grad` of a Module: its parameters' gradients by name, then its
    submodules' trees (a module's children are modules or ``None``, so no kind
    dispatch per node: a gradient call walks every module of the model)."""
    children: dict[str, Any] = {}
    any_t = False
    for name, p in m._parameters.items():
        g = None
        if p is not None:
            pid = id(p)
            if pid in grads_of:
                any_t = True
                if pid not in seen:  # (a later occurrence of a tied tensor: None)
                    seen.add(pid)
                    g = grads_of[pid]
        children[name] = g
    for name, sub in m._modules.items():
        if sub is None:
            children[name] = None
            continue
        g, has = _mirror_module(sub, grads_of, seen)
        any_t = any_t or has
        children[name] = g
    return (StateTree(children) if any_t else None), any_t


def _mirror_grad(
    x: Any, enabled: bool, grads_of: dict[int, Any], seen: set[int]
) -> tuple[Any, bool]:
    """(gradient tree, whether x holds any trainable leaf)."""
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if not enabled or id(x) not in grads_of:
            return None, False
        if id(x) in seen:  # a later occurrence of a tied tensor
            return None, True
        seen.add(id(x))
        g = grads_of[id(x)]
        if g is not None and k == T.NUMPY:
            g = g.detach().cpu().numpy().astype(x.dtype, copy=False)
        return g, True
    if k == T.OTHER or not enabled:
        return None, False
    if k == T.MODULE:
        return _mirror_module(x, grads_of, seen)
    subs = []
    any_t = False
    for key, child, en in T.children(x, k):
        g, has = _mirror_grad(child, en, grads_of, seen)
        any_t = any_t or has
        subs.append((key, g))
    if not any_t:
        return None, False
    return T.mirror(x, k, subs), True
    return tuple(v for _, v in subs), True
