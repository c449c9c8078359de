"""Issue 20 item 1: a user-defined old optimiser (a subclass of AbstractOptimiser with its own
``__init__`` fields, a ``state`` dict as Flux's IdDict, and its own ``apply_``) runs unchanged
in ``update_(opt, ps, gs)``, ``update_(opt, p, g)`` and ``train_``; and the deprecated
two-argument ``update_(x, dx)`` (Flux's ``update!(x, x̄)``, reference E11)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fluxtrain
from fluxtrain import FluxDeprecationWarning
from fluxtrain.errors import reset_deprecation_sites
from fluxtrain.optimise import AbstractOptimiser

F64 = torch.float64


class MyMomentum(AbstractOptimiser):
    """Flux docs' custom Momentum, ported line for line: state in an IdDict-like field."""

    def __init__(self, eta: float = 0.01, rho: float = 0.9) -> None:
        self.eta = eta
        self.rho = rho
        self.state: dict = {}

    def apply_(self, x, dx):  # type: ignore[no-untyped-def]
        v = self.state.setdefault(x, torch.zeros_like(x))
        v.mul_(self.rho).sub_(self.eta * dx)  # v = rho*v - eta*dx
        dx.copy_(-v)  # Flux's apply! overwrites Δ and returns it
        return dx


class Counting(AbstractOptimiser):
    """Calls super().__init__(), overrides ``apply`` (the other spelling), counts per x."""

    def __init__(self, eta: float) -> None:
        super().__init__()
        self.eta = eta
        self.state = {}

    def apply(self, x, dx):  # type: ignore[no-untyped-def]
        self.state[x] = self.state.get(x, 0) + 1
        return self.eta * dx


def momentum_by_hand(x0: list[float], grads: list[list[float]], eta: float, rho: float):
    x = list(x0)
    v = [0.0] * len(x)
    for g in grads:
        v = [rho * vi - eta * gi for vi, gi in zip(v, g)]
        x = [xi + vi for xi, vi in zip(x, v)]
    return x


def test_fields_and_state_assignable() -> None:
    opt = MyMomentum(0.1)
    assert opt.state == {} and opt.eta == 0.1 and opt.rho == 0.9
    opt.eta = 0.2
    assert opt.eta == 0.2
    assert repr(opt) == "MyMomentum(eta=0.2, rho=0.9)"


def test_update_single_tensor_matches_reference() -> None:
    # §1.5: Momentum() from x=[1,-2] with g1=[0.5,-0.25], g2=[0.1,0.4]
    x = torch.tensor([1.0, -2.0], dtype=F64)
    opt = MyMomentum()
    g1 = torch.tensor([0.5, -0.25], dtype=F64)
    with pytest.warns(FluxDeprecationWarning):
        fluxtrain.update_(opt, x, g1)
    assert x.tolist() == [0.995, -1.9975]
    assert g1.tolist() == [0.5, -0.25]  # apply_ got a private copy
    fluxtrain.update_(opt, x, torch.tensor([0.1, 0.4], dtype=F64))
    assert x.tolist() == pytest.approx([0.9895, -1.99925], abs=1e-15)
    assert list(opt.state) == [x]  # keyed by the parameter itself


def test_update_params_and_train_match_builtin() -> None:
    torch.manual_seed(0)
    warnings.simplefilter("ignore", FluxDeprecationWarning)
    lin = torch.nn.Linear(3, 2).double()
    twin = torch.nn.Linear(3, 2).double()
    twin.load_state_dict(lin.state_dict())
    X, Y = torch.randn(5, 4, 3, dtype=F64), torch.randn(5, 4, 2, dtype=F64)
    mine, ref = MyMomentum(0.05, 0.8), fluxtrain.Momentum(0.05, 0.8)
    # update_(opt, ps, gs) for two items, then train_ for the other three
    for m, opt in ((lin, mine), (twin, ref)):
        ps = fluxtrain.params(m)
        def loss(x, y, m=m):  # type: ignore[no-untyped-def]
            return ((m(x) - y) ** 2).mean()

        for i in range(2):
            gs = fluxtrain.gradient(lambda i=i: loss(X[i], Y[i]), ps)
            fluxtrain.update_(opt, ps, gs)
        fluxtrain.train_(loss, ps, list(zip(X[2:], Y[2:])), opt)
    for a, b in zip(lin.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert set(map(id, mine.state)) == {id(p) for p in lin.parameters()}


def test_train_stop_skip_and_cb_with_user_optimiser() -> None:
    warnings.simplefilter("ignore", FluxDeprecationWarning)
    w = torch.zeros(1, dtype=F64)
    opt = Counting(0.5)
    calls = []
    fluxtrain.train_(lambda x: (w * x).sum(), fluxtrain.params(w), [1.0, 2.0, 3.0], opt,
                     cb=lambda: calls.append(w.item()))
    # steps 0.5*1, 0.5*2, 0.5*3 subtracted
    assert w.tolist() == [-3.0] and calls == [-0.5, -1.5, -3.0] and opt.state[w] == 3


def test_user_optimiser_inside_an_old_chain() -> None:
    warnings.simplefilter("ignore", FluxDeprecationWarning)
    x = torch.tensor([1.0, -2.0], dtype=F64)
    chain = fluxtrain.Optimiser(fluxtrain.ClipValue(0.3), Counting(0.5))
    fluxtrain.update_(chain, x, torch.tensor([0.5, -0.25], dtype=F64))
    assert x.tolist() == [1.0 - 0.15, -2.0 + 0.125]
    assert chain[1].state[x] == 1


def test_setup_refuses_to_translate_a_user_optimiser() -> None:
    lin = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match="MyMomentum.*own apply_"):
        fluxtrain.setup(MyMomentum(), lin)
    with pytest.raises(TypeError, match="MyMomentum, a member of this Optimiser"):
        fluxtrain.setup(fluxtrain.Optimiser(fluxtrain.ClipValue(1.0), MyMomentum()), lin)


def test_apply_returning_a_non_tensor_is_refused_before_any_change() -> None:
    class Bad(AbstractOptimiser):
        def apply_(self, x, dx):  # type: ignore[no-untyped-def]
            return 0.1

    warnings.simplefilter("ignore", FluxDeprecationWarning)
    x = torch.ones(2)
    with pytest.raises(TypeError, match=r"Bad.apply_\(x, dx\) must return the step"):
        fluxtrain.update_(Bad(), x, torch.ones(2))
    assert x.tolist() == [1.0, 1.0]


def test_builtin_state_field_reset_and_refusal() -> None:
    warnings.simplefilter("ignore", FluxDeprecationWarning)
    x = torch.ones(2, dtype=F64)
    opt = fluxtrain.Momentum(0.1)
    fluxtrain.update_(opt, x, torch.ones(2, dtype=F64))
    assert len(opt.velocity) == 1
    opt.velocity = {}  # Flux: opt.velocity = IdDict() forgets the momentum
    assert len(opt.state) == 0
    fluxtrain.update_(opt, x, torch.ones(2, dtype=F64))
    assert x.tolist() == [0.8, 0.8]  # a fresh first step: 0.9 - 0.1
    with pytest.raises(AttributeError, match="can be reset with opt.state = {}"):
        opt.state = {x: None}


# ---------------------------------------------------------------------------- update_(x, dx)
def test_update_two_args_tensor_parameter_numpy() -> None:
    reset_deprecation_sites()
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    with pytest.warns(FluxDeprecationWarning, match=r"write `x -= dx`"):
        out = fluxtrain.update_(p, torch.tensor([0.5, 0.5]))
    assert out is p and p.tolist() == [0.5, 1.5] and p.requires_grad
    a = np.array([1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        assert fluxtrain.optimise.update_(a, np.array([0.25, 0.5])) is a
        t = torch.ones(2, 2, dtype=F64)
        fluxtrain.update_(t, 0.5)  # broadcasts, as x .-= x̄
        # the old tutorial's `update!(p, -η * g)` is gradient ascent: the sign is kept
        u = torch.zeros(2, dtype=F64)
        fluxtrain.update_(u, -0.1 * torch.tensor([1.0, 2.0], dtype=F64))
    assert a.tolist() == [0.75, 1.5] and t.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert u.tolist() == [0.1, 0.2]


@pytest.mark.parametrize(
    ("x", "dx", "exc", "match"),
    [
        (lambda: fluxtrain.Params([torch.ones(2)]), lambda: 1.0, TypeError, "ONE tensor"),
        (lambda: torch.nn.Linear(2, 1), lambda: 1.0, TypeError, "ONE tensor"),
        (lambda: {"w": torch.ones(2)}, lambda: 1.0, TypeError, "ONE tensor"),
        (lambda: fluxtrain.Adam(), lambda: torch.ones(2), TypeError, "it takes 3"),
        (lambda: torch.ones(3), lambda: torch.ones(4), ValueError, "shape"),
        (lambda: torch.ones(3, dtype=torch.int64), lambda: torch.full((3,), 0.5), TypeError,
         "dtype"),
        (lambda: torch.ones(3).expand(2, 3), lambda: 1.0, ValueError, "in place"),
    ],
)
def test_update_two_args_errors_change_nothing(x, dx, exc, match) -> None:  # type: ignore[no-untyped-def]
    x, dx = x(), dx()
    before = x.clone() if isinstance(x, torch.Tensor) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        with pytest.raises(exc, match=match):
            fluxtrain.update_(x, dx)
    if before is not None:
        assert torch.equal(x, before)


def test_update_two_args_readonly_numpy() -> None:
    a = np.ones(2)
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        with pytest.raises(ValueError, match="read-only"):
            fluxtrain.update_(a, np.ones(2))
    assert a.tolist() == [1.0, 1.0]
