# Source: SciML/DiffEqFlux.jl, README.md ("Neural Ordinary Differential Equations", neural_ode) @ v0.10.2 (2019-12-29)
# URL: https://github.com/SciML/DiffEqFlux.jl/blob/v0.10.2/README.md
# Port: solve/neural_ode(dudt, x, tspan, Tsit5(), saveat=t) -> a fixed-step RK4 in torch on the saveat grid;
#       Dense(2,50,tanh) -> torch.nn; 1000 iterations -> 10; plots dropped, display -> print.
from itertools import repeat

import torch

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)


def rk4(f, u0, ts):
    us = [u0]
    u = u0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t1 - t0
        k1 = f(u)
        k2 = f(u + h / 2 * k1)
        k3 = f(u + h / 2 * k2)
        k4 = f(u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        us.append(u)
    return torch.stack(us, dim=-1)


u0 = torch.tensor([2.0, 0.0])
datasize = 30
tspan = (0.0, 1.5)


def trueODEfunc(u):
    true_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    return (u**3) @ true_A


t = [tspan[0] + (tspan[1] - tspan[0]) * i / (datasize - 1) for i in range(datasize)]
ode_data = rk4(trueODEfunc, u0, t)


class Cube(torch.nn.Module):
    def forward(self, x):
        return x**3


dudt = torch.nn.Sequential(Cube(), torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2))


def n_ode(x):
    return rk4(dudt, x, t)


def predict_n_ode():
    return n_ode(u0)


def loss_n_ode():
    return ((ode_data - predict_n_ode()) ** 2).sum()


data = repeat((), 10)
opt = ADAM(0.1)


def cb():  # callback function to observe training
    print(round(loss_n_ode().item(), 4))
    # plot current prediction against data
    cur_pred = predict_n_ode().detach()
    return cur_pred


# Display the ODE with the initial parameter values.
cb()

ps = fluxtrain.params(dudt)
fluxtrain.train_(loss_n_ode, ps, data, opt, cb=cb)
