# Source: FluxML/model-zoo, vision/cdcgan_mnist/cGAN_mnist.jl @ f1c9c024a8e6aed263ef398b2aca15cd783676e8 (2021-06-16)
# URL: https://github.com/FluxML/model-zoo/blob/f1c9c024a8e6aed263ef398b2aca15cd783676e8/vision/cdcgan_mnist/cGAN_mnist.jl
# Port: MNIST 28x28 -> scikit-learn's 8x8 digits (7x7 -> 2x2 inner maps, channels 128/64 -> 16/8), latent_dim 100 -> 16,
#   batch 128 -> 64, epochs 25 -> 1, verbose_freq 1000 -> 10; image saving dropped; `Zygote.@nograd train_discr` kept as a comment.
from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, params
from fluxtrain.optimise import update_

torch.manual_seed(0)


def logitbinarycrossentropy(ŷ, y):
    return ((1 - y) * ŷ - torch.nn.functional.logsigmoid(ŷ)).mean()


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def partition(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def gpu(x):
    return x


class Reshape(torch.nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


@dataclass
class HyperParams:
    batch_size: int = 64
    latent_dim: int = 16
    nclasses: int = 10
    epochs: int = 1
    verbose_freq: int = 10
    output_x: int = 6  # No. of sample images to concatenate along x-axis
    output_y: int = 6  # No. of sample images to concatenate along y-axis
    lr_dscr: float = 0.0002
    lr_gen: float = 0.0002


class Discriminator(torch.nn.Module):
    def __init__(self, d_labels, d_common):
        super().__init__()
        self.d_labels = d_labels  # Submodel to take labels as input and convert them to the shape of image
        self.d_common = d_common

    def forward(self, x, y):
        t = torch.cat([self.d_labels(x), y], dim=1)
        return self.d_common(t)


def discriminator(args):
    d_labels = gpu(torch.nn.Sequential(torch.nn.Linear(args.nclasses, 64), Reshape(1, 8, 8)))
    d_common = gpu(
        torch.nn.Sequential(
            torch.nn.Conv2d(2, 16, (3, 3), padding=(1, 1), stride=(2, 2)),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Dropout(0.4),
            torch.nn.Conv2d(16, 16, (3, 3), padding=(1, 1), stride=(2, 2)),
            torch.nn.LeakyReLU(0.01),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.4),
            torch.nn.Linear(64, 1),
        )
    )
    return Discriminator(d_labels, d_common)


class Generator(torch.nn.Module):
    def __init__(self, g_labels, g_latent, g_common):
        super().__init__()
        self.g_labels = g_labels  # Submodel to take labels as input and convert it to the shape of (1, 2, 2)
        self.g_latent = g_latent  # Submodel to take latent_dims as input and convert it to shape of (16, 2, 2)
        self.g_common = g_common

    def forward(self, x, y):
        t = torch.cat([self.g_labels(x), self.g_latent(y)], dim=1)
        return self.g_common(t)


def generator(args):
    g_labels = gpu(torch.nn.Sequential(torch.nn.Linear(args.nclasses, 4), Reshape(1, 2, 2)))
    g_latent = gpu(
        torch.nn.Sequential(torch.nn.Linear(args.latent_dim, 64), torch.nn.LeakyReLU(0.2), Reshape(16, 2, 2))
    )
    g_common = gpu(
        torch.nn.Sequential(
            torch.nn.ConvTranspose2d(17, 16, (4, 4), stride=2, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.LeakyReLU(0.01),
            torch.nn.Dropout(0.25),
            torch.nn.ConvTranspose2d(16, 8, (4, 4), stride=2, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.LeakyReLU(0.01),
            torch.nn.Conv2d(8, 1, (7, 7), stride=1, padding=3),
            torch.nn.Tanh(),
        )
    )
    return Generator(g_labels, g_latent, g_common)


def load_data(hparams):
    # Load MNIST dataset
    digits = load_digits()
    images, labels = torch.tensor(digits.images, dtype=torch.float32) / 16, torch.tensor(digits.target)
    # Normalize to [-1, 1] and convert it to WHCN
    image_tensor = (2.0 * images - 1.0).reshape(-1, 1, 8, 8)
    y = onehotbatch(labels, range(0, hparams.nclasses)).float()
    data = [tuple(gpu(t) for t in (image_tensor[r], y[r])) for r in partition(range(len(images)), hparams.batch_size)]
    return data


def discr_loss(real_output, fake_output):
    real_loss = logitbinarycrossentropy(real_output, 1.0)
    fake_loss = logitbinarycrossentropy(fake_output, 0.0)
    return real_loss + fake_loss


def generator_loss(fake_output):
    return logitbinarycrossentropy(fake_output, 1.0)


def train_discr(discr, fake_data, fake_labels, original_data, label, opt_discr):
    ps = params(discr.d_labels, discr.d_common)

    def closure():
        return discr_loss(discr(label, original_data), discr(fake_labels, fake_data))

    loss, back = fluxtrain.pullback(closure, ps)
    grads = back(1.0)
    update_(opt_discr, ps, grads)
    return loss


# Zygote.@nograd train_discr


def train_gan(gen, discr, original_data, label, opt_gen, opt_discr, hparams):
    noise = torch.randn(hparams.batch_size, hparams.latent_dim)
    labels = torch.randint(0, hparams.nclasses, (hparams.batch_size,))
    y = onehotbatch(labels, range(0, hparams.nclasses))
    noise, y = noise, gpu(y.float())

    ps = params(gen.g_labels, gen.g_latent, gen.g_common)
    loss = {}

    def closure():
        fake = gen(y, noise)
        loss["discr"] = train_discr(discr, fake, y, original_data, label, opt_discr)
        return generator_loss(discr(y, fake))

    loss["gen"], back = fluxtrain.pullback(closure, ps)
    grads = back(1.0)
    update_(opt_gen, ps, grads)
    return loss


def train(**kws):
    hparams = HyperParams(**kws)

    data = load_data(hparams)

    dscr = discriminator(hparams)
    gen = generator(hparams)

    opt_dscr = ADAM(hparams.lr_dscr, (0.5, 0.99))
    opt_gen = ADAM(hparams.lr_gen, (0.5, 0.99))

    train_steps = 0
    for ep in range(1, hparams.epochs + 1):
        print(f"[ Info: Epoch {ep}")
        for x, y in data:
            loss = train_gan(gen, dscr, x, y, opt_gen, opt_dscr, hparams)
            if train_steps % hparams.verbose_freq == 0:
                print(
                    f"[ Info: Train step {train_steps}, Discriminator loss = {loss['discr'].item():.6f},"
                    f" Generator loss = {loss['gen'].item():.6f}"
                )
            train_steps += 1


if __name__ == "__main__":
    train()
