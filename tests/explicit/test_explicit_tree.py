"""Acceptance 2: Optimisers.jl's tree tests (reference/optimisers.md §7.2), ported.

Expected values are the reference's hand formulas, computed here in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from explicitutil import f32, f64, rule

from fluxtrain.errors import DomainError
from fluxtrain.gradients import gradient_explicit
from fluxtrain.optimisers import (
    Adam,
    Descent,
    Leaf,
    Momentum,
    OptimiserChain,
    adjust,
    adjust_,
    freeze_,
    setup,
    thaw_,
    trainables,
    update,
    update_,
)
from fluxtrain.optimisers.tree import StateTree

# ------------------------------------------------------------------ very basics


def test_very_basics_descent() -> None:
    m = (f64(1.0, 2.0),)
    g = (torch.tensor([25, 33]),)  # an integer gradient, promoted as Julia does
    o = Descent(0.1)
    s = setup(o, m)
    s2, m2 = update(s, m, g)
    assert m2[0].tolist() == [1 - 0.1 * 25, 2 - 0.1 * 33]
    assert m[0].tolist() == [1.0, 2.0]  # update leaves the original alone
    s3, m3 = update_(s, m, g)
    assert m3[0] is m[0]  # update_ writes into the same tensor
    assert m[0].tolist() == [1 - 0.1 * 25, 2 - 0.1 * 33]


def test_very_basics_momentum() -> None:
    m = (f64(1.0, 2.0),)
    g = (f64(25.0, 33.0),)
    s = setup(Momentum(0.1), m)
    s5, m5 = update(s, m, g)
    assert s5[0].state.tolist() == pytest.approx([2.5, 3.3], rel=1e-15)
    assert s[0].state.tolist() == [0.0, 0.0]  # original state untouched by update
    leaf, arr = s[0], s[0].state
    s6, m6 = update_(s, m, g)
    assert s6[0] is leaf and s6[0].state is arr  # update_ keeps and mutates them
    assert arr.tolist() == pytest.approx([2.5, 3.3], rel=1e-15)


# ------------------------------------------------------------------ clipping


def test_gradient_clipping() -> None:
    ClipGrad, ClipNorm = rule("ClipGrad"), rule("ClipNorm")
    m = {"α": (f64(0.0), math.sin), "γ": torch.rand(3, dtype=torch.float64)}
    s = setup(ClipGrad(13), m)
    _, m2 = update(s, m, {"α": None, "γ": f64(1.0, 10.0, 100.0)})
    assert (m["γ"] - m2["γ"]).tolist() == pytest.approx([1.0, 10.0, 13.0], rel=1e-12)

    s = setup(ClipNorm(10), m)
    _, m2 = update(s, m, {"α": (f64(0.1), None), "γ": f64(1.0, 10.0, 100.0)})
    assert (m["α"][0] - m2["α"][0]).tolist() == pytest.approx([0.1], rel=1e-12)
    assert torch.linalg.vector_norm(m["γ"] - m2["γ"]).item() == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(DomainError):
        update(s, m, {"α": (f64(0.1), None), "γ": f64(1.0, 10.0, math.nan)})

    s = setup(ClipNorm(5, 1, throw=False), m)
    _, m2 = update(s, m, {"α": (f64(0.1), None), "γ": f64(1.0, 10.0, 100.0)})
    assert (m["α"][0] - m2["α"][0]).tolist() == pytest.approx([0.1], rel=1e-12)
    assert (m["γ"] - m2["γ"]).abs().sum().item() == pytest.approx(5.0, rel=1e-12)
    update_(s, m, {"α": None, "γ": f64(1.0, 10.0, math.inf)})
    assert math.isnan(m["γ"][2].item())


# ------------------------------------------------------------------ dicts


def test_dict_model() -> None:
    AdamW = rule("AdamW")
    d = {"a": f64(1.0, 2.0), "b": f64(3.0, 4.0), "c": 1}
    s = setup(AdamW(0.1), d)
    assert isinstance(s, dict) and s["c"] == () and isinstance(s["a"], Leaf)
    (g,) = gradient_explicit(lambda d: (d["a"] ** 2).sum(), d)
    assert g["b"] is None or torch.equal(g["b"], torch.zeros(2, dtype=torch.float64))
    s2, d2 = update(s, d, g)
    assert d2["a"].tolist() == pytest.approx([0.9, 1.9], rel=1e-6)
    assert d2["b"].tolist() == [3.0, 4.0] and d2["c"] == 1

    C = namedtuple("C", "c")
    d = {1: f64(1.0, 2.0), 2: {"a": C(c=f64(3.0, 4.0)), "b": 1}}
    s = setup(AdamW(0.1), d)
    (g,) = gradient_explicit(lambda d: d[2]["a"].c.sum(), d)
    s2, d2 = update(s, d, g)
    assert d2[2]["a"].c.tolist() == pytest.approx([2.9, 3.9], rel=1e-6)
    assert d2[1].tolist() == [1.0, 2.0] and d2[2]["b"] == 1


def test_dict_missing_key_means_no_gradient() -> None:
    d = {"a": f64(1.0), "b": f64(2.0)}
    s = setup(Descent(0.5), d)
    update_(s, d, {"a": f64(1.0)})
    assert d["a"].tolist() == [0.5] and d["b"].tolist() == [2.0]


# ------------------------------------------------------------------ chains


X, G = [1.0, 10.0, 100.0], [1.0, 2.0, 3.0]


def _one_step(r: Any, x: list[float] = X, g: list[float] = G) -> list[float]:
    m = (f64(*x),)
    _, m2 = update(setup(r, m), m, (f64(*g),))
    return m2[0].tolist()


def test_chains() -> None:
    WeightDecay, SignDecay, ClipGrad = rule("WeightDecay"), rule("SignDecay"), rule("ClipGrad")
    assert _one_step(WeightDecay(0.1)) == pytest.approx([1 - 0.1 - 1, 10 - 1 - 2, 100 - 10 - 3])
    assert _one_step(SignDecay(0.1)) == pytest.approx(
        [1 - 0.1 - 1, 10 - 0.1 - 2, 100 - 0.1 - 3])
    assert _one_step(ClipGrad(2)) == pytest.approx([0, 8, 98])
    want = [1 - 0.1 - 1, 10 - 1 - 2, 100 - 10 - 2]
    assert _one_step(OptimiserChain(ClipGrad(2), WeightDecay(0.1))) == pytest.approx(want)
    nested = OptimiserChain(OptimiserChain(ClipGrad(2)), OptimiserChain(WeightDecay(0.1)))
    assert _one_step(nested) == pytest.approx(want)
    # clip after decay: the decayed gradient [1.1, 3, 13] is clipped to [1.1, 2, 2]
    assert _one_step(OptimiserChain(WeightDecay(0.1), ClipGrad(2))) == pytest.approx(
        [1 - 1.1, 10 - 2, 100 - 2])
    assert _one_step(OptimiserChain(Descent(0.1))) == pytest.approx([0.9, 9.8, 99.7])
    assert _one_step(OptimiserChain()) == pytest.approx([0, 8, 97])
    assert _one_step(SignDecay(0.1), [1.0, -10.0, 100.0], [3.0, 2.0, -1.0]) == pytest.approx(
        [1 - 0.1 - 3, -10 + 0.1 - 2, 100 - 0.1 + 1])


# ------------------------------------------------------------------ trainable subsets


@dataclasses.dataclass
class Foo:
    x: Any = dataclasses.field(metadata={"trainable": False})
    y: Any = None


@dataclasses.dataclass
class TwoThirds:
    a: Any
    b: Any = dataclasses.field(metadata={"trainable": False})
    c: Any = dataclasses.field(metadata={"trainable": False})


def test_trainable_subset_dataclass() -> None:
    Y = namedtuple("Y", "a b c")
    m = Foo(f64(1.0, 2.0), Y(a=math.sin, b=f64(3.0, 4.0), c=5))
    s = setup(Descent(0.1), m)
    assert isinstance(s, StateTree) and s.x == () and isinstance(s.y.b, Leaf)
    g = {"x": None, "y": Y(a=None, b=torch.tensor([1, 1]), c=1)}  # scalar c is ignored
    _, m2 = update(s, m, g)
    assert m2.x.tolist() == [1.0, 2.0]
    assert m2.y.b.tolist() == pytest.approx([2.9, 3.9]) and m2.y.a is math.sin and m2.y.c == 5
    # a gradient for the non-trainable field is ignored too
    _, m3 = update(s, m, {"x": f64(9.0, 9.0), "y": None})
    assert m3.x.tolist() == [1.0, 2.0]
    assert trainables(m) == [m.y.b]


def test_trainable_subset_two_thirds() -> None:
    m = TwoThirds(f32(1.0, 2.0), f32(3.0, 4.0), f32(5.0, 6.0))
    s = setup(Momentum(0.1, 0.9), m)
    (g,) = gradient_explicit(lambda m: (m.a**2).sum() + 100 * (m.b**2).sum(), m)
    assert g.b is None and g.c is None  # not trainable: no gradient
    _, m2 = update(s, m, g)
    assert m2.a.tolist() == pytest.approx([0.8, 1.6])
    assert m2.b.tolist() == [3.0, 4.0] and m2.c.tolist() == [5.0, 6.0]


def test_trainable_subset_module_requires_grad_false() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    lin.weight.requires_grad_(False)  # PyTorch's way of excluding a parameter
    s = setup(Descent(0.1), lin)
    assert s.weight == () and isinstance(s.bias, Leaf)
    w0, b0 = lin.weight.clone(), lin.bias.clone()
    (g,) = gradient_explicit(lambda m: m(torch.ones(3)).sum(), lin)
    assert g.weight is None and g.bias.tolist() == [1.0, 1.0]
    update_(s, lin, g)
    assert torch.equal(lin.weight, w0)
    assert torch.equal(lin.bias, b0 - 0.1)
    assert trainables(lin) == [lin.bias]
    assert not lin.weight.requires_grad  # gradient did not switch it on


# ------------------------------------------------------------------ eltypes


def test_eltype_preservation() -> None:
    m = (torch.tensor([1.0, 2.0], dtype=torch.float16), f32(3.0, 4.0))
    s = setup(Descent(0.1), m)
    s2, m2 = update(s, m, m)
    assert m2[0].dtype == torch.float16 and m2[1].dtype == torch.float32
    assert m2[1].tolist() == pytest.approx([2.7, 3.6])
    # a numpy model keeps its dtypes too, and is updated in place
    mn = (np.array([1.0, 2.0], dtype=np.float16), np.array([3.0, 4.0], dtype=np.float32))
    _, mn2 = update_(setup(Descent(0.1), mn), mn, mn)
    assert mn2[0] is mn[0] and mn2[0].dtype == np.float16 and mn2[1].dtype == np.float32
    assert mn[1].tolist() == pytest.approx([2.7, 3.6])


def test_eltype_preservation_rprop_state() -> None:
    Rprop = rule("Rprop")
    m = (f32(1.0, 2.0),)
    s = setup(Rprop(0.1), m)
    s2, _ = update(s, m, (f64(1.0, -1.0),))
    assert [t.dtype for t in s2[0].state if isinstance(t, torch.Tensor)] == [torch.float32] * 2


# ------------------------------------------------------------------ adjusting


def _adjust_model() -> tuple[Any, Any]:
    m = {"α": (f64(0.0), math.sin), "γ": f32(4.0, 3.0, 2.0)}
    s = setup(Momentum(0.1, 0.9), m)
    s1, m1 = update(s, m, {"α": None, "γ": f64(1.0, 10.0, 100.0)})
    assert (m["γ"] - m1["γ"]).tolist() == pytest.approx([0.1, 1.0, 10.0])
    assert s1["γ"].state.tolist() == pytest.approx([0.1, 1.0, 10.0])
    return s1, m1


@pytest.mark.parametrize("inplace", [False, True])
def test_adjusting(inplace: bool) -> None:
    def adj(s: Any, *a: Any, **k: Any) -> Any:
        if inplace:
            assert adjust_(s, *a, **k) is None
            return s
        return adjust(s, *a, **k)

    s1, _ = _adjust_model()
    state_before = s1["γ"].state.clone()
    s2 = adj(copy.deepcopy(s1) if inplace else s1, 0.2)
    assert s2["γ"].rule == Momentum(0.2, 0.9) and s2["α"][0].rule == Momentum(0.2, 0.9)
    assert torch.equal(s2["γ"].state, state_before)
    s3 = adj(copy.deepcopy(s1) if inplace else s1, eta=0.3, rho=0.7)
    assert s3["γ"].rule == Momentum(0.3, 0.7) and s3["α"][0].rule == Momentum(0.3, 0.7)
    assert torch.equal(s3["γ"].state, state_before)
    # a field no rule of the tree has is a mistake, not a no-op (issue 22.7): nothing changes
    s4 = copy.deepcopy(s1) if inplace else s1
    with pytest.raises(ValueError, match="no rule in this state tree has the field 'zeta'"):
        adj(s4, zeta="this does nothing")
    assert s4 == s1
    if not inplace:
        assert s1["γ"].rule == Momentum(0.1, 0.9)  # out of place left it alone

    ClipGrad = rule("ClipGrad")
    m = (f64(1.0, 10.0, 100.0),)
    sc = setup(OptimiserChain(ClipGrad(2), Adam()), m)
    sc, _ = update(sc, m, (f64(1.0, 10.0, 100.0),))
    assert sc[0].state[1][0].tolist() == pytest.approx([0.1, 0.2, 0.2])
    sc2 = adj(sc, 0.2)
    assert sc2[0].rule == OptimiserChain(ClipGrad(2), Adam(0.2))
    sc3 = adj(sc2, delta=2.5)
    assert sc3[0].rule == OptimiserChain(ClipGrad(2.5), Adam(0.2))

    MixedPrecision = rule("MixedPrecision")
    mp = (f32(4.0, 3.0, 2.0),)
    smp = setup(MixedPrecision(torch.float64, Momentum(0.1, 0.9)), mp)
    smp, _ = update(smp, mp, (f32(1.0, 10.0, 100.0),))
    assert smp[0].state.state.tolist() == pytest.approx([0.1, 1.0, 10.0])
    smp2 = adj(smp, 0.2)
    assert smp2[0].rule == MixedPrecision(torch.float64, Momentum(0.2, 0.9))
    smp3 = adj(smp2, rho=0.5)
    assert smp3[0].rule == MixedPrecision(torch.float64, Momentum(0.2, 0.5))


def test_adjust_lambda_keyword_reaches_all_lambda_rules() -> None:
    AdamW, WeightDecay, SignDecay = rule("AdamW"), rule("WeightDecay"), rule("SignDecay")
    m = (f64(1.0),)
    s = setup(OptimiserChain(SignDecay(0.1), WeightDecay(0.1), AdamW(0.1)), m)
    adjust_(s, lambda_=0.5)
    assert [o.lambda_ for o in s[0].rule.opts] == [0.5, 0.5, 0.5]


def test_adjust_subtree_keeps_shared_rule_objects_shared() -> None:
    m = {"a": (f64(1.0), f64(2.0)), "b": f64(3.0)}
    s = setup(Descent(0.1), m)
    adjust_(s["a"], 0.5)
    assert s["a"][0].rule is s["a"][1].rule and s["a"][0].rule.eta == 0.5
    assert s["b"].rule.eta == 0.1
    with pytest.raises(ValueError, match="something to act on"):
        adjust_(s)


# ------------------------------------------------------------------ freeze / thaw


def test_freeze_thaw() -> None:
    m = {"x": f64(1.0, 2.0), "y": (f64(3.0, 4.0), math.sin)}
    st = setup(Descent(0.1), m)
    freeze_(st["y"])
    g = {"x": f64(1.0, 10.0), "y": (f64(100.0, 1000.0), None)}
    st, m = update_(st, m, g)
    assert m["x"].tolist() == pytest.approx([0.9, 1.0])
    assert m["y"][0].tolist() == [3.0, 4.0]
    adjust_(st, 0.2)
    thaw_(st)
    st, m = update_(st, m, g)
    assert m["y"][0].tolist() == pytest.approx([-17.0, -196.0])
    assert m["x"].tolist() == pytest.approx([0.7, -1.0])
    with pytest.raises(TypeError, match="`freeze_` must not be applied to a model"):
        freeze_(m)
    with pytest.raises(TypeError, match="`thaw_` must not be applied to a model"):
        thaw_(m)


def test_frozen_leaf_keeps_state_even_with_stateful_rule() -> None:
    m = (f64(1.0),)
    s = setup(Adam(0.1), m)
    freeze_(s)
    update_(s, m, (f64(1.0),))
    assert m[0].tolist() == [1.0] and s[0].state.m.tolist() == [0.0]
    assert s[0].state.beta_t == (0.9, 0.999)


# ------------------------------------------------------------------ tied weights


def test_tied_weights_tuple() -> None:
    twice = f64(1.0, 2.0)
    mtup = (twice, (twice.clone(), twice))
    s = setup(Momentum(0.1), mtup)
    assert s[0] is s[1][1] and s[0] is not s[1][0]
    s2, mnew = update(s, mtup, (f64(3, 3), (f64(10, 10), f64(7, 7))))
    assert mnew[0].tolist() == pytest.approx([0.0, 1.0])  # 1,2 - 0.1*(3+7)
    assert mnew[1][0].tolist() == pytest.approx([0.0, 1.0])  # 1,2 - 0.1*10
    assert mnew[1][1] is mnew[0]  # the tie survives update
    assert s2[0] is s2[1][1]
    _, mnew = update(s, mtup, (f64(3, 3), None))
    assert mnew[0].tolist() == pytest.approx([1 - 0.3, 2 - 0.3]) and mnew[1][1] is mnew[0]
    _, mnew = update(s, mtup, (None, (f64(5, 5), f64(7, 7))))
    assert mnew[0].tolist() == pytest.approx([1 - 0.7, 2 - 0.7]) and mnew[1][1] is mnew[0]


def test_triple_tie_namedtuple() -> None:
    N = namedtuple("N", "x y z")
    three = f32(3.0)
    m = N(x=three, y=(three, math.sin), z={"w": three})
    s = setup(Momentum(0.1), m)
    assert s.x is s.y[0] is s.z["w"]
    s2, m2 = update(s, m, N(x=f32(1.0), y=(f32(2.0), None), z={"w": f32(4.0)}))
    assert m2.x is m2.y[0] is m2.z["w"]
    assert m2.x.tolist() == pytest.approx([3.0 - 0.1 * 7])
    # the gradient truncated for one branch
    s3, m3 = update(s, m, N(x=f32(1.0), y=None, z={"w": f32(4.0)}))
    assert m3.x is m3.y[0] is m3.z["w"]
    assert m3.x.tolist() == pytest.approx([3.0 - 0.1 * 5])


def test_tie_with_immutable_arrays_keeps_tie() -> None:
    a = np.array([1.0, 2.0])
    a.flags.writeable = False
    m = {"p": a, "q": (a,)}
    s = setup(Descent(0.1), m)
    assert s["p"] is s["q"][0]
    _, m2 = update_(s, m, {"p": np.array([1.0, 1.0]), "q": (np.array([2.0, 2.0]),)})
    assert m2["p"] is m2["q"][0] and m2["p"] is not a
    assert m2["p"].tolist() == pytest.approx([0.7, 1.7]) and a.tolist() == [1.0, 2.0]


def test_artificial_tie_same_leaf_two_arrays() -> None:
    a = np.array([1.0, 2.0]); a.flags.writeable = False  # noqa: E702
    b = np.array([1.0, 2.0]); b.flags.writeable = False  # noqa: E702
    leaf = Leaf(Descent(0.1), None)
    _, m2 = update({"a": leaf, "b": leaf}, {"a": a, "b": b},
                   {"a": np.array([1.0, 1.0]), "b": np.array([2.0, 2.0])})
    assert m2["a"].tolist() == pytest.approx([0.7, 1.7])
    assert m2["b"].tolist() == pytest.approx([0.7, 1.7])


@dataclasses.dataclass
class MutTwo:
    x: Any
    y: Any


def test_mutable_containers_shared() -> None:
    tmp = MutTwo(f64(1.0), f64(2.0))
    model = {"a": tmp, "b": tmp, "c": MutTwo(tmp.x, tmp.y)}
    st = setup(Descent(0.1), model)
    assert st["a"].x is st["b"].x is st["c"].x
    assert st["a"] == st["c"]
    g = {"a": {"x": f64(1.0), "y": None}, "b": None, "c": None}
    _, model2 = update(st, model, g)
    assert model2["a"] is model2["b"] and model2["a"] is not model2["c"]
    assert model2["a"].x is model2["c"].x
    assert model2["a"].x.tolist() == pytest.approx([0.9])


def test_tied_weights_in_module_first_occurrence_gradient() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = torch.nn.Linear(3, 3, bias=False, dtype=torch.float64)
            self.dec = torch.nn.Linear(3, 3, bias=False, dtype=torch.float64)
            self.dec.weight = self.enc.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dec(torch.tanh(self.enc(x)))

    torch.manual_seed(1)
    m = Tied()
    ref = copy.deepcopy(m)
    x = torch.randn(3, dtype=torch.float64)
    s = setup(Momentum(0.1), m)
    assert s.enc.weight is s.dec.weight
    (g,) = gradient_explicit(lambda m: (m(x) ** 2).sum(), m)
    assert g.dec.weight is None  # the total gradient sits at the first occurrence
    # truth: torch's own total gradient, applied by hand
    (ref(x) ** 2).sum().backward()
    assert torch.equal(g.enc.weight, ref.enc.weight.grad)
    update_(s, m, g)
    with torch.no_grad():
        want = ref.enc.weight - ref.enc.weight.grad * 0.1
    assert torch.equal(m.enc.weight, want) and m.dec.weight is m.enc.weight


# ------------------------------------------------------------------ None gradients


def test_none_gradients_adam_manual_example() -> None:
    x = {"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    s = setup(Adam(0.1), x)
    update_(s, x, {"a": torch.ones(2, dtype=torch.float64),
                   "b": torch.ones(2, dtype=torch.float64)})
    for k in "ab":
        assert s[k].state.m.tolist() == pytest.approx([0.1, 0.1])
        assert s[k].state.v.tolist() == pytest.approx([0.001, 0.001])
        assert s[k].state.beta_t == pytest.approx((0.81, 0.998001))
    update_(s, x, {"a": torch.zeros(2, dtype=torch.float64), "b": None})
    # an all-zero gradient still advances the state; None does not
    assert s["a"].state.m.tolist() == pytest.approx([0.09, 0.09])
    assert s["a"].state.v.tolist() == pytest.approx([0.000999, 0.000999])
    assert s["a"].state.beta_t == pytest.approx((0.729, 0.997003))
    assert s["b"].state.m.tolist() == pytest.approx([0.1, 0.1])
    assert s["b"].state.beta_t == pytest.approx((0.81, 0.998001))


def test_none_for_whole_model_is_a_no_op() -> None:
    m = (f64(1.0),)
    s = setup(Adam(), m)
    update_(s, m, None)
    assert m[0].tolist() == [1.0] and s[0].state.beta_t == (0.9, 0.999)


# ------------------------------------------------------------------ trainables


def test_trainables_reference_models() -> None:
    m1 = f64(1, 2, 3)
    m3 = {"x": m1, "y": math.sin, "z": f64(4, 5, 6)}
    m4 = {"x": m1, "y": m1, "z": f64(4, 5, 6)}
    assert [t.tolist() for t in trainables(m4)] == [[1, 2, 3], [4, 5, 6]]
    m5 = {"a": (m3, True), "b": (m1, False), "c": (m4, True)}
    assert [t.tolist() for t in trainables(m5)] == [[1, 2, 3], [4, 5, 6], [4, 5, 6]]
    m6 = {"a": m1, "b": torch.tensor([4.0 + 1j]), "c": m1}
    assert len(trainables(m6)) == 2
    mat = torch.ones(2, 2, dtype=torch.float64)
    m9 = {"a": m1, "b": mat, "c": [mat, m1]}
    assert len(trainables(m9)) == 2
    assert trainables({"i": torch.tensor([1, 2]), "n": np.arange(3)}) == []
    assert [p for p, _ in trainables(m4, path=True)] == ["model['x']", "model['z']"]
