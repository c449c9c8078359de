"""``skipped_steps``: read :class:`~fluxtrain.core.transforms.SkipNonFinite`'s counters."""

from __future__ import annotations

from typing import Any

from fluxtrain.core.transforms import SkipNonFiniteState, skip_counts
from fluxtrain.optimisers.adjust import _leaves

__all__ = ["skipped_steps"]


def skipped_steps(tree: Any) -> SkipNonFiniteState:
    """How many steps ``SkipNonFinite`` has skipped: ``(skipped, consecutive)``.

    ``tree`` is a state tree from ``setup`` or any part of it (a ``Leaf``
    too). Every leaf of one rule object carries the same counters; a leaf that
    got no gradient for a while lags behind, so the largest values over the
    leaves are returned. A ``TypeError`` names a tree with no
    ``SkipNonFinite`` in its rules.

    >>> import torch
    >>> from fluxtrain.optimisers import Descent, OptimiserChain, SkipNonFinite, setup, update_
    >>> m = {"w": torch.ones(2)}
    >>> st = setup(OptimiserChain(SkipNonFinite(), Descent(0.1)), m)
    >>> st, m = update_(st, m, {"w": torch.tensor([1.0, float("inf")])})
    >>> skipped_steps(st), m["w"].tolist()
    (SkipNonFiniteState(skipped=1, consecutive=1), [1.0, 1.0])
    """
    found = [c for c in (skip_counts(leaf.state) for leaf in _leaves(tree, "skipped_steps"))
             if c is not None]
    if not found:
        raise TypeError(
            "skipped_steps: no rule in this state tree has a SkipNonFinite member; set up "
            "with e.g. OptimiserChain(SkipNonFinite(), Adam()) to count skipped steps"
        )
    return SkipNonFiniteState(
        max(c.skipped for c in found), max(c.consecutive for c in found)
    )
