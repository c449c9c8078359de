# Source: bifurcationkit/BifurcationInference.jl, src/patches/Flux.jl + test/continuation.jl @ 530f4700f75fdc15838284271a9e03dde3754a82 (2019-11-26)
# URL: https://github.com/bifurcationkit/BifurcationInference.jl/blob/530f4700f75fdc15838284271a9e03dde3754a82/src/patches/Flux.jl
# Port: the package adds a train!(loss, ps::Params, iter::Int, opt; cb) method to Flux.Optimise.train! -> the
#       Python equivalent, a wrapper installed as fluxtrain.train_; PseudoArcLengthContinuation's branch ->
#       the closed-form branch p(u) of the same f; 100 iterations -> 20; plots dropped.
from itertools import repeat

import torch

import fluxtrain
from fluxtrain import ADAM, Params, gradient
from fluxtrain.optimise import update_

torch.manual_seed(0)

_flux_train = fluxtrain.train_


def train_(loss, ps, iter, opt, cb=lambda: ()):
    if not (isinstance(ps, Params) and isinstance(iter, int)):
        return _flux_train(loss, ps, iter, opt, cb=cb)
    for _ in repeat((), iter):

        def _gs():
            return loss()

        gs = gradient(_gs, ps)

        for p in ps:
            update_(opt, p, torch.stack([*gs[p]]))

        cb()


fluxtrain.train_ = train_


# parametrised hypothesis
def f(u, p, θ1=0.0, θ2=0.0, θ3=0.0):
    return torch.stack([p + θ1 * u[0] + θ2 * u[0] ** 3 + θ3, -u[1]])


def target(u):
    return u - u**3


def continuation(θ, U):
    # the steady states f(u, p) = 0 of the hypothesis, as a branch (p, u)
    P = -(θ[0] * U + θ[1] * U**3 + θ[2])
    return torch.stack([P, U])


################################################## test inference
def infer(θ, target):
    U = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)

    def loss():
        bifurcations = continuation(θ, U)
        P, U_ = bifurcations[0, :], bifurcations[1, :]
        return torch.linalg.norm(P - target(U_))

    def progress():
        print("Loss = %f, θ = [%f,%f,%f]" % (loss().item(), *θ.tolist()))

    fluxtrain.train_(loss, fluxtrain.Params([θ]), 20, ADAM(0.1), cb=progress)


θ = torch.tensor([-2.0, 1.0, 0.0], dtype=torch.float64)
infer(θ, target)
