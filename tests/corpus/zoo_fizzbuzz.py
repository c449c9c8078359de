# Source: FluxML/model-zoo, other/fizzbuzz/fizzbuzz.jl @ ab152da35cc7acb43baeb5dc4af7a4c96f374165 (2020-04-30)
# URL: https://github.com/FluxML/model-zoo/blob/ab152da35cc7acb43baeb5dc4af7a4c96f374165/other/fizzbuzz/fizzbuzz.jl
# Port: as written (same data, same model, 501 epochs); batch-first layout, 0-based labels;
#   `@test` -> assert, `cd(@__DIR__)` dropped.
# Inspired by "Fizz Buzz in Tensorflow" blog by Joel Grus
# http://joelgrus.com/2016/05/23/fizz-buzz-in-tensorflow/
import torch

from fluxtrain import ADAM, params, train_

torch.manual_seed(0)


def onehotbatch(labels, classes):
    return torch.tensor([[float(lab == c) for c in classes] for lab in labels])


def logitcrossentropy(yhat, y):
    return (-(y * torch.log_softmax(yhat, dim=1)).sum(dim=1)).mean()


# Data preparation
def fizzbuzz(x):
    is_divisible_by_three = x % 3 == 0
    is_divisible_by_five = x % 5 == 0

    if is_divisible_by_three & is_divisible_by_five:
        return "fizzbuzz"
    elif is_divisible_by_three:
        return "fizz"
    elif is_divisible_by_five:
        return "buzz"
    else:
        return "else"


LABELS = ["fizz", "buzz", "fizzbuzz", "else"]


# Feature engineering
def features(x):
    if isinstance(x, (list, range)):
        return torch.stack([features(xi) for xi in x])
    return torch.tensor([float(x % 3), float(x % 5), float(x % 15)])


def getdata():
    assert [fizzbuzz(x) for x in [3, 5, 15, 98]] == LABELS

    raw_x = range(1, 101)
    raw_y = [fizzbuzz(x) for x in raw_x]

    X = features(raw_x)
    y = onehotbatch(raw_y, LABELS)
    return X, y


def train():
    # Get Data
    X, y = getdata()

    # Model
    m = torch.nn.Sequential(torch.nn.Linear(3, 10), torch.nn.Linear(10, 4))

    def loss(x, y):
        return logitcrossentropy(m(x), y)

    # Helpers
    def deepbuzz(x):
        a = m(features(x)).argmax().item()
        return x if a == 3 else LABELS[a]

    def monitor(e):
        print(f"epoch {e:4d}: loss = {round(loss(X, y).item(), 4)} | ", end="")
        print(f"deepbuzz.([3, 5, 15, 98]) = {[deepbuzz(x) for x in [3, 5, 15, 98]]}")

    opt = ADAM()
    # Training
    for e in range(0, 501):
        train_(loss, params(m), [(X, y)], opt)
        if e % 50 == 0:
            monitor(e)


train()
