# Source: FluxML/Flux.jl, docs/src/training/training.md ("Custom Training loops", pullback) @ v0.12.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.12.10/docs/src/training/training.md
# Port: the page's model and loss feed the second my_custom_train!; Zygote.pullback ->
#       fluxtrain.pullback; one(train_loss) -> torch.ones_like(train_loss).
import torch

import fluxtrain
from fluxtrain import ADAM, Params, update_

torch.manual_seed(0)

m = torch.nn.Sequential(
    torch.nn.Linear(784, 32), torch.nn.Sigmoid(), torch.nn.Linear(32, 10), torch.nn.Softmax(dim=-1)
)


def loss(x, y):
    return torch.nn.functional.mse_loss(m(x), y)


ps = fluxtrain.params(m)

xs = [torch.rand(784), torch.rand(784), torch.rand(784)]
ys = [torch.rand(10), torch.rand(10), torch.rand(10)]
data = zip(xs, ys)


def my_custom_train_(loss, ps, data, opt):
    ps = Params(ps)
    for d in data:
        # back is a method that computes the product of the gradient so far with its argument.
        train_loss, back = fluxtrain.pullback(lambda: loss(*d), ps)
        # Insert whatever code you want here that needs training_loss, e.g. logging.
        # logging_callback(training_loss)
        print(train_loss.item())
        # Apply back() to the correct type of 1.0 to get the gradient of loss.
        gs = back(torch.ones_like(train_loss))
        # Insert what ever code you want here that needs gradient.
        # E.g. logging with TensorBoardLogger.jl as histogram so you can see if it is becoming huge.
        update_(opt, ps, gs)
        # Here you might like to check validation set accuracy, and break out to do early stopping.


opt = ADAM(0.01)
for epoch in range(3):
    my_custom_train_(loss, ps, zip(xs, ys), opt)
print(sum(loss(x, y) for (x, y) in zip(xs, ys)).item())
