"""Issue 22 item 6: every rule's hyperparameters are checked at construction.

The expected range of every real field of every rule is written out here (from
``docs/numerics.md``, not read from the code), with values just inside and just
outside it, NaN and infinities. A bad value is a ``ValueError`` (a negative
learning rate: ``DomainError``, a ValueError) whose message names the rule, the
field (``beta[0]`` for an element of a tuple) and the range. Schedules stay
accepted wherever a float is, and a schedule whose value is out of range fails
the same way. Old optimisers' assignment (``opt.eta = v``) keeps working and
refuses the same values, keeping the old one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import pytest
import torch

from fluxtrain import optimise as oldopt
from fluxtrain.core import rules as R
from fluxtrain.core.schedules import Constant, Join, StepDecay
from fluxtrain.core.transforms import ClipGlobalNorm
from fluxtrain.errors import DomainError

INF, NAN = math.inf, math.nan

#: kind -> (range as the message writes it, values inside, values outside)
KINDS: dict[str, tuple[str, list[float], list[float]]] = {
    "nonneg": ("[0, inf)", [0.0, 1e-12, 5.0, 1e30], [-1e-12, -1.0, INF, -INF, NAN]),
    "unit": ("[0, 1]", [0.0, 0.5, 1.0], [-0.1, 1.0000001, 1.5, INF, -INF, NAN]),
    "unit_open": ("[0, 1)", [0.0, 0.5, 0.999999], [1.0, -0.1, 1.5, INF, -INF, NAN]),
    "any": ("", [-INF, -1.0, 0.0, 2.0, INF], [NAN]),
    "ell0": ("(0, 1]", [1e-3, 0.5, 1.0], [0.0, -0.5, 1.5, INF, NAN]),
    "ell1": ("[1, inf)", [1.0, 1.2, 100.0], [0.99, 0.0, -1.0, INF, NAN]),
    "gamma0": ("[0, inf)", [0.0, 1e-6, 50.0], [-1e-12, -1.0, INF, -INF, NAN]),  # (<= 50)
    "gamma1": ("[0, inf)", [1e-6, 50.0, 1e9], [-1.0, INF, NAN]),  # (>= gamma[0] = 1e-6)
    "positive": ("", [1e-9, 1.0, INF], [0.0, -1.0, -INF, NAN]),  # ClipGlobalNorm's own
}

ADAM = {"eta": "nonneg", "beta[0]": "unit_open", "beta[1]": "unit_open", "epsilon": "nonneg"}

#: every built-in rule with real hyperparameters, and each field's kind
TABLE: list[tuple[R.AbstractRule, dict[str, str]]] = [
    (R.Descent(), {"eta": "nonneg"}),
    (R.Momentum(), {"eta": "nonneg", "rho": "unit"}),
    (R.Nesterov(), {"eta": "nonneg", "rho": "unit"}),
    (R.RMSProp(), {"eta": "nonneg", "rho": "unit", "epsilon": "nonneg"}),
    (R.RMSProp(centred=True), {"eta": "nonneg", "rho": "unit", "epsilon": "nonneg"}),
    (R.Rprop(), {"eta": "nonneg", "ell[0]": "ell0", "ell[1]": "ell1", "gamma[0]": "gamma0",
                 "gamma[1]": "gamma1"}),
    (R.Adam(), ADAM),
    (R.Lion(), {"eta": "nonneg", "beta[0]": "unit", "beta[1]": "unit"}),
    (R.RAdam(), ADAM),
    (R.AdaMax(), ADAM),
    (R.OAdam(), ADAM),
    (R.AdaGrad(), {"eta": "nonneg", "epsilon": "nonneg"}),
    (R.AdaDelta(), {"rho": "unit", "epsilon": "nonneg"}),
    (R.AMSGrad(), ADAM),
    (R.NAdam(), ADAM),
    (R.AdamW(), {**ADAM, "lambda_": "nonneg"}),
    (R.AdaBelief(), ADAM),
    (R.WeightDecay(), {"lambda_": "nonneg"}),
    (R.SignDecay(), {"lambda_": "nonneg"}),
    (R.ClipGrad(), {"delta": "nonneg"}),
    (R.ClipNorm(), {"omega": "nonneg", "p": "any"}),
    (R.InvDecay(), {"gamma": "nonneg"}),
    (R.ExpDecay(), {"eta": "nonneg", "decay": "unit", "clip": "nonneg"}),
    (ClipGlobalNorm(1.0), {"max_norm": "positive", "p": "positive"}),
]


def _with(rule: R.AbstractRule, label: str, value: Any) -> R.AbstractRule:
    field, _, index = label.partition("[")
    if not index:
        return dataclasses.replace(rule, **{field: value})  # type: ignore[type-var]
    t = list(getattr(rule, field))
    t[int(index.rstrip("]"))] = value
    return dataclasses.replace(rule, **{field: tuple(t)})  # type: ignore[type-var]


CASES = [pytest.param(rule, label, kind, id=f"{type(rule).__name__}.{label}")
         for rule, fields in TABLE for label, kind in fields.items()]


@pytest.mark.parametrize("rule,label,kind", CASES)
def test_values_inside_the_range_are_accepted(rule: R.AbstractRule, label: str,
                                              kind: str) -> None:
    for v in KINDS[kind][1]:
        new = _with(rule, label, v)
        field, _, index = label.partition("[")
        got = getattr(new, field)
        got = got[int(index.rstrip("]"))] if index else got
        assert got == v and isinstance(got, float)
        new.init(torch.zeros(2))  # and the rule is usable


@pytest.mark.parametrize("rule,label,kind", CASES)
def test_values_outside_the_range_name_field_and_range(rule: R.AbstractRule, label: str,
                                                       kind: str) -> None:
    shown, _, bad = KINDS[kind]
    for v in bad:
        with pytest.raises(ValueError) as err:
            _with(rule, label, v)
        msg = str(err.value)
        assert type(rule).__name__ in msg and label in msg, msg
        assert shown in msg, msg  # the allowed range (not written by ClipGlobalNorm: "")
        if label == "eta" and v < 0:
            assert isinstance(err.value, DomainError)  # Julia's DomainError, as before


@pytest.mark.parametrize("rule,label,kind", CASES)
def test_schedules_are_accepted_and_checked(rule: R.AbstractRule, label: str,
                                            kind: str) -> None:
    if isinstance(rule, ClipGlobalNorm):
        pytest.skip("ClipGlobalNorm keeps plain numbers")
    # a moderate value inside (a ramp from 1e30 would round to 0 on its way to -1e-12)
    good = [v for v in KINDS[kind][1] if v != 0 and abs(v) <= 100][0]
    scheduled = _with(rule, label, Constant(good))
    scheduled.init(torch.zeros(2))
    bad = [v for v in KINDS[kind][2] if math.isfinite(v)]
    if not bad:
        return
    with pytest.raises(ValueError) as err:  # out of range from count 0: at construction
        _with(rule, label, Constant(bad[0]))
    assert label in str(err.value)
    # in range at counts 0 and 1, out of range from count 2: that step fails
    ramp = _with(rule, label, Join([Constant(good), Constant(bad[0])], [2]))
    x = torch.zeros(2)
    st = ramp.init(x)
    st, _ = ramp.apply(st, x, torch.ones(2))
    st, _ = ramp.apply(st, x, torch.ones(2))
    with pytest.raises(ValueError, match=r"at count 2"):
        ramp.apply(st, x, torch.ones(2))


def test_every_real_field_of_every_rule_is_in_the_table() -> None:
    have = {type(r): set(f) for r, f in TABLE}
    for name in R.__all__:
        cls = getattr(R, name)
        if not (isinstance(cls, type) and issubclass(cls, R.AbstractRule)
                and dataclasses.is_dataclass(cls)):
            continue
        rule = next((r for r, _ in TABLE if type(r) is cls), None)
        labels: set[str] = set()
        for f in dataclasses.fields(cls):
            v = getattr(rule, f.name, f.default)
            if isinstance(v, float):
                labels.add(f.name)
            elif isinstance(v, tuple) and v and all(isinstance(e, float) for e in v):
                labels |= {f"{f.name}[{i}]" for i in range(len(v))}
        assert labels <= have.get(cls, set()), (name, labels)


def test_the_issue_example() -> None:
    with pytest.raises(ValueError, match=r"Adam: beta\[0\]=1.5 is out of range; it must be "
                                         r"in \[0, 1\)"):
        R.Adam(1e-3, (1.5, 0.999))


def test_rprop_gamma_order() -> None:
    with pytest.raises(ValueError, match=r"gamma\[0\] must be at most gamma\[1\]"):
        R.Rprop(gamma=(1.0, 0.5))
    R.Rprop(gamma=(0.5, 0.5))


def test_adjust_checks_too() -> None:
    with pytest.raises(ValueError, match=r"rho=1.5 is out of range"):
        R.Momentum().adjust(rho=1.5)
    with pytest.raises(ValueError, match=r"beta\[1\]=1.0 is out of range"):
        R.OptimiserChain(R.ClipGrad(), R.Adam()).adjust(beta=(0.9, 1.0))


# ============================================================================ old optimisers
OLD: list[tuple[str, str, Any, Any]] = [
    # (class, attribute, a good value, a bad value)
    ("Descent", "eta", 0.01, NAN),
    ("Momentum", "rho", 0.5, 1.5),
    ("Nesterov", "eta", 0.01, INF),
    ("RMSProp", "rho", 0.99, -0.1),
    ("Adam", "beta", (0.8, 0.99), (1.5, 0.999)),
    ("Adam", "epsilon", 1e-6, -1e-8),
    ("RAdam", "beta", (0.8, 0.99), (0.9, 1.0)),
    ("AdaMax", "eta", 0.01, NAN),
    ("OAdam", "beta", (0.4, 0.8), (0.5, NAN)),
    ("AdaGrad", "epsilon", 1e-6, INF),
    ("AdaDelta", "rho", 0.95, 2.0),
    ("AMSGrad", "eta", 0.01, INF),
    ("NAdam", "beta", (0.8, 0.99), (-0.1, 0.99)),
    ("AdaBelief", "epsilon", 1e-12, NAN),
    ("WeightDecay", "wd", 0.1, -0.1),
    ("ClipValue", "thresh", 0.5, NAN),
    ("ClipNorm", "thresh", 0.5, -1.0),
    ("InvDecay", "gamma", 0.01, -1.0),
    ("ExpDecay", "decay", 0.5, 1.5),
]


@pytest.mark.parametrize("name,attr,good,bad", OLD, ids=[f"{o[0]}.{o[1]}" for o in OLD])
def test_old_optimiser_assignment(name: str, attr: str, good: Any, bad: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        opt = getattr(oldopt, name)(*([1.0] if name.startswith("Clip") else []))
    old = getattr(opt, attr)
    setattr(opt, attr, good)
    assert getattr(opt, attr) == good
    opt.__fluxtrain_translate__()  # the new rule is built from the new value
    with pytest.raises(ValueError):
        setattr(opt, attr, bad)
    assert getattr(opt, attr) == good  # the refused value is not kept
    setattr(opt, attr, old)
    x = torch.ones(3)
    opt.apply(x, torch.full((3,), 0.5))  # and the optimiser still steps


def test_scheduled_values_checked_at_every_count() -> None:
    rule = R.Adam(0.1, (StepDecay(0.9, 1.2, 1), 0.999))  # 0.9, 1.08: out of range at count 1
    x = torch.zeros(2)
    st = rule.init(x)
    st, _ = rule.apply(st, x, torch.ones(2))
    with pytest.raises(ValueError, match=r"beta\[0\]=1.08.* is out of range; it must be in "
                                         r"\[0, 1\)"):
        rule.apply(st, x, torch.ones(2))
