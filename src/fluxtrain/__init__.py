"""fluxtrain: Flux.jl's training API for PyTorch tensors, in both styles.

Explicit style (Flux 0.13.9+ / Optimisers.jl)::

    opt_state = fluxtrain.setup(fluxtrain.optimisers.Adam(1e-3), model)
    fluxtrain.train_(loss, model, data, opt_state)

Implicit style (Flux 0.13, deprecated, kept so old scripts run)::

    ps = fluxtrain.params(model)
    fluxtrain.train_(loss, ps, data, fluxtrain.Adam(1e-3), cb=fluxtrain.throttle(f, 10))

``fluxtrain-migrate`` rewrites the second into the first.
"""

from fluxtrain import checkpoint, distributed, optimise, optimisers, torch_optim
from fluxtrain.dispatch import gradient, pullback, train_, update_, withgradient
from fluxtrain.errors import DomainError, FluxDeprecationWarning
from fluxtrain.explicit import setup
from fluxtrain.flat import FlatLayout, flatten_
from fluxtrain.implicit.callbacks import (
    early_stopping,
    epochs,
    patience,
    plateau,
    skip,
    stop,
    throttle,
)
from fluxtrain.implicit.params import Grads, Params, loadparams_, params
from fluxtrain.optimise import *  # noqa: F403
from fluxtrain.optimise import ClipValue as ClipGrad
from fluxtrain.optimise import Optimiser as OptimiserChain
from fluxtrain.optimise import __all__ as _old_optimisers
from fluxtrain.optimisers import Leaf, adjust, adjust_, freeze_, thaw_, trainables

__version__ = "0.1.0"

__all__ = [
    "checkpoint",
    "distributed",
    "torch_optim",
    "optimise",
    "optimisers",
    "setup",
    "train_",
    "update_",
    "gradient",
    "withgradient",
    "pullback",
    "params",
    "Params",
    "Grads",
    "loadparams_",
    "throttle",
    "stop",
    "skip",
    "epochs",
    "patience",
    "early_stopping",
    "plateau",
    "adjust",
    "adjust_",
    "freeze_",
    "thaw_",
    "trainables",
    "flatten_",
    "FlatLayout",
    "Leaf",
    "DomainError",
    "FluxDeprecationWarning",
    *_old_optimisers,
    "OptimiserChain",
    "ClipGrad",
]

import fluxtrain.seeding  # noqa: E402,F401  (FLUXTRAIN_SEED set: seed random/numpy/torch now)
