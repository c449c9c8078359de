# Source: FluxML/Flux.jl, docs/src/models/overview.md ("Flux Overview") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/models/overview.md
# Port: REPL session as a script; Dense(1, 1) -> torch.nn.Linear(1, 1) on row-major data
#       (hcat(0:5...) -> a 6x1 column); REPL echoes of values turned into prints.
import torch

import fluxtrain
from fluxtrain import Descent, train_

torch.manual_seed(0)


def actual(x):
    return 4 * x + 2


x_train, x_test = torch.arange(0, 6.0).reshape(6, 1), torch.arange(6, 11.0).reshape(5, 1)
y_train, y_test = actual(x_train), actual(x_test)

model = torch.nn.Linear(1, 1)
predict = torch.nn.Linear(1, 1)
print(predict(x_train).detach().reshape(-1))


def loss(x, y):
    return torch.nn.functional.mse_loss(predict(x), y)


print(loss(x_train, y_train).item())

opt = Descent()
data = [(x_train, y_train)]
print(predict.weight.detach(), predict.bias.detach())

parameters = fluxtrain.params(predict)
print(predict.weight in parameters, predict.bias in parameters)

train_(loss, parameters, data, opt)
print(loss(x_train, y_train).item())
print(parameters)

for epoch in range(1, 201):
    train_(loss, parameters, data, opt)

print(loss(x_train, y_train).item())
print(parameters)

print(predict(x_test).detach().reshape(-1))
print(y_test.reshape(-1))
