# Source: FluxML/model-zoo, vision/vae_mnist/vae_mnist.jl @ 228e9c38f0f1b0918650db17a8f7ad9e2d232767 (2021-06-16)
# URL: https://github.com/FluxML/model-zoo/blob/228e9c38f0f1b0918650db17a8f7ad9e2d232767/vision/vae_mnist/vae_mnist.jl
# Port: MNIST -> scikit-learn's 8x8 digits (input_dim 64), hidden_dim 500 -> 32, epochs 20 -> 3; images, BSON,
#   TensorBoard and the progress bar dropped (the bar's loss value printed once per epoch instead).
from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)


def logitbinarycrossentropy(ŷ, y, agg=torch.mean):
    return agg((1 - y) * ŷ - torch.nn.functional.logsigmoid(ŷ))


def cpu(x):
    return x


def gpu(x):
    return x.cuda() if torch.cuda.is_available() else x


# load MNIST images and return loader
def get_data(batch_size):
    digits = load_digits()
    xtrain = torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 8**2) / 16
    ytrain = torch.tensor(digits.target)
    return torch.utils.data.DataLoader(list(zip(xtrain, ytrain)), batch_size=batch_size, shuffle=True)


class Encoder(torch.nn.Module):
    def __init__(self, input_dim, latent_dim, hidden_dim):
        super().__init__()
        self.linear = torch.nn.Sequential(torch.nn.Linear(input_dim, hidden_dim), torch.nn.Tanh())  # linear
        self.μ = torch.nn.Linear(hidden_dim, latent_dim)  # μ
        self.logσ = torch.nn.Linear(hidden_dim, latent_dim)  # logσ

    def forward(self, x):
        h = self.linear(x)
        return self.μ(h), self.logσ(h)


def Decoder(input_dim, latent_dim, hidden_dim):
    return torch.nn.Sequential(
        torch.nn.Linear(latent_dim, hidden_dim), torch.nn.Tanh(), torch.nn.Linear(hidden_dim, input_dim)
    )


def reconstuct(encoder, decoder, x, device):
    μ, logσ = encoder(x)
    z = μ + device(torch.randn(logσ.shape)) * torch.exp(logσ)
    return μ, logσ, decoder(z)


def model_loss(encoder, decoder, λ, x, device):
    μ, logσ, decoder_z = reconstuct(encoder, decoder, x, device)
    len = x.shape[0]
    # KL-divergence
    kl_q_p = 0.5 * torch.sum(torch.exp(2.0 * logσ) + μ**2 - 1.0 - 2.0 * logσ) / len

    logp_x_z = -logitbinarycrossentropy(decoder_z, x, agg=torch.sum) / len
    # regularization
    reg = λ * sum((x**2).sum() for x in fluxtrain.params(decoder))

    return -logp_x_z + kl_q_p + reg


# arguments for the `train` function
@dataclass
class Args:
    η: float = 1e-3  # learning rate
    λ: float = 0.01  # regularization paramater
    batch_size: int = 128  # batch size
    sample_size: int = 10  # sampling size for output
    epochs: int = 3  # number of epochs
    seed: int = 0  # random seed
    cuda: bool = True  # use GPU
    input_dim: int = 8**2  # image size
    latent_dim: int = 2  # latent dimension
    hidden_dim: int = 32  # hidden dimension
    verbose_freq: int = 10  # logging for every verbose_freq iterations
    tblogger: bool = False  # log training with tensorboard
    save_path: str = "output"  # results path


def train(**kws):
    # load hyperparamters
    args = Args(**kws)
    args.seed > 0 and torch.manual_seed(args.seed)

    # GPU config
    if args.cuda and torch.cuda.is_available():
        device = gpu
    else:
        device = cpu

    # load MNIST images
    loader = get_data(args.batch_size)

    # initialize encoder and decoder
    encoder = device(Encoder(args.input_dim, args.latent_dim, args.hidden_dim))
    decoder = device(Decoder(args.input_dim, args.latent_dim, args.hidden_dim))

    # ADAM optimizer
    opt = ADAM(args.η)

    # parameters
    ps = fluxtrain.params(encoder.linear, encoder.μ, encoder.logσ, decoder)

    # training
    train_steps = 0
    print(f"[ Info: Start Training, total {args.epochs} epochs")
    for epoch in range(1, args.epochs + 1):
        print(f"[ Info: Epoch {epoch}")

        for x, _ in loader:

            def closure():
                return model_loss(encoder, decoder, args.λ, device(x), device)

            loss, back = fluxtrain.pullback(closure, ps)
            grad = back(1.0)
            fluxtrain.optimise.update_(opt, ps, grad)
            train_steps += 1
        # progress meter
        print(f"  loss: {loss.item():.4f}")


if __name__ == "__main__":
    train()
