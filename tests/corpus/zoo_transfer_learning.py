# Source: FluxML/model-zoo, tutorials/transfer_learning/transfer_learning.jl @ 4eb48f0d3f0b1d9b600b01c6aaa7d55f8fa37748 (2022-03-23)
# URL: https://github.com/FluxML/model-zoo/blob/4eb48f0d3f0b1d9b600b01c6aaa7d55f8fa37748/tutorials/transfer_learning/transfer_learning.jl
# Port: Metalhead's pretrained ResNet -> a small randomly initialised conv stack with the same layers[1:end-2] slicing;
#   dogs-vs-cats load_batch -> random 3x32x32 images with one-hot labels; Dense(2048,1000,256) -> (16,32,8).
import torch

import fluxtrain
from fluxtrain import ADAM, epochs

torch.manual_seed(0)


def ResNet():
    # stand-in for Metalhead.ResNet(): a feature extractor followed by a pooling head and a classifier
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 1000),
        torch.nn.Softmax(dim=1),
    )


resnet = ResNet()


# dataloader.jl
def load_batch(n):
    imgs = torch.rand(n, 3, 32, 32)
    labels = torch.nn.functional.one_hot(torch.randint(0, 2, (n,)), 2).float()
    return imgs, labels


model = torch.nn.Sequential(
    torch.nn.Sequential(*resnet[:-2]),
    torch.nn.Linear(16, 32),
    torch.nn.Linear(32, 8),
    torch.nn.Linear(8, 2),  # we get 2048 features out, and we have 2 classes
)


def gpu(x):
    return x


model = gpu(model)

dataset = [tuple(gpu(x) for x in load_batch(10)) for i in range(1, 11)]

opt = ADAM()


def loss(x, y):
    return (-(y * torch.log_softmax(model(x), dim=1)).sum(dim=1)).mean()


ps = fluxtrain.params(model[1:])  # ignore the already trained layers of the ResNet

for _ in epochs(2):
    fluxtrain.train_(loss, ps, dataset, opt)

imgs, labels = (gpu(x) for x in load_batch(10))
with torch.no_grad():
    print(model(imgs))
print(labels)
