# Source: FluxML/Flux.jl, test/optimise.jl (testset "Optimiser") @ v0.13.17
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.17/test/optimise.jl
# Port: 10^5 steps per optimiser -> 300; @test loss(...) < 0.01 -> print the loss;
#       w′ -> w_; Random.seed! -> torch.manual_seed.
import torch

import fluxtrain.optimise as Optimise
from fluxtrain import Adam, ExpDecay, InvDecay, Optimiser, Params, WeightDecay, gradient

torch.manual_seed(84)
w = torch.randn(10, 10)
for Opt in [InvDecay, WeightDecay, ExpDecay]:
    torch.manual_seed(42)
    w_ = torch.randn(10, 10)

    def loss(x):
        return torch.nn.functional.mse_loss(w @ x, w_ @ x)

    opt = Optimiser(Opt(), Adam(0.001))
    for t in range(1, 301):
        θ = Params([w_])
        x = torch.rand(10)
        θ̄ = gradient(lambda: loss(x), θ)
        Optimise.update_(opt, θ, θ̄)
    print(Opt.__name__, round(loss(torch.rand(10, 10)).item(), 4))
