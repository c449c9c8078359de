# Source: FluxML/Flux.jl, docs/src/training/optimisers.md ("Optimisers") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/training/optimisers.md
# Port: W = rand(2, 5) -> torch.rand(2, 5); REPL comments ("~ 3") become prints of the loss.
import torch

from fluxtrain import Descent, gradient, params

torch.manual_seed(0)

W = torch.rand(2, 5)
b = torch.rand(2)


def predict(x):
    return (W @ x) + b


def loss(x, y):
    return ((predict(x) - y) ** 2).sum()


x, y = torch.rand(5), torch.rand(2)  # Dummy data
l = loss(x, y)  # ~ 3
print(l.item())

θ = params(W, b)
grads = gradient(lambda: loss(x, y), θ)

from fluxtrain.optimise import update_  # noqa: E402

η = 0.1  # Learning Rate
for p in (W, b):
    update_(p, η * grads[p])

print(loss(x, y).item())

opt = Descent(0.1)  # Gradient descent with learning rate 0.1

for p in (W, b):
    update_(opt, p, grads[p])

print(loss(x, y).item())
