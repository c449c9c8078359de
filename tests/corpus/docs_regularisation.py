# Source: FluxML/Flux.jl, docs/src/models/regularisation.md ("Regularisation") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/models/regularisation.md
# Port: 28^2 inputs -> 64 (sklearn digits); the page stops at the loss, so a
#       Flux.train!(loss, Flux.params(m), data, opt) call as on the training page trains it.
import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)

m = torch.nn.Sequential(
    torch.nn.Linear(64, 128),
    torch.nn.ReLU(),
    torch.nn.Linear(128, 32),
    torch.nn.ReLU(),
    torch.nn.Linear(32, 10),
)


def sqnorm(x):
    return (x**2).sum()


def loss(x, y):
    return torch.nn.functional.cross_entropy(m(x), y) + sum(sqnorm(p) for p in fluxtrain.params(m))


print(loss(torch.rand(64), torch.rand(10)).item())

digits = load_digits()
X = torch.tensor(digits.data[:300], dtype=torch.float32) / 16
Y = torch.nn.functional.one_hot(torch.tensor(digits.target[:300]), 10).float()
data = [(X[i : i + 30], Y[i : i + 30]) for i in range(0, 300, 30)]

opt = ADAM(0.001)
for epoch in range(3):
    fluxtrain.train_(loss, fluxtrain.params(m), data, opt)
    print(epoch, loss(X, Y).item())
