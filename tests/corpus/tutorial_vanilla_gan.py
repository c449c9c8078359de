# Source: FluxML/Flux.jl, docs/src/tutorials/2021-10-14-vanilla-gan.md ("Generative Adversarial Networks", fluxml.ai tutorial) @ v0.13.10
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.10/docs/src/tutorials/2021-10-14-vanilla-gan.md
# Port: MNIST 28x28 -> sklearn digits 8x8 (n_features 64), layer widths and latent_dim shrunk, 1000 epochs -> 3;
#       Zygote.pullback -> fluxtrain.pullback; testmode!/trainmode! -> eval()/train(); heatmaps -> printed losses.
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)

lr_g = 2e-4  # Learning rate of the generator network
lr_d = 2e-4  # Learning rate of the discriminator network
batch_size = 128  # batch size
num_epochs = 3  # Number of epochs to train for
output_period = 1  # Period length for plots of generator samples
n_features = 8 * 8  # Number of pixels in each sample of the digits dataset
latent_dim = 16  # Dimension of latent space
opt_dscr = ADAM(lr_d)  # Optimizer for the discriminator
opt_gen = ADAM(lr_g)  # Optimizer for the generator

# Load the dataset
train_x = torch.tensor(load_digits().images[:512], dtype=torch.float32) / 16
# This dataset has pixel values ∈ [0:1]. Map these to [-1:1]
train_x = 2.0 * train_x.reshape(-1, 1, 8, 8) - 1.0
# DataLoader allows to access data batch-wise and handles shuffling.
train_loader = DataLoader(train_x, batch_size=batch_size, shuffle=True)

discriminator = torch.nn.Sequential(
    torch.nn.Linear(n_features, 128),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Dropout(0.3),
    torch.nn.Linear(128, 64),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Dropout(0.3),
    torch.nn.Linear(64, 32),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Dropout(0.3),
    torch.nn.Linear(32, 1),
    torch.nn.Sigmoid(),
)

generator = torch.nn.Sequential(
    torch.nn.Linear(latent_dim, 32),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(32, 64),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(64, 128),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Linear(128, n_features),
    torch.nn.Tanh(),
)


def train_dscr_(discriminator, real_data, fake_data):
    this_batch = real_data.shape[0]  # Number of samples in the batch
    # Concatenate real and fake data into one big vector
    all_data = torch.cat([real_data, fake_data])

    # Target vector for predictions: 1 for real data, 0 for fake data.
    all_target = torch.cat([torch.ones(this_batch, 1), torch.zeros(this_batch, 1)])

    ps = fluxtrain.params(discriminator)

    def _loss():
        preds = discriminator(all_data)
        loss = torch.nn.functional.binary_cross_entropy(preds, all_target)
        return loss

    loss, pullback = fluxtrain.pullback(_loss, ps)
    # To get the gradients we evaluate the pullback with 1.0 as a seed gradient.
    grads = pullback(torch.tensor(1.0))

    # Update the parameters of the discriminator with the gradients we calculated above
    fluxtrain.update_(opt_dscr, fluxtrain.params(discriminator), grads)

    return loss


def train_gen_(discriminator, generator):
    # Sample noise
    noise = torch.randn(batch_size, latent_dim)

    # Define parameters and get the pullback
    ps = fluxtrain.params(generator)
    # Set discriminator into test mode to disable dropout layers
    discriminator.eval()

    # Evaluate the loss function while calculating the pullback. We get the loss for free
    def _loss():
        preds = discriminator(generator(noise))
        loss = torch.nn.functional.binary_cross_entropy(preds, torch.ones_like(preds))
        return loss

    loss, back = fluxtrain.pullback(_loss, ps)
    # Evaluate the pullback with a seed-gradient of 1.0 to get the gradients for
    # the parameters of the generator
    grads = back(torch.tensor(1.0))
    fluxtrain.update_(opt_gen, fluxtrain.params(generator), grads)
    # Set discriminator back into automatic mode
    discriminator.train()
    return loss


lossvec_gen = torch.zeros(num_epochs)
lossvec_dscr = torch.zeros(num_epochs)

for n in range(1, num_epochs + 1):
    loss_sum_gen = 0.0
    loss_sum_dscr = 0.0

    for x in train_loader:
        # - Flatten the images from 8x8xbatchsize to 64xbatchsize
        real_data = torch.flatten(x, start_dim=1)

        # Train the discriminator
        noise = torch.randn(x.shape[0], latent_dim)
        fake_data = generator(noise)
        loss_dscr = train_dscr_(discriminator, real_data, fake_data)
        loss_sum_dscr += loss_dscr.item()

        # Train the generator
        loss_gen = train_gen_(discriminator, generator)
        loss_sum_gen += loss_gen.item()

    # Add the per-sample loss of the generator and discriminator
    lossvec_gen[n - 1] = loss_sum_gen / train_x.shape[0]
    lossvec_dscr[n - 1] = loss_sum_dscr / train_x.shape[0]

    if n % output_period == 0:
        print("n =", n, round(lossvec_gen[n - 1].item(), 6), round(lossvec_dscr[n - 1].item(), 6))
