"""gradient/withgradient over autograd; Flux's setup with old optimisers; train_ details."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from explicitutil import f32, f64

from fluxtrain.errors import FluxDeprecationWarning
from fluxtrain.explicit import setup as flux_setup
from fluxtrain.explicit import train_explicit
from fluxtrain.gradients import gradient_explicit, withgradient_explicit
from fluxtrain.optimisers import Adam, Descent, Leaf, Momentum, OptimiserChain, setup
from fluxtrain.optimisers.tree import StateTree

# ------------------------------------------------------------------ gradient


def test_gradient_of_pytree_matches_hand_derivative_and_restores_flags() -> None:
    P = namedtuple("P", "w b")
    w, b = f64(1.0, -2.0), f64(0.5)
    x = f64(3.0, 4.0)
    gx0 = torch.ones(2, dtype=torch.float64)
    x.grad = gx0  # a pre-existing .grad must survive
    val, (gp, gxx) = withgradient_explicit(lambda p, x: ((p.w * x).sum() + p.b).pow(2).sum(),
                                           P(w, b), x)
    r = (1 * 3 - 2 * 4 + 0.5)
    assert val.item() == r**2 and not val.requires_grad
    assert isinstance(gp, P)
    assert gp.w.tolist() == [2 * r * 3, 2 * r * 4] and gp.b.tolist() == [2 * r]
    assert gxx.tolist() == [2 * r * 1, 2 * r * -2]
    for t in (w, b, x):
        assert not t.requires_grad
    assert w.grad is None and x.grad is gx0


def test_gradient_leaves_module_parameter_grads_alone() -> None:
    lin = torch.nn.Linear(2, 1)
    lin(torch.ones(2)).sum().backward()
    g0 = lin.weight.grad.clone()
    (g,) = gradient_explicit(lambda m: 3 * m(torch.ones(2)).sum(), lin)
    assert torch.equal(lin.weight.grad, g0)  # .grad exactly as before
    assert torch.equal(g.weight, 3 * g0)
    assert lin.weight.requires_grad


def test_gradient_none_where_no_float_leaves_and_unused() -> None:
    m = {"used": f32(1.0), "unused": f32(2.0), "ints": torch.tensor([1]), "s": "x"}
    g = gradient_explicit(lambda m, n, f: m["used"].sum() * 2, m, 3, math.sin)
    assert g[1] is None and g[2] is None
    assert g[0]["used"].tolist() == [2.0]
    assert g[0]["unused"] is None and g[0]["ints"] is None and g[0]["s"] is None


def test_gradient_tied_tensor_total_at_first_occurrence_only() -> None:
    w = f64(2.0)
    m = {"a": w, "b": [w, f64(1.0)]}
    (g,) = gradient_explicit(lambda m: (m["a"] * m["b"][0] * m["b"][1]).sum(), m)
    # d/dw (w*w*c) = 2wc = 4 in total, all of it at the first place
    assert g["a"].tolist() == [4.0] and g["b"][0] is None and g["b"][1].tolist() == [4.0]
    st = setup(Descent(0.25), m)
    from fluxtrain.optimisers import update_

    update_(st, m, g)
    assert w.tolist() == [1.0]  # 2 - 0.25*4, counted once


def test_gradient_numpy_leaves_come_back_as_numpy() -> None:
    a = np.array([1.0, 2.0], dtype=np.float32)
    ro = np.array([3.0], dtype=np.float64)
    ro.flags.writeable = False
    seen = []

    def f(m: Any) -> torch.Tensor:
        seen.append(type(m["a"]))
        return (m["a"] ** 2).sum() + m["ro"].sum() * 5

    (g,) = gradient_explicit(f, {"a": a, "ro": ro, "n": np.arange(2)})
    assert seen == [torch.Tensor]  # f saw tensors in place of the arrays
    assert isinstance(g["a"], np.ndarray) and g["a"].dtype == np.float32
    assert g["a"].tolist() == [2.0, 4.0] and g["ro"].tolist() == [5.0] and g["n"] is None
    assert a.tolist() == [1.0, 2.0]


def test_gradient_dataclass_and_aux_output() -> None:
    @dataclasses.dataclass
    class Layer:
        w: Any
        act: Any = None

    m = Layer(f64(3.0))
    val, (g,) = withgradient_explicit(lambda m: ((m.w**2).sum(), "aux"), m)
    assert isinstance(g, StateTree) and g.w.tolist() == [6.0] and g.act is None
    assert val[1] == "aux" and val[0].item() == 9.0


def test_gradient_of_constant_gives_none() -> None:
    assert gradient_explicit(lambda x: 1.0, f64(1.0)) == (None,)
    assert gradient_explicit(lambda x: torch.tensor(1.0), f64(1.0)) == (None,)


# ------------------------------------------------------------------ setup with old optimisers


class OldMomentum:
    """A stand-in old optimiser speaking the bridge protocol (layer 2 must not import layer 3)."""

    def __init__(self, eta: float, rho: float) -> None:
        self.eta, self.rho = eta, rho
        self.velocity: dict[int, torch.Tensor] = {}

    def __fluxtrain_translate__(self) -> Momentum:
        return Momentum(self.eta, self.rho)

    def __fluxtrain_state__(self, x: torch.Tensor) -> torch.Tensor | None:
        v = self.velocity.get(id(x))
        return None if v is None else v.clone()


def test_setup_translates_old_optimiser_with_its_state_and_warns_at_caller() -> None:
    m = {"a": f64(1.0, 2.0), "b": f64(3.0)}
    old = OldMomentum(0.1, 0.8)
    old.velocity[id(m["a"])] = f64(0.5, 0.25)
    with pytest.warns(FluxDeprecationWarning, match=r"Momentum\(eta=0.1, rho=0.8\)") as w:
        st = flux_setup(old, m)
    assert w[0].filename == __file__
    assert st["a"] == Leaf(Momentum(0.1, 0.8), f64(0.5, 0.25))
    assert st["b"] == Leaf(Momentum(0.1, 0.8), f64(0.0))


def test_setup_translates_the_real_old_adam_if_present() -> None:
    optimise = pytest.importorskip("fluxtrain.optimise")
    OldAdam = getattr(optimise, "Adam", None)
    if OldAdam is None or not hasattr(OldAdam, "__fluxtrain_translate__"):
        pytest.skip("old optimisers not there yet")
    m = (f64(1.0),)
    with pytest.warns(FluxDeprecationWarning) as w:
        st = setup(OldAdam(0.01), m)
    assert w[0].filename == __file__
    assert st[0].rule == Adam(0.01, (0.9, 0.999), 1e-8)


def test_train_with_bare_rule_warns_once_when_state_is_discarded() -> None:
    m = {"w": f64(0.0)}
    data = [f64(1.0)] * 3
    with pytest.warns(UserWarning, match="state.*will be discarded") as w:
        train_explicit(lambda m, x: (m["w"] * x).sum(), m, data, Momentum(0.1), progress=False)
    assert len([x for x in w if "discarded" in str(x.message)]) == 1
    assert w[0].filename == __file__
    # momentum inside the call: v = 0.1, 0.19, 0.271 -> w = -0.561
    assert m["w"].item() == pytest.approx(-(0.1 + 0.19 + 0.271))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stateless rule: nothing is lost, no warning
        train_explicit(lambda m, x: (m["w"] * x).sum(), m, data,
                       OptimiserChain(Descent(0.1)), progress=False)
    assert m["w"].item() == pytest.approx(-0.561 - 0.3)


def test_train_with_old_optimiser_translates_and_warns() -> None:
    m = {"w": f64(0.0)}
    with pytest.warns(FluxDeprecationWarning):
        with pytest.warns(UserWarning, match=r"setup\(Momentum\(...\), model\)"):
            train_explicit(lambda m, x: (m["w"] * x).sum(), m, [f64(1.0)],
                           OldMomentum(0.1, 0.9), progress=False)
    assert m["w"].tolist() == [-0.1]


def test_train_splats_tuples_and_lists() -> None:
    # DESIGN.md "Data and batches": a list item (a DataLoader batch) is splatted too
    m = {"w": f64(0.0)}
    st = setup(Descent(1.0), m)
    got = []

    def loss(m: Any, *d: Any) -> torch.Tensor:
        got.append(len(d))
        return m["w"].sum()

    train_explicit(loss, m, [(1, 2), [1, 2], "ab"], st, progress=False)
    assert got == [2, 2, 1]


def test_progress_bar_forced_on_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    m = {"w": f64(0.0)}
    st = setup(Descent(0.1), m)
    train_explicit(lambda m, x: m["w"].sum() * x, m, [1.0, 2.0], st, progress=True)
    err = capsys.readouterr().err
    assert "train_:" in err and "/2" in err
    train_explicit(lambda m, x: m["w"].sum() * x, m, [1.0], st, progress=False)
    assert capsys.readouterr().err == ""
