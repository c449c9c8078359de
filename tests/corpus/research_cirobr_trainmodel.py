# Source: cirobr/julia, libs/libFlux.jl (trainModel!) @ e288cb44e83fabdce90076d1f45bdea2f182789e
# URL: https://github.com/cirobr/julia/blob/e288cb44e83fabdce90076d1f45bdea2f182789e/libs/libFlux.jl
# Port: the library function unchanged in shape; the driver (a Flux MLP on MNIST in the author's notebooks)
#       -> a small torch MLP on sklearn digits for 3 epochs; mean -> statistics.mean.
from statistics import mean

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, gradient

torch.manual_seed(0)


# custom made function that provides access to loss function outcome
def trainModel_(loss, ps, data, opt):
    dataLosses = []

    for d in data:
        l = loss(*d)

        def _gs():
            return loss(*d)

        gs = gradient(_gs, ps)
        fluxtrain.update_(opt, ps, gs)

        dataLosses.append(l.item())

    return mean(dataLosses)


digits = load_digits()
X = torch.tensor(digits.data[:600], dtype=torch.float32) / 16
y = torch.nn.functional.one_hot(torch.tensor(digits.target[:600]), 10).float()
data = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 600, 100)]

model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def loss(x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


ps = fluxtrain.params(model)
opt = ADAM(0.01)
for epoch in range(1, 4):
    print(epoch, round(trainModel_(loss, ps, data, opt), 5))
