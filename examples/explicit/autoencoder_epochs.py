"""``epochs(n)`` driving the outer loop: a small autoencoder on the digits.

Flux 0.13's ``@epochs 10 train!(...)`` runs the training pass ten times,
logging "Epoch i" before each; fluxtrain spells it ``for _ in epochs(10):``.
A throttled callback prints the reconstruction error at most every half
second (wall-clock: how often it prints varies from run to run, but it only
observes the model, so training is the same).

Run:  python examples/autoencoder_epochs.py
"""

import math

import torch
from sklearn.datasets import load_digits

from fluxtrain import DomainError, setup, throttle, update_, withgradient
from fluxtrain.optimisers import Nesterov

torch.manual_seed(6)

images = torch.tensor(load_digits().data[:600] / 16.0, dtype=torch.float32)
batches = [images[i : i + 60] for i in range(0, 600, 60)]  # items are tensors, not tuples

encoder = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU())
decoder = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Sigmoid())
model = torch.nn.Sequential(encoder, decoder)


def loss(m, x):
    return torch.nn.functional.mse_loss(m(x), x)


def report():
    with torch.no_grad():
        print(f"reconstruction error {loss(model, images).item():.5f}")


opt_state = setup(Nesterov(0.1, 0.9), model)
evalcb = throttle(report, 0.5)

for epoch in range(1, 12 + 1):
    for batch in batches:
        args = batch if isinstance(batch, (tuple, list)) else (batch,)
        val, grads = withgradient(lambda m: loss(m, *args), model)
        if not math.isfinite(val):
            raise DomainError(f"Loss is {val}, stopping training")
        update_(opt_state, model, grads[0])
        evalcb()

report()
