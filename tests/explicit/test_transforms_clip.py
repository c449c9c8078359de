"""ClipGlobalNorm against torch.nn.utils.clip_grad_norm_, and the whole-tree contract.

Truth: torch's ``clip_grad_norm_`` on ``.grad`` of a copy of the model (the
parameters it is given: ``model.parameters()`` counts a tied tensor once; the
frozen part is left out), followed by the same rule set up without clipping.
The gradients are computed once and fed to both routes, so every difference
comes from the clipping.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from explicitutil import assert_unchanged, flatten
from torch import nn

import fluxtrain
import fluxtrain.core.batched as B
import fluxtrain.core.transforms as TF
from fluxtrain import core
from fluxtrain.errors import DomainError
from fluxtrain.optimisers import (
    Adam,
    ClipGlobalNorm,
    Descent,
    Leaf,
    MixedPrecision,
    Momentum,
    OptimiserChain,
    SkipNonFinite,
    freeze_,
    setup,
    update_,
)


class Tied(nn.Module):
    """A tied module (one nn.Linear registered twice) and a part that gets frozen."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        shared = nn.Linear(5, 5)
        self.enc = nn.Linear(4, 5)
        self.body = nn.Sequential(shared, nn.Tanh(), shared)
        self.head = nn.Linear(5, 3)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(torch.tanh(self.enc(x)))))


def _grads(model: Tied, x: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """Flat gradients by ``named_parameters`` name (a tied tensor once), scaled up."""
    names = [n for n, _ in model.named_parameters()]
    loss = (model(x) ** 2).sum() * scale
    gs = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return {n: g.detach() for n, g in zip(names, gs)}


def _reference_step(
    model: Tied, state: object, grads: dict[str, torch.Tensor], max_norm: float, p: float,
    skip: tuple[str, ...],
) -> torch.Tensor:
    params = {n: q for n, q in model.named_parameters()}
    live = [n for n in grads if not n.startswith(skip)]
    for n in live:
        params[n].grad = grads[n].clone()
    total = torch.nn.utils.clip_grad_norm_([params[n] for n in live], max_norm, norm_type=p)
    update_(state, model, {n: params[n].grad for n in live})
    for n in live:
        params[n].grad = None
    return total


def _states_equal(a: object, b: object) -> int:
    """Every state tensor of ``a`` equals ``b``'s bit for bit; returns how many there are."""
    ta = [v[3] for _, v in flatten(a) if v[0] == "tensor"]
    tb = [v[3] for _, v in flatten(b) if v[0] == "tensor"]
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert torch.equal(x, y)
    return len(ta)


@pytest.mark.parametrize(
    "rule, p, dtype",
    [
        (Adam(1e-2), 2.0, torch.float32),
        (Descent(0.1), 2.0, torch.float32),
        (Descent(0.1), math.inf, torch.float32),
        (Adam(1e-2), math.inf, torch.float64),
        (Momentum(0.05), 1.0, torch.float64),
        (Adam(1e-2), 3.0, torch.float32),
    ],
    ids=lambda v: repr(v),
)
def test_matches_clip_grad_norm_then_rule(rule, p, dtype):
    model = Tied(dtype)
    ref = copy.deepcopy(model)
    assert ref.body[0] is ref.body[2]
    max_norm = 0.5
    st = setup(OptimiserChain(ClipGlobalNorm(max_norm, p), rule), model)
    st_ref = setup(rule, ref)
    freeze_(st.head)
    freeze_(st_ref.head)
    head_before = [q.detach().clone() for q in model.head.parameters()]
    torch.manual_seed(1)
    for step in range(4):
        x = torch.randn(7, 4, dtype=dtype)
        grads = _grads(model, x, scale=3.0 + step)
        # the frozen part's gradient is large: counting it would change the norm
        grads["head.weight"] = grads["head.weight"] * 1e3
        grads_copy = {n: g.clone() for n, g in grads.items()}
        total = _reference_step(ref, st_ref, grads, max_norm, p, skip=("head.",))
        assert total.item() > max_norm  # clipping really happens
        update_(st, model, dict(grads))
        for n, g in grads.items():  # the rule never writes into the gradients
            assert torch.equal(g, grads_copy[n])
        for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
            assert torch.equal(a, b), (step, n)
        assert model.body[0] is model.body[2]
    n = _states_equal([lf.state[1] for lf in _leaves(st)], [lf.state for lf in _leaves(st_ref)])
    assert n > 0 or isinstance(rule, Descent)
    for before, q in zip(head_before, model.head.parameters()):
        assert torch.equal(before, q)


def _leaves(st: object) -> list[Leaf]:
    return [v for _, v in _walk(st)]


def _walk(st: object, prefix: str = "") -> list[tuple[str, Leaf]]:
    if isinstance(st, Leaf):
        return [(prefix, st)]
    out: list[tuple[str, Leaf]] = []
    if hasattr(st, "keys"):
        for k in st.keys():  # type: ignore[attr-defined]
            out.extend(_walk(st[k], f"{prefix}.{k}"))  # type: ignore[index]
    elif isinstance(st, list | tuple):
        for i, v in enumerate(st):
            out.extend(_walk(v, f"{prefix}[{i}]"))
    return out


def test_tied_leaf_counted_once_in_norm():
    # the tied weight appears twice in the model tree; its gradient must enter the norm once
    lin = nn.Linear(3, 3, bias=False)
    model = nn.Sequential(lin, lin)
    st = setup(OptimiserChain(ClipGlobalNorm(1.0), Descent(1.0)), model)
    g = torch.full((3, 3), 1.0)  # norm 3: scaled to 1 => g / 3 (counted twice: g / sqrt(18))
    before = lin.weight.detach().clone()
    update_(st, model, {"0": {"weight": g}, "1": None})
    expected = before - g * torch.clamp(1.0 / (torch.tensor(3.0) + 1e-6), max=1.0)
    assert torch.equal(lin.weight.detach(), expected)


def test_multi_dtype_and_fallback_bitwise(monkeypatch):
    torch.manual_seed(2)
    xs = [torch.randn(5, dtype=torch.float64), torch.randn(3, 4), torch.randn(6).half(),
          torch.randn(2, dtype=torch.float64), torch.randn(4, dtype=torch.complex64)]
    gs = [torch.randn_like(x) * 4 for x in xs]
    ref = [x.clone().requires_grad_(True) for x in xs]
    for r, g in zip(ref, gs):
        r.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, 1.5)
    rule = ClipGlobalNorm(1.5)
    _, steps = core.apply_batched(rule, [None] * 5, xs, gs)
    for s, r, g in zip(steps, ref, gs):
        assert s.dtype == g.dtype
        assert torch.equal(s, r.grad)
    # the reproduction for torch < 2.6 (no get_total_norm) computes the same bits
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")
    _, steps2 = rule.apply_many([None] * 5, xs, gs)
    for s, s2 in zip(steps, steps2):
        assert torch.equal(s, s2)


def test_norm_below_max_leaves_gradients_unchanged():
    torch.manual_seed(3)
    model = Tied()
    ref = copy.deepcopy(model)
    st = setup(OptimiserChain(ClipGlobalNorm(1e6), Adam(1e-2)), model)
    st_ref = setup(Adam(1e-2), ref)
    for _ in range(3):
        grads = _grads(model, torch.randn(4, 4), 1.0)
        update_(st, model, dict(grads))
        update_(st_ref, ref, dict(grads))
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_nonfinite_norm_follows_torch():
    xs = [torch.zeros(3), torch.zeros(2)]
    for bad in (math.nan, math.inf):
        gs = [torch.tensor([1.0, bad, 2.0]), torch.tensor([3.0, 4.0])]
        ref = [x.clone().requires_grad_(True) for x in xs]
        for r, g in zip(ref, gs):
            r.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(ref, 1.0)  # error_if_nonfinite=False
        _, steps = core.apply_batched(ClipGlobalNorm(1.0), [None, None], xs, gs)
        for s, r in zip(steps, ref):
            torch.testing.assert_close(s, r.grad, rtol=0, atol=0, equal_nan=True)
        assert steps[0].isnan().any()


def test_error_if_nonfinite_raises_and_step_is_atomic():
    model = Tied()
    st = setup(OptimiserChain(ClipGlobalNorm(1.0, error_if_nonfinite=True), Adam()), model)
    update_(st, model, _grads(model, torch.randn(3, 4), 1.0))
    before = flatten((model, st))
    grads = _grads(model, torch.randn(3, 4), 1.0)
    grads["head.bias"] = grads["head.bias"].clone()
    grads["head.bias"][1] = math.inf
    with pytest.raises(DomainError, match=r"joint 2.0-norm .* is inf"):
        update_(st, model, grads)
    assert_unchanged(before, (model, st))


def test_split_rule_objects_clip_separately():
    # a whole-tree member sees the leaves that share its rule object: adjust_ on a
    # part of the tree gives that part a new rule object, so its own norm
    model = {"a": torch.zeros(2), "b": torch.zeros(2)}
    st = setup(OptimiserChain(ClipGlobalNorm(1.0), Descent(1.0)), model)
    fluxtrain.optimisers.adjust_(st["b"], max_norm=2.0)
    assert st["a"].rule is not st["b"].rule
    ga, gb = torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])
    update_(st, model, {"a": ga, "b": gb})
    coef = [torch.clamp(m / (torch.tensor(n) + 1e-6), max=1.0) for m, n in ((1.0, 5.0),
                                                                              (2.0, 10.0))]
    assert torch.equal(model["a"], -(ga * coef[0]))
    assert torch.equal(model["b"], -(gb * coef[1]))


def test_construction_errors():
    for bad in (0, -1.0, -math.inf):
        with pytest.raises(ValueError, match="max_norm must be positive"):
            ClipGlobalNorm(bad)
    with pytest.raises(ValueError, match="max_norm is NaN"):
        ClipGlobalNorm(math.nan)
    for bad in ("1", None, True, 1j):
        with pytest.raises(TypeError, match="max_norm"):
            ClipGlobalNorm(bad)
    for bad in (0.0, -1.0, -math.inf):
        with pytest.raises(ValueError, match="p must be positive"):
            ClipGlobalNorm(1.0, bad)
    with pytest.raises(ValueError, match="p is NaN"):
        ClipGlobalNorm(1.0, math.nan)
    with pytest.raises(TypeError, match="p="):
        ClipGlobalNorm(1.0, "2")
    with pytest.raises(TypeError):
        ClipGlobalNorm()  # max_norm is required, as in clip_grad_norm_
    with pytest.raises(TypeError, match="dtype torch.int64"):
        ClipGlobalNorm(1.0).init(torch.zeros(2, dtype=torch.int64))
    r = ClipGlobalNorm(1, 1)
    assert (r.max_norm, r.p) == (1.0, 1.0) and isinstance(r.max_norm, float)
    assert repr(ClipGlobalNorm(2.0)) == (
        "ClipGlobalNorm(max_norm=2.0, p=2.0, error_if_nonfinite=False)"
    )
    assert ClipGlobalNorm(1.0, math.inf).p == math.inf
    assert fluxtrain.optimisers.adjust(ClipGlobalNorm(1.0), max_norm=3.0) == ClipGlobalNorm(3.0)
    with pytest.raises(ValueError, match="max_norm must be positive"):
        fluxtrain.optimisers.adjust(ClipGlobalNorm(1.0), max_norm=-3.0)


def test_per_leaf_apply_is_apply_many_on_one_leaf():
    x, g = torch.zeros(3), torch.tensor([3.0, 0.0, 4.0])
    s, step = ClipGlobalNorm(1.0).apply(None, x, g)
    _, steps = ClipGlobalNorm(1.0).apply_many([None], [x], [g])
    assert s is None and torch.equal(step, steps[0])
    assert ClipGlobalNorm(1.0).apply_many([], [], []) == ([], [])


# ---------------------------------------------------------------------------- the contract
def test_needs_whole_tree():
    assert not core.AbstractRule.whole_tree
    assert ClipGlobalNorm.whole_tree and SkipNonFinite.whole_tree
    assert not B.needs_whole_tree(OptimiserChain(Adam(), Descent()))
    assert B.needs_whole_tree(OptimiserChain(Descent(), ClipGlobalNorm(1.0)))
    assert B.needs_whole_tree(OptimiserChain(OptimiserChain(ClipGlobalNorm(1.0)), Adam()))
    assert B.needs_whole_tree(MixedPrecision(OptimiserChain(SkipNonFinite(), Adam())))
    assert not B.needs_whole_tree(MixedPrecision(Adam()))
    assert core.needs_whole_tree is B.needs_whole_tree


def test_apply_batched_gives_whole_tree_rules_everything_once(monkeypatch):
    # tiny CPU chunks and mixed dtypes: an ordinary rule is called many times,
    # a whole-tree rule (and a chain holding one) exactly once with everything
    monkeypatch.setattr(B, "CPU_CHUNK_BYTES", 16)
    torch.manual_seed(4)
    xs = [torch.randn(8), torch.randn(8, dtype=torch.float64), torch.randn(8), torch.randn(9)]
    gs = [torch.randn_like(x) for x in xs]
    calls: list[int] = []
    orig = ClipGlobalNorm.apply_many

    def spy(self, states, xs_, dxs):  # type: ignore[no-untyped-def]
        calls.append(len(xs_))
        return orig(self, states, xs_, dxs)

    monkeypatch.setattr(ClipGlobalNorm, "apply_many", spy)
    chain = OptimiserChain(ClipGlobalNorm(0.5), Adam())
    st, steps = core.apply_batched(chain, [chain.init(x) for x in xs], xs, gs)
    assert calls == [4]
    # equal to: one global clip of all four, then Adam batched as usual
    ref = [x.clone().requires_grad_(True) for x in xs]
    for r, g in zip(ref, gs):
        r.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, 0.5)
    st2, steps2 = core.apply_batched(Adam(), [Adam().init(x) for x in xs], xs,
                                     [r.grad for r in ref])
    for a, b in zip(steps, steps2):
        assert torch.equal(a, b)
    assert _states_equal([s[1] for s in st], st2) == 8


def test_chain_without_whole_tree_member_keeps_direct_path(monkeypatch):
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("apply_batched must not be re-entered for ordinary chains")

    chain = OptimiserChain(Descent(0.1), Momentum())
    xs = [torch.ones(3), torch.ones(2, dtype=torch.float64)]
    monkeypatch.setattr(B, "apply_batched", boom)
    chain.apply_many([chain.init(xs[0])], xs[:1], [torch.ones(3)])


@pytest.mark.filterwarnings("ignore::fluxtrain.FluxDeprecationWarning")
def test_implicit_optimiser_path_goes_through_whole_tree():
    # an old-style optimiser whose core rule is a chain with ClipGlobalNorm: the
    # implicit step hands all parameters to apply_batched at once
    from fluxtrain.optimise import AbstractOptimiser

    class ClippedDescent(AbstractOptimiser):
        def _new_rule(self):  # type: ignore[no-untyped-def]
            return OptimiserChain(ClipGlobalNorm(1.0), Descent(0.1))

    w, b = torch.ones(2, 2), torch.zeros(3)
    ps = fluxtrain.params(w, b)
    gw, gb = torch.full((2, 2), 2.0), torch.full((3,), 2.0)
    ref = [w.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    ref[0].grad, ref[1].grad = gw.clone(), gb.clone()
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    expect = [r.detach() - r.grad * 0.1 for r in ref]
    gs = fluxtrain.gradient(lambda: (w * gw).sum() + (b * gb).sum(), ps)
    fluxtrain.update_(ClippedDescent(), ps, gs)
    assert torch.equal(w, expect[0]) and torch.equal(b, expect[1])


def test_train_explicit_with_clip_matches_manual_loop():
    torch.manual_seed(5)
    model = Tied()
    ref = copy.deepcopy(model)
    data = [torch.randn(3, 4) * 5 for _ in range(3)]
    st = fluxtrain.setup(OptimiserChain(ClipGlobalNorm(0.1), Adam(1e-2)), model)
    fluxtrain.train_(lambda m, x: (m(x) ** 2).sum(), model, data, st)
    st_ref = setup(Adam(1e-2), ref)
    for x in data:
        _reference_step(ref, st_ref, _grads(ref, x, 1.0), 0.1, 2.0, skip=())
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_transforms_module_exports():
    assert fluxtrain.optimisers.ClipGlobalNorm is TF.ClipGlobalNorm is core.ClipGlobalNorm
    assert fluxtrain.optimisers.SkipNonFinite is TF.SkipNonFinite is core.SkipNonFinite


@pytest.mark.parametrize(
    "module",
    ["fluxtrain.core.transforms", "fluxtrain.core.batched", "fluxtrain.optimisers.skipped"],
)
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
