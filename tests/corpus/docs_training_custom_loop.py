# Source: FluxML/Flux.jl, docs/src/training/training.md ("Custom Training loops") @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/training/training.md
# Port: the page's model and loss (Chain(Dense(784, 32, σ), Dense(32, 10), softmax), mse) and its
#       3-item dummy data set feed my_custom_train!; `local training_loss` -> nonlocal; do-block -> def.
import torch

import fluxtrain
from fluxtrain import Descent, Params, gradient, update_

torch.manual_seed(0)

m = torch.nn.Sequential(
    torch.nn.Linear(784, 32), torch.nn.Sigmoid(), torch.nn.Linear(32, 10), torch.nn.Softmax(dim=-1)
)


def loss(x, y):
    return torch.nn.functional.mse_loss(m(x), y)


ps = fluxtrain.params(m)

x = torch.rand(784)
y = torch.rand(10)
data = [(x, y), (x, y), (x, y)]


def my_custom_train_(loss, ps, data, opt):
    # training_loss is declared local so it will be available for logging outside the gradient calculation.
    training_loss = None
    ps = Params(ps)
    for d in data:

        def closure():
            nonlocal training_loss
            training_loss = loss(*d)
            # Code inserted here will be differentiated, unless you need that gradient information
            # it is better to do the work outside this block.
            return training_loss

        gs = gradient(closure, ps)
        # Insert whatever code you want here that needs training_loss, e.g. logging.
        # logging_callback(training_loss)
        print(training_loss.item())
        # Insert what ever code you want here that needs gradient.
        # E.g. logging with TensorBoardLogger.jl as histogram so you can see if it is becoming huge.
        update_(opt, ps, gs)
        # Here you might like to check validation set accuracy, and break out to do early stopping.


opt = Descent(0.5)
my_custom_train_(loss, ps, data, opt)
print(loss(x, y).item())
