# Source: baggepinnen/Detector.jl, src/train.jl (train) @ 18618dd7845d6ceeb156acf41ebf4c505cb718e2
# URL: https://github.com/baggepinnen/Detector.jl/blob/18618dd7845d6ceeb156acf41ebf4c505cb718e2/src/train.jl
# Port: the package's convolutional autoencoder -> a small torch Conv1d autoencoder and its loss(model, x)
#       -> the reconstruction error of robust_error (same file); Juno progress, plots, GPU, serialize dropped.
import torch

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)


def robust_error(X, Xh):
    if Xh.shape[-1] != X.shape[-1]:
        # @warn "Got unequal sizes"
        m = min(Xh.shape[-1], X.shape[-1])
        return Xh[..., :m] - X[..., :m]
    return Xh - X


def loss(model, x):
    return (robust_error(x, model(x)) ** 2).sum() / x.numel()


def train(model, bw, epochs=10, sparsify=False, α=0.002, opt=None, losses=None, λ=1):
    """train(model, batchview; epochs=10, sparsify=false, α=0.002): `α` is the stepsize."""
    opt = ADAM(α) if opt is None else opt
    losses = [] if losses is None else losses
    ps = fluxtrain.params(model)
    model.eval()

    λi = 1e-10

    for epoch in range(1, epochs + 1):
        model.train()
        for i, x in enumerate(bw, start=1):
            λi = min(λi + λ / 2000, λ)

            def _gs():
                l = loss(model, x)
                if isinstance(l, tuple):
                    l1, l2, l3 = l
                    losses.append(((l1 / x.var()).item(), l2.item(), l3.item()))
                    return l1 + l2 + l3
                else:
                    losses.append((l / x.var()).item())
                    return l

            gs = fluxtrain.gradient(_gs, ps)
            # i % 3 == 0 && error()
            # i % 100 == 0 && GC.gc();
            fluxtrain.optimise.update_(opt, ps, gs)
        model.eval()

        if epoch % 1 == 0:
            opt.eta *= 0.95
            print(epoch, round(opt.eta, 6), round(losses[-1], 5))

    return losses


model = torch.nn.Sequential(
    torch.nn.Conv1d(1, 4, 5, stride=2),
    torch.nn.Tanh(),
    torch.nn.ConvTranspose1d(4, 1, 5, stride=2),
)
t = torch.linspace(0, 20, 64)
bw = [torch.sin(t * (1 + k / 10)).reshape(4, 1, 16) + 0.05 * torch.randn(4, 1, 16) for k in range(8)]

losses = train(model, bw, epochs=3, sparsify=False)
print(len(losses))
