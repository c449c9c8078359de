"""Day one: gradient accumulation (a large effective batch from small micro-batches).

torch: ``(loss / n).backward()`` on n micro-batches, then ``opt.step()`` and
``opt.zero_grad()``. fluxtrain: ``OptimiserChain(AccumGrad(n), rule)`` (Optimisers.jl:
AccumGrad keeps the running mean acc = sum(g_i / n) and steps every n-th call, leaving the
parameters alone in between), or the gradients added up by hand and one ``update_``.

n = 4, a power of two: dividing by it (and scaling the loss by 1/4 before backward) is exact
in float32, so torch's accumulated .grad and AccumGrad's mean are the same bits and the
comparison is as tight as the rule allows (Descent vs SGD: one rounding per step).
"""

from __future__ import annotations

import pytest
import torch

import fluxtrain
from fluxtrain.optimisers import AccumGrad, Adam, Descent, OptimiserChain

from .usageutil import F32, assert_moved, assert_same_params, mlp, mse, params_of, regression, twins

N = 4
SGD_TOL = {"rtol": 1e-6, "atol": 1e-7}


def micro_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    X, Y = regression(n=128)
    return [(X[i:i + 8], Y[i:i + 8]) for i in range(0, 128, 8)]   # 16 micro-batches


def torch_accumulate(model, opt, data, n=N):
    opt.zero_grad()
    for i, (x, y) in enumerate(data, 1):
        (mse(model, x, y) / n).backward()
        if i % n == 0:
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize(("rule", "make_opt", "tol"), [
    (Descent(0.1), lambda ps: torch.optim.SGD(ps, lr=0.1), SGD_TOL),
    (Adam(1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2), F32),
], ids=["Descent", "Adam"])
def test_accumgrad_chain_matches_torch_accumulation(rule, make_opt, tol):
    ours, theirs = twins(mlp)
    before = params_of(ours)
    opt_state = fluxtrain.setup(OptimiserChain(AccumGrad(N), rule), ours)
    data = micro_batches()
    # the parameters stay put until the n-th micro-batch
    fluxtrain.train_(mse, ours, data[:N - 1], opt_state)
    assert_same_params(ours, _frozen_copy(before, ours))
    fluxtrain.train_(mse, ours, data[N - 1:], opt_state)
    torch_accumulate(theirs, make_opt(theirs.parameters()), data)
    assert_moved(ours, before)
    assert_same_params(ours, theirs, **tol)


def test_accumgrad_mean_is_the_accumulated_grad():
    # one accumulation round of Descent(1.0): the step is exactly torch's accumulated .grad
    ours, theirs = twins(mlp)
    before = params_of(ours)
    opt_state = fluxtrain.setup(OptimiserChain(AccumGrad(N), Descent(1.0)), ours)
    data = micro_batches()[:N]
    fluxtrain.train_(mse, ours, data, opt_state)
    for x, y in data:
        (mse(theirs, x, y) / N).backward()
    for n, p in ours.named_parameters():
        g = dict(theirs.named_parameters())[n].grad
        # x - (x - g) is g up to the rounding of the subtraction
        torch.testing.assert_close(before[n] - p.detach(), g, rtol=1e-6, atol=1e-7)


def test_accumulate_by_hand_then_one_update():
    # the explicit style's manual loop: add gradient trees, then one update_
    ours, theirs = twins(mlp)
    opt_state = fluxtrain.setup(Adam(1e-2), ours)
    data = micro_batches()
    for k in range(0, len(data), N):
        acc = None
        for x, y in data[k:k + N]:
            g = fluxtrain.gradient(lambda m, x=x, y=y: mse(m, x, y) / N, ours)[0]
            flat = {n: getattr(getattr(g, n.split(".")[0]), n.split(".")[1])
                    for n, _ in ours.named_parameters()}
            acc = flat if acc is None else {n: acc[n] + flat[n] for n in acc}
        fluxtrain.update_(opt_state, ours, acc)
    torch_accumulate(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2), data)
    assert_same_params(ours, theirs, **F32)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_accumulate_implicit_by_hand():
    # implicit style: Grads add up by parameter; the old optimiser steps once per round
    ours, theirs = twins(mlp)
    ps = fluxtrain.params(ours)
    opt = fluxtrain.optimise.Descent(0.1)
    data = micro_batches()
    for k in range(0, len(data), N):
        total = {}
        for x, y in data[k:k + N]:
            gs = fluxtrain.gradient(lambda x=x, y=y: mse(ours, x, y) / N, ps)
            for p in ps:
                total[p] = gs[p] if p not in total else total[p] + gs[p]
        for p in ps:
            fluxtrain.update_(opt, p, total[p])
    torch_accumulate(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1), data)
    assert_same_params(ours, theirs, **SGD_TOL)


def _frozen_copy(values, like):
    import copy

    m = copy.deepcopy(like)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(values[n])
    return m
