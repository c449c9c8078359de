"""The fused step path (fluxtrain.core.plan) gives exactly the general path's bits.

Every test runs the same training twice from the same seed: once as shipped
(plain Descent/Momentum/Adam take the fused, allocation-free path with the
state moved into flat buffers and reused scratch), once with the fused path
switched off (``plan.trusted`` patched to refuse every rule), which is the
per-rule ``apply_batched`` route the conformance tests check against
Optimisers.jl. Parameters and states must agree bit for bit, also when the
tree is adjusted, frozen or thawed between steps, when a parameter or a
submodule is replaced, when the gradient tree leaves a branch out, with tied
weights, with leaves large enough to be cut into slices, and in the implicit
style.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from explicitutil import bits
from torch import nn

import fluxtrain as F
from fluxtrain import optimisers as O
from fluxtrain.core import plan

pytestmark = pytest.mark.filterwarnings("ignore::fluxtrain.FluxDeprecationWarning")

RULES: dict[str, Callable[[], Any]] = {
    "Adam": lambda: O.Adam(0.01),
    "Adam-betas": lambda: O.Adam(0.1, (0.5, 0.7), 1e-3),
    "Momentum": lambda: O.Momentum(0.1, 0.9),
    "Descent": lambda: O.Descent(0.3),
}


class Net(nn.Module):
    def __init__(self, big: int = 0) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)
        self.big = nn.Parameter(torch.randn(big)) if big else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b(torch.tanh(self.a(x)))
        if self.big is not None:
            out = out + self.big.square().mean()
        return out


def loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (m(x) ** 2).sum()


def both(train: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """``train()``'s result with the fused path, then without it."""
    fused = bits(train())
    with monkeypatch.context() as mp:
        mp.setattr(plan, "trusted", lambda rule: False)
        general = bits(train())
    return fused, general


def data(k: int, dt: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + k)
    return (torch.randn(5, 3, generator=g) * 3.0 ** k).to(dt)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_module_steps_with_adjust_freeze_thaw(
    rule: str, dt: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    def train() -> Any:
        torch.manual_seed(0)
        m = Net(big=200_000).to(dt)  # the big leaf is cut into cache-sized slices
        st = O.setup(RULES[rule](), m)
        for k in range(7):
            if k == 2:
                O.freeze_(st.a)
            if k == 3:
                O.adjust_(st, 0.05)
            if k == 4:
                O.thaw_(st.a)  # a's Adam powers now lag: per-leaf scalars
            g = F.gradient(lambda mm, k=k: loss(mm, data(k, dt)), m)[0]
            O.update_(st, m, g)
        return m, st

    fused, general = both(train, monkeypatch)
    assert fused == general


@pytest.mark.parametrize("rule", ["Adam", "Momentum"])
def test_replaced_parameter_and_submodule(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def train() -> Any:
        torch.manual_seed(1)
        m = Net()
        st = O.setup(RULES[rule](), m)
        for k in range(6):
            if k == 2:  # a new tensor object in the same place, state kept
                m.a.weight = nn.Parameter(m.a.weight.detach() * 0.5)
            if k == 3:  # the values of a parameter replaced behind its back
                m.b.weight.data = torch.randn(2, 4)
            if k == 4:  # a new submodule: its state must be set up again
                m.b = nn.Linear(4, 2)
                st = O.setup(RULES[rule](), m)
            g = F.gradient(lambda mm, k=k: loss(mm, data(k)), m)[0]
            O.update_(st, m, g)
        return m, st

    fused, general = both(train, monkeypatch)
    assert fused == general


@pytest.mark.parametrize("rule", ["Adam", "Momentum", "Descent"])
def test_gradient_structure_changes_and_ties(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def train() -> Any:
        torch.manual_seed(2)
        w = torch.randn(4, 4, dtype=torch.float64)
        model = {"w": w, "tied": (w, torch.randn(3, dtype=torch.float64)),
                 "other": [torch.randn(6, dtype=torch.float64)]}
        st = O.setup(RULES[rule](), model)
        for k in range(6):
            g = torch.Generator().manual_seed(k)
            gw = torch.randn(4, 4, generator=g, dtype=torch.float64)
            grads: Any = {"w": gw, "tied": (gw * 2, torch.randn(3, generator=g,
                                                                 dtype=torch.float64)),
                          "other": [torch.randn(6, generator=g, dtype=torch.float64)]}
            if k % 3 == 1:
                grads["other"] = None  # a branch without gradient
            if k % 3 == 2:
                grads = {"w": None, "tied": (None, grads["tied"][1]), "other": None}
            O.update_(st, model, grads)
        return model, st

    fused, general = both(train, monkeypatch)
    assert fused == general


def test_state_tensors_stay_the_objects_users_hold() -> None:
    torch.manual_seed(3)
    m = Net()
    st = O.setup(O.Adam(0.01), m)
    mom, var = st.a.weight.state.m, st.a.weight.state.v
    before = mom.clone()
    for k in range(3):
        O.update_(st, m, F.gradient(lambda mm, k=k: loss(mm, data(k)), m)[0])
    assert st.a.weight.state.m is mom and st.a.weight.state.v is var
    assert not torch.equal(mom, before)
    # copies of the tree are independent of the buffers the fused path uses
    st2 = copy.deepcopy(st)
    snap = bits(st2)
    O.update_(st, m, F.gradient(lambda mm: loss(mm, data(5)), m)[0])
    assert bits(st2) == snap


def test_fused_path_is_really_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    orig = plan.prepare

    def spy(*args: Any) -> Any:
        out = orig(*args)
        calls.append(out)
        return out

    monkeypatch.setattr(plan, "prepare", spy)
    m = Net()
    st = O.setup(O.Adam(), m)
    O.update_(st, m, F.gradient(lambda mm: loss(mm, data(0)), m)[0])
    assert calls and calls[0] is not None
    # a rule the path does not know, or a patched one, is refused
    assert plan.prepare(O.Nesterov(), [None], [torch.zeros(1)], [torch.zeros(1)]) is None
    bf = torch.zeros(2, dtype=torch.bfloat16)
    assert plan.prepare(O.Momentum(), [torch.zeros_like(bf)], [bf], [bf]) is None


@pytest.mark.parametrize("name", ["Adam", "Momentum", "Descent"])
def test_implicit_fused_equals_general(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def train() -> Any:
        torch.manual_seed(4)
        m = Net(big=150_000)
        opt = {"Adam": F.Adam(0.01), "Momentum": F.Momentum(0.1, 0.9),
               "Descent": F.Descent(0.2)}[name]
        ps = F.params(m)
        for k in range(5):
            gs = F.gradient(lambda k=k: loss(m, data(k)), ps)
            F.update_(opt, ps, gs)
        return m, [opt.state[p] for p in m.parameters()] if name != "Descent" else []

    fused, general = both(train, monkeypatch)
    assert fused == general


def test_plan_docstring_example() -> None:
    import doctest

    result = doctest.testmod(plan, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("rule", ["Adam", "Momentum"])
def test_one_rule_object_for_two_models(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two state trees (same shapes) share a rule object and take turns: the fused
    path's buffers must never mix them up."""

    def train() -> Any:
        r = RULES[rule]()
        torch.manual_seed(5)
        m1, m2 = Net(big=140_000), Net(big=140_000)
        s1, s2 = O.setup(r, m1), O.setup(r, m2)
        for k in range(4):
            for m, s in ((m1, s1), (m2, s2)):
                O.update_(s, m, F.gradient(lambda mm, k=k: loss(mm, data(k)), m)[0])
        return m1, s1, m2, s2

    fused, general = both(train, monkeypatch)
    assert fused == general


def test_cached_walk_with_several_rules_and_odd_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached walk's list-at-once checks (stepplan._collect_untied, interface's
    _group_by_rule) hand over to the per-position code for everything unusual: two
    rules, a None branch, a complex parameter, a gradient of another shape (the
    general walk's error, nothing changed)."""

    def train() -> Any:
        torch.manual_seed(1)
        model = {"a": [torch.randn(3), torch.randn(4, 2)], "b": torch.randn(5),
                 "c": torch.randn(2, dtype=torch.complex64)}
        st = O.setup({"a.*": O.Adam(0.01), "b": O.Momentum(0.1), "c": O.Descent(0.2)}, model)
        for k in range(6):
            g = {"a": [torch.randn(3), torch.randn(4, 2)], "b": torch.randn(5),
                 "c": torch.randn(2, dtype=torch.complex64)}
            if k == 2:
                g["b"] = None
            if k == 4:
                bad = dict(g, b=torch.randn(6))
                before = bits((st, model))
                with pytest.raises(ValueError, match="shape"):
                    O.update_(st, model, bad)
                assert bits((st, model)) == before
            O.update_(st, model, g)
        return model, st

    fused, general = both(train, monkeypatch)
    assert fused == general


@pytest.mark.parametrize("rule", list(RULES))
def test_whole_step_fast_path_is_taken_and_equal(rule: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One plain rule on every leaf, nothing frozen, a gradient everywhere: update_
    hands the whole step to the fused path (stepplan.StepPlan.fused) from the second
    step on, with the general route's bits; a frozen leaf sends it back to collect."""
    from fluxtrain.optimisers import stepplan

    taken: list[bool] = []
    orig = stepplan.StepPlan.fused

    def spy(self: Any, grads: Any, flat: bool) -> Any:
        out = orig(self, grads, flat)
        taken.append(out is not None)
        return out

    def train() -> Any:
        torch.manual_seed(0)
        m = Net()
        st = O.setup(RULES[rule](), m)
        for k in range(6):
            if k == 4:
                O.freeze_(st.a)
            g = F.gradient(lambda mm, k=k: loss(mm, data(k)), m)[0]
            O.update_(st, m, g)
        return m, st

    monkeypatch.setattr(stepplan.StepPlan, "fused", spy)
    fused, general = both(train, monkeypatch)
    assert fused == general
    assert taken[:5] == [True, True, True, False, False]  # steps 2-4 fast; frozen: not
