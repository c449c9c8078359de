"""A model with BatchNorm and dropout, trained in train mode and evaluated in eval mode.

``params(model)`` takes BatchNorm's scale and shift but not its running
statistics (buffers, updated by the forward pass, never by the optimiser).
Dropout draws from torch's global random generator: this script does not seed
it itself, so under ``fluxtrain-migrate compare`` the ``FLUXTRAIN_SEED`` hook
(applied by ``import fluxtrain``) makes the masks the same in both runs.

Run:  FLUXTRAIN_SEED=0 python examples/batchnorm_dropout.py
"""

import torch
from torch import nn

import fluxtrain
from fluxtrain import train_

x = torch.randn(256, 10)
w = torch.randn(10, 1)
y = torch.relu(x @ w) + 0.1 * torch.randn(256, 1)
x_val, y_val = x[200:], y[200:]
batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 200, 32)]

model = nn.Sequential(
    nn.Linear(10, 32),
    nn.BatchNorm1d(32),
    nn.ReLU(),
    nn.Dropout(0.2),
    nn.Linear(32, 1),
)


def loss(m, x, y):
    return nn.functional.mse_loss(m(x), y)


print("trainable arrays:", len(fluxtrain.trainables(model)), "(BatchNorm's running statistics are not among them)")
opt_state = fluxtrain.setup(fluxtrain.optimisers.AdamW(0.003, (0.9, 0.999), lambda_=1e-4, couple=False), model)

for epoch in range(1, 9):
    model.train()
    train_(loss, model, batches, opt_state)
    model.eval()
    with torch.no_grad():
        print(f"epoch {epoch}: validation loss {loss(model, x_val, y_val).item():.4f}")

print("fluxtrain", fluxtrain.__version__)
