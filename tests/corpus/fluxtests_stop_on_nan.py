# Source: FluxML/Flux.jl, test/optimise.jl (testset "Stop on NaN") @ v0.13.17
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.17/test/optimise.jl
# Port: Dense(1 => 1) -> torch.nn.Linear(1, 1) with Flux's zero bias; the do-block loss -> a def
#       with `global CNT`; @test_throws DomainError -> try/except; @test -> print.
import torch

import fluxtrain
from fluxtrain import Descent

torch.manual_seed(0)

m = torch.nn.Linear(1, 1)
with torch.no_grad():
    m.bias.zero_()
    m.weight.fill_(0)
CNT = 0


def _loss(i):
    global CNT
    CNT += 1
    return (float("nan") if i == 51 else 1.0) * m(torch.tensor([1.0])).sum()


try:
    fluxtrain.train_(_loss, fluxtrain.params(m), range(1, 101), Descent(0.1))
except fluxtrain.DomainError as e:
    print("DomainError:", e)
print(CNT == 51)  # stopped early
print(round(m.weight[0, 0].item(), 4))  # did not corrupt weights
