"""Learning-rate decay by assigning to the optimiser: ``opt.eta *= 0.5``.

Old optimisers were mutable structs, and halving ``opt.eta`` between epochs
was the documented way to decay the learning rate in Flux 0.13.

Run:  python examples/lr_decay.py
"""

import torch

import fluxtrain

torch.manual_seed(3)

true_w = torch.tensor([[2.0, -3.0, 0.5]])
x = torch.randn(200, 3)
y = x @ true_w.T + 1.0 + 0.1 * torch.randn(200, 1)
data = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 200, 10)]

model = torch.nn.Linear(3, 1)


def loss(m, x, y):
    return torch.nn.functional.mse_loss(m(x), y)


eta = 0.2
opt_state = fluxtrain.setup(fluxtrain.optimisers.Adam(0.2), model)

for epoch in range(1, 9):
    fluxtrain.train_(loss, model, data, opt_state)
    print(f"epoch {epoch}: eta {eta:.5f}, loss {loss(model, x, y).item():.5f}")
    eta *= 0.5
    fluxtrain.adjust_(opt_state, eta)

print("weights:", [round(v, 3) for v in model.weight.flatten().tolist()])
