# Source: FluxML/Flux.jl, docs/src/models/basics.md ("Model-Building Basics") @ v0.10.4
# URL: https://github.com/FluxML/Flux.jl/blob/v0.10.4/docs/src/models/basics.md
# Port: the doctests as a script; the scalar derivative doctests are left out; Int arrays
#       [2, 1] become float tensors; the do-block becomes a nested def; W .-= ... stays by hand.
import torch

from fluxtrain import gradient, params

torch.manual_seed(0)


def f(x, y):
    return ((x - y) ** 2).sum()


print(gradient(f, torch.tensor([2.0, 1.0]), torch.tensor([2.0, 0.0])))

x = torch.tensor([2.0, 1.0])

y = torch.tensor([2.0, 0.0])


def _f():
    return f(x, y)


gs = gradient(_f, params(x, y))
print(gs[x])
print(gs[y])

W = torch.rand(2, 5)
b = torch.rand(2)


def predict(x):
    return W @ x + b


def loss(x, y):
    ŷ = predict(x)
    return ((y - ŷ) ** 2).sum()


x, y = torch.rand(5), torch.rand(2)  # Dummy data
print(loss(x, y))  # ~ 3

gs = gradient(lambda: loss(x, y), params(W, b))

W̄ = gs[W]

W -= 0.1 * W̄

print(loss(x, y))  # ~ 2.5
