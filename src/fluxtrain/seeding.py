"""The seed hook: ``FLUXTRAIN_SEED`` seeds ``random``, numpy and torch at import.

Scripts opt in simply by importing fluxtrain: when the environment variable
``FLUXTRAIN_SEED`` holds an integer, ``import fluxtrain`` calls
:func:`seed_everything` with it, so that two scripts importing fluxtrain before
they create any random numbers draw the same ones (initial weights, shuffles,
dropout masks). ``fluxtrain-migrate compare`` sets it for both scripts it
runs. A script may also call ``fluxtrain.seeding.seed_everything()`` (or
``fluxtrain.trace.seed_everything()``) itself, e.g. after its own imports.

Without ``FLUXTRAIN_SEED`` nothing is seeded and importing this module has no
effect on any random state.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["SEED_ENV", "seed_everything", "seed_from_env"]

SEED_ENV = "FLUXTRAIN_SEED"


def _parse(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer, got {raw!r}") from None


def seed_everything(seed: int | None = None) -> int | None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA).

    With ``seed=None`` the seed is read from ``FLUXTRAIN_SEED``; if that is
    unset too, nothing is seeded and ``None`` is returned. Returns the seed used.
    """
    if seed is None:
        raw = os.environ.get(SEED_ENV, "")
        if raw == "":
            return None
        seed = _parse(raw)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def seed_from_env() -> int | None:
    """Seed from ``FLUXTRAIN_SEED`` if it is set (called once at ``import fluxtrain``)."""
    return seed_everything(None)


seed_from_env()
