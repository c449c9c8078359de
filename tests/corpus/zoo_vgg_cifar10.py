# Source: FluxML/model-zoo, vision/vgg_cifar10/vgg_cifar10.jl @ fb4aa566323cdacf386ce81b5e1ac78b0ea01879 (2021-06-16)
# URL: https://github.com/FluxML/model-zoo/blob/fb4aa566323cdacf386ce81b5e1ac78b0ea01879/vision/vgg_cifar10/vgg_cifar10.jl
# Port: CIFAR10 -> random 3x32x32 images with random labels (200 train+val, 100 test); VGG16's layer sequence kept with
#   widths 64/128/256/512/4096 -> 4/8/8/8/16; epochs 50 -> 2; torch modules stay in train mode (no Flux auto test mode).
from dataclasses import dataclass

import torch

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def logitcrossentropy(ŷ, y):
    return (-(y * torch.log_softmax(ŷ, dim=1)).sum(dim=1)).mean()


def gpu(x):
    return x


def cpu(x):
    return x


def splitobs(data, at):
    n = int(round(len(data[0]) * at))
    return tuple(d[:n] for d in data), tuple(d[n:] for d in data)


def get_processed_data(args):
    x, y = torch.rand(200, 3, 32, 32), torch.randint(0, 10, (200,))

    (train_x, train_y), (val_x, val_y) = splitobs((x, y), at=1 - args.valsplit)

    train_x = train_x.float()
    train_y = onehotbatch(train_y, range(10))
    val_x = val_x.float()
    val_y = onehotbatch(val_y, range(10))

    return (train_x, train_y), (val_x, val_y)


def get_test_data():
    test_x, test_y = torch.rand(100, 3, 32, 32), torch.randint(0, 10, (100,))

    test_x = test_x.float()
    test_y = onehotbatch(test_y, range(10))

    return test_x, test_y


def conv(cin, cout):
    return [torch.nn.Conv2d(cin, cout, (3, 3), padding=(1, 1), stride=(1, 1)), torch.nn.ReLU(), torch.nn.BatchNorm2d(cout)]


# VGG16 and VGG19 models
def vgg16():
    return torch.nn.Sequential(
        *conv(3, 4),
        *conv(4, 4),
        torch.nn.MaxPool2d((2, 2)),
        *conv(4, 8),
        *conv(8, 8),
        torch.nn.MaxPool2d((2, 2)),
        *conv(8, 8),
        *conv(8, 8),
        *conv(8, 8),
        torch.nn.MaxPool2d((2, 2)),
        *conv(8, 8),
        *conv(8, 8),
        *conv(8, 8),
        torch.nn.MaxPool2d((2, 2)),
        *conv(8, 8),
        *conv(8, 8),
        *conv(8, 8),
        torch.nn.MaxPool2d((2, 2)),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 10),
    )


@dataclass
class Args:
    batchsize: int = 128
    lr: float = 3e-4
    epochs: int = 2
    valsplit: float = 0.1


def train(**kws):
    # Initialize the hyperparameters
    args = Args(**kws)

    # Load the train, validation data
    train_data, val_data = get_processed_data(args)

    train_loader = torch.utils.data.DataLoader(list(zip(*train_data)), batch_size=args.batchsize, shuffle=True)
    val_loader = torch.utils.data.DataLoader(list(zip(*val_data)), batch_size=args.batchsize)

    print("[ Info: Constructing Model")
    m = gpu(vgg16())

    def loss(x, y):
        return logitcrossentropy(m(x), y)

    ## Training
    # Defining the optimizer
    opt = ADAM(args.lr)
    ps = fluxtrain.params(m)

    print("[ Info: Training....")
    # Starting to train models
    for epoch in range(1, args.epochs + 1):
        print(f"[ Info: Epoch {epoch}")

        for x, y in train_loader:
            x, y = gpu(x), gpu(y)
            gs = fluxtrain.gradient(lambda: loss(x, y), ps)
            fluxtrain.update_(opt, ps, gs)

        validation_loss = 0.0
        for x, y in val_loader:
            x, y = gpu(x), gpu(y)
            validation_loss += loss(x, y).item()
        validation_loss /= len(val_loader)
        print(f"validation_loss = {validation_loss:.6f}")

    return m


def test(m, **kws):
    args = Args(**kws)

    test_data = get_test_data()
    test_loader = torch.utils.data.DataLoader(list(zip(*test_data)), batch_size=args.batchsize)

    correct, total = 0, 0
    for x, y in test_loader:
        x, y = gpu(x), gpu(y)
        correct += (onecold(cpu(m(x))) == onecold(cpu(y))).sum().item()
        total += y.shape[0]
    test_accuracy = correct / total

    # Print the final accuracy
    print(f"test_accuracy = {test_accuracy}")


if __name__ == "__main__":
    m = train()
    test(m)
