# Source: FluxML/Flux.jl, test/optimise.jl (testset "Optimise") @ v0.13.17
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.17/test/optimise.jl
# Port: 10^5 steps per optimiser -> 100; @test loss(...) < 0.01 -> print the loss;
#       w′ -> w_; Random.seed! -> torch.manual_seed; `b = false` kept (not a parameter).
import torch

import fluxtrain.optimise as Optimise
from fluxtrain import (
    AdaBelief,
    AdaDelta,
    AdaGrad,
    Adam,
    AdaMax,
    AdamW,
    AMSGrad,
    Descent,
    Momentum,
    NAdam,
    Nesterov,
    OAdam,
    RAdam,
    RMSProp,
    gradient,
    params,
)

# Ensure rng has different state inside and outside the inner @testset
# so that w and w' are different
torch.manual_seed(84)
w = torch.randn(10, 10)
for opt in [AdamW(), AdaGrad(0.1), AdaMax(), AdaDelta(0.9), AMSGrad(),
            NAdam(), RAdam(), Descent(0.1), Adam(), OAdam(), AdaBelief(),
            Nesterov(), RMSProp(), Momentum()]:  # fmt: skip
    torch.manual_seed(42)
    w_ = torch.randn(10, 10)
    b = False

    def loss(x):
        return torch.nn.functional.mse_loss(w @ x, w_ @ x + b)

    for t in range(1, 101):
        θ = params([w_, b])
        x = torch.rand(10)
        θ̄ = gradient(lambda: loss(x), θ)
        Optimise.update_(opt, θ, θ̄)
    print(type(opt).__name__, round(loss(torch.rand(10, 10)).item(), 4))
