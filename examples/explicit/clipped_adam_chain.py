"""A composed old optimiser: ``Optimiser(ClipValue(...), WeightDecay(...), ADAM(...))``.

Robust regression on data with outliers: gradients are clipped element-wise,
then weight decay is added, then ADAM (the deprecated upper-case spelling that
Flux 0.13 scripts still used) takes the step.

Run:  python examples/clipped_adam_chain.py
"""

import torch
from torch import nn

from fluxtrain import setup, train_
from fluxtrain.optimisers import Adam, ClipGrad, OptimiserChain, WeightDecay

torch.manual_seed(4)

x = torch.randn(300, 5)
y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(300, 1)
y[::37] += 25.0  # a few wild outliers: their gradients get clipped

model = nn.Sequential(nn.Linear(5, 16), nn.GELU(), nn.Linear(16, 1))


def loss(m, x, y):
    return nn.functional.huber_loss(m(x), y, delta=2.0)


opt_state = setup(OptimiserChain(ClipGrad(0.1), WeightDecay(1e-4), Adam(0.003)), model)
data = [(x[i : i + 30], y[i : i + 30]) for i in range(0, 300, 30)]

for epoch in range(8):
    train_(loss, model, data, opt_state)

print(f"final loss {loss(model, x, y).item():.4f}")
