# Source: FluxML/Flux.jl, docs/src/tutorials/2020-09-15-deep-learning-flux.md ("Training a Classifier", fluxml.ai 60 Minute Blitz) @ v0.13.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.10/docs/src/tutorials/2020-09-15-deep-learning-flux.md
# Port: CIFAR10 -> sklearn digits (8x8x1), so the LeNet's kernel sizes shrink (3x3) and Dense(200, 120)
#       -> Linear(32, 120); epochs 10 -> 3; plots dropped; the do-block becomes a nested def.
import torch
from sklearn.datasets import load_digits

from fluxtrain import Momentum, gradient, params, update_

torch.manual_seed(0)

digits = load_digits()
train_x = torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
train_y = torch.tensor(digits.target)
labels = torch.nn.functional.one_hot(train_y, 10).float()

train = [(train_x[i : i + 100], labels[i : i + 100]) for i in range(0, 1500, 100)]
valset = range(1500, 1797)
valX = train_x[1500:]
valY = labels[1500:]

m = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 3),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 8, 2),
    torch.nn.ReLU(),
    torch.nn.Flatten(),
    torch.nn.Linear(32, 120),
    torch.nn.Linear(120, 84),
    torch.nn.Linear(84, 10),
    torch.nn.Softmax(dim=-1),
)


def loss(x, y):
    return -(y * torch.log(m(x))).sum(dim=-1).mean()


opt = Momentum(0.01)


def accuracy(x, y):
    return (m(x).argmax(dim=1) == y.argmax(dim=1)).float().mean().item()


epochs = 3

for epoch in range(1, epochs + 1):
    for d in train:

        def _gs():
            l = loss(*d)
            return l

        gs = gradient(_gs, params(m))
        update_(opt, params(m), gs)
    print("accuracy(valX, valY) =", round(accuracy(valX, valY), 4))
