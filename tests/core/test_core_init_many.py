"""``init_many`` and how ``setup`` (and the implicit first step) make states with it.

Truth: ``rule.init(x)`` leaf by leaf (values, dtypes, shapes, strides, types), the order
of ``torch.zeros_like`` calls (Adam: every ``m`` before every ``v``), and training
bit for bit against states made leaf by leaf.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from rulelist import OWN, RULES

import fluxtrain
from fluxtrain.core import rules as R
from fluxtrain.optimisers import Adam, Descent, Momentum, setup, update_
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.tree import tree_equal


def params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g)
    return [a, torch.randn(5, generator=g, dtype=torch.float64), a.t(),  # strided
            torch.randn(2, 2, generator=g, dtype=torch.complex64), torch.zeros(0)]


def same_state(a: Any, b: Any) -> bool:
    """Equal values, and every tensor of the same type, dtype, shape and strides."""
    ta = [t for t in _tensors(a)]
    tb = [t for t in _tensors(b)]
    return tree_equal(a, b) and type(a) is type(b) and len(ta) == len(tb) and all(
        type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
        and x.stride() == y.stride() for x, y in zip(ta, tb))


def _tensors(s: Any) -> list[torch.Tensor]:
    if isinstance(s, torch.Tensor):
        return [s]
    if isinstance(s, (tuple, list)):
        return [t for x in s for t in _tensors(x)]
    return []


@pytest.mark.parametrize("rule", RULES + OWN, ids=repr)
def test_init_many_equals_init_leaf_by_leaf(rule: Any) -> None:
    xs = [x for x in params() if not (x.is_complex() and isinstance(rule, R.MixedPrecision))]
    got = rule.init_many(xs)
    assert isinstance(got, list) and len(got) == len(xs)
    for s, x in zip(got, xs):
        assert same_state(s, rule.init(x))
    # fresh tensors: no state shares memory with a parameter or with another state
    ptrs = [t.data_ptr() for s in got for t in _tensors(s) if t.numel()]
    assert len(set(ptrs)) == len(ptrs)
    assert not set(ptrs) & {x.data_ptr() for x in xs}


def test_adam_makes_every_m_before_every_v(monkeypatch: pytest.MonkeyPatch) -> None:
    xs = params()
    made: list[tuple[int, torch.Tensor]] = []
    real = torch.zeros_like

    def recording(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        t = real(x, *a, **k)
        made.append((id(x), t))
        return t

    monkeypatch.setattr(torch, "zeros_like", recording)
    states = Adam().init_many(xs)
    assert [i for i, _ in made] == [id(x) for x in xs] * 2
    assert [t for _, t in made] == [s.m for s in states] + [s.v for s in states]
    made.clear()
    Adam().init(xs[0])  # leaf by leaf: m then v of one parameter
    assert [i for i, _ in made] == [id(xs[0])] * 2


def test_an_adam_subclass_with_its_own_init_keeps_it() -> None:
    class Warm(R.Adam):
        def init(self, x: torch.Tensor) -> Any:
            m, v, bt = super().init(x)
            return R.AdamState(m + 1, v, bt)

    states = Warm().init_many(params()[:2])
    assert all(bool((s.m == 1).all()) for s in states)


def test_init_many_refuses_what_init_refuses() -> None:
    for rule in (Adam(), Momentum(), R.AdaBelief()):
        with pytest.raises(TypeError, match="int64"):
            rule.init_many([torch.zeros(2), torch.zeros(2, dtype=torch.int64)])
        with pytest.raises(TypeError, match="torch tensors"):
            rule.init_many([torch.zeros(2), [1.0, 2.0]])  # type: ignore[list-item]


def test_setup_makes_the_states_init_makes() -> None:
    model = {"a": params()[:3], "b": (params()[4],)}
    st = setup(Adam(), model)
    flat = [st["a"][0], st["a"][1], st["a"][2], st["b"][0]]
    xs = model["a"] + [model["b"][0]]
    for leaf, x in zip(flat, xs):
        assert isinstance(leaf, Leaf) and same_state(leaf.state, Adam().init(x))
    # per-part rules: each rule's own leaves, each with the rule's own init
    st = setup({"a.*": Momentum(0.1), "b.*": Adam()}, model)
    assert same_state(st["a"][1].state, Momentum(0.1).init(model["a"][1]))
    assert same_state(st["b"][0].state, Adam().init(model["b"][0]))


def test_setup_ties_one_leaf_and_carries_an_old_optimisers_state() -> None:
    w = torch.ones(3)
    st = setup(Adam(), [w, w, torch.ones(2)])
    assert st[0] is st[1] and st[0] is not st[2]
    old = fluxtrain.optimise.Momentum(0.1)
    ps = fluxtrain.Params([w])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fluxtrain.update_(old, ps, fluxtrain.Grads([(w, torch.ones(3))], ps))
        st = setup(old, [w, torch.ones(2)])
    assert bool((st[0].state != 0).all())  # the accumulated velocity, not zeros
    assert bool((st[1].state == 0).all())


def test_a_wrong_init_many_is_named() -> None:
    class Short(R.Descent):
        def init(self, x: torch.Tensor) -> Any:
            return None

        def init_many(self, xs: Any) -> list[Any]:
            return []

    with pytest.raises(TypeError, match=r"Short.init_many returned 0 states for 2"):
        setup(Short(), [torch.ones(1), torch.ones(1)])


@pytest.mark.parametrize("rule", [Adam(0.01), Momentum(0.05), Descent(0.1)], ids=repr)
def test_training_from_setup_equals_states_made_leaf_by_leaf(rule: Any) -> None:
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(64, generator=g) for _ in range(6)]
    grads = [[torch.randn(64, generator=g) for _ in base] for _ in range(4)]
    a = [t.clone() for t in base]
    b = [t.clone() for t in base]
    sa = setup(rule, a)
    sb = [Leaf(rule, rule.init(x)) for x in b]
    for gs in grads:
        update_(sa, a, gs)
        update_(sb, b, gs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(tree_equal(p.state, q.state) for p, q in zip(sa, sb))


def test_the_implicit_first_step_makes_its_states_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    xs = [torch.zeros(4) for _ in range(3)]
    ps = fluxtrain.Params(xs + [xs[0]])  # a parameter listed twice: one state
    opt = fluxtrain.optimise.Adam()
    calls: list[int] = []
    real = R.Adam.init_many
    monkeypatch.setattr(R.Adam, "init_many", lambda self, ys: calls.append(len(ys)) or real(
        self, ys))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fluxtrain.update_(opt, ps, fluxtrain.Grads([(x, torch.ones(4)) for x in xs], ps))
        fluxtrain.update_(opt, ps, fluxtrain.Grads([(x, torch.ones(4)) for x in xs], ps))
    assert calls == [3]  # once, for the three new parameters; none at the second step
    assert all(opt.state[x].beta_t == opt.state[xs[0]].beta_t for x in xs)
