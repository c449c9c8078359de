"""Issue 22 item 2: a schedule on any float field of any rule, on every engine.

For every rule and every one of its float fields (each element of a tuple
field counted), the field holds ``StepDecay(v, d, 2)``; the same steps are
taken by each engine:

* ``native``: explicit ``update_`` with the native kernel available (the fused
  path must see that the rule *instance* is scheduled and step it the general way);
* ``foreach``: explicit ``update_`` with the native kernel switched off;
* ``batched``: :func:`fluxtrain.core.apply_batched` (the rule's ``apply_many``);
* ``per-leaf``: the rule's ``apply`` on each leaf.

All give the same bits, and the bits of the plain rule stepped with the
schedule's closed form ``v * d ** (count // 2)`` (written out here) substituted
as a plain float at each step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from coreutil import bits_equal

from fluxtrain.core import apply_batched, native, subtract_, subtract_many_
from fluxtrain.core import rules as R
from fluxtrain.core.schedules import ScheduledState, StepDecay
from fluxtrain.optimisers import setup, update_

#: every rule class with hyperparameters, and the plain values the schedules start from
BASES: dict[str, R.AbstractRule] = {
    "Descent": R.Descent(0.1),
    "Momentum": R.Momentum(0.01, 0.9),
    "Nesterov": R.Nesterov(0.01, 0.9),
    "RMSProp": R.RMSProp(0.01, 0.9, 1e-3),
    "RMSProp-centred": R.RMSProp(0.01, 0.9, 1e-3, centred=True),
    "Rprop": R.Rprop(0.01, (0.5, 1.2), (1e-6, 50.0)),
    "Adam": R.Adam(0.01, (0.9, 0.999), 1e-3),
    "Lion": R.Lion(0.01, (0.9, 0.99)),
    "RAdam": R.RAdam(0.01, (0.9, 0.999), 1e-3),
    "AdaMax": R.AdaMax(0.01, (0.9, 0.999), 1e-3),
    "OAdam": R.OAdam(0.01, (0.5, 0.9), 1e-3),
    "AdaGrad": R.AdaGrad(0.1, 1e-3),
    "AdaDelta": R.AdaDelta(0.9, 1e-3),
    "AMSGrad": R.AMSGrad(0.01, (0.9, 0.999), 1e-3),
    "NAdam": R.NAdam(0.01, (0.9, 0.999), 1e-3),
    "AdamW": R.AdamW(0.01, (0.9, 0.999), 0.01, 1e-3),
    "AdamW-decoupled": R.AdamW(0.01, (0.9, 0.999), 0.01, 1e-3, couple=False),
    "AdaBelief": R.AdaBelief(0.01, (0.9, 0.999), 1e-3),
    "WeightDecay": R.WeightDecay(0.01),
    "SignDecay": R.SignDecay(0.01),
    "ClipGrad": R.ClipGrad(0.5),
    "ClipNorm": R.ClipNorm(1.0, 2.0),
    "InvDecay": R.InvDecay(0.1),
    "ExpDecay": R.ExpDecay(0.01, 0.5, 2, 1e-4, 0),
}

#: the decay per field (default 0.5): values stay in each field's allowed range
DECAY = {"rho": 0.9, "beta[0]": 0.9, "beta[1]": 0.99, "ell[1]": 1.1, "p": 1.5}

STEPS = 6
SHAPES = [(4, 3), (5,), (2, 2, 2)]


def float_fields(rule: R.AbstractRule) -> list[tuple[str, int | None]]:
    """(field, tuple index or None) of every float hyperparameter of ``rule``."""
    out: list[tuple[str, int | None]] = []
    for f in dataclasses.fields(rule):  # type: ignore[arg-type]
        v = getattr(rule, f.name)
        if isinstance(v, float):
            out.append((f.name, None))
        elif isinstance(v, tuple) and v and all(isinstance(e, float) for e in v):
            out.extend((f.name, i) for i in range(len(v)))
    return out


CASES = [
    pytest.param(name, field, i, id=f"{name}.{field}" + ("" if i is None else f"[{i}]"))
    for name, rule in BASES.items()
    for field, i in float_fields(rule)
]


def _label(field: str, i: int | None) -> str:
    return field if i is None else f"{field}[{i}]"


def _with(rule: R.AbstractRule, field: str, i: int | None, value: Any) -> R.AbstractRule:
    if i is None:
        return dataclasses.replace(rule, **{field: value})  # type: ignore[type-var]
    t = list(getattr(rule, field))
    t[i] = value
    return dataclasses.replace(rule, **{field: tuple(t)})  # type: ignore[type-var]


def _plain_value(base: R.AbstractRule, field: str, i: int | None) -> float:
    v = getattr(base, field)
    return float(v if i is None else v[i])


def _data(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in SHAPES] for _ in range(STEPS)]
    return xs, grads


def _closed_form(base: R.AbstractRule, field: str, i: int | None, dtype: torch.dtype
                 ) -> tuple[list[torch.Tensor], list[Any]]:
    """The plain rule with ``v * d ** (count // 2)`` substituted at each step, per leaf."""
    v0 = _plain_value(base, field, i)
    d = DECAY.get(_label(field, i), 0.5)
    xs, grads = _data(dtype)
    states = [_with(base, field, i, v0).init(x) for x in xs]
    for count in range(STEPS):
        rule = _with(base, field, i, v0 * d ** (count // 2))
        for j, x in enumerate(xs):
            states[j], step = rule.apply(states[j], x, grads[count][j])
            subtract_(x, step)
    return xs, states


def _scheduled(base: R.AbstractRule, field: str, i: int | None) -> R.AbstractRule:
    v0 = _plain_value(base, field, i)
    return _with(base, field, i, StepDecay(v0, DECAY.get(_label(field, i), 0.5), 2))


def _run(engine: str, rule: R.AbstractRule, dtype: torch.dtype,
         monkeypatch: pytest.MonkeyPatch) -> tuple[list[torch.Tensor], list[Any]]:
    xs, grads = _data(dtype)
    if engine in ("native", "foreach"):
        if engine == "foreach":
            monkeypatch.setattr(native, "available", lambda: False)
        st = setup(rule, xs)
        for count in range(STEPS):
            update_(st, xs, grads[count])
        return xs, [leaf.state for leaf in st]
    states = [rule.init(x) for x in xs]
    for count in range(STEPS):
        if engine == "batched":
            states, steps = apply_batched(rule, states, xs, grads[count])
            subtract_many_(xs, steps)
        else:
            for j, x in enumerate(xs):
                states[j], step = rule.apply(states[j], x, grads[count][j])
                subtract_(x, step)
    return xs, states


ENGINES = ["native", "foreach", "batched", "per-leaf"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,field,i", CASES)
def test_schedule_on_every_float_field_every_engine(name: str, field: str, i: int | None,
                                                    dtype: torch.dtype,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base = BASES[name]
    want_x, want_states = _closed_form(base, field, i, dtype)
    for engine in ENGINES:
        if engine == "native" and not native.available():
            continue  # (the foreach engine still runs; test_core_native covers the build)
        rule = _scheduled(base, field, i)
        with monkeypatch.context() as mp:
            xs, states = _run(engine, rule, dtype, mp)
        for x, w in zip(xs, want_x):
            assert bits_equal(x, w), (engine, name, field, i)
        for s, w in zip(states, want_states):
            assert type(s) is ScheduledState and s.count == STEPS, engine
            assert bits_equal(s.state, w), (engine, name, field, i)


def test_every_rule_class_is_covered() -> None:
    """The table above names every rule of the core with a float hyperparameter."""
    have = {type(r) for r in BASES.values()}
    for name in R.__all__:
        cls = getattr(R, name)
        if (isinstance(cls, type) and issubclass(cls, R.AbstractRule)
                and dataclasses.is_dataclass(cls)
                and cls not in (R.MixedPrecision, R.AccumGrad)):
            assert cls in have, name


@pytest.mark.parametrize("use_native", [True, False])
def test_scheduled_descent_on_a_module_steps_by_the_schedule(use_native: bool,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The issue's case: ``setup(Descent(StepDecay(0.1, 0.5, 3)), model)`` then ``update_``."""
    if use_native and not native.available():
        pytest.skip(native.why_unavailable())
    if not use_native:
        monkeypatch.setattr(native, "available", lambda: False)
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 1)
    w0 = m.weight.detach().clone()
    st = setup(R.Descent(StepDecay(0.1, 0.5, 3)), m)
    g = torch.ones(1, 3)
    want = w0.clone()
    for count in range(7):
        update_(st, m, {"weight": g, "bias": torch.ones(1)})
        want -= g * torch.tensor(0.1 * 0.5 ** (count // 3), dtype=torch.float32)
        assert torch.equal(m.weight.detach(), want)
    assert st.weight.state.count == 7
