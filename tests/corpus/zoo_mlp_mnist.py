# Source: FluxML/model-zoo, vision/mlp_mnist/mlp_mnist.jl @ 12160cf083ec5c70050d5b6c2c1bc103bb66b3b4 (2022-03-17)
# URL: https://github.com/FluxML/model-zoo/blob/12160cf083ec5c70050d5b6c2c1bc103bb66b3b4/vision/mlp_mnist/mlp_mnist.jl
# Port: MNIST -> scikit-learn's bundled 8x8 digits (1500 train / 297 test, imgsize 8x8);
#   data in torch's batch-first layout; MLDatasets/CUDA setup reduced to a CPU device function.
import sys
from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, epochs  # noqa: F401  (mirrors `using Flux: ..., @epochs`)

torch.manual_seed(0)


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def logitcrossentropy(yhat, y, agg=torch.mean):
    return agg(-(y * torch.log_softmax(yhat, dim=1)).sum(dim=1))


def cpu(x):
    return x


def gpu(x):
    return x.cuda() if torch.cuda.is_available() else x


@dataclass
class Args:
    η: float = 3e-4  ## learning rate
    batchsize: int = 256  ## batch size
    epochs: int = 10  ## number of epochs
    use_cuda: bool = True  ## use gpu (if cuda available)


def getdata(args, device):
    ## Load dataset
    digits = load_digits()
    xs = torch.tensor(digits.images, dtype=torch.float32) / 16
    ys = torch.tensor(digits.target)
    xtrain, ytrain = xs[:1500], ys[:1500]
    xtest, ytest = xs[1500:], ys[1500:]

    ## Reshape input data to flatten each image into a linear array
    xtrain = torch.flatten(xtrain, 1)
    xtest = torch.flatten(xtest, 1)

    ## One-hot-encode the labels
    ytrain, ytest = onehotbatch(ytrain, range(10)), onehotbatch(ytest, range(10))

    ## Create two DataLoader objects (mini-batch iterators)
    train_loader = torch.utils.data.DataLoader(
        list(zip(xtrain, ytrain)), batch_size=args.batchsize, shuffle=True
    )
    test_loader = torch.utils.data.DataLoader(list(zip(xtest, ytest)), batch_size=args.batchsize)

    return train_loader, test_loader


def build_model(imgsize=(8, 8, 1), nclasses=10):
    return torch.nn.Sequential(
        torch.nn.Linear(imgsize[0] * imgsize[1] * imgsize[2], 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, nclasses),
    )


def loss_and_accuracy(data_loader, model, device):
    acc = 0
    ls = 0.0
    num = 0
    with torch.no_grad():
        for x, y in data_loader:
            x, y = device(x), device(y)
            ŷ = model(x)
            ls += logitcrossentropy(ŷ, y, agg=torch.sum).item()
            acc += (onecold(ŷ) == onecold(y)).sum().item()  ## Decode the output of the model
            num += x.shape[0]
    return ls / num, acc / num


def train(**kws):
    args = Args(**kws)  ## Collect options in a struct for convenience

    if torch.cuda.is_available() and args.use_cuda:
        print("[ Info: Training on CUDA GPU", file=sys.stderr)
        device = gpu
    else:
        print("[ Info: Training on CPU", file=sys.stderr)
        device = cpu

    ## Create test and train dataloaders
    train_loader, test_loader = getdata(args, device)

    ## Construct model
    model = device(build_model())
    ps = fluxtrain.params(model)  ## model's trainable parameters

    ## Optimizer
    opt = ADAM(args.η)

    ## Training
    for epoch in range(1, args.epochs + 1):
        for x, y in train_loader:
            x, y = device(x), device(y)  ## transfer data to device
            gs = fluxtrain.gradient(lambda: logitcrossentropy(model(x), y), ps)  ## compute gradient
            fluxtrain.optimise.update_(opt, ps, gs)  ## update parameters

        ## Report on train and test
        train_loss, train_acc = loss_and_accuracy(train_loader, model, device)
        test_loss, test_acc = loss_and_accuracy(test_loader, model, device)
        print(f"Epoch={epoch}")
        print(f"  train_loss = {train_loss:.6f}, train_accuracy = {train_acc:.6f}")
        print(f"  test_loss = {test_loss:.6f}, test_accuracy = {test_acc:.6f}")


if __name__ == "__main__":
    train()
