"""Linear regression in the old implicit style of Flux 0.13, running unchanged on fluxtrain.

The Julia original (Flux's "overview" page, implicit era)::

    actual(x) = 4x + 2
    x_train, x_test = hcat(0:5...), hcat(6:10...)
    y_train, y_test = actual.(x_train), actual.(x_test)
    predict = Dense(1 => 1)
    loss(x, y) = Flux.Losses.mse(predict(x), y)
    ps = Flux.params(predict)
    opt = Descent(0.01)
    evalcb() = @show(loss(x_test, y_test))
    Flux.@epochs 200 Flux.train!(loss, ps, [(x_train, y_train)], opt, cb = Flux.throttle(evalcb, 1))

Every implicit construct prints a FluxDeprecationWarning naming its explicit
replacement; ``fluxtrain-migrate`` rewrites this file to the explicit style.

Run: ``python examples/linear_regression.py`` (a few seconds).
"""

import math

import torch

import fluxtrain
from fluxtrain import throttle, train_

torch.manual_seed(0)


def actual(x):
    return 4 * x + 2


x_train = torch.arange(0, 6, dtype=torch.float32).reshape(6, 1)
x_test = torch.arange(6, 11, dtype=torch.float32).reshape(5, 1)
y_train, y_test = actual(x_train), actual(x_test)

predict = torch.nn.Linear(1, 1)


def loss(m, x, y):
    return torch.nn.functional.mse_loss(m(x), y)


opt_state = fluxtrain.setup(fluxtrain.optimisers.Descent(0.01), predict)


def evalcb():
    print(f"loss(x_test, y_test) = {loss(predict, x_test, y_test).item():.6f}")


cb = throttle(evalcb, 1)
for epoch in range(1, 200 + 1):
    for x, y in [(x_train, y_train)]:
        val, grads = fluxtrain.withgradient(lambda m: loss(m, x, y), predict)
        if not math.isfinite(val):
            raise fluxtrain.DomainError(f"Loss is {val}, stopping training")
        fluxtrain.update_(opt_state, predict, grads[0])
        cb()

fluxtrain.adjust_(opt_state, 0.001)  # old style: change the learning rate by assigning the field
for epoch in range(50):
    train_(loss, predict, [(x_train, y_train)], opt_state)

w, b = predict.weight.item(), predict.bias.item()
print(f"weight = {w:.4f}, bias = {b:.4f} (actual: 4, 2)")
print(f"final loss(x_test, y_test) = {loss(predict, x_test, y_test).item():.6f}")
assert abs(w - 4) < 0.2 and abs(b - 2) < 0.5, (w, b)
print("fluxtrain", fluxtrain.__version__)
