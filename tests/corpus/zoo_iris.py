# Source: FluxML/model-zoo, other/iris/iris.jl @ 4c9018b216d76ba7564656a8cd465a9252b63cca (2020-04-30)
# URL: https://github.com/FluxML/model-zoo/blob/4c9018b216d76ba7564656a8cd465a9252b63cca/other/iris/iris.jl
# Port: Flux.Data.Iris -> scikit-learn's load_iris (the same 150 samples, classes in the same order);
#   batch-first layout, 0-based index ranges; `cd(@__DIR__)` and `display` dropped (print instead).
import itertools
from dataclasses import dataclass

import torch
from sklearn.datasets import load_iris

import fluxtrain
from fluxtrain import Descent, params

torch.manual_seed(0)


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def logitcrossentropy(yhat, y):
    return (-(y * torch.log_softmax(yhat, dim=1)).sum(dim=1)).mean()


def normalise(x, dims):
    μ = x.mean(dim=dims, keepdim=True)
    σ = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - μ) / (σ + 1e-5)


@dataclass
class Args:
    lr: float = 0.5
    repeat: int = 110


def get_processed_data(args):
    iris = load_iris()
    labels = torch.tensor(iris.target)
    features = torch.tensor(iris.data, dtype=torch.float32)

    # Subract mean, divide by std dev for normed mean of 0 and std dev of 1.
    normed_features = normalise(features, dims=0)

    klasses = sorted(set(labels.tolist()))
    onehot_labels = onehotbatch(labels, klasses)

    # Split into training and test sets, 2/3 for training, 1/3 for test.
    train_indices = list(range(0, 150, 3)) + list(range(1, 150, 3))

    X_train = normed_features[train_indices, :]
    y_train = onehot_labels[train_indices, :]

    X_test = normed_features[2:150:3, :]
    y_test = onehot_labels[2:150:3, :]

    # repeat the data `args.repeat` times
    train_data = itertools.repeat((X_train, y_train), args.repeat)
    test_data = (X_test, y_test)

    return train_data, test_data


# Accuracy Function
def accuracy(x, y, model):
    return (onecold(model(x)) == onecold(y)).float().mean().item()


# Function to build confusion matrix
def confusion_matrix(X, y, model):
    ŷ = onehotbatch(onecold(model(X)), range(3))
    return y.T @ ŷ


def train(**kws):
    # Initialize hyperparameter arguments
    args = Args(**kws)

    # Loading processed data
    train_data, test_data = get_processed_data(args)

    # Declare model taking 4 features as inputs and outputting 3 probabiltiies,
    # one for each species of iris.
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))

    # Defining loss function to be used in training
    # For numerical stability, we use here logitcrossentropy
    def loss(x, y):
        return logitcrossentropy(model(x), y)

    # Training
    # Gradient descent optimiser with learning rate `args.lr`
    optimiser = Descent(args.lr)

    print("Starting training.")
    fluxtrain.train_(loss, params(model), train_data, optimiser)

    return model, test_data


def test(model, test):
    # Testing model performance on test data
    X_test, y_test = test
    accuracy_score = accuracy(X_test, y_test, model)

    print(f"\nAccuracy: {accuracy_score:.6f}")

    # Sanity check.
    assert accuracy_score > 0.8

    # To avoid confusion, here is the definition of a Confusion Matrix: https://en.wikipedia.org/wiki/Confusion_matrix
    print("\nConfusion Matrix:\n")
    with torch.no_grad():
        print(confusion_matrix(X_test, y_test, model).int())


model, test_data = train()
test(model, test_data)
