"""MLP classifier on scikit-learn's handwritten digits, Flux 0.13 implicit style.

The 8x8 digits ship inside scikit-learn (``load_digits`` reads them from the
package, no download). A callback evaluates the test accuracy after every
step and calls ``stop()`` once it is good enough, the early-stopping idiom of
Flux's old model zoo.

Run:  python examples/mlp_digits.py
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from fluxtrain import DomainError, setup, update_, withgradient
from fluxtrain.optimisers import Adam

torch.manual_seed(0)

digits = load_digits()
X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
Y = torch.tensor(digits.target, dtype=torch.long)
order = torch.from_numpy(np.random.default_rng(0).permutation(len(Y)))
train_idx, test_idx = order[:1400], order[1400:]
X_train, Y_train = X[train_idx], Y[train_idx]
X_test, Y_test = X[test_idx], Y[test_idx]

model = torch.nn.Sequential(
    torch.nn.Linear(64, 32),
    torch.nn.ReLU(),
    torch.nn.Linear(32, 10),
)


def loss(m, x, y):
    return F.cross_entropy(m(x), y)


def accuracy(x, y):
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


batches = [(X_train[i : i + 50], Y_train[i : i + 50]) for i in range(0, len(Y_train), 50)]

opt_state = setup(Adam(0.005), model)


def evalcb():
    acc = accuracy(X_test, Y_test)
    if acc > 0.93:
        print(f"test accuracy {acc:.3f} > 0.93, stopping")
        return "stop"


for x, y in batches * 10:
    val, grads = withgradient(lambda m: loss(m, x, y), model)
    if not math.isfinite(val):
        raise DomainError(f"Loss is {val}, stopping training")
    update_(opt_state, model, grads[0])
    signal = evalcb()
    if signal == "stop":
        break

print(f"final test loss {loss(model, X_test, Y_test).item():.4f}")
print(f"final test accuracy {accuracy(X_test, Y_test):.3f}")
