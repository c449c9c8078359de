"""A hand-written training loop: ``gradient(lambda: ..., ps)`` and ``update_``.

Flux 0.13 users who needed more than ``train!`` wrote the loop themselves with
implicit parameters: take the gradient of a zero-argument closure with respect
to ``params(model)`` and apply it with ``update!(opt, ps, gs)``.

Run:  python examples/manual_loop.py
"""

import math

import torch

import fluxtrain

torch.manual_seed(1)

# noisy samples of a sine wave
x = torch.linspace(-math.pi, math.pi, 256).reshape(-1, 1)
y = torch.sin(x) + 0.05 * torch.randn_like(x)

model = torch.nn.Sequential(
    torch.nn.Linear(1, 24),
    torch.nn.Tanh(),
    torch.nn.Linear(24, 1),
)


def loss(m, x, y):
    return ((m(x) - y) ** 2).mean()


opt_state = fluxtrain.setup(fluxtrain.optimisers.Momentum(0.05, 0.9), model)

perm = torch.randperm(len(x))
batches = [(x[perm[i : i + 32]], y[perm[i : i + 32]]) for i in range(0, len(x), 32)]

for epoch in range(1, 16):
    for xb, yb in batches:
        gs = fluxtrain.gradient(lambda m: loss(m, xb, yb), model)[0]
        fluxtrain.update_(opt_state, model, gs)
    if epoch % 5 == 0:
        print(f"epoch {epoch}: loss {loss(model, x, y).item():.5f}")
