"""Day one: a learning-rate schedule, as ``torch.optim.lr_scheduler`` users know it.

A fluxtrain schedule is a hyperparameter value: ``Adam(StepDecay(1e-2, 0.5, 3))``. Count
convention (docs/schedules.md): the first step uses ``schedule(0)``; in torch the scheduler
is stepped after each ``opt.step()``, so step k (from 0) uses ``lr_k`` too. Each case checks
(1) the learning-rate sequence against the torch scheduler's (the torch schedulers compute
recursively, ``lr *= gamma``, so they agree to float64 rounding, rtol 1e-12) and (2) the
trained parameters against torch.optim + that scheduler (Descent vs SGD: a few float32
ulps; Adam: usageutil.F32).

Momentum is *not* paired with a torch scheduler: Optimisers.jl folds the learning rate
into the velocity (``v = rho*v + eta_k*g``) while torch scales the whole buffer by the
current rate (``p -= lr_k * buf``), so the two differ as soon as the rate changes. The
last test checks fluxtrain's form against that hand-written recurrence instead.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as S

import fluxtrain
from fluxtrain.optimisers import (
    Adam,
    Constant,
    Descent,
    ExponentialDecay,
    InverseTimeDecay,
    Join,
    LinearRamp,
    Momentum,
    StepDecay,
    WarmupCosine,
)

from .usageutil import F32, assert_moved, assert_same_params, mse, params_of, regression, twins

STEPS = 20
SGD_TOL = {"rtol": 1e-6, "atol": 1e-7}


def mlp_small():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def batches():
    X, Y = regression()
    return [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 64, 16)] * (STEPS // 4)


# name: (the fluxtrain schedule for a base rate, the torch scheduler for an optimizer)
CASES = {
    "StepDecay~StepLR": (lambda b: StepDecay(b, 0.5, 3),
                         lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    "ExponentialDecay~ExponentialLR": (lambda b: ExponentialDecay(b, 0.9),
                                       lambda o: S.ExponentialLR(o, gamma=0.9)),
    "LinearRamp~LinearLR": (lambda b: LinearRamp(b, b / 10, 10),
                            lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                                 total_iters=10)),
    "Join(Constant)~MultiStepLR": (lambda b: Join([Constant(b), Constant(b / 10)], [6]),
                                   lambda o: S.MultiStepLR(o, milestones=[6], gamma=0.1)),
    # torch's LinearLR needs start_factor > 0, hence init = peak/10, not 0
    "WarmupCosine~LinearLR+CosineAnnealingLR": (
        lambda b: WarmupCosine(b / 10, b, warmup_steps=5, decay_steps=STEPS),
        lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, end_factor=1.0,
                                                total_iters=5),
                                     S.CosineAnnealingLR(o, T_max=STEPS - 5, eta_min=0.0)],
                                 milestones=[5])),
    "InverseTimeDecay~LambdaLR": (lambda b: InverseTimeDecay(b, 0.5),
                                  lambda o: S.LambdaLR(o, lambda k: 1 / (1 + 0.5 * k))),
}
BASE = {"Descent": 0.1, "Adam": 0.01}


def torch_lrs(base, make_sched):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = make_sched(opt)
    out = []
    for _ in range(STEPS):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_learning_rates_match_torch_scheduler(case):
    sched, make = CASES[case]
    base = BASE["Descent"]
    ours = [sched(base)(k) for k in range(STEPS)]
    theirs = torch_lrs(base, make)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (k, a, b)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", ["Descent", "Adam"])
def test_training_with_schedule_matches_torch(rule, case):
    sched, make = CASES[case]
    base = BASE[rule]
    ours, theirs = twins(mlp_small)
    before = params_of(ours)
    r = Descent(sched(base)) if rule == "Descent" else Adam(sched(base))
    fluxtrain.train_(mse, ours, batches(), fluxtrain.setup(r, ours))
    opt = (torch.optim.SGD if rule == "Descent" else torch.optim.Adam)(theirs.parameters(),
                                                                       lr=base)
    sched_t = make(opt)
    for x, y in batches():
        opt.zero_grad()
        mse(theirs, x, y).backward()
        opt.step()
        sched_t.step()
    assert_moved(ours, before)
    assert_same_params(ours, theirs, **(SGD_TOL if rule == "Descent" else F32))


def test_scheduled_momentum_is_optimisers_jl_recurrence():
    # hand formula: v_k = rho*v_{k-1} + eta_k*g_k, x -= v_k, with eta_k = StepDecay(0.05,0.5,3)(k)
    sched, rho = StepDecay(0.05, 0.5, 3), 0.9
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    st = fluxtrain.setup(Momentum(sched, rho), x)
    ref, v = x.clone(), torch.zeros(3, dtype=torch.float64)
    for k in range(10):
        g = torch.tensor([0.3, -0.1, 0.7], dtype=torch.float64) * (k + 1)
        fluxtrain.update_(st, x, g.clone())
        v = rho * v + sched(k) * g
        ref = ref - v
    torch.testing.assert_close(x, ref, rtol=1e-14, atol=1e-14)
