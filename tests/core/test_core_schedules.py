"""Issue 10 acceptance 4: hyperparameter schedules.

Every built-in schedule against its closed form (written out here, not taken
from the module); a cosine-with-warm-up Adam against torch.optim.Adam +
LambdaLR; schedules on non-eta fields, in chains and MixedPrecision; apply vs
apply_many bitwise; Constant == plain float bitwise; validation errors; the old
ExpDecay/InvDecay giving the same numbers before and after translation;
checkpoints of scheduled states.
"""

from __future__ import annotations

import copy
import dataclasses
import doctest
import io
import math
import pickle
import warnings

import pytest
import torch
from coreutil import bits_equal, init_all, step_all, step_batched

import fluxtrain
import fluxtrain.core.schedules as S
from fluxtrain import checkpoint as C
from fluxtrain import optimise as old
from fluxtrain import optimisers as O
from fluxtrain.core import rules as R
from fluxtrain.errors import DomainError

COUNTS = list(range(0, 40)) + [99, 100, 101, 257, 1000, 12345]


def gpow(a: float, p: float) -> float:
    """a**p for a > 0 via exp/log, inf past the float range (growing schedules)."""
    e = p * math.log(a)
    return math.inf if e > 709.7 else math.exp(e)


# ============================================================================ closed forms
@pytest.mark.parametrize("value", [0.01, -2.5, 0.0, 3])
def test_constant(value):
    s = O.Constant(value)
    assert all(s(c) == float(value) for c in COUNTS)


@pytest.mark.parametrize("init,end,steps", [(0.0, 1.0, 10), (5.0, -1.0, 3), (1.0, 1.0, 1)])
def test_linear_ramp(init, end, steps):
    s = O.LinearRamp(init, end, steps)
    for c in COUNTS:
        want = init + (end - init) * c / steps if c < steps else end
        assert s(c) == pytest.approx(want, rel=1e-15, abs=1e-15)


@pytest.mark.parametrize("init,decay,size", [(0.1, 0.5, 10), (1.0, 0.9, 1), (2.0, 1.5, 7)])
def test_step_decay(init, decay, size):
    s = O.StepDecay(init, decay, size)
    for c in COUNTS:
        k = 0
        for m in range(1, c + 1):  # one decay each time a full block of `size` is done
            if m % size == 0:
                k += 1
        assert s(c) == pytest.approx(init * gpow(decay, k), rel=1e-12)


def test_step_decay_matches_torch_steplr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
    ours = O.StepDecay(0.3, 0.7, 4)
    for c in range(30):
        assert ours(c) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("init,decay,steps,start,clip", [
    (0.1, 0.5, 1, 0, None),
    (0.1, 0.5, 4, 3, None),
    (1.0, 0.9, 10, 0, 0.5),
    (1.0, 1.2, 5, 2, 3.0),
    (0.2, 0.5, 3, -1, 1e-3),
])
def test_exponential_decay(staircase, init, decay, steps, start, clip):
    s = O.ExponentialDecay(init, decay, steps, start=start, staircase=staircase, clip=clip)
    for c in COUNTS:
        elapsed = c - start if c > start else 0
        p = math.floor(elapsed / steps) if staircase else elapsed / steps
        want = init * gpow(decay, p)
        if clip is not None:
            want = max(want, clip) if decay < 1 else min(want, clip)
        assert s(c) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("init,decay,steps,start", [(0.1, 0.5, 1, 0), (1.0, 0.01, 10, 5),
                                                    (2.0, 3.0, 4, -1)])
def test_inverse_time_decay(staircase, init, decay, steps, start):
    s = O.InverseTimeDecay(init, decay, steps, start=start, staircase=staircase)
    for c in COUNTS:
        elapsed = max(c - start, 0)
        p = (elapsed // steps) if staircase else elapsed / steps
        assert s(c) == pytest.approx(init / (1.0 + decay * p), rel=1e-13)


@pytest.mark.parametrize("init,peak,warm,total,end,exponent", [
    (0.0, 1e-3, 10, 100, 0.0, 1.0),
    (1e-4, 1e-2, 5, 30, 1e-3, 1.0),
    (0.5, 1.0, 0, 20, 0.1, 2.0),
    (0.0, 2.0, 7, 8, 0.0, 1.0),
])
def test_warmup_cosine_matches_optax_formula(init, peak, warm, total, end, exponent):
    """optax.warmup_cosine_decay_schedule: linear_schedule then cosine_decay_schedule
    (alpha = end/peak, decay over total - warm counts), joined at warm."""
    s = O.WarmupCosine(init, peak, warm, total, end, exponent)
    alpha = end / peak
    for c in COUNTS:
        if c < warm:
            want = init + (peak - init) * c / warm
        else:
            t = min(c - warm, total - warm)
            cosine = 0.5 * (1 + math.cos(math.pi * t / (total - warm)))
            want = peak * ((1 - alpha) * cosine**exponent + alpha)
        assert s(c) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_join_sees_counts_relative_to_its_boundary():
    a, b, c = O.LinearRamp(0.0, 1.0, 10), O.StepDecay(1.0, 0.5, 3), O.Constant(7.0)
    s = O.Join([a, b, c], [10, 25])
    for n in COUNTS:
        if n < 10:
            want = n / 10
        elif n < 25:
            want = 0.5 ** ((n - 10) // 3)
        else:
            want = 7.0
        assert s(n) == pytest.approx(want, rel=1e-15)
    # piecewise constant, nested joins
    pc = O.Join([O.Constant(1.0), O.Join([O.Constant(2.0), O.Constant(3.0)], [5])], [3])
    assert [pc(n) for n in range(10)] == [1, 1, 1, 2, 2, 2, 2, 2, 3, 3]


def test_from_function():
    s = O.Schedule.from_function(lambda t: 1.0 / (t + 1), name="harmonic")
    assert [s(c) for c in (0, 1, 3)] == [1.0, 0.5, 0.25]
    assert repr(s) == "Schedule.from_function(harmonic)"
    assert s == s and hash(s) == hash(s)


def test_user_schedule_subclass():
    @dataclasses.dataclass(frozen=True)
    class Square(O.Schedule):
        k: float

        def compute(self, count):
            return self.k * count * count

    assert Square(0.5)(4) == 8.0
    rule = R.Descent(Square(1.0))
    x = torch.zeros(1, dtype=torch.float64)
    st = rule.init(x)
    steps = []
    for _ in range(4):
        st, step = rule.apply(st, x, torch.ones(1, dtype=torch.float64))
        steps.append(step.item())
    assert steps == [0.0, 1.0, 4.0, 9.0]


def test_schedules_are_hashable_frozen_and_readable():
    s = O.WarmupCosine(0.0, 1e-3, 10, 100)
    assert s == O.WarmupCosine(0.0, 1e-3, 10, 100)
    assert len({s, O.WarmupCosine(0.0, 1e-3, 10, 100), O.Constant(1.0)}) == 2
    assert repr(s).startswith("WarmupCosine(init=0.0, peak=0.001, warmup_steps=10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.peak = 1.0  # type: ignore[misc]
    j = O.Join([O.Constant(1.0), O.Constant(2.0)], [4])
    assert hash(j) == hash(O.Join((O.Constant(1.0), O.Constant(2.0)), (4,)))


def test_schedule_module_doctests():
    result = doctest.testmod(S, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ============================================================================ validation
@pytest.mark.parametrize("make,exc,match", [
    (lambda: O.Constant("0.1"), TypeError, "value='0.1' is not a real number"),
    (lambda: O.Constant(float("nan")), ValueError, "value must be finite"),
    (lambda: O.Constant(True), TypeError, "not a real number"),
    (lambda: O.StepDecay(0.1, 0.5, 0), ValueError, "step_size must be at least 1"),
    (lambda: O.StepDecay(0.1, 0.5, 2.0), TypeError, "step_size=2.0 must be an integer"),
    (lambda: O.ExponentialDecay(0.1, 0.0), ValueError, "decay must be positive"),
    (lambda: O.ExponentialDecay(0.1, -0.5), ValueError, "decay must be positive"),
    (lambda: O.ExponentialDecay(0.1, 0.5, staircase=1), TypeError, "staircase"),
    (lambda: O.ExponentialDecay(0.1, 0.5, clip=math.inf), ValueError, "clip must be finite"),
    (lambda: O.InverseTimeDecay(0.1, -1.0), ValueError, "decay must be non-negative"),
    (lambda: O.WarmupCosine(0.0, 1.0, 10, 10), ValueError, "must exceed warmup_steps"),
    (lambda: O.WarmupCosine(0.0, 1.0, -1, 10), ValueError, "warmup_steps must be at least 0"),
    (lambda: O.WarmupCosine(0.0, 1.0, 1, 10, exponent=0.0), ValueError, "exponent"),
    (lambda: O.LinearRamp(0.0, 1.0, 0), ValueError, "steps must be at least 1"),
    (lambda: O.Join([O.Constant(1.0)], [3]), ValueError, "1 schedules need 0 boundaries"),
    (lambda: O.Join([O.Constant(1.0), 0.5], [3]), TypeError, r"schedules\[1\] is 0.5"),
    (lambda: O.Join([O.Constant(1.0)] * 3, [5, 5]), ValueError, "strictly increasing"),
    (lambda: O.Join([O.Constant(1.0)] * 2, [0]), ValueError, "at least 1"),
    (lambda: O.Join([], []), TypeError, "non-empty"),
    (lambda: O.Schedule.from_function(3.0), TypeError, "needs a function"),
])
def test_bad_schedule_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_counts_and_results():
    with pytest.raises(TypeError, match="non-negative integer"):
        O.Constant(1.0)(-1)
    with pytest.raises(TypeError, match="non-negative integer"):
        O.Constant(1.0)(1.5)
    with pytest.raises(TypeError, match="must return a real number"):
        O.Schedule.from_function(lambda t: "x")(0)
    with pytest.raises(TypeError, match="must return a real number"):
        O.Schedule.from_function(lambda t: math.nan)(0)
    with pytest.raises(TypeError, match="is a schedule, not a number"):
        float(O.Constant(1.0))


def test_rules_refuse_bare_functions_with_a_hint():
    with pytest.raises(TypeError, match=r"Schedule\.from_function"):
        R.Adam(lambda t: 0.1)
    with pytest.raises(TypeError, match="is not a number"):
        R.Descent("0.1")


def test_bad_schedule_values_fail_at_construction_naming_the_schedule():
    with pytest.raises(DomainError, match=r"learning rate cannot be negative.*LinearRamp"):
        R.Descent(O.LinearRamp(-1.0, 1.0, 4))
    with pytest.raises(TypeError, match="centred=3 must be True or False"):  # other fields
        R.RMSProp(O.Constant(0.1), centred=3)  # type: ignore[arg-type]


def test_bad_schedule_value_later_fails_at_that_step():
    rule = R.Descent(O.LinearRamp(0.1, -0.1, 2))  # 0.1, 0.0, then -0.1 from count 2
    x = torch.zeros(2)
    st = rule.init(x)
    for _ in range(2):
        st, _ = rule.apply(st, x, torch.ones(2))
    with pytest.raises(DomainError, match="at count 2"):
        rule.apply(st, x, torch.ones(2))


def test_wrong_state_is_explained():
    rule = R.Momentum(O.Constant(0.1))
    x = torch.zeros(2)
    with pytest.raises(TypeError, match="must be a ScheduledState"):
        rule.apply(torch.zeros(2), x, torch.ones(2))


# ============================================================================ arithmetic
def _params(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=g, dtype=dtype) for s in [(5,), (3, 4), (2, 2, 2)]]


def _grads(k, xs):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs]


def _run(rule, steps=12, batched=False, dtype=torch.float32):
    xs = _params(dtype)
    sts = init_all(rule, xs)
    for k in range(steps):
        gs = _grads(k, xs)
        sts = (step_batched if batched else step_all)(rule, sts, xs, gs)
    return xs, sts


def _inner(st):
    return st.state if type(st) is O.ScheduledState else st


CONSTANT_PAIRS = [
    (lambda v: R.Descent(v), 0.1),
    (lambda v: R.Momentum(v, 0.9), 0.01),
    (lambda v: R.Momentum(0.01, v), 0.9),
    (lambda v: R.Nesterov(v), 0.003),
    (lambda v: R.RMSProp(v, centred=True), 0.001),
    (lambda v: R.Adam(v, (0.9, 0.99)), 0.01),
    (lambda v: R.Adam(0.01, (v, 0.99)), 0.8),
    (lambda v: R.AdamW(0.01, (0.9, 0.999), v), 0.1),
    (lambda v: R.OptimiserChain(R.WeightDecay(v), R.Adam(0.01)), 0.05),
    (lambda v: R.OptimiserChain(R.ClipNorm(v), R.Descent(0.1)), 1.0),
    (lambda v: R.MixedPrecision(torch.float64, R.Adam(v)), 0.01),
    (lambda v: R.Lion(v), 0.001),
]


@pytest.mark.parametrize("make,value", CONSTANT_PAIRS)
@pytest.mark.parametrize("batched", [False, True])
def test_constant_schedule_equals_plain_float_bitwise(make, value, batched):
    xa, sa = _run(make(value), batched=batched)
    xb, sb = _run(make(O.Constant(value)), batched=batched)
    assert bits_equal(xa, xb)


SCHEDULED = [
    R.Descent(O.StepDecay(0.1, 0.5, 3)),
    R.Momentum(0.01, O.LinearRamp(0.5, 0.9, 6)),
    R.Adam(O.WarmupCosine(0.0, 0.01, 3, 10), (O.Constant(0.9), 0.999)),
    R.RMSProp(O.ExponentialDecay(0.01, 0.8), centred=True),
    R.OptimiserChain(R.WeightDecay(O.InverseTimeDecay(0.1, 0.5)), R.Adam(0.01)),
    R.OptimiserChain(R.AccumGrad(2), R.Descent(O.StepDecay(0.1, 0.5, 2))),
    R.MixedPrecision(torch.float64, R.Momentum(O.LinearRamp(0.1, 0.0, 8))),
    R.MixedPrecision(R.OptimiserChain(R.ClipGrad(O.Constant(0.5)), R.Adam(
        O.Join([O.LinearRamp(0.0, 0.01, 4), O.Constant(0.01)], [4])))),
]


@pytest.mark.parametrize("rule", SCHEDULED, ids=repr)
def test_scheduled_apply_equals_apply_many_bitwise(rule):
    xa, sa = _run(rule, batched=False)
    xb, sb = _run(rule, batched=True)
    assert bits_equal(xa, xb)
    assert bits_equal(sa, sb)


def test_apply_many_groups_by_count():
    rule = R.Descent(O.StepDecay(1.0, 0.5, 1))
    xs = [torch.zeros(2), torch.zeros(2), torch.zeros(2)]
    sts = [O.ScheduledState(0, None), O.ScheduledState(2, None), O.ScheduledState(0, None)]
    gs = [torch.ones(2)] * 3
    new, steps = rule.apply_many(sts, xs, gs)
    assert [s.count for s in new] == [1, 3, 1]
    assert [s[0].item() for s in steps] == [1.0, 0.25, 1.0]


def test_schedule_on_momentum_rho_is_used_per_step():
    rho = O.StepDecay(0.9, 0.5, 1)  # 0.9, 0.45, 0.225, ...
    rule = R.Momentum(0.1, rho)
    x = torch.zeros(1, dtype=torch.float64)
    st = rule.init(x)
    v = 0.0
    for k in range(6):
        st, step = rule.apply(st, x, torch.ones(1, dtype=torch.float64))
        v = (0.9 * 0.5**k) * v + 0.1 * 1.0
        assert step.item() == pytest.approx(v, rel=1e-15)
    assert st.count == 6


def test_weight_decay_lambda_schedule_inside_chain_equals_manual():
    lam = O.ExponentialDecay(0.1, 0.5)
    x0 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    x = x0.clone()
    st = O.setup(R.OptimiserChain(R.WeightDecay(lam), R.Descent(0.1)), x)
    ref = x0.clone()
    for k in range(5):
        g = torch.tensor([0.3, 0.1], dtype=torch.float64)
        st, x = O.update(st, x, g)
        ref = ref - 0.1 * (g + (0.1 * 0.5**k) * ref)
    torch.testing.assert_close(x, ref, rtol=1e-14, atol=0)
    assert st.state[0].count == 5 and st.state[1] is None


def test_accumgrad_counts_only_real_steps():
    rule = R.OptimiserChain(R.AccumGrad(3), R.Descent(O.StepDecay(1.0, 0.5, 1)))
    x = torch.zeros(1, dtype=torch.float64)
    st = rule.init(x)
    for _ in range(7):
        st, _ = rule.apply(st, x, torch.ones(1, dtype=torch.float64))
    assert st[1].count == 2  # the member ran after gradients 3 and 6 only


def test_user_rule_with_schedule_needs_no_change():
    @dataclasses.dataclass(frozen=True, repr=False)
    class Scale(O.AbstractRule):
        eta: float = 0.1

        def apply(self, state, x, dx):  # no init: the base's stateless init
            return state, dx * self.eta

    rule = Scale(O.LinearRamp(0.0, 1.0, 4))
    x = torch.zeros(1, dtype=torch.float64)
    st = rule.init(x)
    assert st == O.ScheduledState(0, None)
    out = []
    for _ in range(6):
        st, step = rule.apply(st, x, torch.ones(1, dtype=torch.float64))
        out.append(step.item())
    assert out == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert Scale(0.5).init(x) is None  # no schedule: the class's own method


def test_rules_without_schedules_are_untouched():
    r = R.Adam(0.01)
    assert "apply" not in vars(r) and "apply_many" not in vars(r) and "init" not in vars(r)
    assert r.apply.__func__ is R.Adam.apply  # type: ignore[attr-defined]
    assert not S.is_scheduled(r) and S.is_scheduled(R.Adam(O.Constant(0.01)))


def test_concrete_rule_cache_is_bounded():
    rule = R.Descent(O.StepDecay(1.0, 0.99, 1))
    x = torch.zeros(1)
    st = rule.init(x)
    for _ in range(50):
        st, _ = rule.apply(st, x, torch.ones(1))
    assert len(rule._fluxtrain_cache) <= S._CACHE_SIZE


def test_scheduled_rule_copies_and_pickles():
    rule = R.Adam(O.WarmupCosine(0.0, 0.01, 3, 10))
    for r2 in (copy.deepcopy(rule), pickle.loads(pickle.dumps(rule))):
        assert r2 == rule and hash(r2) == hash(rule)
        xa, _ = _run(rule, steps=5)
        xb, _ = _run(r2, steps=5)
        assert bits_equal(xa, xb)
        assert r2.apply.__self__ is r2


def test_rule_adjust_keeps_schedule_layout():
    rule = R.Adam(O.WarmupCosine(0.0, 0.01, 3, 10))
    assert rule.adjust(0.001).eta == O.Constant(0.001)
    assert rule.adjust(beta=(0.8, 0.9)).beta == (0.8, 0.9)
    assert rule.adjust(eta=O.StepDecay(0.1, 0.5, 2)).eta == O.StepDecay(0.1, 0.5, 2)
    beta_rule = R.Adam(0.01, (O.Constant(0.9), 0.999))
    assert beta_rule.adjust(beta=(0.8, 0.99)).beta == (O.Constant(0.8), O.Constant(0.99))


def test_tree_adjust_keeps_the_counter_and_starts_new_schedules():
    model = torch.nn.Linear(3, 2)
    st = O.setup(R.Momentum(O.StepDecay(0.1, 0.5, 2)), model)
    g = {"weight": torch.ones(2, 3), "bias": torch.ones(2)}
    for _ in range(3):
        O.update_(st, model, g)
    O.adjust_(st, O.LinearRamp(1.0, 0.0, 10))
    assert st.weight.state.count == 3
    O.adjust_(st, 0.05)  # a number: the counter survives (Constant)
    assert st.weight.state.count == 3 and st.weight.rule.eta == O.Constant(0.05)
    plain = O.setup(R.Adam(0.01), model)
    O.update_(plain, model, g)
    O.adjust_(plain, O.ExponentialDecay(0.01, 0.9))
    assert plain.weight.state.count == 0
    assert type(plain.weight.state.state) is R.AdamState
    O.update_(plain, model, g)  # and it trains
    assert plain.weight.state.count == 1
    # beta_t starts at beta and gains a factor per step: two Adam steps in all
    assert plain.weight.state.state.beta_t[0] == pytest.approx(0.9**3, rel=1e-6)


# ============================================================================ against torch
def test_warmup_cosine_adam_matches_torch_lambdalr():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ours = copy.deepcopy(ref)
    sched = O.WarmupCosine(1e-4, 1e-2, warmup_steps=10, decay_steps=60, end=1e-3)

    def lam(step: int) -> float:  # the equivalent multiplier of base_lr = peak
        alpha = 1e-3 / 1e-2
        if step < 10:
            return (1e-4 + (1e-2 - 1e-4) * step / 10) / 1e-2
        t = min(step - 10, 50)
        return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * t / 50)) + alpha

    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    st = O.setup(O.Adam(sched, (0.9, 0.999), 1e-8), ours)
    g = torch.Generator().manual_seed(1)
    start = [p.detach().clone() for p in ours.parameters()]
    for _ in range(70):
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, 1, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        opt.step()
        lr_sched.step()
        grads = torch.autograd.grad(torch.nn.functional.mse_loss(ours(x), y),
                                    list(ours.parameters()))
        O.update_(st, ours, dict(zip([n for n, _ in ours.named_parameters()], grads)))
    for a, b, s in zip(ours.parameters(), ref.parameters(), start):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - s).abs().max() > 1e-3
    assert st[0].weight.state.count == 70


# ============================================================================ old ExpDecay/InvDecay
def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _data(n=40):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def _loss(m, x, y):
    return ((m(x) - y) ** 2).mean()


OLD = {
    "Adam+ExpDecay": lambda: old.Optimiser(old.Adam(0.01), old.ExpDecay(1.0, 0.5, 10, 1e-3)),
    "Adam+ExpDecay(start)": lambda: old.Optimiser(old.Adam(0.01),
                                                  old.ExpDecay(1.0, 0.5, 5, 1e-2, 10)),
    "Adam+InvDecay": lambda: old.Optimiser(old.Adam(0.01), old.InvDecay(0.1)),
    "ExpDecay": lambda: old.ExpDecay(0.05, 0.5, 7, 1e-4),
}


@pytest.mark.parametrize("name", list(OLD))
def test_old_decays_give_the_same_numbers_after_translation(name):
    """An implicit-style run vs fluxtrain.setup's translation, explicit style, bit for bit."""
    data = _data()
    m_old = _model()
    opt = OLD[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
        ps = fluxtrain.params(m_old)
        for x, y in data:
            gs = fluxtrain.gradient(lambda x=x, y=y: _loss(m_old, x, y), ps)
            fluxtrain.update_(opt, ps, gs)
        m_new = _model()
        state = fluxtrain.setup(OLD[name](), m_new)
    for x, y in data:
        g = fluxtrain.gradient(lambda m, x=x, y=y: _loss(m, x, y), m_new)[0]
        fluxtrain.update_(state, m_new, g)
    for a, b in zip(m_old.parameters(), m_new.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(m_new.parameters()), next(_model().parameters()))


@pytest.mark.parametrize("eta,decay,step,clip,start", [
    (0.2, 0.5, 1, 1e-3, 0), (1.0, 0.5, 10, 1e-3, 0), (0.1, 0.1, 1000, 1e-4, 0),
    (1.0, 0.5, 5, 1e-2, 10), (1.0, 0.9, 3, 0.5, 6),
])
def test_exponential_decay_reproduces_the_old_expdecay_rate(eta, decay, step, clip, start):
    """The documented mapping: ExpDecay(eta, decay, step, clip, start)'s current rate at
    the n-th step is ExponentialDecay(eta, decay, step, start - 1, staircase, clip)(n-1)."""
    rule = R.ExpDecay(eta, decay, step, clip, start)
    s = O.ExponentialDecay(eta, decay, step, start=start - 1, staircase=True, clip=clip)
    x = torch.zeros(1, dtype=torch.float64)
    st = rule.init(x)
    for c in range(3 * step + start + 5):
        st, _ = rule.apply(st, x, torch.ones(1, dtype=torch.float64))
        assert s(c) == pytest.approx(st.eta, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.001, 0.1, 1.0, 3.7])
def test_inverse_time_decay_is_the_old_invdecay_factor_bitwise(gamma):
    rule = R.InvDecay(gamma)
    s = O.InverseTimeDecay(1.0, gamma, start=-1)
    x = torch.zeros(1, dtype=torch.float64)
    st = rule.init(x)
    for c in range(200):
        st, step = rule.apply(st, x, torch.ones(1, dtype=torch.float64))
        assert step.item() == s(c)


# ============================================================================ checkpoints
def test_checkpoint_round_trips_scheduled_states():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    rule = R.OptimiserChain(
        R.WeightDecay(O.Constant(1e-3)),
        R.Adam(O.Join([O.LinearRamp(0.0, 0.01, 3), O.ExponentialDecay(0.01, 0.9, 2, clip=1e-3)],
                      [3]), (0.9, O.StepDecay(0.999, 1.0, 5))),
    )
    st = O.setup(rule, model)
    g = torch.Generator().manual_seed(0)

    def step(s, m):
        x = torch.randn(8, 3, generator=g)
        gr = torch.autograd.grad(m(x).square().mean(), list(m.parameters()))
        O.update_(s, m, dict(zip([n for n, _ in m.named_parameters()], gr)))

    for _ in range(4):
        step(st, model)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": C.state_dict(st, model)}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = copy.deepcopy(model)
    m2.load_state_dict(ck["model"])
    st2 = C.load_state_dict(ck["opt"], m2)
    assert st2[0].weight.rule == rule
    assert st2[0].weight.state[1].count == 4
    g_state = g.get_state()
    for _ in range(5):
        step(st, model)
    g.set_state(g_state)
    for _ in range(5):
        step(st2, m2)
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_refuses_function_schedules():
    model = torch.nn.Linear(2, 1)
    st = O.setup(R.Descent(O.Schedule.from_function(lambda t: 0.1)), model)
    with pytest.raises(TypeError, match="wraps a Python function"):
        C.state_dict(st, model)


def test_checkpoint_unknown_schedule_is_a_clear_error():
    model = torch.nn.Linear(2, 1)
    d = C.state_dict(O.setup(R.Descent(O.Constant(0.1)), model), model)
    d["rules"][0]["fields"]["eta"]["__schedule__"]["type"] = "NoSuchSchedule"
    with pytest.raises(C.CheckpointError, match="unknown schedule 'NoSuchSchedule'"):
        C.load_state_dict(d, model)
