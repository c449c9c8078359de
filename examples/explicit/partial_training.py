"""Training only part of a model: ``params(model[0])``.

A common Flux 0.13 recipe: keep a (pre-trained) head fixed and train only the
first layer by handing ``train!`` the parameters of that layer alone.

Run:  python examples/partial_training.py
"""

import torch

from fluxtrain import freeze_, setup, train_
from fluxtrain.optimisers import Descent

torch.manual_seed(2)

model = torch.nn.Sequential(
    torch.nn.Linear(4, 8),
    torch.nn.ReLU(),
    torch.nn.Linear(8, 2),
)
head_before = model[2].weight.detach().clone()

x = torch.randn(120, 4)
y = torch.stack([x[:, 0] - x[:, 1], x[:, 2] * 0.5 + x[:, 3]], dim=1)
data = [(x[i : i + 20], y[i : i + 20]) for i in range(0, 120, 20)]


def loss(m, x, y):
    return torch.nn.functional.mse_loss(m(x), y)


opt_state = setup(Descent(0.05), model)
freeze_(opt_state[1])
freeze_(opt_state[2])
for epoch in range(10):
    train_(loss, model, data, opt_state)

print(f"loss after training the first layer: {loss(model, x, y).item():.4f}")
print("head unchanged:", torch.equal(model[2].weight, head_before))
