"""SkipNonFinite: the opt-in non-finite-gradient guard (issue 9) as a chain member (issue 10).

Truth: a step with a NaN/Inf gradient must leave every parameter and every
state tensor bit for bit as before (snapshots); training on after it must equal
a run that never saw the bad step; counters are checked against the number of
bad steps fed in.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from explicitutil import assert_unchanged, flatten
from torch import nn

import fluxtrain
from fluxtrain import core
from fluxtrain.errors import DomainError
from fluxtrain.optimisers import (
    AccumGrad,
    Adam,
    ClipGlobalNorm,
    ClipGrad,
    ClipNorm,
    Descent,
    Leaf,
    MixedPrecision,
    Momentum,
    OptimiserChain,
    SignDecay,
    SkipNonFinite,
    SkipNonFiniteState,
    WeightDecay,
    setup,
    skipped_steps,
    update_,
)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def grads_for(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(5, 3)
    loss = (model(x) ** 2).sum()
    names = [n for n, _ in model.named_parameters()]
    gs = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return dict(zip(names, (g.detach() for g in gs)))


def poisoned(grads: dict[str, torch.Tensor], name: str, value: float) -> dict[str, torch.Tensor]:
    out = dict(grads)
    g = out[name].clone()
    g.view(-1)[g.numel() // 2] = value
    out[name] = g
    return out


def tensors(flat: list) -> list[tuple[str, torch.Tensor]]:
    return [(p, v[3]) for p, v in flat if v[0] == "tensor"]


def assert_tensors_unchanged(before: list, obj: object) -> None:
    a, b = tensors(before), tensors(flatten(obj))
    assert [p for p, _ in a] == [p for p, _ in b] and a
    for (path, x), (_, y) in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y), path


CHAINS = [
    lambda: OptimiserChain(SkipNonFinite(), Adam(1e-2)),
    lambda: OptimiserChain(WeightDecay(0.01), SkipNonFinite(), Momentum(0.1), Adam(1e-2)),
    lambda: OptimiserChain(ClipGlobalNorm(0.5), SkipNonFinite(), Adam(1e-2)),
    lambda: OptimiserChain(SkipNonFinite(), ClipGlobalNorm(0.5), AccumGrad(2), Adam(1e-2)),
    lambda: MixedPrecision(torch.float64, OptimiserChain(SkipNonFinite(), Adam(1e-2))),
]


@pytest.mark.parametrize("make", CHAINS, ids=lambda m: repr(m()))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["0.weight", "2.bias"])
def test_bad_step_changes_nothing_then_training_goes_on(make, bad, where):
    model, ref = mlp(), mlp()
    st, st_ref = setup(make(), model), setup(make(), ref)
    for seed in (1, 2, 3):
        update_(st, model, grads_for(model, seed))
        update_(st_ref, ref, grads_for(ref, seed))
    before = flatten((model, st))
    update_(st, model, poisoned(grads_for(model, 4), where, bad))
    # every parameter and every state tensor (Adam's moments, AccumGrad's sum ...) as before
    assert_tensors_unchanged(before, (model, st))
    assert skipped_steps(st) == SkipNonFiniteState(1, 1)
    for leaf in _leaves(st):
        assert core.transforms.skip_counts(leaf.state) == (1, 1)
    # a finite step resets `consecutive` and trains exactly as if the bad step never was
    for seed in (5, 6, 7):
        update_(st, model, grads_for(model, seed))
        update_(st_ref, ref, grads_for(ref, seed))
    assert skipped_steps(st) == SkipNonFiniteState(1, 0)
    assert skipped_steps(st_ref) == SkipNonFiniteState(0, 0)
    assert_tensors_unchanged(flatten((ref, st_ref)), (model, st))


def _leaves(st: object) -> list[Leaf]:
    if isinstance(st, Leaf):
        return [st]
    if hasattr(st, "keys"):
        return [lf for k in st.keys() for lf in _leaves(st[k])]  # type: ignore[attr-defined,index]
    if isinstance(st, list | tuple):
        return [lf for v in st for lf in _leaves(v)]
    return []


def test_sees_the_gradient_as_earlier_members_left_it():
    # ClipGrad clamps ±Inf to ±delta before SkipNonFinite looks: that step is taken;
    # a NaN survives the clamp and is skipped (put SkipNonFinite first to catch Inf too)
    x = {"w": torch.zeros(2)}
    st = setup(OptimiserChain(ClipGrad(1.0), SkipNonFinite(), Descent(1.0)), x)
    update_(st, x, {"w": torch.tensor([math.inf, 0.5])})
    assert x["w"].tolist() == [-1.0, -0.5] and skipped_steps(st) == (0, 0)
    update_(st, x, {"w": torch.tensor([math.nan, 0.5])})
    assert x["w"].tolist() == [-1.0, -0.5] and skipped_steps(st) == (1, 1)


def test_raise_after_max_consecutive_and_nothing_changes():
    model = mlp()
    st = setup(OptimiserChain(SkipNonFinite(max_consecutive=2), Adam(1e-2)), model)
    update_(st, model, grads_for(model, 1))
    bad = poisoned(grads_for(model, 2), "2.weight", math.nan)
    update_(st, model, bad)
    update_(st, model, bad)
    assert skipped_steps(st) == (2, 2)
    before = flatten((model, st))  # counters included
    with pytest.raises(DomainError, match=r"3 steps in a row .* max_consecutive=2") as err:
        update_(st, model, bad)
    assert "shape (2, 4)" in str(err.value) and "None never raises" in str(err.value)
    assert_unchanged(before, (model, st))
    # recovery: a finite step still works and resets the run of bad steps
    update_(st, model, grads_for(model, 3))
    assert skipped_steps(st) == (2, 0)
    update_(st, model, bad)
    assert skipped_steps(st) == (3, 1)


def test_max_consecutive_zero_and_none():
    x = {"w": torch.ones(3)}
    st = setup(SkipNonFinite(0), x)
    before = flatten((x, st))
    with pytest.raises(DomainError, match="1 steps in a row"):
        update_(st, x, {"w": torch.tensor([0.0, math.inf, 0.0])})
    assert_unchanged(before, (x, st))
    st = setup(OptimiserChain(SkipNonFinite(None), Descent(0.1)), x)
    for _ in range(25):
        update_(st, x, {"w": torch.full((3,), math.nan)})
    assert skipped_steps(st) == (25, 25)
    assert torch.equal(x["w"], torch.ones(3))
    assert SkipNonFinite().max_consecutive == 10


def test_raise_rolls_back_other_rules_of_the_same_step():
    # two rule objects in one tree: the Adam part runs (and advances its moments in
    # place) before the SkipNonFinite part raises; the step must leave nothing behind
    model = mlp()
    st = setup(Adam(1e-2), model)
    guard = OptimiserChain(SkipNonFinite(0), Adam(1e-2))
    for leaf, p in ((st[2].weight, model[2].weight), (st[2].bias, model[2].bias)):
        leaf.rule, leaf.state = guard, guard.init(p.detach())
    update_(st, model, grads_for(model, 1))
    before = flatten((model, st))
    with pytest.raises(DomainError, match="max_consecutive=0"):
        update_(st, model, poisoned(grads_for(model, 2), "2.bias", math.nan))
    assert_unchanged(before, (model, st))


def test_mixed_dtypes_complex_and_large_tensors():
    torch.manual_seed(3)
    xs = {"a": torch.randn(10_000), "b": torch.randn(7, dtype=torch.float64),
          "c": torch.randn(5).half(), "z": torch.randn(4, dtype=torch.complex64),
          "e": torch.zeros(0)}
    st = setup(OptimiserChain(SkipNonFinite(None), Adam()), xs)
    good = {k: torch.ones_like(v) for k, v in xs.items()}
    update_(st, xs, good)
    cases = [("a", 0), ("a", 9_999), ("a", 4_321), ("b", 6), ("c", 2)]
    n = 0
    for name, i in cases:
        for bad in (math.nan, math.inf, -math.inf):
            g = dict(good)
            g[name] = good[name].clone()
            g[name][i] = bad
            before = flatten((xs, st))
            update_(st, xs, g)
            n += 1
            assert_tensors_unchanged(before, (xs, st))
            assert skipped_steps(st) == (n, n)
    g = dict(good)
    g["z"] = torch.tensor([1, complex(0.0, math.nan), 1, 1], dtype=torch.complex64)
    update_(st, xs, g)
    assert skipped_steps(st) == (n + 1, n + 1)
    # the largest finite values: a sum or 2-norm would overflow, the check must not
    huge = {k: torch.full_like(v, torch.finfo(v.real.dtype if v.is_complex() else v.dtype).max)
            for k, v in xs.items()}
    update_(st, xs, huge)
    assert skipped_steps(st) == (n + 1, 0)


def test_integer_and_missing_gradients():
    x = {"w": torch.ones(2), "v": torch.ones(2)}
    st = setup(OptimiserChain(SkipNonFinite(), Descent(1.0)), x)
    update_(st, x, {"w": torch.tensor([1, 2]), "v": None})  # integers are finite
    assert x["w"].tolist() == [0.0, -1.0] and x["v"].tolist() == [1.0, 1.0]
    # "v" got no gradient and was not seen: its counters lag; the rule uses the largest
    update_(st, x, {"w": torch.tensor([math.nan, 0.0]), "v": None})
    assert st["w"].state[0] == (1, 1) and st["v"].state[0] == (0, 0)
    update_(st, x, {"w": torch.tensor([math.nan, 0.0]), "v": torch.ones(2)})
    assert st["w"].state[0] == st["v"].state[0] == (2, 2)


def test_per_leaf_apply_equals_apply_many():
    rule = SkipNonFinite(1)
    x = torch.zeros(2)
    s = rule.init(x)
    assert s == SkipNonFiniteState(0, 0)
    s1, step = rule.apply(s, x, torch.tensor([1.0, math.inf]))
    ss, steps = rule.apply_many([s], [x], [torch.tensor([1.0, math.inf])])
    assert step is None and steps == [None] and s1 == ss[0] == (1, 1)
    g = torch.tensor([1.0, 2.0])
    s2, step = rule.apply(s1, x, g)
    assert step is g and s2 == (1, 0)  # a finite step passes the gradient on untouched
    with pytest.raises(DomainError):
        rule.apply(SkipNonFiniteState(1, 1), x, torch.tensor([math.nan, 0.0]))
    assert rule.apply_many([], [], []) == ([], [])
    with pytest.raises(TypeError, match="SkipNonFiniteState"):
        rule.apply(None, x, g)


def test_construction_errors():
    for bad in (1.5, "3", True, 2j):
        with pytest.raises(TypeError, match="max_consecutive"):
            SkipNonFinite(bad)
    with pytest.raises(ValueError, match="max_consecutive must be >= 0"):
        SkipNonFinite(-1)
    with pytest.raises(TypeError, match="dtype torch.int64"):
        SkipNonFinite().init(torch.zeros(2, dtype=torch.int64))
    assert repr(SkipNonFinite(3)) == "SkipNonFinite(max_consecutive=3)"
    # members before it must be stateless transforms
    bad_chains = [
        ((Adam(), SkipNonFinite()), r"member 0, Adam\(.*\), comes before SkipNonFinite \(member 1"),
        ((AccumGrad(2), SkipNonFinite(), Adam()), r"member 0, AccumGrad"),
        ((ClipGrad(1.0), Momentum(), SkipNonFinite()), r"member 1, Momentum"),
        ((SkipNonFinite(), SkipNonFinite()), r"member 0, SkipNonFinite"),
        ((Descent(), OptimiserChain(SkipNonFinite(), Adam())), r"member 0, Descent"),
        ((OptimiserChain(ClipGrad(1.0), Adam()), SkipNonFinite()), r"member 0, OptimiserChain"),
    ]
    for members, msg in bad_chains:
        with pytest.raises(ValueError, match=msg):
            OptimiserChain(*members)
    with pytest.raises(ValueError, match="put SkipNonFinite first|Put SkipNonFinite first"):
        OptimiserChain(Adam(), SkipNonFinite())
    ok = OptimiserChain(ClipGrad(1.0), ClipNorm(2.0), ClipGlobalNorm(1.0), WeightDecay(),
                        SignDecay(), OptimiserChain(ClipGrad(3.0)), SkipNonFinite(), Adam())
    assert isinstance(ok.opts[6], SkipNonFinite)
    # adjust rebuilds the chain and keeps it valid
    assert fluxtrain.optimisers.adjust(ok, 0.5).opts[-1] == Adam(0.5)


def test_skipped_steps_errors():
    x = {"w": torch.ones(2)}
    with pytest.raises(TypeError, match="no rule in this state tree has a SkipNonFinite"):
        skipped_steps(setup(Adam(), x))
    with pytest.raises(TypeError, match="must not be applied to a model"):
        skipped_steps(torch.ones(2))


# ---------------------------------------------------------------------------- train_
def _loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # sqrt(|w00 * x[0, 3]|) is 0 (finite) when x[0, 3] == 0, but its gradient is
    # inf * 0 = NaN there: a finite loss with a non-finite gradient
    return (m(x[:, :3]) ** 2).mean() + torch.sqrt(torch.abs(m[0].weight[0, 0] * x[0, 3]))


def _item(seed: int, poison: bool) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.randn(4, 4)
    if poison:
        x[0, 3] = 0.0
    return x


def test_train_explicit_skips_nan_gradient_items():
    model, ref = mlp(), mlp()
    rule = OptimiserChain(SkipNonFinite(2), Adam(1e-2))
    st, st_ref = fluxtrain.setup(rule, model), fluxtrain.setup(rule, ref)
    data = [_item(1, False), _item(2, True), _item(3, False), _item(4, True), _item(5, False)]
    assert math.isfinite(_loss(model, data[1]).item())
    g = fluxtrain.gradient(_loss, model, data[1])[0]
    assert g[0].weight.isnan().any()
    fluxtrain.train_(_loss, model, data, st)
    fluxtrain.train_(_loss, ref, [d for i, d in enumerate(data) if i not in (1, 3)], st_ref)
    assert skipped_steps(st) == (2, 0)
    assert_tensors_unchanged(flatten((ref, st_ref)), (model, st))


def test_train_explicit_raises_after_too_many_bad_items():
    model = mlp()
    st = fluxtrain.setup(OptimiserChain(SkipNonFinite(2), Adam(1e-2)), model)
    fluxtrain.train_(_loss, model, [_item(1, False), _item(2, True), _item(3, True)], st)
    before = flatten((model, st))
    with pytest.raises(DomainError, match="3 steps in a row"):
        fluxtrain.train_(_loss, model, [_item(4, True), _item(5, False)], st)
    assert_unchanged(before, (model, st))


def test_train_explicit_nonfinite_loss_still_stops_first():
    # a NaN *loss* is train_'s own business: it raises before the update, so the
    # guard never sees that step (counters unchanged)
    model = mlp()
    st = fluxtrain.setup(OptimiserChain(SkipNonFinite(), Adam(1e-2)), model)
    before = flatten((model, st))
    with pytest.raises(DomainError, match="Loss is NaN on data item 1"):
        fluxtrain.train_(lambda m, x: (m(x) ** 2).sum() * math.nan, model, [torch.ones(2, 3)], st)
    assert_unchanged(before, (model, st))


@pytest.mark.filterwarnings("ignore::fluxtrain.FluxDeprecationWarning")
def test_implicit_optimiser_path():
    from fluxtrain.optimise import AbstractOptimiser

    class Guarded(AbstractOptimiser):
        def _new_rule(self):  # type: ignore[no-untyped-def]
            return OptimiserChain(SkipNonFinite(1), Descent(0.1))

    opt = Guarded()
    w, b = torch.ones(2), torch.ones(3)
    ps = fluxtrain.params(w, b)
    nan_gs = {w: torch.ones(2), b: torch.tensor([0.0, math.nan, 0.0])}
    fluxtrain.update_(opt, ps, nan_gs)
    assert torch.equal(w, torch.ones(2)) and torch.equal(b, torch.ones(3))
    assert opt.state[w][0] == opt.state[b][0] == (1, 1)
    state_before = copy.deepcopy([opt.state[w], opt.state[b]])
    with pytest.raises(DomainError, match="max_consecutive=1"):
        fluxtrain.update_(opt, ps, nan_gs)
    assert [opt.state[w], opt.state[b]] == state_before
    fluxtrain.update_(opt, ps, {w: torch.ones(2), b: torch.ones(3)})
    assert torch.equal(w, torch.ones(2) - torch.ones(2) * 0.1) and opt.state[w][0] == (1, 0)
