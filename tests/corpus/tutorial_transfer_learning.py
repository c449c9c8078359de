# Source: FluxML/fluxml.github.io, tutorialposts/2020-10-18-transfer-learning.md ("Transfer Learning with Flux", fluxml.ai tutorial) @ 01bcf14
# URL: https://fluxml.ai/tutorialposts/2020-10-18-transfer-learning/
# Port: Metalhead's ResNet().layers[1:end-2] -> a small untrained conv stack (the post also trains it all);
#       Dogs vs. Cats + load_batch(10) -> sklearn digits 0 vs 1 in seeded random batches; widths shrunk.
import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, epochs

torch.manual_seed(0)

resnet = torch.nn.Sequential(
    torch.nn.Conv2d(1, 8, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Flatten(),
    torch.nn.Linear(128, 64),
    torch.nn.Linear(64, 10),
)

digits = load_digits()
keep = digits.target < 2
images = torch.tensor(digits.images[keep], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
classes = torch.tensor(digits.target[keep])


def load_batch(n):
    idx = torch.randperm(len(classes))[:n]
    return images[idx], torch.nn.functional.one_hot(classes[idx], 2).float()


model = torch.nn.Sequential(
    resnet[:-2],
    torch.nn.Linear(128, 100),
    torch.nn.Linear(100, 32),
    torch.nn.Linear(32, 2),  # we get 128 features out, and we have 2 classes
)

dataset = [load_batch(10) for i in range(10)]

opt = ADAM()


def loss(x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


ps = fluxtrain.params(model)

for _ in epochs(2):
    fluxtrain.train_(loss, ps, dataset, opt)

imgs, labels = load_batch(10)
print(model(imgs).argmax(dim=1).tolist())

print(labels.argmax(dim=1).tolist())
