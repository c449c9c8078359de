# Source: FluxML/model-zoo, vision/conv_mnist/conv_mnist.jl @ 85a523c85e36b385fe136a54e3220ca1a0ea808e (2022-04-12)
# URL: https://github.com/FluxML/model-zoo/blob/85a523c85e36b385fe136a54e3220ca1a0ea808e/vision/conv_mnist/conv_mnist.jl
# Port: MNIST -> scikit-learn's 8x8 digits upsampled to 16x16 (imgsize 16x16x1; 1500 train / 297 test); epochs 10 -> 2;
#   TensorBoard, ProgressMeter and BSON checkpoints dropped (tblogger=false, checktime=0); @info lines printed.
import sys
from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM
from fluxtrain.optimise import Optimiser, WeightDecay


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def logitcrossentropy(ŷ, y):
    return (-(y * torch.log_softmax(ŷ, dim=1)).sum(dim=1)).mean()


def cpu(x):
    return x


def gpu(x):
    return x.cuda() if torch.cuda.is_available() else x


# LeNet5 "constructor".
# The model can be adapted to any image size
# and any number of output classes.
def LeNet5(imgsize=(16, 16, 1), nclasses=10):
    out_conv_size = (imgsize[0] // 4 - 3, imgsize[1] // 4 - 3, 16)

    return torch.nn.Sequential(
        torch.nn.Conv2d(imgsize[-1], 6, (5, 5)),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d((2, 2)),
        torch.nn.Conv2d(6, 16, (5, 5)),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d((2, 2)),
        torch.nn.Flatten(),
        torch.nn.Linear(out_conv_size[0] * out_conv_size[1] * out_conv_size[2], 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, nclasses),
    )


def get_data(args):
    digits = load_digits()
    xs = torch.nn.functional.interpolate(
        torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, size=(16, 16)
    )
    ys = torch.tensor(digits.target)
    xtrain, ytrain = xs[:1500], ys[:1500]
    xtest, ytest = xs[1500:], ys[1500:]

    ytrain, ytest = onehotbatch(ytrain, range(10)), onehotbatch(ytest, range(10))

    train_loader = torch.utils.data.DataLoader(
        list(zip(xtrain, ytrain)), batch_size=args.batchsize, shuffle=True
    )
    test_loader = torch.utils.data.DataLoader(list(zip(xtest, ytest)), batch_size=args.batchsize)

    return train_loader, test_loader


# We set default values for learning rate, batch size, epochs, and the usage of a GPU (if available) for the model:
def loss(ŷ, y):
    return logitcrossentropy(ŷ, y)


def eval_loss_accuracy(loader, model, device):
    l = 0.0  # noqa: E741
    acc = 0
    ntot = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = device(x), device(y)
            ŷ = model(x)
            l += loss(ŷ, y).item() * x.shape[0]  # noqa: E741
            acc += (onecold(cpu(ŷ)) == onecold(cpu(y))).sum().item()
            ntot += x.shape[0]
    return dict(loss=round4(l / ntot), acc=round4(acc / ntot * 100))


## utility functions
def num_params(model):
    return sum(p.numel() for p in fluxtrain.params(model))  # number of trainable parameters


def round4(x):
    return round(x, 4)


# arguments for the `train` function
@dataclass
class Args:
    η: float = 3e-4  # learning rate
    λ: float = 0  # L2 regularizer param, implemented as weight decay
    batchsize: int = 128  # batch size
    epochs: int = 2  # number of epochs
    seed: int = 0  # set seed > 0 for reproducibility
    use_cuda: bool = True  # if true use cuda (if available)
    infotime: int = 1  # report every `infotime` epochs
    checktime: int = 0  # Save the model every `checktime` epochs. Set to 0 for no checkpoints.
    tblogger: bool = False  # log training with tensorboard
    savepath: str = "runs/"  # results path


def train(**kws):
    args = Args(**kws)
    args.seed > 0 and torch.manual_seed(args.seed)
    use_cuda = args.use_cuda and torch.cuda.is_available()

    if use_cuda:
        device = gpu
        print("[ Info: Training on GPU", file=sys.stderr)
    else:
        device = cpu
        print("[ Info: Training on CPU", file=sys.stderr)

    ## DATA
    train_loader, test_loader = get_data(args)
    print(
        f"[ Info: Dataset MNIST: {len(train_loader.dataset)} train and {len(test_loader.dataset)} test examples"
    )

    ## MODEL AND OPTIMIZER
    model = device(LeNet5())
    print(f"[ Info: LeNet5 model: {num_params(model)} trainable params")

    ps = fluxtrain.params(model)

    opt = ADAM(args.η)
    if args.λ > 0:  # add weight decay, equivalent to L2 regularization
        opt = Optimiser(WeightDecay(args.λ), opt)

    ## LOGGING UTILITIES
    def report(epoch):
        train = eval_loss_accuracy(train_loader, model, device)
        test = eval_loss_accuracy(test_loader, model, device)
        print(f"Epoch: {epoch}   Train: {train}   Test: {test}")

    ## TRAINING
    print("[ Info: Start Training")
    report(0)
    for epoch in range(1, args.epochs + 1):
        for x, y in train_loader:
            x, y = device(x), device(y)

            def _loss():
                ŷ = model(x)
                return loss(ŷ, y)

            gs = fluxtrain.gradient(_loss, ps)

            fluxtrain.optimise.update_(opt, ps, gs)

        ## Printing and logging
        epoch % args.infotime == 0 and report(epoch)


if __name__ == "__main__":
    torch.manual_seed(0)
    train()
