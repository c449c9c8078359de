"""Opt-in flat layout: a model's trainable tensors as views of one buffer per (device, dtype).

``flatten_(model)`` copies every trainable tensor of ``model`` into one
contiguous buffer per (device, dtype) group, back to back in ``setup``'s walk
order, and re-points each tensor at its slice (``set_``: the objects, and
every reference to them, stay; the values are unchanged). It gives each tensor
a ``.grad`` that is a view of a matching gradient buffer, so ``backward()``
accumulates into that buffer in place, as with DDP's
``gradient_as_bucket_view``.

Nothing else changes: the model trains, saves and loads as before, and
``update_`` gives the same bits. What it buys is speed with many small
tensors: when the parameters, the gradients and the optimiser states are
each back to back, the fused kernel of ``Descent``/``Momentum``/``Adam``
updates the whole group as one array instead of one tensor at a time (see
``docs/speed.md``).

>>> import torch
>>> from fluxtrain.optimisers import Adam, setup, update_
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
>>> layout = flatten_(model)
>>> [tuple(b.shape) for b in layout.buffers]            # 6 + 2 + 2 + 1 parameters
[(11,)]
>>> state = setup(Adam(0.01), model)
>>> layout.zero_grad()
>>> model(torch.ones(4, 3)).sum().backward()             # into layout.grad_buffers
>>> _ = update_(state, model, layout.grads)              # the gradient tree of views
>>> layout.intact()
True

Re-pointing a tensor afterwards (``.data =``, ``set_``, ``model.to(...)``)
or replacing its ``.grad`` (``zero_grad(set_to_none=True)``) takes it out of
the layout: ``update_`` still gives the right result, on its per-tensor path;
``intact()`` says whether the layout holds and ``check()`` names what left it.
Not supported (and not detected): in-place changes of a view's shape or
strides (``t_()``, ``resize_()``), and re-pointing a gradient or optimiser
state view to another place of the same buffer.

``gradient(loss, model)`` and ``train_`` still return fresh gradient tensors
(``None`` where the loss does not reach a parameter; ``backward`` into the
views would leave zeros there, a different step for Adam): correct on a flat
model, at the per-tensor speed. For the flat speed, ``backward()`` and pass
``layout.grads``.
"""

from __future__ import annotations

from typing import Any

import torch

from fluxtrain.gradients import mirror_gradient
from fluxtrain.optimisers import tree as T

__all__ = ["flatten_", "FlatLayout"]


class FlatLayout:
    """What :func:`flatten_` made: the buffers and the views of every trainable tensor.

    Attributes: ``params`` (the distinct trainable tensors, walk order),
    ``paths`` (their spelling, ``model.layers[0].weight``), ``buffers`` and
    ``grad_buffers`` (one flat tensor per (device, dtype) group), ``views``
    (each parameter's ``.grad`` view) and ``grads`` (those views as a gradient
    tree shaped like the model, what ``gradient(loss, model)`` would return).
    """

    __slots__ = ("params", "paths", "buffers", "grad_buffers", "views", "grads", "_places")

    def __init__(self, params: list[torch.Tensor], paths: list[str],
                 buffers: list[torch.Tensor], grad_buffers: list[torch.Tensor],
                 views: list[torch.Tensor], grads: Any,
                 places: list[tuple[int, int]]) -> None:
        self.params = params
        self.paths = paths
        self.buffers = buffers
        self.grad_buffers = grad_buffers
        self.views = views
        self.grads = grads
        self._places = places  # per parameter: (group, element offset)

    def zero_grad(self) -> None:
        """Set every gradient to zero (one ``zero_`` per buffer; the views stay)."""
        with torch.no_grad():
            for g in self.grad_buffers:
                g.zero_()

    def _left(self) -> tuple[int, str] | None:
        for i, (p, v, (grp, off)) in enumerate(zip(self.params, self.views, self._places)):
            buf = self.buffers[grp]
            if p.data_ptr() != buf.data_ptr() + off * buf.element_size() or not p.is_contiguous():
                return i, "its memory is no longer its slice of the buffer (re-pointed?)"
            if p.grad is not v:
                return i, "its .grad is no longer the layout's view (replaced or set to None?)"
        return None

    def intact(self) -> bool:
        """Whether every parameter and its ``.grad`` are still the layout's views."""
        return self._left() is None

    def check(self) -> None:
        """Raise ``RuntimeError`` naming the first tensor that left the layout.

        >>> import torch
        >>> w = [torch.zeros(2), torch.zeros(3)]
        >>> layout = flatten_(w)
        >>> w[1].grad = None
        >>> layout.check()
        Traceback (most recent call last):
        ...
        RuntimeError: flatten_: model[1] left the flat layout: its .grad is no longer ...
        """
        left = self._left()
        if left is not None:
            i, why = left
            raise RuntimeError(
                f"flatten_: {self.paths[i]} left the flat layout: {why}; "
                "call flatten_(model) again"
            )

    def __repr__(self) -> str:
        groups = ", ".join(
            f"{b.numel()} × {str(b.dtype).removeprefix('torch.')} on {b.device}"
            for b in self.buffers
        )
        return f"FlatLayout({len(self.params)} tensors: {groups})"


def flatten_(model: Any) -> FlatLayout:
    """Put ``model``'s trainable tensors in one flat buffer per (device, dtype), in place.

    Every trainable tensor (what ``setup`` would give a state; a tied tensor
    once) is copied into its group's buffer and re-pointed there; its existing
    ``.grad`` (or zeros) goes to the matching slice of a gradient buffer, and
    ``.grad`` becomes a view of it. Returns the :class:`FlatLayout`.

    Raises ``TypeError`` for numpy leaves and sparse tensors (they cannot be
    re-pointed), ``ValueError`` for inference-mode or read-only tensors, for
    tensors that are not leaves of autograd, for two trainable tensors that
    share memory (flattening would separate them) and for a model without
    trainable tensors. Nothing is changed when it raises.

    >>> import torch
    >>> w = [torch.ones(2), torch.full((2, 2), 3.0)]
    >>> layout = flatten_(w)
    >>> layout
    FlatLayout(2 tensors: 6 × float32 on cpu)
    >>> layout.buffers[0].tolist(), w[1].tolist()
    ([1.0, 1.0, 3.0, 3.0, 3.0, 3.0], [[3.0, 3.0], [3.0, 3.0]])
    >>> w[1].data_ptr() == layout.buffers[0].data_ptr() + 2 * 4
    True
    """
    params: list[torch.Tensor] = []
    paths: list[str] = []
    seen: set[int] = set()
    for path, x, k in T.trainable_positions(model):
        where = T.format_path(path)
        if k == T.NUMPY:
            raise TypeError(
                f"flatten_: {where} is a numpy array; only torch tensors can be re-pointed "
                "into a flat buffer (convert the model with torch.from_numpy first)"
            )
        if id(x) in seen:
            continue  # a tied tensor: one place in the buffer
        _check_leaf(x, where)
        seen.add(id(x))
        params.append(x)
        paths.append(where)
    if not params:
        raise ValueError(
            f"flatten_: {type(model).__name__} has no trainable tensors to flatten"
        )
    _check_disjoint(params, paths)

    # 1. make and fill the buffers (may fail, e.g. out of memory: nothing re-pointed yet)
    groups: dict[tuple[torch.device, torch.dtype], int] = {}
    sizes: list[int] = []
    places: list[tuple[int, int]] = []
    for x in params:
        key = (x.device, x.dtype)
        grp = groups.setdefault(key, len(groups))
        if grp == len(sizes):
            sizes.append(0)
        places.append((grp, sizes[grp]))
        sizes[grp] += x.numel()
    keys = list(groups)
    buffers = [torch.empty(n, dtype=dt, device=dev) for (dev, dt), n in zip(keys, sizes)]
    grad_buffers = [torch.zeros(n, dtype=dt, device=dev) for (dev, dt), n in zip(keys, sizes)]
    homes: list[torch.Tensor] = []  # each parameter's slice of its buffer
    views: list[torch.Tensor] = []
    with torch.no_grad():
        for x, (grp, off) in zip(params, places):
            n = x.numel()
            home = buffers[grp][off:off + n].view(x.shape)
            home.copy_(x)
            homes.append(home)
            view = grad_buffers[grp][off:off + n].view(x.shape)
            if x.grad is not None:
                view.copy_(x.grad)
            views.append(view)
        # 2. re-point (metadata only: values are already in place)
        for x, (grp, off), home, view in zip(params, places, homes, views):
            x.set_(buffers[grp].untyped_storage(), off, x.shape, home.stride())
            x.grad = view
    grads = mirror_gradient(model, {id(x): v for x, v in zip(params, views)})
    return FlatLayout(params, paths, buffers, grad_buffers, views, grads, places)


def _check_leaf(x: torch.Tensor, where: str) -> None:
    if x.layout != torch.strided:
        raise TypeError(f"flatten_: {where} is a {x.layout} tensor; only dense tensors flatten")
    if x.is_inference() or getattr(x, "_fluxtrain_readonly", False):
        raise ValueError(
            f"flatten_: {where} is read-only (an inference-mode tensor or a read-only "
            "array); it cannot be moved into a flat buffer"
        )
    if x.grad_fn is not None:
        raise ValueError(
            f"flatten_: {where} is not a leaf of autograd (it was computed from other "
            f"tensors, grad_fn={type(x.grad_fn).__name__}); flatten the tensors it came from, "
            "or detach it first"
        )


def _check_disjoint(params: list[torch.Tensor], paths: list[str]) -> None:
    spans = []
    for i, x in enumerate(params):
        if x.numel():
            lo = x.data_ptr()
            hi = lo + _extent(x) * x.element_size()
            spans.append((x.device, lo, hi, i))
    spans.sort(key=lambda s: (str(s[0]), s[1]))
    for (d0, _, hi0, i), (d1, lo1, _, j) in zip(spans, spans[1:]):
        if d0 == d1 and lo1 < hi0:
            raise ValueError(
                f"flatten_: {paths[i]} and {paths[j]} share memory (one is a view of the "
                "other); flattening would separate them. Make them separate tensors (clone) "
                "or tie them as one tensor"
            )


def _extent(x: torch.Tensor) -> int:
    """Elements from the first to one past the last that ``x`` can reach."""
    return 1 + sum((n - 1) * abs(s) for n, s in zip(x.shape, x.stride()))

