"""A model that is a plain dict of tensors, with a functional forward pass.

No ``nn.Module`` at all: the weights live in a dict (like a Julia NamedTuple
of arrays) and ``forward(m, x)`` applies them. ``params`` collects the
tensors; the loss reads the global dict.

Run:  python examples/dict_model.py
"""

import torch
import torch.nn.functional as F

from fluxtrain import setup, train_
from fluxtrain.optimisers import RMSProp

torch.manual_seed(5)

# two interleaved half-moons, labels 0 and 1
n = 200
t = torch.rand(n) * torch.pi
upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
X = torch.cat([upper, lower]) + 0.1 * torch.randn(2 * n, 2)
Y = torch.cat([torch.zeros(n), torch.ones(n)])

model = {
    "W1": 0.5 * torch.randn(16, 2),
    "b1": torch.zeros(16),
    "W2": 0.5 * torch.randn(1, 16),
    "b2": torch.zeros(1),
}


def forward(m, x):
    h = torch.tanh(x @ m["W1"].T + m["b1"])
    return (h @ m["W2"].T + m["b2"]).squeeze(1)


def loss(m, x, y):
    return F.binary_cross_entropy_with_logits(forward(m, x), y)


perm = torch.randperm(2 * n)
data = [(X[perm[i : i + 40]], Y[perm[i : i + 40]]) for i in range(0, 2 * n, 40)]

opt_state = setup(RMSProp(0.01), model)
for epoch in range(20):
    train_(loss, model, data, opt_state)

accuracy = ((forward(model, X) > 0).float() == Y).float().mean().item()
print(f"loss {loss(model, X, Y).item():.4f}, accuracy {accuracy:.3f}")
