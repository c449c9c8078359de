# Source: FluxML/MLJFlux.jl, src/core.jl (train!, fit!) and src/penalizers.jl (Penalizer, Penalty) @ v0.2.9
# URL: https://github.com/FluxML/MLJFlux.jl/blob/v0.2.9/src/core.jl
# Port: the package's private train!/fit! and penalty objects, driven as MLJFlux's classifier drives them
#       (Short builder: Dense, Dropout, Dense, softmax) on sklearn's iris; progress meter dropped.
from dataclasses import dataclass

import torch
from sklearn.datasets import load_iris

import fluxtrain

torch.manual_seed(0)


class Penalizer:
    """Penalizer(λ, α): penalizer(A) returns λ*(α*L1 + (1 - α)*L2)."""

    def __init__(self, lambda_, alpha):
        self.lambda_ = None if lambda_ == 0 else lambda_
        self.alpha = None if lambda_ == 0 else alpha

    def __call__(self, A):
        if self.lambda_ is None:
            return 0
        λ = self.lambda_
        α = self.alpha
        # avoiding broadcasting; see Note (1) above
        L2 = (A**2).sum()
        L1 = A.abs().sum()
        return λ * (α * L1 + (1 - α) * L2)


class Penalty:
    def __init__(self, model):
        self.penalizer = Penalizer(model.lambda_, model.alpha)

    def __call__(self, w):
        if self.penalizer.lambda_ is None:
            return torch.tensor(0.0)
        return sum(self.penalizer(wt) for wt in w)


def train_(loss, penalty, chain, optimiser, X, y):
    """A private method.

    Update the parameters of a Flux `chain`, where `(yhat, y) -> loss(yhat, y)` is the loss
    function and `params -> penalty(params)` is a regularization penalty function.
    """
    n_batches = len(y)
    training_loss = torch.tensor(0.0)
    for i in range(n_batches):
        parameters = fluxtrain.params(chain)

        def _batch_loss():
            nonlocal training_loss
            yhat = chain(X[i])
            batch_loss = loss(yhat, y[i]) + penalty(parameters) / n_batches
            training_loss = training_loss + batch_loss.detach()
            return batch_loss

        gs = fluxtrain.gradient(_batch_loss, parameters)
        fluxtrain.update_(optimiser, parameters, gs)
    return training_loss / n_batches


def fit_(loss, penalty, chain, optimiser, epochs, verbosity, X, y):
    # initiate history:
    n_batches = len(y)

    parameters = fluxtrain.params(chain)
    losses = [loss(chain(X[i]), y[i]) + penalty(parameters) / n_batches for i in range(n_batches)]
    history = [(sum(losses) / len(losses)).item()]

    for i in range(epochs):
        current_loss = train_(loss, penalty, chain, optimiser, X, y)
        if verbosity >= 2:
            print(f"[ Info: Loss is {current_loss.item():.4g}")
        history.append(current_loss.item())

    return chain, history


@dataclass
class NeuralNetworkClassifier:
    lambda_: float = 0.01
    alpha: float = 0.4
    epochs: int = 10
    batch_size: int = 30
    n_hidden: int = 5


def crossentropy(ŷ, y):
    return -(y * torch.log(ŷ)).sum(dim=-1).mean()


iris = load_iris()
perm = torch.randperm(150)
Xall = torch.tensor(iris.data, dtype=torch.float32)[perm]
yall = torch.nn.functional.one_hot(torch.tensor(iris.target)[perm], 3).float()

model = NeuralNetworkClassifier()
X = [Xall[i : i + model.batch_size] for i in range(0, 150, model.batch_size)]
y = [yall[i : i + model.batch_size] for i in range(0, 150, model.batch_size)]

chain = torch.nn.Sequential(
    torch.nn.Linear(4, model.n_hidden),
    torch.nn.Sigmoid(),
    torch.nn.Dropout(0.5),
    torch.nn.Linear(model.n_hidden, 3),
    torch.nn.Softmax(dim=-1),
)
optimiser = fluxtrain.optimise.ADAM(0.01)
penalty = Penalty(model)

chain, history = fit_(crossentropy, penalty, chain, optimiser, model.epochs, 2, X, y)
print([round(h, 4) for h in history])
