# Source: FluxML/model-zoo, other/autoregressive-process/model.jl @ 3e3bd969f4ab0f473e2248d0382ef4417fc86eb4 (2022-05-01)
# URL: https://github.com/FluxML/model-zoo/blob/3e3bd969f4ab0f473e2248d0382ef4417fc86eb4/other/autoregressive-process/model.jl
# Port: utils.jl (same commit) inlined; proclen 750 -> 300, hidden_nodes 64 -> 8, epochs 100 -> 30; Flux's stateful
#   LSTM/reset! as a small torch helper; `∇` (not a Python identifier) -> `grads`; `cd(@__DIR__)` dropped; @info printed.
from dataclasses import dataclass, field

import torch

import fluxtrain
from fluxtrain import ADAM, gradient


def cpu(x):
    return x


class LSTM(torch.nn.Module):
    """Flux's stateful `LSTM(in, out)`: a cell whose state persists between calls until `reset!`."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.cell = torch.nn.LSTMCell(n_in, n_out)
        self.state = None

    def forward(self, x):
        h, c = self.cell(x, self.state)
        self.state = (h, c)
        return h


def reset_(m):
    for layer in m.modules():
        if isinstance(layer, LSTM):
            layer.state = None


def mse(ŷ, y):
    return ((ŷ - y) ** 2).mean()


# utils.jl


# Generates an AR(p) process with coefficients `ϕ`.
def generate_process(ϕ, s):
    assert s > 0, "s must be positive"
    # Generate white noise
    ϵ = torch.randn(s)
    # Initialize time series
    X = torch.zeros(s)
    p = len(ϕ)
    X[0] = ϵ[0]
    # Reverse the order of the coefficients for multiplication later on
    ϕ = torch.tensor(ϕ).flip(0)
    # Compute values iteratively
    for t in range(2, s + 1):
        if t <= p:
            X[t - 1] = (X[0 : t - 1] * ϕ[0 : t - 1]).sum() + ϵ[t - 1]
        else:
            X[t - 1] = (X[t - p - 1 : t - 1] * ϕ).sum() + ϵ[t - 1]
    return X


# Create batches of a time series `X` by splitting the series into
# sequences of length `s`. Each new sequence is shifted by `r` steps.
def batch_timeseries(X, s, r):
    assert r > 0, "r must be positive"
    T = X.shape[0]
    assert s <= T, "s cannot be longer than the total series"
    X = X[((T - s) % r) :]
    T = X.shape[0]
    return [X[t : T - s + t + 1 : r].reshape(-1, 1) for t in range(s)]  # Output


# model.jl


# Hyperparameters and configuration of AR process
@dataclass
class Args:
    seed: int = 72  # Random seed
    # AR process parameters
    ϕ: list = field(default_factory=lambda: [0.3, 0.2, -0.5])  # AR coefficients (=> AR(3))
    proclen: int = 300  # Process length
    # Recurrent net parameters
    dev: object = cpu  # Device: cpu or gpu
    opt: object = ADAM  # Optimizer
    η: float = 2e-3  # Learning rate
    hidden_nodes: int = 8  # Number of hidden nodes
    hidden_layers: int = 2  # Number of hidden layers
    layer: object = LSTM  # Type of layer, should be one of LSTM, GRU, RNN
    epochs: int = 30  # Number of epochs
    seqlen: int = 10  # Sequence length to use as input
    seqshift: int = 10  # Shift between sequences (see utils.jl)
    train_ratio: float = 0.7  # Percentage of data in the train set
    verbose: bool = True  # Whether we log the results during training or not


# Creates a model according to the pre-defined hyperparameters `args`
def build_model(args):
    return args.dev(
        torch.nn.Sequential(
            args.layer(1, args.hidden_nodes),
            *[args.layer(args.hidden_nodes, args.hidden_nodes) for _ in range(1, args.hidden_layers)],
            torch.nn.Linear(args.hidden_nodes, 1),
        )
    )


# Creates training and testing samples according to hyperparameters `args`
def generate_train_test_data(args):
    # Generate full AR process
    data = generate_process(args.ϕ, args.proclen)
    # Create input X and output y (series shifted by 1)
    X, y = data[:-1], data[1:]
    # Split data into training and testing sets
    idx = round(args.train_ratio * len(X))
    Xtrain, Xtest = X[:idx], X[idx:]
    ytrain, ytest = y[:idx], y[idx:]
    # Transform data to time series batches and return
    return map(
        lambda x: [args.dev(b) for b in batch_timeseries(x, args.seqlen, args.seqshift)], (Xtrain, Xtest, ytrain, ytest)
    )


# Trains and outputs the model according to the chosen hyperparameters `args`
def train_model(args):
    torch.manual_seed(args.seed)
    # Create recurrent model
    m = build_model(args)
    # Get data
    Xtrain, Xtest, ytrain, ytest = generate_train_test_data(args)

    opt = args.opt(args.η)
    θ = fluxtrain.params(m)  # Keep track of model parameters

    def loss(x, y):
        # Warm up recurrent model on first observation
        m(x[0])
        # Compute mean squared error loss on the rest of the sequence
        return torch.stack([mse(m(xᵢ), yᵢ) for xᵢ, yᵢ in zip(x[1:], y[1:])]).mean()

    # Training loop
    for i in range(1, args.epochs + 1):
        reset_(m)  # Reset hidden state of the recurrent model
        # Compute the gradients of the loss function

        def _loss():
            return loss(Xtrain, ytrain)

        grads = gradient(_loss, θ)
        fluxtrain.update_(opt, θ, grads)  # Update model parameters
        if args.verbose and i % 10 == 0:  # Log results every 10 epochs
            # Compute loss on train and test set for logging (important: the model must be reset!)
            reset_(m)
            train_loss = loss(Xtrain, ytrain).item()
            reset_(m)
            test_loss = loss(Xtest, ytest).item()
            print(
                f"[ Info: Epoch {i} / {args.epochs}, train loss: {round(train_loss, 3)} | test loss: {round(test_loss, 3)}"
            )
    return m


args = Args()  # Set up hyperparameters
m = train_model(args)  # Train and output model
