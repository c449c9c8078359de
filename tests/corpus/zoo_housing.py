# Source: FluxML/model-zoo, other/housing/housing.jl @ 8cb6f26c33e6722e5f2d337a4fe7a057fbc83687 (2021-01-21)
# URL: https://github.com/FluxML/model-zoo/blob/8cb6f26c33e6722e5f2d337a4fe7a057fbc83687/other/housing/housing.jl
# Port: housing.data download -> scikit-learn's load_diabetes (10 features, not 13; target scaled by 1/10);
#   float64 features-by-samples layout kept as in Julia; `cd(@__DIR__)` dropped.
from dataclasses import dataclass

import torch
from sklearn.datasets import load_diabetes

from fluxtrain import gradient, params
from fluxtrain.optimise import update_

torch.manual_seed(0)

# This replicates the housing data example from the Knet.jl readme. Although we
# could have reused more of Flux (see the mnist example), the library's
# abstractions are very lightweight and don't force you into any particular
# strategy.


# Struct to define hyperparameters
@dataclass
class Hyperparams:
    lr: float = 0.1  # learning rate
    split_ratio: float = 0.1  # Train Test split ratio, define percentage of data to be used as Test data


def get_processed_data(args):
    diabetes = load_diabetes()
    rawdata = torch.cat(
        [torch.tensor(diabetes.data), torch.tensor(diabetes.target).reshape(-1, 1) / 10], dim=1
    ).T

    # The last feature is our target -- the price of the house.
    split_ratio = args.split_ratio  # For the train test split

    x = rawdata[0:10, :]
    y = rawdata[10:11, :]

    # Normalise the data
    x = (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True)

    # Split into train and test sets
    split_index = int(x.shape[1] * split_ratio)
    x_train = x[:, 0:split_index]
    y_train = y[:, 0:split_index]
    x_test = x[:, split_index : x.shape[1]]
    y_test = y[:, split_index : x.shape[1]]

    train_data = (x_train, y_train)
    test_data = (x_test, y_test)

    return train_data, test_data


# Struct to define model
@dataclass
class model:
    W: torch.Tensor
    b: torch.Tensor


# Function to predict output from given parameters
def predict(x, m):
    return m.W @ x + m.b


# Define the mean squared error function to be used in the loss
# function. An implementation is also available in the Flux package
# (https://fluxml.ai/Flux.jl/stable/models/losses/#Flux.Losses.mse).
def meansquarederror(ŷ, y):
    return ((ŷ - y) ** 2).sum() / y.shape[1]


def train(**kws):
    # Initialize the Hyperparamters
    args = Hyperparams(**kws)

    # Load the data
    (x_train, y_train), (x_test, y_test) = get_processed_data(args)

    # The model
    m = model(torch.randn(1, 10, dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))

    def loss(x, y):
        return meansquarederror(predict(x, m), y)

    ## Training
    η = args.lr
    θ = params(m.W, m.b)

    for i in range(1, 501):
        g = gradient(lambda: loss(x_train, y_train), θ)
        for x in θ:
            update_(x, g[x] * η)
        if i % 100 == 0:
            print(f"loss(x_train, y_train) = {loss(x_train, y_train).item()}")

    # Predict the RMSE on the test set
    err = meansquarederror(predict(x_test, m), y_test)
    print(err.item())


train()
