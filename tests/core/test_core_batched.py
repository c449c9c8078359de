"""Per-leaf apply and batched apply_batched agree bit for bit, for every rule.

50 tensors of mixed shapes, float32 and float64 mixed in one list, several
steps; states are compared too. The leaves are staggered (some take an extra
first step) so that rules with per-leaf scalars (βt powers, RAdam's t,
AccumGrad's counter, InvDecay/ExpDecay counters) see differing values inside
one batched group.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from coreutil import bits_equal, init_all, step_all, step_batched

from fluxtrain.core import AbstractRule, apply_batched, subtract_
from fluxtrain.core import rules as R


@dataclasses.dataclass(frozen=True, repr=False)
class DecayDescent(AbstractRule):
    """Optimisers.jl's user-rule example (base.py docstring): no apply_many of its own."""

    eta: float = 0.1

    def init(self, x):
        return 1

    def apply(self, state, x, dx):
        eta = self.eta / math.sqrt(state)
        return state + 1, dx * eta


RULES = [
    R.Descent(0.1),
    R.Momentum(),
    R.Nesterov(),
    R.RMSProp(),
    R.RMSProp(centred=True),
    R.Rprop(),
    R.Adam(),
    R.Lion(),
    R.RAdam(),
    R.AdaMax(),
    R.OAdam(),
    R.AdaGrad(),
    R.AdaDelta(),
    R.AMSGrad(),
    R.NAdam(),
    R.AdamW(lambda_=0.1),
    R.AdamW(lambda_=0.1, couple=False),
    R.AdaBelief(),
    R.WeightDecay(0.1),
    R.SignDecay(0.1),
    R.ClipGrad(0.25),
    R.ClipNorm(0.5),
    R.ClipNorm(0.5, 1.0),
    R.ClipNorm(2.0, math.inf),
    R.ClipNorm(2.0, 3.0),
    R.AccumGrad(3),
    R.MixedPrecision(R.Adam(0.01)),
    R.MixedPrecision(torch.float64, R.OptimiserChain(R.AccumGrad(2), R.Nesterov())),
    R.OptimiserChain(),
    R.OptimiserChain(R.SignDecay(0.001), R.Adam(0.001)),
    R.OptimiserChain(R.ClipNorm(), R.Adam(0.001)),
    R.OptimiserChain(R.ClipGrad(0.5), R.Momentum()),
    R.OptimiserChain(R.WeightDecay(), R.OAdam(), R.ClipGrad(1)),
    R.OptimiserChain(R.AccumGrad(2), R.WeightDecay(0.01), R.Descent(0.1)),
    R.OptimiserChain(R.Adam(), R.InvDecay(0.01)),
    R.InvDecay(0.1),
    R.ExpDecay(0.2, 0.5, 2, 1e-3),
    R.ExpDecay(0.2, 0.5, 1, 1e-2, 3),
    DecayDescent(0.5),
]

STEPS = 7  # RAdam switches to its rectified branch at t = 5


def _leaves(seed: int, dtypes=(torch.float32, torch.float64), n: int = 50):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(), (1,), (3,), (2, 3), (4, 1, 2), (7,), (5, 5), (1, 1, 1, 2)]
    xs = []
    for i in range(n):
        dt = dtypes[i % len(dtypes)]
        xs.append(torch.randn(shapes[i % len(shapes)], generator=gen, dtype=torch.float64).to(dt))
    return xs


def _grads(xs, gen):
    out = []
    for x in xs:
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
        if g.numel() > 1:
            g.view(-1)[0] = 0.0  # exact zeros exercise sign(0), Rprop's "no change" branch
        out.append(g)
    return out


def _run(rule, dtypes=(torch.float32, torch.float64)):
    xa = _leaves(0, dtypes)
    xb = [x.clone() for x in xa]
    sa, sb = init_all(rule, xa), init_all(rule, xb)
    assert bits_equal(sa, sb)
    gen = torch.Generator().manual_seed(1)
    # staggered start: every third leaf takes one extra (per-leaf) step first
    first = _grads(xa, gen)
    for i in range(0, len(xa), 3):
        sa[i:i + 1] = step_all(rule, sa[i:i + 1], xa[i:i + 1], first[i:i + 1])
        sb[i:i + 1] = step_all(rule, sb[i:i + 1], xb[i:i + 1], first[i:i + 1])
    for k in range(STEPS):
        gs = _grads(xa, gen)
        gs_copy = [g.clone() for g in gs]
        sa = step_all(rule, sa, xa, gs)
        sb = step_batched(rule, sb, xb, gs_copy)
        for i, (a, b) in enumerate(zip(xa, xb)):
            assert bits_equal(a, b), f"{rule!r}: parameter {i} differs after step {k + 1}"
        assert bits_equal(sa, sb), f"{rule!r}: states differ after step {k + 1}"
        # rules never mutate the gradient they are given
        assert all(bits_equal(g, h) for g, h in zip(gs, gs_copy))


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_batched_equals_per_leaf(rule):
    _run(rule)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_batched_equals_per_leaf_half_precision(rule):
    # float16 and bfloat16 (in bfloat16, 0.999 rounds to 1.0: 1 - beta2 == 0 must give Inf
    # as in Julia, not a Python ZeroDivisionError)
    _run(rule, dtypes=(torch.float16, torch.bfloat16))


@pytest.mark.parametrize(
    "rule",
    [R.MixedPrecision(R.Adam(0.01)), R.MixedPrecision(torch.float64, R.Momentum(0.1))],
    ids=repr,
)
def test_batched_mixed_precision_low_dtypes(rule):
    _run(rule, dtypes=(torch.float16, torch.bfloat16, torch.float32))


@pytest.mark.parametrize(
    "rule",
    [R.Adam(0.01), R.RMSProp(0.01), R.RAdam(0.01), R.OAdam(0.01), R.AdaGrad(0.01),
     R.AdaDelta(0.9, 1e-5), R.NAdam(0.01), R.AdaBelief(0.01), R.Descent(0.01),
     R.Momentum(0.01), R.Nesterov(0.01), R.AdamW(0.01), R.Lion(), R.ClipNorm(0.5),
     R.SignDecay(0.1), R.InvDecay(0.1)],
    ids=repr,
)
def test_batched_complex(rule):
    _run(rule, dtypes=(torch.complex64, torch.float32, torch.complex128))


def test_batched_readonly_mixed_precision_returns_steps():
    """A read-only x (tree layer's immutable leaf) gets a step instead of a write."""
    rule = R.MixedPrecision(R.Adam(0.1))
    xs = _leaves(3, (torch.float16,), n=6)
    for x in xs[::2]:
        x._fluxtrain_readonly = True
    before = [x.clone() for x in xs]
    states = init_all(rule, xs)
    gs = _grads(xs, torch.Generator().manual_seed(4))
    per = []
    for s, x, g in zip(states, xs, gs):
        xc = x.clone()
        xc._fluxtrain_readonly = getattr(x, "_fluxtrain_readonly", False)
        per.append(rule.apply(copy.deepcopy(s), xc, g))
    new, steps = apply_batched(rule, states, xs, gs)
    for i, (x, step) in enumerate(zip(xs, steps)):
        if i % 2 == 0:
            assert step is not None and bits_equal(x, before[i])  # untouched, step returned
            assert bits_equal(step, per[i][1])
            # Optimisers.jl: step = eltype(x).(x .- xT); x - step then lands on xT up
            # to the double rounding of this path (an ulp of the step and of the result)
            xT = new[i].xT
            assert bits_equal(step, (before[i] - xT).to(torch.float16))
            after = subtract_(x, step).float()
            ulp = torch.finfo(torch.float16).eps
            assert torch.all((after - xT).abs() <= ulp * (xT.abs() + step.float().abs()))
        else:
            assert step is None and bits_equal(x, new[i].xT.to(torch.float16))


def test_user_rule_through_apply_batched():
    """The DecayDescent example works through the batched path (default apply_many)."""
    rule = DecayDescent(0.5)
    xs = [torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float32)]
    states = init_all(rule, xs)
    for _ in range(2):
        states = step_batched(rule, states, xs, [torch.ones_like(x) for x in xs])
    assert states == [3, 3]
    # steps 0.5/sqrt(1) then 0.5/sqrt(2), in each dtype
    assert xs[0].tolist() == [-(0.5 + 0.5 / math.sqrt(2))] * 2
    f32 = torch.tensor(0.0).sub_(torch.tensor(0.5)).sub_(torch.tensor(0.5 / math.sqrt(2)))
    assert bits_equal(xs[1], f32.expand(3).contiguous())


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_batched_in_small_cpu_chunks(rule, monkeypatch):
    # apply_batched splits CPU groups into cache-sized chunks; force many chunks
    import fluxtrain.core.batched as batched

    monkeypatch.setattr(batched, "CPU_CHUNK_BYTES", 64)
    _run(rule)
