"""Acceptance 1: the seed page's explicit examples, with Python spellings.

Values are those of the current Optimisers.jl (float64 hyperparameters):
reference/optimisers.md §7.1 items 6, 7, 8 and 15.
"""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from explicitutil import f32, f64, rule

from fluxtrain.explicit import setup as flux_setup
from fluxtrain.explicit import train_explicit
from fluxtrain.gradients import gradient_explicit
from fluxtrain.optimisers import (
    Adam,
    Leaf,
    Momentum,
    OptimiserChain,
    adjust,
    adjust_,
    freeze_,
    setup,
    thaw_,
    update,
    update_,
)


def leakyrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.01)  # Julia's leakyrelu, a = 0.01


@dataclasses.dataclass
class Dense:
    """Flux's Dense as a plain dataclass: weight, bias and the activation σ."""

    weight: Any
    bias: Any
    σ: Any

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.σ(self.weight @ x + self.bias)


class DenseModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1, 2, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leakyrelu(self.weight @ x + self.bias)


def seed_loss(m: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (m(x) - y).abs().sum() * 100


X1, Y1 = f64(0.2, -0.3), f64(0.4)


def test_setup_and_train_dataclass_dense_matches_seed_text() -> None:
    model = Dense(torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                  leakyrelu)
    opt_state = flux_setup(Momentum(0.1), model)
    assert repr(opt_state) == (
        "(weight = Leaf(Momentum(eta=0.1, rho=0.9), [0.0 0.0]), "
        "bias = Leaf(Momentum(eta=0.1, rho=0.9), [0.0]), σ = ())"
    )
    train_explicit(seed_loss, model, [(X1, Y1), (X1, Y1)], opt_state, progress=False)
    assert model.bias.tolist() == [10.19]
    assert repr(opt_state) == (
        "(weight = Leaf(Momentum(eta=0.1, rho=0.9), [-2.018 3.027]), "
        "bias = Leaf(Momentum(eta=0.1, rho=0.9), [-10.09]), σ = ())"
    )
    # step 1 is in leakyrelu's negative region (gradients [-0.2, 0.3], -1),
    # step 2 in the positive one ([-20, 30], -100): v2 = 0.9*v1 + 0.1*g2
    assert opt_state.weight.state.tolist()[0] == pytest.approx([-2.018, 3.027], rel=1e-14)
    assert opt_state.bias.state.tolist() == pytest.approx([-10.09], rel=1e-14)
    # the tensors were plain (requires_grad=False) and stay so
    assert not model.weight.requires_grad and model.weight.grad is None


def test_setup_and_train_nn_module_dense() -> None:
    model = DenseModule()
    opt_state = flux_setup(Momentum(0.1), model)
    assert opt_state.weight.state.tolist() == [[0.0, 0.0]]
    train_explicit(seed_loss, model, [(X1, Y1), (X1, Y1)], opt_state, progress=False)
    assert model.bias.tolist() == [10.19]
    assert opt_state.weight.state.tolist()[0] == pytest.approx([-2.018, 3.027], rel=1e-14)
    assert opt_state.bias.state.tolist() == pytest.approx([-10.09], rel=1e-14)
    assert model.weight.grad is None and model.bias.grad is None


MXY = namedtuple("MXY", "x y")


def test_update_with_partly_immutable_model() -> None:
    y = np.array([4.0, 5.0], dtype=np.float32)
    y.flags.writeable = False  # Julia's SA[4f0, 5f0]
    m = MXY(x=f32(1.0, 2.0), y=y)
    t = setup(Momentum(1 / 30, 0.9), m)
    (g,) = gradient_explicit(lambda m: ((m.x + torch.from_numpy(np.asarray(m.y))) ** 2).sum()
                             if isinstance(m.y, np.ndarray) else ((m.x + m.y) ** 2).sum(), m)
    assert isinstance(g, MXY)
    assert g.x.tolist() == [10.0, 14.0]
    assert isinstance(g.y, np.ndarray) and g.y.dtype == np.float32
    assert g.y.tolist() == [10.0, 14.0]
    t2, m2 = update_(t, m, g)
    f = np.float32
    assert m2.x.dtype == torch.float32 and m2.y.dtype == np.float32
    assert m2.x.numpy().tolist() == [f(0.6666666), f(1.5333333)]
    assert m2.y.tolist() == [f(3.6666667), f(4.5333333)]
    assert m2.x is m.x  # update_ re-used this array
    assert m.x.numpy().tolist() == [f(0.6666666), f(1.5333333)]
    assert m.y.tolist() == [4.0, 5.0]  # the immutable one is not touched
    assert not m2.y.flags.writeable  # and the new one is immutable too
    assert t2 is t


def test_adjust_examples() -> None:
    Nesterov = rule("Nesterov")
    ClipGrad = rule("ClipGrad")
    m = {"vec": torch.rand(2, dtype=torch.float32), "fun": math.sin}
    st = setup(Nesterov(), m)
    assert repr(st) == "{'vec': Leaf(Nesterov(eta=0.001, rho=0.9), Float32[0.0, 0.0]), 'fun': ()}"
    st, m = update(st, m, {"vec": torch.tensor([16, 88]), "fun": None})  # fake gradient
    assert st["vec"].state.tolist() == pytest.approx([-0.016, -0.088], rel=1e-6)
    before = st["vec"].state.clone()
    assert adjust_(st, 0.123) is None  # change learning rate, stored momentum untouched
    assert st["vec"].rule == Nesterov(0.123, 0.9)
    assert torch.equal(st["vec"].state, before)

    st2 = setup(OptimiserChain(ClipGrad(), Adam()), m)
    s = st2["vec"].state
    assert s[0] is None and s[1][2] == (np.float32(0.9), np.float32(0.999))
    new = adjust(st2, beta=(0.777, 0.909), delta=11.1)  # delta acts on ClipGrad
    assert new["vec"].rule == OptimiserChain(ClipGrad(11.1), Adam(0.001, (0.777, 0.909), 1e-8))
    assert new["vec"].state[1][2] == s[1][2]  # stored beta powers stay (0.9, 0.999)
    assert st2["vec"].rule == OptimiserChain(ClipGrad(), Adam())  # adjust copies

    # Optimisers.jl ignores a field no rule has; fluxtrain calls it a mistake (issue 22.7),
    # while a field that only some rules of the tree have still reaches those
    with pytest.raises(ValueError, match="no rule in this state tree has the field 'beta'"):
        adjust(st, beta="no such field")
    assert st["vec"].rule == Nesterov(0.123, 0.9)


def test_freeze_thaw_example() -> None:
    M = namedtuple("M", "x y")
    m = M(x=(f64(1.0), 2.0), y=f64(3.0))
    s = setup(Momentum(), m)
    assert freeze_(s.x) is None
    update_(s, m, M(x=(f64(math.pi), 10 * math.pi), y=f64(100 * math.pi)))  # fake gradient
    assert m.x[0].tolist() == [1.0] and m.x[1] == 2.0
    assert m.y.tolist() == [-0.14159265358979312]
    assert repr(s) == (
        "M(x=(Leaf(Momentum(eta=0.01, rho=0.9), [0.0], frozen=True), ()), "
        "y=Leaf(Momentum(eta=0.01, rho=0.9), [3.14159]))"
    )
    assert thaw_(s) is None
    assert repr(s.x) == "(Leaf(Momentum(eta=0.01, rho=0.9), [0.0]), ())"
    assert s.x[0] == Leaf(Momentum(), f64(0.0))


def test_seed_example_through_the_public_names() -> None:
    import fluxtrain

    model = DenseModule()
    opt_state = fluxtrain.setup(Momentum(0.1), model)
    fluxtrain.train_(seed_loss, model, [(X1, Y1), (X1, Y1)], opt_state, progress=False)
    assert model.bias.tolist() == [10.19]
    # the loop train_ stands for, written by hand with the public names
    model2 = DenseModule()
    st2 = fluxtrain.setup(Momentum(0.1), model2)
    for d in [(X1, Y1), (X1, Y1)]:
        grads = fluxtrain.gradient(seed_loss, model2, *d)
        fluxtrain.update_(st2, model2, grads[0])
    assert torch.equal(model2.weight, model.weight) and torch.equal(model2.bias, model.bias)
    assert st2 == opt_state
