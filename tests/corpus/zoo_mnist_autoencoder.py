# Source: FluxML/model-zoo, vision/mnist/autoencoder.jl @ 73fb459372b0cb514c9dd5b633586ed22ab5b90a (2020-01-03)
# URL: https://github.com/FluxML/model-zoo/blob/73fb459372b0cb514c9dd5b633586ed22ab5b90a/vision/mnist/autoencoder.jl
# Port: Flux.Data.MNIST -> scikit-learn's 8x8 digits (28^2 -> 8^2, batches of 1000 -> 300), N = 32 -> 16;
#   throttle 5 s -> 1000 s (output independent of machine speed); CUDA and the image-saving `sample` dropped.
import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, epochs, params, throttle

torch.manual_seed(0)


def partition(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def mse(ŷ, y):
    return ((ŷ - y) ** 2).mean()


def gpu(x):
    return x


# Encode MNIST images as compressed vectors that can later be decoded back into
# images.

imgs = torch.tensor(load_digits().images, dtype=torch.float32) / 16

# Partition into batches of size 1000
data = [imgs.reshape(len(imgs), -1) for imgs in partition(imgs, 300)]
data = [gpu(x) for x in data]

N = 16  # Size of the encoding

# You can try to make the encoder/decoder network larger
# Also, the output of encoder is a coding of the given input.
# In this case, the input dimension is 28^2 and the output dimension of
# encoder is 32. This implies that the coding is a compressed representation.
# We can make lossy compression via this `encoder`.
encoder = gpu(torch.nn.Sequential(torch.nn.Linear(8**2, N), torch.nn.LeakyReLU(0.01)))
decoder = gpu(torch.nn.Sequential(torch.nn.Linear(N, 8**2), torch.nn.LeakyReLU(0.01)))

m = torch.nn.Sequential(encoder, decoder)


def loss(x):
    return mse(m(x), x)


evalcb = throttle(lambda: print(f"loss(data[1]) = {loss(data[0]).item():.6f}"), 1000)
opt = ADAM()

for _ in epochs(10):
    fluxtrain.train_(loss, params(m), zip(data), opt, cb=evalcb)
