# Source: FluxML/Flux.jl, docs/src/training/training.md ("Datasets", "Callbacks") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/training/training.md
# Port: the page's snippets joined into one script on sklearn's digits (8x8, so 64 inputs, not 784);
#       `objective` is the page's `loss`; @show -> print; accuracy() written out; throttle 5 s -> 600 s
#       so that only the leading call fires and stdout stays deterministic on a loaded machine.
import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, epochs, throttle

torch.manual_seed(0)

digits = load_digits()
X = torch.tensor(digits.data[:800], dtype=torch.float32) / 16
Y = torch.nn.functional.one_hot(torch.tensor(digits.target[:800]), 10).float()
test_x = torch.tensor(digits.data[1500:], dtype=torch.float32) / 16
test_y = torch.nn.functional.one_hot(torch.tensor(digits.target[1500:]), 10).float()

m = torch.nn.Sequential(
    torch.nn.Linear(64, 32), torch.nn.Sigmoid(), torch.nn.Linear(32, 10), torch.nn.Softmax(dim=-1)
)


def loss(x, y):
    return torch.nn.functional.mse_loss(m(x), y)


objective = loss
ps = fluxtrain.params(m)
opt = ADAM(0.02)

xs = [X[i : i + 200] for i in range(0, 800, 200)]
ys = [Y[i : i + 200] for i in range(0, 800, 200)]
data = zip(xs, ys)

fluxtrain.train_(objective, ps, data, opt, cb=lambda: print("training"))


def accuracy():
    return (m(test_x).argmax(dim=1) == test_y.argmax(dim=1)).float().mean().item()


def evalcb():
    print("loss(test_x, test_y) =", round(loss(test_x, test_y).item(), 4))


throttled_cb = throttle(evalcb, 600)
data = list(zip(xs, ys))
for _ in epochs(20):
    fluxtrain.train_(objective, ps, data, opt, cb=throttled_cb)


def cb():
    accuracy() > 0.9 and fluxtrain.stop()


for _ in epochs(20):
    fluxtrain.train_(objective, ps, data, opt, cb=cb)
print("accuracy", round(accuracy(), 4))
