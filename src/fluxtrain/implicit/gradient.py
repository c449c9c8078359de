"""Implicit ``gradient(f, ps)`` / ``withgradient(f, ps)`` over torch.autograd.

``f`` takes no arguments and reads the parameters from wherever it finds them
(closures, globals, a model). Gradients are taken with
:func:`torch.autograd.grad`, so no ``.grad`` field is written; plain tensors
that did not require grad get ``requires_grad`` only for the call. An
``nn.Parameter`` with ``requires_grad=False`` is frozen and stays so: its
gradient is ``None``. Afterwards every
tensor's ``requires_grad`` and ``.grad`` are as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fluxtrain.implicit.params import Grads, Params

__all__ = ["gradient_implicit", "withgradient_implicit", "pullback_implicit", "ValueAndGrad"]


class ValueAndGrad(NamedTuple):
    """``(val, grad)`` as returned by ``withgradient`` (Flux's ``(val = ..., grad = ...)``)."""

    val: Any
    grad: Any


def _check_output(y: object) -> None:
    if isinstance(y, torch.Tensor):
        if y.is_complex():
            raise TypeError(
                "the output of f is complex, so the gradient is not defined; "
                "return a real number such as abs(z) ** 2"
            )
        if y.numel() != 1:
            raise ValueError(
                f"the output of f must be a scalar (one element) to take a gradient, got a "
                f"tensor of shape {tuple(y.shape)}; reduce it (e.g. .sum()) or use "
                "torch.autograd.functional.jacobian for a Jacobian"
            )
        return
    if isinstance(y, complex):
        raise TypeError("the output of f is complex, so the gradient is not defined")
    if not isinstance(y, (int, float)):
        raise TypeError(
            f"the output of f should be a scalar (a number or a one-element tensor), "
            f"got {type(y).__name__}"
        )


def withgradient_implicit(f: Callable[[], Any], ps: Params) -> ValueAndGrad:
    """Value of ``f()`` and its :class:`Grads` with respect to ``ps``.

    >>> import torch
    >>> from fluxtrain.implicit.params import Params
    >>> w = torch.tensor([3.0])
    >>> val, gs = withgradient_implicit(lambda: (w ** 2).sum(), Params([w]))
    >>> val.item(), gs[w].tolist(), w.requires_grad
    (9.0, [6.0], False)
    """
    if not isinstance(ps, Params):
        raise TypeError(
            f"implicit gradient needs Params as its second argument, got {type(ps).__name__}"
        )
    if not callable(f):
        raise TypeError(f"gradient(f, ps): f must be a function of no arguments, got {f!r}")
    members = list(ps)
    changed: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    # inside another implicit gradient's f: keep the graph of these gradients, so that the
    # outer one differentiates through them (Zygote's nested, second-order gradients)
    nested = _depth[0] > 0
    _depth[0] += 1
    try:
        for p in members:
            if not (p.is_floating_point() or p.is_complex()):
                continue  # integer tensors cannot carry gradients
            if not p.requires_grad and isinstance(p, torch.nn.Parameter):
                continue  # frozen the torch way: never switched on (its gradient is None)
            if p.is_leaf and not p.requires_grad:
                p.requires_grad_(True)
                changed.append(p)
            if p.requires_grad:
                inputs.append(p)
        with torch.enable_grad():
            y = f()
        _check_output(y)
        grads: list[torch.Tensor | None]
        if isinstance(y, torch.Tensor) and y.requires_grad and inputs:
            grads = list(
                torch.autograd.grad(  # type: ignore[arg-type]
                    y.reshape(()), inputs, allow_unused=True, create_graph=nested
                )
            )
        else:
            grads = [None] * len(inputs)
    finally:
        _depth[0] -= 1
        for p in changed:
            p.requires_grad_(False)
    out = Grads({}, ps)
    for p, g in zip(inputs, grads):
        out[p] = g
    val = y.detach() if isinstance(y, torch.Tensor) else y
    return ValueAndGrad(val, out)


_depth = [0]  # how many implicit gradients are running (nested ones keep their graph)


def pullback_implicit(f: Callable[[], Any], ps: Params) -> tuple[Any, Callable[..., Grads]]:
    """Zygote's implicit ``pullback(f, ps)``: ``(y, back)`` with ``back(dy) -> Grads``.

    ``f()`` runs once, now; ``back(dy)`` differentiates its result seeded with ``dy``
    (``1`` by default; ``y`` may be a tensor of any shape, ``dy`` then has its shape)
    and may be called many times. As in Zygote, every call returns the SAME
    :class:`Grads` object, overwritten (``back(None)`` sets every gradient to ``None``):
    keep one with ``.copy()``.

    >>> import torch
    >>> from fluxtrain.implicit.params import Params
    >>> w = torch.tensor([3.0])
    >>> y, back = pullback_implicit(lambda: (w * w).sum(), Params([w]))
    >>> y.item(), back(1.0)[w].tolist(), back(2.0)[w].tolist(), back(None)[w]
    (9.0, [6.0], [12.0], None)
    """
    if not isinstance(ps, Params):
        raise TypeError(f"pullback(f, ps): ps must be Params, got {type(ps).__name__}")
    if not callable(f):
        raise TypeError(f"pullback(f, ps): f must be a function of no arguments, got {f!r}")
    inputs = [
        p for p in ps
        if (p.is_floating_point() or p.is_complex())
        and not (isinstance(p, torch.nn.Parameter) and not p.requires_grad)
    ]
    changed = [p for p in inputs if p.is_leaf and not p.requires_grad]
    try:
        for p in changed:
            p.requires_grad_(True)
        with torch.enable_grad():
            y = f()
    finally:
        for p in changed:
            p.requires_grad_(False)
    out = Grads({}, ps)

    def back(dy: Any = 1.0) -> Grads:
        for p in ps:
            out[p] = None
        if dy is None or not (isinstance(y, torch.Tensor) and y.requires_grad) or not inputs:
            return out
        seed = torch.as_tensor(dy, dtype=y.dtype, device=y.device)
        if seed.shape != y.shape:
            seed = seed.expand(y.shape)
        try:
            for p in changed:
                p.requires_grad_(True)
            gs = torch.autograd.grad(
                y, inputs, grad_outputs=seed, retain_graph=True, allow_unused=True
            )
        finally:
            for p in changed:
                p.requires_grad_(False)
        for p, g in zip(inputs, gs):
            out[p] = g
        return out

    return (y.detach() if isinstance(y, torch.Tensor) else y), back


def gradient_implicit(f: Callable[[], Any], ps: Params) -> Grads:
    """The :class:`Grads` of a zero-argument ``f`` with respect to ``ps``.

    >>> import torch
    >>> from fluxtrain.implicit.params import Params
    >>> x, y = torch.tensor([2.0, 1.0]), torch.tensor([2.0, 0.0])
    >>> gs = gradient_implicit(lambda: ((x - y) ** 2).sum(), Params([x, y]))
    >>> gs[x].tolist(), gs[y].tolist()
    ([0.0, 2.0], [-0.0, -2.0])
    """
    return withgradient_implicit(f, ps).grad


def is_finite_loss(val: object) -> bool:
    """Whether a loss value (tensor or number) is finite."""
    if isinstance(val, torch.Tensor):
        return bool(torch.isfinite(val).all())
    try:
        return math.isfinite(float(val))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
