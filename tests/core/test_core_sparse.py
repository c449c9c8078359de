"""Issue 22 item 5: sparse gradients (``nn.Embedding(..., sparse=True)``).

``Descent`` applies them as ``torch.optim.SGD`` does: only the stored rows move,
``w[i] -= eta * v`` entry by entry (bit for bit against that hand formula, and
within a rounding per step of SGD, whose sparse ``add_`` fuses the multiply), on
every engine and in both styles. Every other rule refuses them with a
``TypeError`` naming the rule and sparse gradients, raised before anything is
changed: parameters and states are bit-identical after the error, in the
explicit ``update_``, the implicit ``update_(opt, ps, gs)``, and the core's
``apply``, ``apply_many`` and ``apply_batched``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from coreutil import bits_equal
from rulelist import OWN, RULES
from torch import nn

import fluxtrain as F
from fluxtrain import optimise as oldopt
from fluxtrain.core import apply_batched, native, subtract_, subtract_many_
from fluxtrain.core import rules as R
from fluxtrain.core.guards import clone_state
from fluxtrain.core.schedules import StepDecay
from fluxtrain.core.transforms import ClipGlobalNorm, SkipNonFinite
from fluxtrain.optimisers import setup, update_

MATCH = "does not support sparse gradients"
IDX = [torch.tensor([1, 2, 1, 7]), torch.tensor([3, 3, 3]), torch.tensor([0, 9, 2, 2, 5])]


class Net(nn.Module):
    """A sparse embedding beside a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.lin = nn.Linear(4, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(idx)).pow(2).sum()


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _grads(m: nn.Module, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    m.zero_grad()
    m(idx).backward()
    return {n: p.grad for n, p in m.named_parameters()}


class SGDTwin:
    """torch.optim.SGD on a copy of the model, fed the very gradients ours gets, and the
    hand formula for the sparse embedding: ``w[i] -= eta * v`` for each stored entry
    ``(i, v)`` of the gradient, in order (duplicates not summed first)."""

    def __init__(self, m: Net, lr: float) -> None:
        self.lr = lr
        self.ref = copy.deepcopy(m)
        self.opt = torch.optim.SGD(self.ref.parameters(), lr=lr)
        self.hand = m.emb.weight.detach().clone()

    def step(self, grads: list[torch.Tensor]) -> None:
        g = grads[0]
        assert g.is_sparse
        for i, v in zip(g._indices()[0].tolist(), g._values()):
            self.hand[i] = self.hand[i] - v * self.lr
        for p, gr in zip(self.ref.parameters(), grads):
            p.grad = gr.clone()
        self.opt.step()

    def check(self, m: Net) -> None:
        w = m.emb.weight.detach()
        assert bits_equal(w, self.hand)
        # torch's sparse add_(grad, alpha=-lr) is a BLAS axpy, which fuses the multiply
        # (one rounding where Descent's sparse step eta*v is rounded first), as its dense
        # add_ does: within a rounding per step
        torch.testing.assert_close(w, self.ref.emb.weight.detach(), rtol=1e-6, atol=1e-7)
        for a, b in zip(m.lin.parameters(), self.ref.lin.parameters()):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


# ============================================================================ Descent == SGD
@pytest.mark.parametrize("engine", ["native", "foreach"])
def test_descent_matches_sgd_explicit(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine == "native" and not native.available():
        pytest.skip(native.why_unavailable())
    if engine == "foreach":
        monkeypatch.setattr(native, "available", lambda: False)
    m = _net()
    twin = SGDTwin(m, 0.1)
    st = setup(R.Descent(0.1), m)
    for idx in IDX:
        gs = _grads(m, idx)
        assert gs["emb.weight"].is_sparse and not gs["emb.weight"].is_coalesced()
        twin.step(list(gs.values()))
        update_(st, m, gs)
        twin.check(m)


def test_descent_matches_sgd_implicit() -> None:
    m = _net()
    twin = SGDTwin(m, 0.1)
    opt = oldopt.Descent(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ps = F.params(m)
        for idx in IDX:
            gs = F.gradient(lambda i=idx: m(i), ps)
            assert gs[m.emb.weight].is_sparse
            twin.step([gs[p] for p in m.parameters()])
            F.update_(opt, ps, gs)
            twin.check(m)


@pytest.mark.parametrize("how", ["per-leaf", "apply_many", "batched", "chain", "scheduled"])
def test_descent_matches_sgd_core(how: str) -> None:
    m = _net()
    twin = SGDTwin(m, 0.1)
    rule: R.AbstractRule = R.Descent(0.1)
    if how == "chain":
        rule = R.OptimiserChain(R.Descent(0.1))
    elif how == "scheduled":
        rule = R.Descent(StepDecay(0.1, 1.0, 1))  # constant 0.1, through the schedule path
    xs = list(m.parameters())
    states = [rule.init(x) for x in xs]
    for idx in IDX:
        gs = list(_grads(m, idx).values())
        twin.step(gs)
        with torch.no_grad():
            if how in ("per-leaf", "chain", "scheduled"):
                for i, x in enumerate(xs):
                    states[i], step = rule.apply(states[i], x, gs[i])
                    subtract_(x, step)
            elif how == "apply_many":
                for i, x in enumerate(xs):  # one leaf per call: the dtypes agree
                    new, steps = rule.apply_many([states[i]], [x], [gs[i]])
                    states[i] = new[0]
                    subtract_many_([x], steps)
            else:
                states, steps = apply_batched(rule, states, xs, gs)
                subtract_many_(xs, steps)
        twin.check(m)


# ============================================================================ refused
#: every other rule (and chains holding one), built fresh per test
REFUSING = [r for r in RULES + OWN if not isinstance(r, R.Descent)] + [
    R.WeightDecay(), R.SignDecay(), R.ClipGrad(), R.ClipNorm(), R.InvDecay(), R.ExpDecay(),
    R.OptimiserChain(R.AccumGrad(2), R.Descent(0.1)),
    R.OptimiserChain(R.ClipGrad(1.0), R.Descent(0.1)),
    R.OptimiserChain(ClipGlobalNorm(1.0), R.Descent(0.1)),
    R.OptimiserChain(SkipNonFinite(), R.Descent(0.1)),
    R.Adam(StepDecay(0.01, 0.5, 2)),
]


def _snapshot(m: nn.Module, st: Any) -> tuple[list[torch.Tensor], Any]:
    return [p.detach().clone() for p in m.parameters()], clone_state(st)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return bits_equal(a, b)
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


@pytest.mark.parametrize("rule", REFUSING, ids=repr)
def test_other_rules_refuse_sparse_explicit_and_change_nothing(rule: R.AbstractRule) -> None:
    m = _net()
    st = setup(rule, m)
    dense = _grads(m, IDX[0])
    dense["emb.weight"] = dense["emb.weight"].to_dense()
    update_(st, m, dense)  # a dense step first: non-trivial states
    update_(st, m, {k: v.clone() for k, v in dense.items()})
    params, states = _snapshot(m, [st.emb.weight.state, st.lin.weight.state,
                                   st.lin.bias.state])
    with pytest.raises(TypeError, match=MATCH) as err:
        update_(st, m, _grads(m, IDX[1]))
    assert type(rule.opts[0] if isinstance(rule, R.OptimiserChain) else rule).__name__ in str(
        err.value) or isinstance(rule, R.OptimiserChain)
    for a, b in zip(m.parameters(), params):
        assert bits_equal(a.detach(), b)
    assert _same([st.emb.weight.state, st.lin.weight.state, st.lin.bias.state], states)
    update_(st, m, dense)  # and the state still works


def _old_state(opt: Any, x: torch.Tensor) -> Any:
    """An old optimiser's state for ``x`` (an ``Optimiser`` chain: its members')."""
    if isinstance(opt, oldopt.Optimiser):
        return [_old_state(o, x) for o in opt.os]
    return opt.state.get(x)


OLD_NAMES = ["Momentum", "Nesterov", "RMSProp", "Adam", "RAdam", "AdaMax", "OAdam", "AdaGrad",
             "AdaDelta", "AMSGrad", "NAdam", "AdamW", "AdaBelief"]


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_optimisers_refuse_sparse_implicit_and_change_nothing(name: str) -> None:
    m = _net()
    opt = getattr(oldopt, name)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ps = F.params(m)
        xs = list(m.parameters())
        dense = [g.to_dense() if g.is_sparse else g for g in _grads(m, IDX[0]).values()]
        F.update_(opt, ps, F.Grads(list(zip(xs, dense)), ps))  # states now exist
        params = [x.detach().clone() for x in xs]
        states = [clone_state(_old_state(opt, x)) for x in xs]
        sparse = list(_grads(m, IDX[1]).values())
        assert sparse[0].is_sparse
        with pytest.raises(TypeError, match=MATCH) as err:
            F.update_(opt, ps, F.Grads(list(zip(xs, sparse)), ps))
        assert name.rstrip("W") in str(err.value)  # (old AdamW: Adam in a chain)
        for x, p, s in zip(xs, params, states):
            assert bits_equal(x.detach(), p)
            assert _same(_old_state(opt, x), s)


@pytest.mark.parametrize("rule", [R.Adam(), R.Momentum(), R.RMSProp(), R.AdaGrad()], ids=repr)
def test_core_entry_points_refuse_before_any_change(rule: R.AbstractRule) -> None:
    e = nn.Embedding(10, 4, sparse=True)
    e(IDX[0]).sum().backward()
    g = e.weight.grad
    xs = [torch.randn(10, 4), e.weight.detach().clone()]
    dxs = [torch.randn(10, 4), g]  # the dense leaf first: it must not be stepped either
    states = [rule.init(x) for x in xs]
    for s, x in zip(states, xs):  # warm the states up
        rule.apply(s, x, torch.ones_like(x))
    before_x = [x.clone() for x in xs]
    before_s = [clone_state(s) for s in states]
    with pytest.raises(TypeError, match=f"{type(rule).__name__} {MATCH}"):
        rule.apply(states[1], xs[1], g)
    with pytest.raises(TypeError, match=MATCH):
        rule.apply_many(states, xs, dxs)
    with pytest.raises(TypeError, match=MATCH):
        apply_batched(rule, states, xs, dxs)
    assert all(bits_equal(a, b) for a, b in zip(xs, before_x))
    assert _same(states, before_s)


def test_descent_sparse_bfloat16_is_finite_and_close_to_sgd() -> None:
    e = nn.Embedding(10, 4, sparse=True).to(torch.bfloat16)
    ref = copy.deepcopy(e)
    st = setup(R.Descent(0.1), e)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for idx in IDX:
        e.zero_grad()
        e(idx).float().pow(2).sum().backward()
        update_(st, e, {"weight": e.weight.grad})
        opt.zero_grad()
        ref(idx).float().pow(2).sum().backward()
        opt.step()
    assert e.weight.dtype == torch.bfloat16 and torch.isfinite(e.weight).all()
    scale = torch.finfo(torch.bfloat16).eps * ref.weight.detach().float().abs().max()
    assert (e.weight.detach().float() - ref.weight.detach().float()).abs().max() <= 4 * scale
