# Source: FluxML/Flux.jl, test/optimise.jl (testset "ExpDecay") @ v0.13.17
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.17/test/optimise.jl
# Port: Optimise.apply!(o, x, Δ) -> o.apply_(x, Δ); 10^5 steps -> 500 and decay_step 1000 -> 100
#       (eta reaches clip at step 400, not 4000); @test -> print; [0.0] -> float64 tensors.
import torch

import fluxtrain.optimise as Optimise
from fluxtrain import ExpDecay, Params, gradient

torch.manual_seed(0)

# Sanity Check
o = ExpDecay(0.2, 0.5, 1, 1e-3)
p = torch.tensor([0.0], dtype=torch.float64)
steps = range(1, 9)
eta_expected = [max(o.eta * 0.5**s, o.clip) for s in steps]
eta_actual = [o.apply_(p, torch.tensor([1.0], dtype=torch.float64))[0].item() for _ in steps]
print(eta_actual == eta_expected)

# starting step
start = 4
o = ExpDecay(0.2, 0.5, 1, 1e-3, start)
p = torch.tensor([0.0], dtype=torch.float64)
steps = range(1, 9)
eta_expected = [max(o.eta * 0.5 ** max(s - start, 0), o.clip) for s in steps]
eta_actual = [o.apply_(p, torch.tensor([1.0], dtype=torch.float64))[0].item() for _ in steps]
print(eta_actual == eta_expected)

w = torch.randn(10, 10, dtype=torch.float64)
o = ExpDecay(0.1, 0.1, 100, 1e-4)
w1 = torch.randn(10, 10, dtype=torch.float64)


def loss(x):
    return torch.nn.functional.mse_loss(w @ x, w1 @ x)


flag = 1
decay_steps = []
for t in range(1, 501):
    prev_eta = o.eta
    θ = Params([w1])
    x = torch.rand(10, dtype=torch.float64)
    θ̄ = gradient(lambda: loss(x), θ)
    prev_grad = θ̄[w1].clone()
    delta = o.apply_(w1, θ̄[w1])
    w1 -= delta
    new_eta = o.eta
    if new_eta != prev_eta:
        decay_steps.append(t)
    array = torch.full(prev_grad.shape, o.eta, dtype=torch.float64)
    if not torch.equal(array * prev_grad, delta):
        flag = 0
print(flag == 1)
# Test to check if decay happens at decay steps. Eta reaches clip value (1e-4) after 4000 steps (decay by 0.1 every 1000 steps starting at 0.1).
ground_truth = []
for i in range(1, 5):
    ground_truth.append(100 * i)  # Expected decay steps for this example.
print(decay_steps == ground_truth, decay_steps)
print(o.eta == o.clip)
print(Optimise.ExpDecay is ExpDecay)
