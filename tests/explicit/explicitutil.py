"""Helpers for the explicit-style tests: rules that may not have landed yet, snapshots."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

import fluxtrain.optimisers as O
from fluxtrain.optimisers import Leaf
from fluxtrain.optimisers.tree import StateTree


def rule(name: str) -> Any:
    """The rule class ``name`` from fluxtrain.optimisers, or skip the test if it is missing."""
    cls = getattr(O, name, None)
    if cls is None:
        pytest.skip(f"rule {name} not in fluxtrain.optimisers yet")
    return cls


def f64(*xs: Any) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def f32(*xs: Any) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every tensor/array/value reachable from ``obj``, cloned, with its path and identity.

    Independent of fluxtrain's own tree code so that snapshots can check it.
    """
    out: list[tuple[str, Any]] = []
    if isinstance(obj, torch.Tensor):
        out.append((prefix, ("tensor", id(obj), obj.dtype, obj.detach().clone(),
                             obj.requires_grad, None if obj.grad is None else obj.grad.clone())))
    elif isinstance(obj, np.ndarray):
        out.append((prefix, ("array", id(obj), obj.dtype, obj.copy(), obj.flags.writeable)))
    elif isinstance(obj, torch.nn.Module):
        out.append((prefix, ("module", id(obj))))
        for k, v in obj.state_dict(keep_vars=True).items():
            out.extend(flatten(v, f"{prefix}.{k}"))
    elif isinstance(obj, Leaf):
        out.append((prefix, ("leaf", id(obj), repr(obj.rule), obj.frozen)))
        out.extend(flatten(obj.state, prefix + ".state"))
    elif isinstance(obj, StateTree):
        out.append((prefix, ("statetree", id(obj), tuple(obj.keys()))))
        for k in obj.keys():
            out.extend(flatten(obj[k], f"{prefix}.{k}"))
    elif isinstance(obj, dict):
        out.append((prefix, ("dict", id(obj), tuple(obj.keys()))))
        for k, v in obj.items():
            out.extend(flatten(v, f"{prefix}[{k!r}]"))
    elif isinstance(obj, list | tuple):
        out.append((prefix, (type(obj).__name__, id(obj) if isinstance(obj, list) else None,
                             len(obj))))
        for i, v in enumerate(obj):
            out.extend(flatten(v, f"{prefix}[{i}]"))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out.append((prefix, ("dataclass", id(obj))))
        for f in dataclasses.fields(obj):
            out.extend(flatten(getattr(obj, f.name), f"{prefix}.{f.name}"))
    else:
        out.append((prefix, ("value", obj)))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(
                a.nan_to_num(), b.nan_to_num()))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(
            a, b, equal_nan=True)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b) or a is b


def assert_unchanged(before: list[tuple[str, Any]], obj: Any) -> None:
    """``obj`` is bit for bit (and object for object) what ``flatten`` saw before."""
    after = flatten(obj)
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, a), (_, b) in zip(before, after):
        assert _same(a, b), f"{path} changed: {a!r} -> {b!r}"


def bits(x: Any) -> Any:
    """Every bit of ``x`` (tensors, Leafs, modules, state trees, containers) as plain data,
    for comparing two trainings bit for bit."""
    if isinstance(x, torch.Tensor):
        t = x.detach().contiguous()
        return (str(t.dtype), tuple(t.shape), t.view(torch.uint8).tolist() if t.numel() else [])
    if isinstance(x, O.Leaf):
        return ("Leaf", x.frozen, bits(x.state))
    if isinstance(x, torch.nn.Module):
        return [(k, bits(v)) for k, v in x.state_dict(keep_vars=True).items()]
    if isinstance(x, O.StateTree):
        return [(k, bits(v)) for k, v in x._children.items()]
    if isinstance(x, dict):
        return [(k, bits(v)) for k, v in x.items()]
    if isinstance(x, tuple | list):
        return [bits(v) for v in x]
    return x
