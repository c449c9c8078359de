"""The 23 rule configurations of Optimisers.jl's test/rules.jl (reference §7.3)."""

import torch

from fluxtrain.core import rules as R

RULES = [
    R.Descent(), R.Adam(), R.Momentum(), R.Nesterov(), R.Rprop(), R.RMSProp(), R.AdaGrad(),
    R.AdaMax(), R.AdaDelta(), R.AMSGrad(), R.NAdam(), R.AdamW(), R.RAdam(), R.OAdam(),
    R.AdaBelief(), R.Lion(),
    R.MixedPrecision(torch.float64, R.Adam()),
    R.OptimiserChain(R.SignDecay(0.001), R.Adam(0.001)),
    R.OptimiserChain(R.ClipNorm(), R.Adam(0.001)),
    R.OptimiserChain(R.ClipGrad(0.5), R.Momentum()),
    R.OptimiserChain(R.WeightDecay(), R.OAdam(), R.ClipGrad(1)),
    R.RMSProp(centred=True),
    R.AdamW(couple=False),
]

# fluxtrain's own rules, in the form Flux 0.13's tests use them (flux-implicit-full.md
# A9: `Optimiser(InvDecay(), Adam(0.001))`, `Optimiser(ExpDecay(), Adam(0.001))`)
OWN = [R.OptimiserChain(R.InvDecay(), R.Adam(0.001)),
       R.OptimiserChain(R.ExpDecay(), R.Adam(0.001))]
