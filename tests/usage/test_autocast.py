"""Day one: mixed precision with ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)``.

The parameters stay float32; autocast runs the matmuls in bfloat16 and hands back float32
gradients. fluxtrain must train exactly as torch.optim does under the same autocast: the
forward and backward are the same autograd graph, so the gradients are the same bits, and
the only differences are the rules' own float32 roundings (Adam: see usageutil.F32;
Descent vs SGD: one rounding per step).
"""

from __future__ import annotations

import pytest
import torch

import fluxtrain
from fluxtrain.optimisers import Adam, Descent

from .usageutil import (
    F32,
    assert_moved,
    assert_same_params,
    loader,
    mlp,
    params_of,
    regression,
    twins,
)


def amp_loss(m, x, y):
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = m(x)
        assert out.dtype == torch.bfloat16  # autocast really ran the layer in bf16
    return ((out.float() - y) ** 2).mean()


@pytest.mark.parametrize(("rule", "make_opt", "tol"), [
    (Adam(1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2), F32),
    (Descent(0.05), lambda ps: torch.optim.SGD(ps, lr=0.05), {"rtol": 1e-6, "atol": 1e-7}),
], ids=["Adam", "Descent"])
def test_autocast_explicit_matches_torch_optim(rule, make_opt, tol):
    X, Y = regression()
    ours, theirs = twins(mlp)
    before = params_of(ours)
    opt_state = fluxtrain.setup(rule, ours)
    opt = make_opt(theirs.parameters())
    for _ in range(2):
        fluxtrain.train_(amp_loss, ours, [tuple(b) for b in loader(X, Y)], opt_state)
        for x, y in loader(X, Y):
            opt.zero_grad()
            amp_loss(theirs, x, y).backward()
            opt.step()
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    assert_moved(ours, before)
    assert_same_params(ours, theirs, **tol)


def test_autocast_gradients_are_torchs():
    # the gradient fluxtrain.gradient computes under autocast is the one .backward() leaves
    X, Y = regression()
    ours, theirs = twins(mlp)
    g = fluxtrain.gradient(amp_loss, ours, X, Y)[0]
    amp_loss(theirs, X, Y).backward()
    for name, p in theirs.named_parameters():
        mod, attr = name.split(".")
        assert torch.equal(getattr(getattr(g, mod), attr), p.grad), name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_autocast_implicit_equals_explicit():
    X, Y = regression()
    a, b = twins(mlp)
    data = [tuple(batch) for batch in loader(X, Y)]
    fluxtrain.train_(amp_loss, a, data, fluxtrain.setup(Adam(1e-2), a))
    fluxtrain.train_(lambda x, y: amp_loss(b, x, y), fluxtrain.params(b), data,
                     fluxtrain.optimise.Adam(1e-2))
    assert_same_params(a, b)
