"""``trainables(model)``: every trainable parameter once, in model order."""

from __future__ import annotations

from typing import Any

from fluxtrain.core.base import AbstractRule
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.leaf import Leaf

__all__ = ["trainables"]


def trainables(model: Any, *, path: bool = False) -> list[Any]:
    """All trainable parameters of ``model``, depth first, each object once (by identity).

    The entries are the model's own objects: tensors (``nn.Parameter`` for a
    Module) or numpy arrays. With ``path=True`` the entries are
    ``(path, parameter)`` pairs, ``path`` a string like ``"model.layers[0].weight"``.

    >>> import torch
    >>> m1 = torch.tensor([1.0, 2.0, 3.0])
    >>> m4 = {"x": m1, "y": m1, "z": torch.tensor([4.0, 5.0, 6.0]), "f": abs}
    >>> [t.tolist() for t in trainables(m4)]  # the tied m1 once
    [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    >>> [p for p, _ in trainables(m4, path=True)]
    ["model['x']", "model['z']"]
    """
    if type(model) is T.StateTree or type(model) is Leaf or isinstance(model, AbstractRule):
        raise TypeError(
            f"trainables(model) lists a model's parameters, but was given a "
            f"{type(model).__name__} (an optimiser state tree from setup, or a rule); pass "
            "the model itself"
        )
    out: list[Any] = []
    seen: set[int] = set()
    _walk(model, None, True, out, seen, path)
    return out


def _walk(x: Any, p: Any, enabled: bool, out: list[Any], seen: set[int], path: bool) -> None:
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if enabled and id(x) not in seen and T.is_trainable(x, k):
            seen.add(id(x))
            out.append((T.format_path(p), x) if path else x)
        return
    if k == T.OTHER or not enabled:
        return
    if k == T.MODULE and not path:
        # Fast path: torch's own generator walks the same order (params, then submodules).
        for prm in x.parameters():
            if id(prm) not in seen and T.is_trainable(prm, T.TENSOR):
                seen.add(id(prm))
                out.append(prm)
        return
    for key, child, en in T.children(x, k):
        _walk(child, (p, key, k) if path else None, en, out, seen, path)
