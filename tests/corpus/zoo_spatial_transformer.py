# Source: FluxML/model-zoo, vision/spatial_transformer/spatial_transformer.jl @ d8f7f9d5de75a19c3a35c96bfaadfab83cc3571a (2022-07-15)
# URL: https://github.com/FluxML/model-zoo/blob/d8f7f9d5de75a19c3a35c96bfaadfab83cc3571a/vision/spatial_transformer/spatial_transformer.jl
# Port: MNIST -> scikit-learn's 8x8 digits upsampled to 16x16 (1536 train / 256 test), channels 20/32 -> 4/8, Dense 256 -> 32,
#   n_epochs 40 -> 2; sampling grid via torch's affine_grid/grid_sample; plots and ProgressMeter dropped.
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import Adam, withgradient

torch.manual_seed(0)

args = dict(
    bsz=64,  # batch size
    img_size=(16, 16),  # mnist image size
    n_epochs=2,  # no. epochs to train
)


def cpu(x):
    return x


dev = cpu


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def logitcrossentropy(ŷ, y):
    return (-(y * torch.log_softmax(ŷ, dim=1)).sum(dim=1)).mean()


digits = load_digits()
images = F.interpolate(torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, size=(16, 16))
train_digits, train_labels = images[:1536, 0], torch.tensor(digits.target[:1536])
test_digits, test_labels = images[1536:], torch.tensor(digits.target[1536:])
test_digits = test_digits[:, 0]

train_labels_onehot = onehotbatch(train_labels, range(10))
test_labels_onehot = onehotbatch(test_labels, range(10))

train_loader = torch.utils.data.DataLoader(
    list(zip(dev(train_digits), dev(train_labels_onehot))), batch_size=args["bsz"], shuffle=True, drop_last=True
)
test_loader = torch.utils.data.DataLoader(
    list(zip(dev(test_digits), dev(test_labels_onehot))), batch_size=args["bsz"], shuffle=True, drop_last=True
)


# sample image x at points determined by transforming the sampling grid by thetas
def sample_patch(x, thetas, sz=args["img_size"]):
    ximg = x.reshape(x.shape[0], 1, *sz)
    theta = torch.cat([thetas[:, 0:4], thetas[:, [0, 3]] * thetas[:, 4:6]], dim=1)
    theta = theta.reshape(-1, 3, 2).transpose(1, 2)
    tr_grid = F.affine_grid(theta, list(ximg.shape), align_corners=True)
    return F.grid_sample(ximg, tr_grid, padding_mode="zeros", align_corners=True)


# transform image with localization net
def transform_image(x):
    thetas = localization_net(x)
    return sample_patch(x, thetas)


def model_loss(x, y):
    xnew = transform_image(x)
    ŷ = classifier(xnew)
    return logitcrossentropy(ŷ, y)


def accuracy(ŷ, y):
    return (onecold(ŷ) == onecold(y)).float().mean().item()


def train_model(opt, ps, train_loader, epoch=1):
    losses = torch.zeros(len(train_loader))
    for i, (x, y) in enumerate(train_loader):

        def _loss():
            return model_loss(x, y)

        loss, grad = withgradient(_loss, ps)
        fluxtrain.update_(opt, ps, grad)
        losses[i] = loss
    return losses


def test_model(test_loader):
    L, acc = 0.0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(test_loader):
            L += model_loss(x, y).item()
            xnew = transform_image(x)
            ŷ = classifier(xnew)
            acc += accuracy(ŷ, y)
    return L / len(test_loader), round(acc * 100 / len(test_loader), 3)


localization_net = dev(
    torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 16)),  # add channel dimension for Conv layer
        torch.nn.Conv2d(1, 4, (5, 5), stride=(1, 1), padding=(0, 0)),
        torch.nn.MaxPool2d((2, 2)),
        torch.nn.Conv2d(4, 4, (5, 5), stride=(1, 1), padding=(0, 0)),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 50),
        torch.nn.ReLU(),
        torch.nn.Linear(50, 6),
    )
)

classifier = dev(
    torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, (3, 3)),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d((2, 2)),
        torch.nn.Conv2d(8, 8, (3, 3)),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d((2, 2)),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
)

ps = fluxtrain.params(localization_net, classifier)

opt = Adam(1e-4)

for epoch in range(1, args["n_epochs"] + 1):
    ls = train_model(opt, ps, train_loader, epoch=epoch)
    Ltest, test_acc = test_model(test_loader)
    print(f"[ Info: Test loss: {Ltest:.6f}, test accuracy: {test_acc}%")
