"""Rules against torch.optim over 20 steps, float32, where the arithmetic agrees.

Each pair is driven by the same random gradients (a quadratic pull towards a
target plus noise, so steps have both signs) and compared at float32
tolerance. Hyperparameter mapping and known formula differences are stated
per case; where a difference cannot be matched by torch's options, the
comment says so and the comparison uses values where it is below tolerance.
"""

from __future__ import annotations

import pytest
import torch
from coreutil import init_all, step_all

from fluxtrain.core import rules as R

STEPS = 20


def _compare(rule, make_opt, rtol=1e-5, atol=1e-6):
    gen = torch.Generator().manual_seed(7)
    shapes = [(5,), (3, 4), (2, 2, 2)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    targets = [torch.randn(s, generator=gen) for s in shapes]
    ours = [x.clone() for x in start]
    theirs = [torch.nn.Parameter(x.clone()) for x in start]
    opt = make_opt(theirs)
    states = init_all(rule, ours)
    for _ in range(STEPS):
        noise = [0.3 * torch.randn(s, generator=gen) for s in shapes]
        # gradient at *each side's own* parameters, so any drift would compound
        g_ours = [2 * (x - t) + n for x, t, n in zip(ours, targets, noise)]
        for p, t, n in zip(theirs, targets, noise):
            p.grad = (2 * (p.detach() - t) + n).clone()
        states = step_all(rule, states, ours, g_ours)
        opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=rtol, atol=atol)
    # and the run actually moved the parameters (the comparison is not vacuous)
    assert any((a - s).abs().max() > 1e-3 for a, s in zip(ours, start))


def test_adam():
    # same formula; torch writes the bias corrections as lr/bc1 and sqrt(v)/sqrt(bc2),
    # Optimisers.jl as m/bc1 / (sqrt(v/bc2) + eps) * eta: equal up to rounding
    _compare(R.Adam(0.01, (0.9, 0.99), 1e-8),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8))


def test_adamw_coupled():
    # couple=True is torch's AdamW: x <- x - lr*(adam + lambda*x), x before the step
    _compare(R.AdamW(0.01, (0.9, 0.999), 0.1, 1e-8, couple=True),
             lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=0.1))


def test_adagrad():
    # Optimisers.jl starts the accumulator at epsilon; torch's initial_accumulator_value
    # sets the same start. Both add eps outside the sqrt. lr_decay=0 (no decay in Julia).
    _compare(R.AdaGrad(0.1, 1e-8),
             lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0, eps=1e-8,
                                           initial_accumulator_value=1e-8))


def test_adadelta():
    # AdaDelta has no learning rate; torch's lr=1.0 is the identity. eps inside both
    # square roots in both.
    _compare(R.AdaDelta(0.9, 1e-6), lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.9, eps=1e-6))


def test_adamax():
    # Known difference: torch puts eps inside the max, u = max(b2*u, |g| + eps), and
    # divides by u; Optimisers.jl takes u = max(b2*u, |g|) and divides by u + eps.
    # With eps = 1e-8 and gradients of order 1 the difference is ~1e-8 relative,
    # below float32 tolerance; it is not a test of that term.
    _compare(R.AdaMax(0.01, (0.9, 0.999), 1e-8),
             lambda p: torch.optim.Adamax(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8))


@pytest.mark.parametrize("centred", [False, True])
def test_rmsprop(centred):
    # rho is torch's alpha; eps outside the sqrt in both; momentum=0
    _compare(R.RMSProp(0.01, 0.9, 1e-8, centred=centred),
             lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8, centered=centred))


def test_rprop():
    # ell = torch's etas, gamma = torch's step_sizes. torch clamps the step size to
    # [min, max] on every change, Optimisers.jl only caps increases and floors
    # decreases: identical while eta starts inside the bounds, as here.
    _compare(R.Rprop(0.01, (0.5, 1.2), (1e-6, 50.0)),
             lambda p: torch.optim.Rprop(p, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)))


def test_momentum_vs_sgd():
    # torch SGD: buf = mu*buf + g, x -= lr*buf. Optimisers.jl keeps v = lr*buf:
    # v = rho*v + eta*g. Same for rho = mu, eta = lr, dampening 0.
    _compare(R.Momentum(0.01, 0.9), lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))


def test_nesterov_vs_sgd():
    # torch: buf = mu*buf + g; x -= lr*(g + mu*buf). With b = lr*buf this is
    # (1+mu)*lr*g + mu^2*b_old, Optimisers.jl's step with its v = -b.
    _compare(R.Nesterov(0.01, 0.9),
             lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True))


def test_descent_vs_sgd():
    _compare(R.Descent(0.05), lambda p: torch.optim.SGD(p, lr=0.05))


# Not compared, with the reason:
# - NAdam: torch's NAdam uses a momentum-decay schedule (momentum_decay=4e-3 gives
#   mu_t = b1*(1 - 0.5*0.96^(t*psi))) and products of mu_t; Optimisers.jl uses plain
#   b1 and b1*beta_t1. Different formula.
# - RAdam: torch's rectification threshold is rho_t > 5, Optimisers.jl's rho > 4, and
#   torch adds eps to sqrt(v)/sqrt(bc2) only in the rectified branch. Different formula.
# - AMSGrad: torch's Adam(amsgrad=True) bias-corrects m and v and keeps the max of the
#   raw v; Optimisers.jl has no bias correction and starts m, v, v_hat at eps.
# - AdamW(couple=False): torch has no decoupled-from-lr form.
# - Lion, OAdam, AdaBelief, SignDecay, ClipNorm, AccumGrad: no torch.optim counterpart.
