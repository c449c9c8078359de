# Source: FluxML/Flux.jl, docs/src/tutorials/2020-09-15-deep-learning-flux.md ("Deep Learning with Flux - A 60 Minute Blitz", fluxml.ai tutorial) @ v0.13.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.10/docs/src/tutorials/2020-09-15-deep-learning-flux.md
# Port: the "Automatic Differentiation" and "Training" sections; the scalar-derivative cells are left out;
#       Dense/Chain -> torch.nn; the do-blocks become nested defs; `update!(p, -η * grads[p])` kept as written.
import torch

import fluxtrain
from fluxtrain import gradient, params
from fluxtrain.optimise import Descent, update_

torch.manual_seed(0)


def myloss(W, b, x):
    return (W @ x + b).sum()


W = torch.randn(3, 5)
b = torch.zeros(3)
x = torch.rand(5)

print(gradient(myloss, W, b, x))

W = torch.randn(3, 5)
b = torch.zeros(3)
x = torch.rand(5)


def y(x):
    return (W @ x + b).sum()


grads = gradient(lambda: y(x), params([W, b]))

print(grads[W], grads[b])

m = torch.nn.Linear(10, 5)

x = torch.rand(10)

print(params(m))

x = torch.rand(10)
m = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2), torch.nn.Softmax(dim=-1))


def l(x):
    return -(torch.tensor([0.5, 0.5]) * torch.log(m(x))).sum()


def _grads():
    return l(x)


grads = gradient(_grads, params(m))
for p in params(m):
    print(grads[p])

η = 0.1
for p in params(m):
    update_(p, -η * grads[p])

opt = Descent(0.01)

data, labels = torch.rand(100, 10), torch.full((100, 2), 0.5)


def loss(x, y):
    return -(y * torch.log(m(x))).sum(dim=-1).mean()


fluxtrain.train_(loss, params(m), [(data, labels)], opt)
print(loss(data, labels).item())

training_set = [(data[i : i + 25], labels[i : i + 25]) for i in range(0, 100, 25)]
for d in training_set:  # assuming d looks like (data, labels)
    # our super logic
    def _gs():  # m is our model
        l = loss(*d)
        return l

    gs = gradient(_gs, params(m))
    update_(opt, params(m), gs)
print(loss(data, labels).item())
