"""adjust_/adjust with member=: change one member of an OptimiserChain (issue 10).

Chains whose members share a field name (two Descents, WeightDecay + SignDecay
with lambda_) could not be adjusted one member at a time before; the checks
compare against a chain built directly with the wanted hyperparameters.
"""

from __future__ import annotations

import doctest
import sys

import pytest
import torch

from fluxtrain import optimisers as O


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _train(state, model, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = [n for n, _ in model.named_parameters()]
    for _ in range(steps):
        x = torch.randn(8, 3, generator=g)
        grads = torch.autograd.grad(model(x).square().mean(), list(model.parameters()))
        O.update_(state, model, dict(zip(names, grads)))


def _same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_member_by_position_changes_only_that_member():
    st = O.setup(O.OptimiserChain(O.Descent(0.1), O.Descent(0.2)), _model())
    O.adjust_(st, 0.5, member=1)
    assert st[0].weight.rule == O.OptimiserChain(O.Descent(0.1), O.Descent(0.5))
    O.adjust_(st, eta=0.3, member=-2)
    assert st[2].bias.rule == O.OptimiserChain(O.Descent(0.3), O.Descent(0.5))


def test_member_by_type_and_shared_field_names():
    rule = O.OptimiserChain(O.WeightDecay(0.1), O.SignDecay(0.1), O.Adam(0.01))
    st = O.setup(rule, _model())
    O.adjust_(st, lambda_=0.02, member=O.SignDecay)
    assert st[0].weight.rule == O.OptimiserChain(O.WeightDecay(0.1), O.SignDecay(0.02),
                                                 O.Adam(0.01))
    # without member= both lambda_ fields change (the old behaviour, kept)
    O.adjust_(st, lambda_=0.5)
    assert st[0].weight.rule == O.OptimiserChain(O.WeightDecay(0.5), O.SignDecay(0.5),
                                                 O.Adam(0.01))


def test_targeted_adjust_trains_like_a_fresh_chain_with_those_values():
    m1, m2 = _model(), _model()
    st1 = O.setup(O.OptimiserChain(O.WeightDecay(0.1), O.Momentum(0.01, 0.9)), m1)
    st2 = O.setup(O.OptimiserChain(O.WeightDecay(0.1), O.Momentum(0.01, 0.9)), m2)
    _train(st1, m1, seed=1)
    _train(st2, m2, seed=1)
    O.adjust_(st1, rho=0.5, member=O.Momentum)
    O.adjust_(st1, lambda_=0.01, member=0)
    for leaf in (st2[0].weight, st2[0].bias, st2[2].weight, st2[2].bias):
        leaf.rule = O.OptimiserChain(O.WeightDecay(0.01), O.Momentum(0.01, 0.5))
    _train(st1, m1, seed=2)
    _train(st2, m2, seed=2)
    assert _same_params(m1, m2)


def test_adjust_copy_with_member_leaves_the_original():
    st = O.setup(O.OptimiserChain(O.ClipGrad(1.0), O.Adam(0.01)), _model())
    new = O.adjust(st, 0.1, member=O.Adam)
    assert new[0].weight.rule.opts[1].eta == 0.1
    assert st[0].weight.rule.opts[1].eta == 0.01


def test_rule_level_adjust_with_member():
    rule = O.OptimiserChain(O.Descent(0.1), O.Descent(0.2))
    assert O.adjust(rule, 0.7, member=0) == O.OptimiserChain(O.Descent(0.7), O.Descent(0.2))


def test_member_looks_through_mixed_precision():
    rule = O.MixedPrecision(O.OptimiserChain(O.ClipNorm(1.0), O.Adam(0.01)))
    st = O.setup(rule, _model())
    O.adjust_(st, omega=5.0, member=O.ClipNorm)
    assert st[0].weight.rule == O.MixedPrecision(
        O.OptimiserChain(O.ClipNorm(5.0), O.Adam(0.01)))


def test_member_schedule_keeps_and_starts_counters():
    model = _model()
    st = O.setup(O.OptimiserChain(O.WeightDecay(0.1), O.Adam(0.01)), model)
    _train(st, model, steps=3)
    O.adjust_(st, O.WarmupCosine(0.0, 0.01, 2, 10), member=O.Adam)
    assert isinstance(st[0].weight.state[1], O.ScheduledState)
    assert st[0].weight.state[1].count == 0
    assert st[0].weight.state[0] is None  # the other member's state is untouched
    _train(st, model, steps=4)
    assert st[0].weight.state[1].count == 4
    O.adjust_(st, 0.001, member=1)  # back to a number: the counter stays
    assert st[0].weight.state[1].count == 4
    assert st[0].weight.rule.opts[1].eta == O.Constant(0.001)


def test_errors_change_nothing():
    model = _model()
    st = O.setup(O.OptimiserChain(O.Descent(0.1), O.Momentum(0.01)), model)
    st[2].bias.rule = O.Adam(0.01)  # one leaf with a non-chain rule
    before = [st[0].weight.rule, st[2].bias.rule]
    with pytest.raises(TypeError, match=r"member=0\) picks a member of an OptimiserChain"):
        O.adjust_(st, 0.5, member=0)
    assert [st[0].weight.rule, st[2].bias.rule] == before


@pytest.mark.parametrize("member,exc,match", [
    (2, IndexError, r"member=2\): out of range, .* has 2 members \(positions 0 to 1"),
    (-3, IndexError, "out of range"),
    (O.Adam, ValueError, r"has no member of type Adam \(its members are 0: Descent, 1: Desc"),
    (O.Descent, ValueError, r"member=Descent\) is ambiguous: .* has 2 members of that type "
                            r"\(0: Descent\(eta=0.1\), 1: Descent\(eta=0.2\)\); pass a position"),
    (True, TypeError, "must be a position"),
    ("Descent", TypeError, "must be a position"),
    (int, TypeError, "must be a position"),
])
def test_member_errors(member, exc, match):
    st = O.setup(O.OptimiserChain(O.Descent(0.1), O.Descent(0.2)), _model())
    with pytest.raises(exc, match=match):
        O.adjust_(st, 0.5, member=member)
    assert st[0].weight.rule == O.OptimiserChain(O.Descent(0.1), O.Descent(0.2))


def test_member_on_a_non_chain_rule():
    st = O.setup(O.Adam(0.01), _model())
    with pytest.raises(TypeError, match="drop member= to adjust it directly"):
        O.adjust_(st, 0.1, member=0)
    with pytest.raises(TypeError, match="picks a member"):
        O.adjust(O.Adam(), 0.1, member=O.Adam)


def test_member_without_the_field_is_an_error():
    st = O.setup(O.OptimiserChain(O.WeightDecay(0.1), O.Adam(0.01)), _model())
    with pytest.raises(ValueError, match=r"member 0 of .* is WeightDecay\(lambda_=0.1\), which "
                                         r"has none of the fields eta"):
        O.adjust_(st, 0.5, member=0)
    with pytest.raises(ValueError, match="adjust_ must be given something"):
        O.adjust_(st, member=0)


def test_adjust_module_doctests():
    mod = sys.modules["fluxtrain.optimisers.adjust"]  # the package re-exports the function
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
