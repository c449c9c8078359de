# Source: FluxML/Flux.jl, docs/src/training/optimisers.md ("Optimiser Interface") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/training/optimisers.md
# Port: the user-defined Momentum (mutable struct + Flux.Optimise.apply!) as a subclass of
#       AbstractOptimiser with apply_; the page's own `update!(opt, p, grads[p])` loop drives it.
import torch

import fluxtrain
from fluxtrain import gradient, params
from fluxtrain.optimise import update_

torch.manual_seed(0)


class Momentum(fluxtrain.optimise.AbstractOptimiser):
    def __init__(self, eta, rho, velocity=None):
        self.eta = eta
        self.rho = rho
        self.velocity = {} if velocity is None else velocity

    def apply_(self, x, Δ):
        η, ρ = self.eta, self.rho
        v = self.velocity.setdefault(x, torch.zeros_like(x))
        v.copy_(ρ * v - η * Δ)
        Δ.copy_(-v)
        return Δ


W = torch.rand(2, 5)
b = torch.rand(2)


def predict(x):
    return (W @ x) + b


def loss(x, y):
    return ((predict(x) - y) ** 2).sum()


x, y = torch.rand(5), torch.rand(2)  # Dummy data
print(loss(x, y).item())

opt = Momentum(0.01, 0.9)

for step in range(20):
    θ = params(W, b)
    grads = gradient(lambda: loss(x, y), θ)
    for p in (W, b):
        update_(opt, p, grads[p])

print(loss(x, y).item())
