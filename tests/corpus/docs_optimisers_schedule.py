# Source: FluxML/Flux.jl, docs/src/training/optimisers.md ("Scheduling Optimisers", "Gradient Clipping") @ v0.13.8
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.8/docs/src/training/optimisers.md
# Port: ParameterSchedulers.Cos -> a small iterable written here; "# your training code here" -> one
#       Flux.train! over a tiny linear regression (Dense(3 => 1) -> Linear(3, 1)); the clipped Adam then trains it.
import math

import torch

import fluxtrain
from fluxtrain import Adam, ClipValue, Momentum

torch.manual_seed(0)

x = torch.randn(32, 3)
y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1

model = torch.nn.Linear(3, 1)


def loss(x, y):
    return torch.nn.functional.mse_loss(model(x), y)


ps = fluxtrain.params(model)
data = [(x, y)]


class Cos:
    """Cosine annealing between λ0 and λ1 with the given period (as ParameterSchedulers.Cos)."""

    def __init__(self, λ0, λ1, period):
        self.λ0, self.λ1, self.period = λ0, λ1, period

    def __call__(self, t):
        return self.λ0 + (self.λ1 - self.λ0) * (1 + math.cos(2 * math.pi * (t - 1) / self.period)) / 2

    def __iter__(self):
        t = 1
        while True:
            yield self(t)
            t += 1


opt = Momentum()
schedule = Cos(λ0=1e-4, λ1=1e-2, period=10)
for eta, epoch in zip(schedule, range(1, 101)):
    opt.eta = eta
    # your training code here
    fluxtrain.train_(loss, ps, data, opt)
    if epoch % 25 == 0:
        print(epoch, round(opt.eta, 6), round(loss(x, y).item(), 6))

opt = fluxtrain.Optimiser(ClipValue(1e-3), Adam(1e-3))
for epoch in range(1, 51):
    fluxtrain.train_(loss, ps, data, opt)
print(f"{loss(x, y).item():.4e}")
