"""Flux 0.13.9+'s explicit training: ``setup`` (with the mutability check), ``train_``, ``update_``.

The public ``fluxtrain.train_``/``fluxtrain.update_`` (``fluxtrain.dispatch``)
call :func:`train_explicit` and :func:`update_explicit` here when given a model
and an optimiser state; ``fluxtrain.setup`` is :func:`setup`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from fluxtrain import distributed, trace
from fluxtrain.core.base import AbstractRule
from fluxtrain.errors import DomainError
from fluxtrain.gradients import withgradient_explicit
from fluxtrain.optimisers import interface
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.interface import external_stacklevel
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.trainables import trainables
from fluxtrain.optimisers.tree import StateTree

__all__ = ["setup", "train_explicit", "update_explicit", "check_mutable"]


def setup(rule: Any, model: Any, *, default: Any = None) -> Any:
    """Flux's ``setup``: :func:`fluxtrain.optimisers.setup` plus a mutability check.

    ``train_`` updates the model in place, so every trainable leaf must be
    writable: a read-only numpy array is refused with an error naming it. Old
    optimisers (``fluxtrain.Adam()``) are translated to the new rules with a
    :class:`~fluxtrain.FluxDeprecationWarning`. Per-part rules (a mapping from
    parameter paths or patterns to rules, or a function ``(path, parameter) ->
    rule``) and ``default=`` work as in :func:`fluxtrain.optimisers.setup`.

    >>> import torch
    >>> from fluxtrain.optimisers import Descent, Momentum
    >>> lin = torch.nn.Linear(2, 1, dtype=torch.float64)
    >>> setup(Momentum(0.1), lin).bias
    Leaf(Momentum(eta=0.1, rho=0.9), [0.0])
    >>> setup({"weight": Descent(0.1)}, lin, default="freeze").bias.frozen
    True
    """
    state = interface.setup(rule, model, default=default)
    check_mutable(model, "setup")
    return state


def check_mutable(model: Any, fname: str = "setup") -> None:
    """Raise ``ValueError`` naming the first trainable leaf that cannot be written in place."""
    for path, x in trainables(model, path=True):
        if T.is_writable_leaf(x, T.kind(x)):
            continue
        if T.kind(x) == T.NUMPY:
            why = "read-only" if not x.flags.writeable else "not viewable by torch.from_numpy"
            raise ValueError(
                f"{fname}: model must be fully mutable for train_ to work, got {path} :: "
                f"numpy.ndarray ({why}, dtype {x.dtype}). Replace it by a writable, "
                "native-order copy (np.array(arr)), or use fluxtrain.optimisers.setup with "
                "update/update_ and keep the model they return"
            )
        why = (
            "an expanded tensor whose elements share memory (stride 0)"
            if T.is_expanded(x)
            else "an inference-mode or read-only tensor"
        )
        raise ValueError(
            f"{fname}: model must be fully mutable for train_ to work, got {path} :: "
            f"{type(x).__name__} that cannot be written in place ({why}); replace it by "
            "an ordinary tensor (x.clone())"
        )


def update_explicit(
    opt_state: Any, model: Any, grads: Any, *, loss: float | None = None
) -> tuple[Any, Any]:
    """Explicit ``update_(opt_state, model, grads)``: one step in place, returns ``(state, model)``.

    ``loss`` (when known) is passed to the ``FLUXTRAIN_TRACE`` record of this step.

    >>> import torch
    >>> from fluxtrain.optimisers import Descent
    >>> m = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    >>> st = setup(Descent(0.5), m)
    >>> _ = update_explicit(st, m, {"w": torch.tensor([1.0, 1.0], dtype=torch.float64)})
    >>> m["w"].tolist()
    [0.5, 1.5]
    """
    if isinstance(opt_state, AbstractRule):
        raise TypeError(
            f"update_ needs the state tree from setup(rule, model), got the rule {opt_state!r}; "
            "call opt_state = fluxtrain.setup(rule, model) once before the training loop"
        )
    state, new_model = interface.update_(opt_state, model, grads)
    if trace.active():
        trace.record_step("explicit", trainables(new_model), loss)
    return state, new_model


def _has_state(st: Any) -> bool:
    """Whether a state tree holds any tensor or value worth keeping (not just ``None``s)."""
    t = type(st)
    if t is Leaf:
        return _has_value(st.state)
    if t is StateTree:
        return any(_has_state(v) for v in st._children.values())
    if isinstance(st, dict):
        return any(_has_state(v) for v in st.values())
    if isinstance(st, tuple | list):
        return any(_has_state(v) for v in st)
    return False


def _has_value(s: Any) -> bool:
    if s is None:
        return False
    if isinstance(s, tuple | list):
        return any(_has_value(v) for v in s)
    return True


def _loss_value(val: Any) -> float:
    if isinstance(val, tuple):
        val = val[0]
    if isinstance(val, torch.Tensor):
        return float(val.item())
    return float(val)


def train_explicit(
    loss: Any,
    model: Any,
    data: Any,
    opt_state: Any,
    *,
    cb: Any = None,
    progress: bool | None = None,
) -> None:
    """Flux's explicit ``train_(loss, model, data, opt_state)``: one pass over ``data``.

    For each item ``d``: the loss and gradient of ``loss(model, *d)`` (if ``d``
    is a tuple or a list, as a torch ``DataLoader`` yields) or ``loss(model, d)``
    (any other item, a dict included), then ``update_(opt_state, model, grad)``.
    A non-finite loss raises :class:`~fluxtrain.DomainError` naming the value and
    the item number (counted from 1, as Flux does) before anything of that step
    is applied. A progress bar is shown when stderr is a terminal
    (``progress=True``/``False`` forces it). Given a bare rule instead of a
    state, a state is set up for this call only (with a warning if that state
    is worth keeping); an old optimiser is translated, with a deprecation warning.
    Returns ``None``.

    >>> import torch
    >>> from fluxtrain.optimisers import Descent
    >>> m = {"w": torch.tensor([0.0], dtype=torch.float64)}
    >>> st = setup(Descent(0.1), m)
    >>> train_explicit(lambda m, x: (m["w"] * x).sum(), m, [1.0, 2.0], st, progress=False)
    >>> m["w"].tolist()
    [-0.30000000000000004]
    """
    if cb is not None:
        raise TypeError(
            "train_ (explicit style) does not support callbacks (cb=...). For more control "
            "write the loop yourself and put the callback's code in it:\n"
            "    for d in data:\n"
            "        grads = fluxtrain.gradient(loss, model, *d)\n"
            "        fluxtrain.update_(opt_state, model, grads[0])\n"
            "        ...  # callback code here; `break` replaces stop(), `continue` skip()"
        )
    if isinstance(opt_state, AbstractRule) or hasattr(type(opt_state), "__fluxtrain_translate__"):
        new_rule = opt_state if isinstance(opt_state, AbstractRule) else (
            opt_state.__fluxtrain_translate__()
        )
        name = type(new_rule).__name__
        opt_state = interface.setup(opt_state, model)
        if _has_state(opt_state):
            warnings.warn(
                f"train_ was given the rule {name} instead of a state from setup: its state "
                "(momenta etc.) will be discarded when train_ returns. Run "
                f"opt_state = fluxtrain.setup({name}(...), model) once and pass opt_state "
                "to train_.",
                UserWarning,
                stacklevel=external_stacklevel(),
            )
    check_mutable(model, "train_")

    from fluxtrain.progress import batch_args, check_loss_call, progress_bar

    first = True
    with progress_bar(data, progress) as items:
        for i, d in enumerate(items, 1):
            args = batch_args(d)
            if first:  # a loss that cannot take the item: say how it is called, before any step
                check_loss_call(loss, (model, *args), "loss(model, *item) (the explicit style)",
                                _SPLAT_HINT)
                first = False
            val, grads = withgradient_explicit(lambda m, a=args: loss(m, *a), model)
            lv = _loss_value(val)
            g = grads[0]
            if distributed.is_distributed():
                # Before the local check: a non-finite loss on any rank stops every
                # rank together instead of leaving the others in the next all-reduce.
                g = distributed.sync_gradients(model, g, loss=lv, item=i)
            if not math.isfinite(lv):
                raise DomainError(f"Loss is {_julia_num(lv)} on data item {i}, stopping training")
            update_explicit(opt_state, model, g, loss=lv)


_SPLAT_HINT = (
    ". A tuple or list item (a DataLoader batch) is splatted, loss(model, x, y); any other "
    "item, a dict included, is passed whole, loss(model, item)"
)


def _julia_num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    return "Inf" if v > 0 else "-Inf"


