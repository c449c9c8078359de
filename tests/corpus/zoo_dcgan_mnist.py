# Source: FluxML/model-zoo, vision/dcgan_mnist/dcgan_mnist.jl @ ef5a54c4275228039098098ff5d07d413f22e345 (2021-10-11)
# URL: https://github.com/FluxML/model-zoo/blob/ef5a54c4275228039098098ff5d07d413f22e345/vision/dcgan_mnist/dcgan_mnist.jl
# Port: MNIST 28x28 -> scikit-learn's 8x8 digits; channels 64/128/256 -> 8/16/32, latent_dim 100 -> 16,
#   epochs 20 -> 2, verbose_freq 1000 -> 10, batch_size 128 -> 64; image saving dropped, @info lines printed.
from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM
from fluxtrain.optimise import update_

torch.manual_seed(0)


def logitbinarycrossentropy(ŷ, y):
    return ((1 - y) * ŷ - torch.nn.functional.logsigmoid(ŷ)).mean()


def partition(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


@dataclass
class HyperParams:
    batch_size: int = 64
    latent_dim: int = 16
    epochs: int = 2
    verbose_freq: int = 10
    output_x: int = 6
    output_y: int = 6
    lr_dscr: float = 0.0002
    lr_gen: float = 0.0002


def dcgan_init(layer):
    torch.nn.init.normal_(layer.weight, std=0.02)
    return layer


class Reshape(torch.nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(-1, *self.shape)


def Discriminator():
    return torch.nn.Sequential(
        dcgan_init(torch.nn.Conv2d(1, 8, 4, stride=2, padding=1)),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Dropout(0.25),
        dcgan_init(torch.nn.Conv2d(8, 16, 4, stride=2, padding=1)),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Dropout(0.25),
        Reshape(2 * 2 * 16),
        torch.nn.Linear(2 * 2 * 16, 1),
    )


def Generator(latent_dim):
    return torch.nn.Sequential(
        torch.nn.Linear(latent_dim, 2 * 2 * 32),
        torch.nn.BatchNorm1d(2 * 2 * 32),
        torch.nn.ReLU(),
        Reshape(32, 2, 2),
        dcgan_init(torch.nn.ConvTranspose2d(32, 16, 5, stride=1, padding=2)),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        dcgan_init(torch.nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        dcgan_init(torch.nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)),
        torch.nn.Tanh(),
    )


def discriminator_loss(real_output, fake_output):
    real_loss = logitbinarycrossentropy(real_output, 1)
    fake_loss = logitbinarycrossentropy(fake_output, 0)
    return real_loss + fake_loss


def generator_loss(fake_output):
    return logitbinarycrossentropy(fake_output, 1)


def train_discriminator_(gen, dscr, x, opt_dscr, hparams):
    noise = torch.randn(hparams.batch_size, hparams.latent_dim)
    fake_input = gen(noise)
    ps = fluxtrain.params(dscr)
    # Taking gradient
    def closure():
        return discriminator_loss(dscr(x), dscr(fake_input))

    loss, back = fluxtrain.pullback(closure, ps)
    grad = back(1.0)
    update_(opt_dscr, ps, grad)
    return loss


def train_generator_(gen, dscr, x, opt_gen, hparams):
    noise = torch.randn(hparams.batch_size, hparams.latent_dim)
    ps = fluxtrain.params(gen)
    # Taking gradient
    def closure():
        return generator_loss(dscr(gen(noise)))

    loss, back = fluxtrain.pullback(closure, ps)
    grad = back(1.0)
    update_(opt_gen, ps, grad)
    return loss


def train(**kws):
    hparams = HyperParams(**kws)

    # Load MNIST dataset
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16
    # Normalize to [-1, 1]
    image_tensor = (2.0 * images - 1.0).reshape(-1, 1, 8, 8)
    # Partition into batches
    data = [image_tensor[r] for r in partition(range(len(image_tensor)), hparams.batch_size)]

    # Discriminator
    dscr = Discriminator()

    # Generator
    gen = Generator(hparams.latent_dim)

    # Optimizers
    opt_dscr = ADAM(hparams.lr_dscr)
    opt_gen = ADAM(hparams.lr_gen)

    # Training
    train_steps = 0
    for ep in range(1, hparams.epochs + 1):
        print(f"[ Info: Epoch {ep}")
        for x in data:
            # Update discriminator and generator
            loss_dscr = train_discriminator_(gen, dscr, x, opt_dscr, hparams)
            loss_gen = train_generator_(gen, dscr, x, opt_gen, hparams)

            if train_steps % hparams.verbose_freq == 0:
                print(
                    f"[ Info: Train step {train_steps}, Discriminator loss = {loss_dscr.item():.6f},"
                    f" Generator loss = {loss_gen.item():.6f}"
                )
            train_steps += 1


if __name__ == "__main__":
    train()
