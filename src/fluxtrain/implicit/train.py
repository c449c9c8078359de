"""Implicit ``update_`` and ``train_`` (Flux 0.13's ``Flux.Optimise``).

These are the implementations; the public ``fluxtrain.update_`` and
``fluxtrain.train_`` (in :mod:`fluxtrain.dispatch`) pick them when given
``Params`` and an old optimiser, and issue the deprecation warnings.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import repeat
from operator import is_
from typing import Any

import torch

from fluxtrain import distributed, trace
from fluxtrain.core import tensormeta
from fluxtrain.core.ops import check_grad
from fluxtrain.errors import DomainError
from fluxtrain.implicit.callbacks import SkipException, StopException, runall
from fluxtrain.implicit.gradient import withgradient_implicit
from fluxtrain.implicit.params import Grads, Params
from fluxtrain.optimise.optimisers import (
    AbstractOptimiser,
    fast_states,
    is_custom,
    state_keys,
    step_fused_,
    step_many_,
)

__all__ = ["update_implicit", "train_implicit"]


def _lookup(gs: Any, x: torch.Tensor, ps: Params) -> Any:
    if isinstance(gs, Grads):
        return gs[x]
    if isinstance(gs, Mapping):
        if x in gs:
            return gs[x]
        # a numpy array given to params() stands for its tensor
        for arr, t in ps._np.values():
            if t is x and arr in gs:  # pragma: no cover - rare
                return gs[arr]
        raise KeyError(
            f"the gradients have no entry for a parameter of shape {tuple(x.shape)}; "
            "give a gradient (or None) for every tensor in the Params"
        )
    raise TypeError(f"gradients must be a Grads (from gradient(f, ps)), got {type(gs).__name__}")


_NO: Any = object()


def _fast_update(opt: AbstractOptimiser, ps: Params, gs: Grads) -> bool:
    """The cached step of ``update_(opt, ps, gs)``; ``False`` (nothing changed) if it can't.

    Taken when ``gs`` was made for ``ps`` itself, ``opt`` keeps its state the
    plain way with a built-in Descent/Momentum/Adam rule, every parameter with
    a gradient has a state already (from an earlier step) and every gradient is
    a plain tensor of its parameter's shape and device. Per ``(opt, ps)`` it
    caches the stored state keys (:func:`~fluxtrain.optimise.optimisers.state_keys`),
    keyed by ``ps``'s membership version (``push``/``delete`` change it), so a
    step does no per-parameter hashing of weak references and no Grads
    lookups by identity. The gradients are not copied: the fused path only
    reads them. Anything unusual returns ``False`` and the general loop runs
    (it raises the usual errors).
    """
    if not fast_states(opt):
        return False
    order = ps._order
    cache = opt.__dict__.get("_ps_plan")
    if cache is None or cache[0]() is not ps or cache[1] != ps._version:
        keys0 = state_keys(opt, order)
        cache = (weakref.ref(ps), ps._version, keys0, not any(map(is_, keys0, repeat(None))))
        object.__setattr__(opt, "_ps_plan", cache)
    gmap = gs._grads
    tensor = torch.Tensor
    keys: list[Any] = cache[2]
    # the usual step, list by list: a state (cache[3]) and a tensor gradient (so not None)
    # for every parameter (prepare checks the gradients' shapes, devices and dtypes)
    got = tensormeta.grads_by_id(gmap, order, tensor) if cache[3] else None
    if got is not None:
        xs: list[torch.Tensor] = list(order)
        dxs: list[torch.Tensor] = got[0]
        if got[1]:  # one requires grad
            dxs = [g.detach() if g.requires_grad else g for g in dxs]
    else:  # parameter by parameter: skips (None), and the cases the general loop decides
        xs, dxs, keys = [], [], []
        for x, k in zip(order, cache[2]):
            g = gmap.get(id(x), _NO)
            if g is None:
                continue
            if (
                k is None
                or type(g) is not tensor
                or g is x
                or g.shape != x.shape
                or g.device != x.device
            ):
                if k is None and g is not _NO:
                    object.__setattr__(opt, "_ps_plan", None)  # a new state will appear
                return False
            xs.append(x)
            dxs.append(g.detach() if g.requires_grad else g)
            keys.append(k)
    if not xs:
        return False
    done = step_fused_(opt, xs, dxs, keys)
    if done is None:
        object.__setattr__(opt, "_ps_plan", None)  # a state was deleted: find the keys again
    return bool(done)


def update_implicit(
    opt: AbstractOptimiser,
    ps_or_x: Params | torch.Tensor,
    gs_or_g: Any,
    *,
    loss: float | None = None,
    copy: bool = True,
) -> Params | torch.Tensor:
    """Implicit ``update_(opt, ps, gs)`` or ``update_(opt, x, g)``: one step in place.

    For each parameter of ``ps`` in order whose gradient is not ``None``, the
    optimiser's rule computes a step from (a copy of) the gradient and the step
    is subtracted in place. Returns ``ps`` (or ``x``).

    >>> import torch
    >>> from fluxtrain.optimise import Descent
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> _ = update_implicit(Descent(0.1), x, torch.tensor([1.0, 1.0], dtype=torch.float64))
    >>> x.tolist()
    [0.9, 1.9]
    """
    if not copy and is_custom(opt):
        copy = True  # a user's apply_ may overwrite dx in place (Flux's apply! did)
    if isinstance(ps_or_x, Params):
        ps = ps_or_x
        if type(gs_or_g) is Grads and gs_or_g.params is ps and _fast_update(opt, ps, gs_or_g):
            if trace.active():
                trace.record_step("implicit", list(ps), loss)
            return ps
        xs: list[torch.Tensor] = []
        dxs: list[torch.Tensor] = []
        for x in ps:
            g = _lookup(gs_or_g, x, ps)
            if g is None:
                continue
            g = check_grad(x, g, f"parameter {len(xs)} (shape {tuple(x.shape)})")
            xs.append(x)
            dxs.append(g.detach().clone() if copy else g.detach())
        if xs:
            step_many_(opt, xs, dxs)
        if trace.active():
            trace.record_step("implicit", list(ps), loss)
        return ps
    x = ps_or_x
    if gs_or_g is None:
        raise TypeError(
            "update_(opt, x, g) needs a gradient tensor g, got None; "
            "only update_(opt, ps, gs) skips parameters without gradient"
        )
    g = check_grad(x, gs_or_g)
    step_many_(opt, [x], [g.detach().clone() if copy else g.detach()])
    if trace.active():
        trace.record_step("implicit", [x], loss)
    return x


def _loss_float(val: Any) -> float:
    if isinstance(val, torch.Tensor):
        return float(val.detach().reshape(()).item()) if val.numel() == 1 else float("nan")
    return float(val)


def _julia_num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(v)


_SPLAT_HINT = (
    ". A tuple or list item (a DataLoader batch) is splatted, loss(x, y); any other item, "
    "a dict included, is passed whole, loss(item)"
)


def train_implicit(
    loss: Callable[..., Any],
    ps: Params,
    data: Iterable[Any],
    opt: AbstractOptimiser,
    cb: Callable[[], Any] | list[Callable[[], Any]] | None = None,
    *,
    progress: bool | None = None,
) -> None:
    """Flux 0.13's implicit ``train_(loss, ps, data, opt, cb=...)``: one pass over ``data``.

    For each item ``d`` (numbered from 1): the loss ``loss(*d)`` (``d`` a
    tuple or a list, as a torch ``DataLoader`` yields) or ``loss(d)`` (any
    other item, a dict included) and its gradient with respect to ``ps``; a
    non-finite loss raises :class:`~fluxtrain.DomainError` before anything of
    that step is applied; then ``update_(opt, ps, gs)``; then the callbacks
    (a function or a list of functions). ``stop()`` (from the loss or a
    callback) ends the loop; ``skip()`` goes on to the next item.

    >>> import torch
    >>> from fluxtrain.implicit.params import Params
    >>> from fluxtrain.optimise import Descent
    >>> w = torch.zeros(1, dtype=torch.float64)
    >>> train_implicit(lambda x: (w * x).sum(), Params([w]), [1.0, 2.0], Descent(0.1),
    ...                progress=False)
    >>> w.tolist()
    [-0.30000000000000004]
    """
    callback = runall(cb)
    from fluxtrain.progress import batch_args, check_loss_call, progress_bar

    first = True
    with progress_bar(data, progress) as items:
        for i, d in enumerate(items, 1):
            try:
                args = batch_args(d)
                if first:  # a loss that cannot take the item: say how it is called
                    check_loss_call(loss, args, "loss(*item) (the implicit style)", _SPLAT_HINT)
                    first = False
                val, gs = withgradient_implicit(partial(loss, *args), ps)
                lv = _loss_float(val)
                if distributed.is_distributed():
                    # Before the local check, so a non-finite loss stops every rank.
                    gs = distributed.sync_gradients(ps, gs, loss=lv, item=i)
                if not math.isfinite(lv):
                    raise DomainError(
                        f"Loss is {_julia_num(lv)} on data item {i}, stopping training"
                    )
                update_implicit(opt, ps, gs, loss=lv, copy=False)
                callback()
            except StopException:
                break
            except SkipException:
                continue
