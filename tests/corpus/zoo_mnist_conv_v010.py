# Source: FluxML/model-zoo, vision/mnist/conv.jl @ 7ec99379534bc9ca4fbb9547a74ea50c25ad684b (2020-02-19)
# URL: https://github.com/FluxML/model-zoo/blob/7ec99379534bc9ca4fbb9547a74ea50c25ad684b/vision/mnist/conv.jl
# Port: Flux.Data.MNIST -> scikit-learn's 8x8 digits (1500 train / 297 test), channels 16/32/32 -> 8/8/8, Dense(288) -> Dense(8);
#   epochs 1:100 -> 1:5; BSON.@save -> an in-memory dict; CUDA setup dropped; @info/@warn/@error printed to stdout.
import torch
from sklearn.datasets import load_digits

import fluxtrain
from fluxtrain import ADAM, params

torch.manual_seed(0)


def onehotbatch(labels, classes):
    return (labels.reshape(-1, 1) == torch.as_tensor(list(classes)).reshape(1, -1)).float()


def onecold(y):
    return y.argmax(dim=1)


def crossentropy(ŷ, y):
    return (-(y * torch.log(ŷ)).sum(dim=1)).mean()


def partition(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def gpu(x):
    return x


def cpu(x):
    return x


# Load labels and images from Flux.Data.MNIST
print("[ Info: Loading data set")
digits = load_digits()
train_labels = torch.tensor(digits.target[:1500])
train_imgs = torch.tensor(digits.images[:1500], dtype=torch.float32) / 16


# Bundle images together with labels and group into minibatchess
def make_minibatch(X, Y, idxs):
    X_batch = torch.empty(len(idxs), 1, *X[0].shape)
    for i in range(len(idxs)):
        X_batch[i, 0, :, :] = X[idxs[i]].float()
    Y_batch = onehotbatch(Y[list(idxs)], range(10))
    return (X_batch, Y_batch)


batch_size = 128
mb_idxs = partition(range(len(train_imgs)), batch_size)
train_set = [make_minibatch(train_imgs, train_labels, i) for i in mb_idxs]

# Prepare test set as one giant minibatch:
test_imgs = torch.tensor(digits.images[1500:], dtype=torch.float32) / 16
test_labels = torch.tensor(digits.target[1500:])
test_set = make_minibatch(test_imgs, test_labels, range(len(test_imgs)))

# Define our model.  We will use a simple convolutional architecture with
# three iterations of Conv -> ReLU -> MaxPool, followed by a final Dense
# layer that feeds into a softmax probability output.
print("[ Info: Constructing model...")
model = torch.nn.Sequential(
    # First convolution, operating upon a 8x8 image
    torch.nn.Conv2d(1, 8, (3, 3), padding=(1, 1)),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d((2, 2)),
    # Second convolution, operating upon a 4x4 image
    torch.nn.Conv2d(8, 8, (3, 3), padding=(1, 1)),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d((2, 2)),
    # Third convolution, operating upon a 2x2 image
    torch.nn.Conv2d(8, 8, (3, 3), padding=(1, 1)),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d((2, 2)),
    # Reshape 3d tensor into a 2d one, at this point it should be (N, 8, 1, 1)
    # which is where we get the 8 in the `Dense` layer below:
    torch.nn.Flatten(),
    torch.nn.Linear(8, 10),
    # Finally, softmax to get nice probabilities
    torch.nn.Softmax(dim=1),
)

# Load model and datasets onto GPU, if enabled
train_set = [tuple(gpu(t) for t in b) for b in train_set]
test_set = tuple(gpu(t) for t in test_set)
model = gpu(model)

# Make sure our model is nicely precompiled before starting our training loop
model(train_set[0][0])


# We augment `x` a little bit here, adding in random noise.
def augment(x):
    return x + gpu(0.1 * torch.randn(x.shape, dtype=x.dtype))


def paramvec(m):
    return torch.cat([p.reshape(-1) for p in params(m)])


def anynan(x):
    return bool(torch.isnan(x).any())


# `loss()` calculates the crossentropy loss between our prediction `y_hat`
# (calculated from `model(x)`) and the ground truth `y`.  We augment the data
# a bit, adding gaussian random noise to our image to make it more robust.
def loss(x, y):
    x̂ = augment(x)
    ŷ = model(x̂)
    return crossentropy(ŷ, y)


def accuracy(x, y):
    return (onecold(cpu(model(x))) == onecold(cpu(y))).float().mean().item()


# Train our model with the given training set using the ADAM optimizer and
# printing out performance against the test set as we go.
opt = ADAM(0.001)

print("[ Info: Beginning training loop...")
best_acc = 0.0
last_improvement = 0
saved = {}
for epoch_idx in range(1, 6):
    # Train for a single epoch
    fluxtrain.train_(loss, params(model), train_set, opt)

    if anynan(paramvec(model)):
        print("┌ Error: NaN params")
        break

    # Calculate accuracy:
    acc = accuracy(*test_set)
    print("[ Info: [%d]: Test accuracy: %.4f" % (epoch_idx, acc))

    # If our accuracy is good enough, quit out.
    if acc >= 0.999:
        print("[ Info:  -> Early-exiting: We reached our target accuracy of 99.9%")
        break

    # If this is the best accuracy we've seen so far, save the model out
    if acc >= best_acc:
        print("[ Info:  -> New best accuracy! Saving model out to mnist_conv.bson")
        saved["mnist_conv.bson"] = dict(params=[cpu(p) for p in params(model)], epoch_idx=epoch_idx, acc=acc)
        best_acc = acc
        last_improvement = epoch_idx

    # If we haven't seen improvement in 5 epochs, drop our learning rate:
    if epoch_idx - last_improvement >= 5 and opt.eta > 1e-6:
        opt.eta /= 10.0
        print(f"┌ Warning:  -> Haven't improved in a while, dropping learning rate to {opt.eta}!")

        # After dropping learning rate, give it a few epochs to improve
        last_improvement = epoch_idx

    if epoch_idx - last_improvement >= 10:
        print("┌ Warning:  -> We're calling this converged.")
        break
