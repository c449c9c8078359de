# Source: FluxML/Flux.jl, test/optimise.jl (testset "Training Loop") @ v0.13.17
# URL: https://github.com/FluxML/Flux.jl/blob/v0.13.17/test/optimise.jl
# Port: the side-effecting lambdas become defs with `global i`; @test -> print; the runall
#       sub-test (an internal of Flux.Optimise) is left out; Iterators.repeated -> itertools.repeat.
import time
from itertools import repeat

import torch

import fluxtrain
from fluxtrain import Descent, Params

torch.manual_seed(0)

i = 0
l = 1


def f1():
    global i
    time.sleep(0.1)
    fluxtrain.skip()
    i += 1
    return i


fluxtrain.train_(f1, Params([]), repeat((), 10), Descent())

print(i == 0)  # all skipped


def f2():
    global i
    time.sleep(0.1)
    i == 8 and fluxtrain.skip()
    i += 1
    return i


fluxtrain.train_(f2, Params([]), repeat((), 10), Descent())

print(i == 8)  # skip after i hit 8

i = 0


def f3():
    global i
    time.sleep(0.1)
    i += 1
    return l


fluxtrain.train_(f3, Params([]), repeat((), 100), Descent(), cb=fluxtrain.throttle(lambda: (i > 3 and fluxtrain.stop()), 1))

print(3 < i < 50)

r = torch.rand(3, 3)


def loss(x):
    return (x * x).sum()


fluxtrain.train_(loss, fluxtrain.params(r), (r,), Descent())
print(round(loss(r).item(), 6))
