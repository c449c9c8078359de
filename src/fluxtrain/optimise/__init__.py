"""Flux.Optimise 0.13: the old, mutable optimisers with per-parameter state inside.

``fluxtrain.Adam is fluxtrain.optimise.Adam``: as in Flux 0.13, the top-level
names are the old optimisers; the new rules live in ``fluxtrain.optimisers``.
``update_``, ``train_``, ``stop`` and ``skip`` are the same functions as
``fluxtrain``'s (they dispatch on their arguments).
"""

from fluxtrain.optimise.optimisers import (
    ADAM,
    ADAMW,
    NADAM,
    OADAM,
    RADAM,
    AbstractOptimiser,
    AdaBelief,
    ADADelta,
    AdaDelta,
    ADAGrad,
    AdaGrad,
    Adam,
    AdaMax,
    AdamW,
    AMSGrad,
    ClipNorm,
    ClipValue,
    Descent,
    ExpDecay,
    InvDecay,
    Momentum,
    NAdam,
    Nesterov,
    OAdam,
    Optimiser,
    RAdam,
    RMSProp,
    WeightDecay,
)
from fluxtrain.optimise.translate import translate as translate

__all__ = [
    "AbstractOptimiser",
    "Descent",
    "Momentum",
    "Nesterov",
    "RMSProp",
    "Adam",
    "RAdam",
    "AdaMax",
    "OAdam",
    "AdaGrad",
    "AdaDelta",
    "AMSGrad",
    "NAdam",
    "AdamW",
    "AdaBelief",
    "InvDecay",
    "ExpDecay",
    "WeightDecay",
    "ClipValue",
    "ClipNorm",
    "Optimiser",
    "ADAM",
    "NADAM",
    "ADAMW",
    "RADAM",
    "OADAM",
    "ADAGrad",
    "ADADelta",
]


def __getattr__(name: str) -> object:
    # update_/train_/stop/skip live in the dispatch layer, imported lazily to
    # avoid an import cycle (fluxtrain.dispatch imports this package).
    if name in ("update_", "train_"):
        from fluxtrain import dispatch

        return getattr(dispatch, name)
    if name in ("stop", "skip", "StopException", "SkipException"):
        from fluxtrain.implicit import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'fluxtrain.optimise' has no attribute {name!r}")
