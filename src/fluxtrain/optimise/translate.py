"""The bridge from old optimisers (Flux.Optimise) to new rules (Optimisers.jl).

Translation table (reference flux-implicit.md §5, with fluxtrain's additions):

============================  ==================================================
old (``fluxtrain.optimise``)   new (``fluxtrain.optimisers``)
============================  ==================================================
Descent(eta)                   Descent(eta)
Momentum(eta, rho)             Momentum(eta, rho)
Nesterov(eta, rho)             Nesterov(eta, rho)
RMSProp(eta, rho, epsilon)     RMSProp(eta, rho, epsilon)  (not centred)
Adam, RAdam, AdaMax, OAdam,    the rule of the same name (eta, beta, epsilon)
AMSGrad, NAdam
AdaBelief(eta, beta, eps)      AdaBelief(eta, beta, eps**2)  (Flux 0.13 squared eps)
AdaGrad(eta, epsilon)          AdaGrad(eta, epsilon)
AdaDelta(rho, epsilon)         AdaDelta(rho, epsilon)
WeightDecay(wd)                WeightDecay(wd)
ClipValue(thresh)              ClipGrad(thresh)
ClipNorm(thresh)               ClipNorm(thresh)  (p=2, throw=True)
InvDecay(gamma)                InvDecay(gamma)  (fluxtrain's own rule)
ExpDecay(eta, decay, ...)      ExpDecay(eta, decay, ...)  (fluxtrain's own rule)
Optimiser(o1, o2, ...)         OptimiserChain(new(o1), new(o2), ...)
AdamW(eta, beta, decay)        OptimiserChain(Adam(eta, beta, 1e-8), WeightDecay(decay))
                               (= new AdamW(eta, beta, decay, couple=False))
============================  ==================================================

Every old optimiser *runs* the rule it translates to, so its accumulated
per-parameter state is already in the new rule's layout: carrying it into a
``Leaf`` is a copy (for an ``Optimiser``, the tuple of its members' states).
The protocol read by ``fluxtrain.optimisers.setup``:

* ``old.__fluxtrain_translate__() -> AbstractRule``
* ``old.__fluxtrain_state__(x) -> state | None``

>>> import torch
>>> from fluxtrain.optimise import Momentum, Optimiser, ClipValue
>>> from fluxtrain.optimise.translate import translate
>>> translate(Optimiser(ClipValue(1.0), Momentum(0.1)))
OptimiserChain(ClipGrad(delta=1.0), Momentum(eta=0.1, rho=0.9))
"""

from __future__ import annotations

import torch

from fluxtrain.core.base import AbstractRule, State
from fluxtrain.optimise.optimisers import AbstractOptimiser

__all__ = ["translate", "carried_state", "is_old_optimiser"]


def is_old_optimiser(x: object) -> bool:
    """Whether ``x`` speaks the old-optimiser bridge protocol."""
    return hasattr(type(x), "__fluxtrain_translate__")


def translate(opt: AbstractOptimiser) -> AbstractRule:
    """The new-style rule computing the same steps as the old optimiser ``opt`` (a snapshot).

    Later changes to ``opt``'s fields do not affect the returned rule; use
    ``adjust_`` on the state tree instead.
    """
    if not isinstance(opt, AbstractOptimiser):
        raise TypeError(
            f"translate expects an old optimiser from fluxtrain.optimise, got {type(opt).__name__}"
        )
    return opt.__fluxtrain_translate__()


def carried_state(opt: AbstractOptimiser, x: torch.Tensor) -> State | None:
    """A copy of the state ``opt`` accumulated for ``x``, in the new rule's layout (or None)."""
    return opt.__fluxtrain_state__(x)
