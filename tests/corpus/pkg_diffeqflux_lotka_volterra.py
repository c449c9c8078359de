# Source: SciML/DiffEqFlux.jl, README.md ("Training a Neural ODE... diffeq_adjoint", Lotka-Volterra) @ v0.10.2 (2019-12-29)
# URL: https://github.com/SciML/DiffEqFlux.jl/blob/v0.10.2/README.md
# Port: DiffEqFlux's solve(prob, Tsit5()) / diffeq_adjoint -> a fixed-step RK4 written in torch (dt 0.2);
#       param([...]) -> a plain float64 tensor; 100 iterations -> 15; plots dropped, display -> print.
from itertools import repeat

import torch

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)


def rk4(f, u0, p, ts):
    us = [u0]
    u = u0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t1 - t0
        k1 = f(u, p, t0)
        k2 = f(u + h / 2 * k1, p, t0 + h / 2)
        k3 = f(u + h / 2 * k2, p, t0 + h / 2)
        k4 = f(u + h * k3, p, t1)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        us.append(u)
    return torch.stack(us, dim=1)


def lotka_volterra(u, p, t):
    x, y = u[0], u[1]
    α, β, δ, γ = p[0], p[1], p[2], p[3]
    return torch.stack([α * x - β * x * y, -δ * y + γ * x * y])


u0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
tspan = (0.0, 10.0)
ts = [i / 5 for i in range(51)]

p = torch.tensor([2.2, 1.0, 2.0, 0.4], dtype=torch.float64)  # Initial Parameter Vector
params = fluxtrain.Params([p])


def predict_adjoint():  # Our 1-layer neural network
    return rk4(lotka_volterra, u0, p, ts)


def loss_adjoint():
    return sum(((x - 1) ** 2).sum() for x in predict_adjoint())


data = repeat((), 15)
opt = ADAM(0.1)


def cb():  # callback function to observe training
    print(round(loss_adjoint().item(), 6))


# Display the ODE with the initial parameter values.
cb()

fluxtrain.train_(loss_adjoint, params, data, opt, cb=cb)
print([round(v, 4) for v in p.tolist()])
