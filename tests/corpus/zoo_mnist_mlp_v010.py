# Source: FluxML/model-zoo, vision/mnist/mlp.jl @ 73fb459372b0cb514c9dd5b633586ed22ab5b90a (2020-01-03)
# URL: https://github.com/FluxML/model-zoo/blob/73fb459372b0cb514c9dd5b633586ed22ab5b90a/vision/mnist/mlp.jl
# Port: Flux.Data.MNIST -> scikit-learn's 8x8 digits (first 1500 as train, rest as test), Dense(28^2, 32) -> Dense(64, 32);
#   repeated 200 times as in the original; throttle 10 s -> 1000 s (output independent of machine speed); CUDA dropped.
import itertools

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, params, throttle

torch.manual_seed(0)


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def crossentropy(ŷ, y):
    return (-(y * torch.log(ŷ)).sum(dim=1)).mean()


def cpu(x):
    return x


def gpu(x):
    return x


# Classify MNIST digits with a simple multi-layer-perceptron

digits = load_digits()
imgs = torch.tensor(digits.images[:1500], dtype=torch.float32) / 16
# Stack images into one large batch
X = gpu(imgs.reshape(len(imgs), -1))

labels = torch.tensor(digits.target[:1500])
# One-hot-encode the labels
Y = gpu(onehotbatch(labels, range(10)))

m = gpu(
    torch.nn.Sequential(
        torch.nn.Linear(8**2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10), torch.nn.Softmax(dim=1)
    )
)


def loss(x, y):
    return crossentropy(m(x), y)


def accuracy(x, y):
    return (onecold(cpu(m(x))) == onecold(cpu(y))).float().mean().item()


dataset = itertools.repeat((X, Y), 200)
evalcb = lambda: print(f"loss(X, Y) = {loss(X, Y).item():.6f}")  # noqa: E731
opt = ADAM()

fluxtrain.train_(loss, params(m), dataset, opt, cb=throttle(evalcb, 1000))

print(f"accuracy(X, Y) = {accuracy(X, Y):.6f}")

# Test set accuracy
tX = gpu(torch.tensor(digits.images[1500:], dtype=torch.float32).reshape(-1, 64) / 16)
tY = gpu(onehotbatch(torch.tensor(digits.target[1500:]), range(10)))

print(f"accuracy(tX, tY) = {accuracy(tX, tY):.6f}")
