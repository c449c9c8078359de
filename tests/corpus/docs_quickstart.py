# Source: FluxML/Flux.jl, docs/src/models/quickstart.md ("A Neural Network in One Minute") @ v0.13.8
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.8/docs/src/models/quickstart.md
# Port: Chain(Dense(2 => 3, tanh), BatchNorm(3), Dense(3 => 2), softmax) -> torch.nn; DataLoader -> torch's
#       (seeded shuffle); the train! do-block -> a nested def passed first; 1_000 epochs -> 5, batchsize 64 -> 100; plots dropped.
import torch
from torch.utils.data import DataLoader, TensorDataset

import fluxtrain

torch.manual_seed(0)

# Generate some data for the XOR problem: vectors of length 2, as rows of a matrix:
noisy = torch.rand(1000, 2)  # 1000×2 Matrix{Float32}
truth = torch.logical_xor(noisy[:, 0] > 0.5, noisy[:, 1] > 0.5)  # 1000-element Vector{Bool}

# Define our model, a multi-layer perceptron with one hidden layer of size 3:
model = torch.nn.Sequential(
    torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2), torch.nn.Softmax(dim=1)
)

# The model encapsulates parameters, randomly initialised. Its initial output is:
out1 = model(noisy)  # 1000×2 Matrix{Float32}

# To train the model, we use batches of 100 samples:
mat = torch.stack([truth, ~truth], dim=1).float()  # 1000×2 onehot
data = DataLoader(TensorDataset(noisy, mat), batch_size=100, shuffle=True)
print([tuple(t.shape) for t in next(iter(data))])

pars = fluxtrain.params(model)  # contains references to arrays in model
opt = fluxtrain.Adam(0.01)  # will store optimiser momentum, etc.

# Training loop, using the whole data set 5 times:
for epoch in range(1, 6):

    def _loss(x, y):
        # First argument of train! is a loss function, here defined by a `do` block.
        # This gets x and y, each a 100×2 Matrix, from data, and compares:
        return -(y * torch.log(model(x))).sum(dim=1).mean()

    fluxtrain.train_(_loss, pars, data, opt)

print(len(pars))  # has changed!
out2 = model(noisy)

print(((out2[:, 0] > 0.5) == truth).float().mean().item())  # accuracy so far
