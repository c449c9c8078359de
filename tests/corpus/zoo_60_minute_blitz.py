# Source: FluxML/model-zoo, tutorials/60-minute-blitz/60-minute-blitz.jl @ cee57017e94f6b666821f35e8362e02dd627d708 (2021-12-16)
# URL: https://github.com/FluxML/model-zoo/blob/cee57017e94f6b666821f35e8362e02dd627d708/tutorials/60-minute-blitz/60-minute-blitz.jl
# Port: the array-basics REPL lines without training calls dropped; CIFAR10 -> random 3x32x32 images (200 train in
#   batches of 50, 100 val, 100 test), epochs 10 -> 3; plots dropped; REPL expression values printed.
import math

import torch

import fluxtrain
from fluxtrain import gradient, params

torch.manual_seed(0)


def crossentropy(ŷ, y):
    return (-(y * torch.log(ŷ)).sum(dim=-1)).mean()


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y, labels):
    return torch.as_tensor(list(labels))[y.argmax(dim=-1)]


def partition(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


# Automatic Differentiation


def f(x):
    return 3 * x**2 + 2 * x + 1


print(f(5))


def df(x):
    return gradient(f, x)[0]


print(df(torch.tensor(5.0)))


def mysin(x):
    return sum((-1) ** k * x ** (1 + 2 * k) / math.factorial(1 + 2 * k) for k in range(0, 6))


x = torch.tensor(0.5, dtype=torch.float64)
print((mysin(x), gradient(mysin, x)))
print((torch.sin(x), torch.cos(x)))


def myloss(W, b, x):
    return torch.sum(W @ x + b)


W = torch.randn(3, 5, dtype=torch.float64)
b = torch.zeros(3, dtype=torch.float64)
x = torch.rand(5, dtype=torch.float64)

print(gradient(myloss, W, b, x))

W = torch.randn(3, 5, dtype=torch.float64)
b = torch.zeros(3, dtype=torch.float64)
x = torch.rand(5, dtype=torch.float64)


def y(x):
    return torch.sum(W @ x + b)


grads = gradient(lambda: y(x), params([W, b]))

print((grads[W], grads[b]))

# Building a Layer

m = torch.nn.Linear(10, 5)
params(m)

x = torch.rand(10)

m = torch.nn.Sequential(
    torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2), torch.nn.Softmax(dim=-1)
)


def l(x):
    return crossentropy(m(x), torch.tensor([0.5, 0.5]))


def _loss():
    return l(x)


grads = gradient(_loss, params(m))

for p in params(m):
    print(grads[p])

from fluxtrain.optimise import Descent, update_  # noqa: E402

η = 0.1
for p in params(m):
    update_(p, η * grads[p])

opt = Descent(0.01)

data, labels = torch.rand(100, 10), torch.full((100, 2), 0.5)


def loss(x, y):
    return crossentropy(m(x), y)


fluxtrain.train_(loss, params(m), [(data, labels)], opt)

# Training a Classifier

from fluxtrain import Momentum  # noqa: E402

train_x, train_y = torch.rand(300, 3, 32, 32), torch.randint(0, 10, (300,))
labels = onehotbatch(train_y, range(10))

train = [(train_x[i], labels[i]) for i in partition(range(0, 200), 50)]
valset = range(200, 300)
valX = train_x[valset]
valY = labels[valset]

m = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 5),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 8, 5),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Flatten(),
    torch.nn.Linear(200, 120),
    torch.nn.Linear(120, 84),
    torch.nn.Linear(84, 10),
    torch.nn.Softmax(dim=-1),
)


def loss(x, y):  # noqa: F811
    return torch.sum(crossentropy(m(x), y))


opt = Momentum(0.01)


def accuracy(x, y):
    return (onecold(m(x), range(10)) == onecold(y, range(10))).float().mean().item()


epochs = 3

for epoch in range(1, epochs + 1):
    for d in train:

        def _loss():
            l = loss(*d)  # noqa: E741
            return l

        gs = gradient(_loss, params(m))
        update_(opt, params(m), gs)
    print(f"accuracy(valX, valY) = {accuracy(valX, valY)}")

# Test the network on the test data

test_x, test_y = torch.rand(100, 3, 32, 32), torch.randint(0, 10, (100,))
test_labels = onehotbatch(test_y, range(10))
test = [(test_x[i], test_labels[i]) for i in partition(range(0, 100), 50)]

print(accuracy(*test[0]))
