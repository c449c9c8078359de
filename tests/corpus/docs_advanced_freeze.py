# Source: FluxML/Flux.jl, docs/src/models/advanced.md ("Freezing Layer Parameters") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/models/advanced.md
# Port: Dense(784, 64, relu) ... -> torch.nn.Sequential of Linear/ReLU (so m[3:end] -> m[4:]);
#       the page only builds the Params; one Flux.train! per Params shows what stays frozen.
import torch

import fluxtrain
from fluxtrain import Descent, params

torch.manual_seed(0)

m = torch.nn.Sequential(
    torch.nn.Linear(784, 64),
    torch.nn.ReLU(),
    torch.nn.Linear(64, 32),
    torch.nn.ReLU(),
    torch.nn.Linear(32, 10),
)

ps = fluxtrain.params(m[4:])

x, y = torch.rand(5, 784), torch.rand(5, 10)


def loss(x, y):
    return torch.nn.functional.mse_loss(m(x), y)


def snapshot():
    return [p.detach().clone() for p in m.parameters()]


def changed(before):
    return [not torch.equal(a, b) for a, b in zip(before, m.parameters())]


opt = Descent(0.1)
before = snapshot()
fluxtrain.train_(loss, ps, [(x, y)], opt)
print(changed(before))

before = snapshot()
fluxtrain.train_(loss, fluxtrain.params(m[0], m[4:]), [(x, y)], opt)
print(changed(before))

ps = params(m)
ps.delete(m[2].bias)
before = snapshot()
fluxtrain.train_(loss, ps, [(x, y)], opt)
print(changed(before))
print(round(loss(x, y).item(), 6))
