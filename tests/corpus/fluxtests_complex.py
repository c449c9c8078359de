# Source: FluxML/Flux.jl, test/optimise.jl (testset "Momentum Optimisers and complex values") @ v0.13.17
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.17/test/optimise.jl
# Port: zeros(ComplexF32, 1) -> torch.zeros(1, dtype=torch.complex64); @test -> print;
#       the local name `params` shadowing Flux's is kept.
import torch

import fluxtrain
from fluxtrain import AdaBelief, AdaDelta, AdaGrad, Adam, NAdam, OAdam, RAdam, RMSProp

# Test every optimiser that has momentum internally
for opt_ctor in [Adam, RMSProp, RAdam, OAdam, AdaGrad, AdaDelta, NAdam, AdaBelief]:
    # Our "model" is just a complex number
    w = torch.zeros(1, dtype=torch.complex64)

    # Our model attempts to learn `f(x) = conj(x)` where `f(x) = w*x`
    def loss():
        # Deterministic training data is the best training data
        x = torch.ones(1, 1) + 1j * torch.ones(1, 1)

        # Manually implement `mse()` to allow demonstration of brokenness
        # on older Flux builds that don't have a fixed `mse()`
        return ((w * x - torch.conj(x)).abs() ** 2).sum()

    params = fluxtrain.Params([w])
    opt = opt_ctor(1e-2)

    # Train for 10 iterations, enforcing that loss is monotonically decreasing
    last_loss = float("inf")
    ok = True
    for idx in range(1, 11):
        grads = fluxtrain.gradient(loss, params)
        ok = ok and loss() < last_loss
        last_loss = loss()
        fluxtrain.update_(opt, params, grads)
    print(opt_ctor.__name__, bool(ok), round(last_loss.item(), 5))
