# Source: FluxML/Flux.jl, docs/src/training/optimisers.md ("Composing Optimisers") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/training/optimisers.md
# Port: 10^5 steps -> 3000 (the decay still fires at 1000, 2000, 3000); losses printed;
#       rand(10) -> torch.rand(10).
import torch

import fluxtrain
from fluxtrain import Descent, ExpDecay, Optimiser, Params, gradient

torch.manual_seed(0)

opt = Optimiser(ExpDecay(1, 0.1, 1000, 1e-4), Descent())

w = torch.randn(10, 10)
w1 = torch.randn(10, 10)
ps = Params([w, w1])


def loss(x):
    return torch.nn.functional.mse_loss(w @ x, w1 @ x)


print(loss(torch.rand(10)).item())  # around 9

for t in range(1, 3001):
    θ = Params([w, w1])
    θ̄ = gradient(lambda: loss(torch.rand(10)), θ)
    fluxtrain.optimise.update_(opt, θ, θ̄)

print(loss(torch.rand(10)).item())  # around 0.9
print(opt[0].eta)
