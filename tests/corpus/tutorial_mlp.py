# Source: FluxML/Flux.jl, docs/src/tutorials/2021-01-26-mlp.md ("Simple multi-layer perceptron", fluxml.ai tutorial) @ v0.13.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.10/docs/src/tutorials/2021-01-26-mlp.md
# Port: MNIST -> sklearn digits (64 inputs); @with_kw Args -> dataclass (batchsize 1024 -> 512,
#       epochs 10 -> 3); DataLoader -> torch DataLoader (seeded shuffle); CUDA/device dropped.
from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from fluxtrain import Adam, epochs, params, train_

torch.manual_seed(0)


@dataclass
class Args:
    rate: float = 3e-4  # learning rate
    batchsize: int = 512  # batch size
    epochs: int = 3  # number of epochs


def getdata(args):
    # Loading Dataset
    digits = load_digits()
    xs = torch.tensor(digits.data, dtype=torch.float32) / 16
    ys = torch.tensor(digits.target)
    xtrain, ytrain = xs[:1500], ys[:1500]
    xtest, ytest = xs[1500:], ys[1500:]

    # One-hot-encode the labels
    ytrain, ytest = torch.nn.functional.one_hot(ytrain, 10).float(), torch.nn.functional.one_hot(ytest, 10).float()

    # Batching
    train_data = DataLoader(TensorDataset(xtrain, ytrain), batch_size=args.batchsize, shuffle=True)
    test_data = DataLoader(TensorDataset(xtest, ytest), batch_size=args.batchsize)

    return train_data, test_data


def build_model(imgsize=(8, 8, 1), nclasses=10):
    return torch.nn.Sequential(torch.nn.Linear(imgsize[0] * imgsize[1] * imgsize[2], 32), torch.nn.ReLU(), torch.nn.Linear(32, nclasses))


def loss_all(dataloader, model):
    l = 0.0
    for x, y in dataloader:
        l += torch.nn.functional.cross_entropy(model(x), y)
    return l / len(dataloader)


def accuracy(data_loader, model):
    acc = 0
    for x, y in data_loader:
        acc += (model(x).argmax(dim=1) == y.argmax(dim=1)).sum().item() * 1 / x.shape[0]
    return acc / len(data_loader)


def train(**kws):
    # Initializing Model parameters
    args = Args(**kws)

    # Load Data
    train_data, test_data = getdata(args)

    # Construct model
    m = build_model()

    def loss(x, y):
        return torch.nn.functional.cross_entropy(m(x), y)

    ## Training
    def evalcb():
        print("loss_all(train_data, m) =", round(loss_all(train_data, m).item(), 4))

    opt = Adam(args.rate)

    for _ in epochs(args.epochs):
        train_(loss, params(m), train_data, opt, cb=evalcb)

    print("accuracy(train_data, m) =", round(accuracy(train_data, m), 4))
    print("accuracy(test_data, m) =", round(accuracy(test_data, m), 4))


train()
