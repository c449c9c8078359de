"""Rule values: construction, defaults, repr, validation, adjust, bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fluxtrain.optimisers as O
from fluxtrain.core import check_grad
from fluxtrain.core import rules as R
from fluxtrain.errors import DomainError, FluxDeprecationWarning

# (rule class, field names in Optimisers.jl's order, defaults) -- reference §2 table
DEFAULTS = [
    (R.Descent, {"eta": 0.1}),
    (R.Momentum, {"eta": 0.01, "rho": 0.9}),
    (R.Nesterov, {"eta": 0.001, "rho": 0.9}),
    (R.RMSProp, {"eta": 0.001, "rho": 0.9, "epsilon": 1e-8, "centred": False}),
    (R.Rprop, {"eta": 1e-3, "ell": (0.5, 1.2), "gamma": (1e-6, 50.0)}),
    (R.Adam, {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8}),
    (R.Lion, {"eta": 0.001, "beta": (0.9, 0.999)}),
    (R.RAdam, {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8}),
    (R.AdaMax, {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8}),
    (R.OAdam, {"eta": 0.001, "beta": (0.5, 0.9), "epsilon": 1e-8}),
    (R.AdaGrad, {"eta": 0.1, "epsilon": 1e-8}),
    (R.AdaDelta, {"rho": 0.9, "epsilon": 1e-8}),
    (R.AMSGrad, {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8}),
    (R.NAdam, {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8}),
    (R.AdamW, {"eta": 0.001, "beta": (0.9, 0.999), "lambda_": 0.0, "epsilon": 1e-8,
               "couple": True}),
    (R.AdaBelief, {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-16}),
    (R.WeightDecay, {"lambda_": 5e-4}),
    (R.SignDecay, {"lambda_": 1e-3}),
    (R.ClipGrad, {"delta": 10.0}),
    (R.ClipNorm, {"omega": 10.0, "p": 2.0, "throw": True}),
    (R.InvDecay, {"gamma": 0.001}),
    (R.ExpDecay, {"eta": 0.001, "decay": 0.1, "decay_step": 1000, "clip": 1e-4, "start": 0}),
]


@pytest.mark.parametrize("cls,fields", DEFAULTS, ids=[c.__name__ for c, _ in DEFAULTS])
def test_fields_order_and_defaults(cls, fields):
    rule = cls()
    names = [f.name for f in dataclasses.fields(rule)]
    assert names == list(fields)
    for name, value in fields.items():
        got = getattr(rule, name)
        assert got == value and type(got) is type(value), (name, got)
    # positional construction in field order equals keyword construction
    assert cls(*fields.values()) == cls(**fields) == rule


def test_every_optimisers_jl_rule_is_exported():
    names = ("Descent Momentum Nesterov RMSProp Rprop Adam Lion RAdam AdaMax OAdam AdaGrad "
             "AdaDelta AMSGrad NAdam AdamW AdaBelief WeightDecay SignDecay ClipGrad ClipNorm "
             "AccumGrad MixedPrecision OptimiserChain InvDecay ExpDecay").split()
    for n in names:
        assert n in R.__all__ and getattr(O, n) is getattr(R, n)


def test_descent_default_is_exact_python_float():
    # DESIGN.md: Descent() steps by exactly 0.1 on float64 (not Float32(0.1))
    x = torch.zeros(1, dtype=torch.float64)
    _, step = R.Descent().apply(None, x, torch.ones(1, dtype=torch.float64))
    assert step.item() == 0.1


def test_repr():
    assert repr(R.Adam()) == "Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)"
    assert repr(R.Momentum(0.1)) == "Momentum(eta=0.1, rho=0.9)"
    assert repr(R.Momentum(1 / 30)) == "Momentum(eta=0.03333333333333333, rho=0.9)"
    assert repr(R.ClipGrad()) == "ClipGrad(delta=10.0)"
    assert repr(R.AdamW()) == (
        "AdamW(eta=0.001, beta=(0.9, 0.999), lambda_=0.0, epsilon=1e-08, couple=True)"
    )
    assert repr(R.RMSProp()) == "RMSProp(eta=0.001, rho=0.9, epsilon=1e-08, centred=False)"
    assert repr(R.OptimiserChain(R.ClipGrad(1.0), R.Descent(0.1))) == (
        "OptimiserChain(ClipGrad(delta=1.0), Descent(eta=0.1))"
    )
    assert repr(R.AccumGrad(2)) == "AccumGrad(n=2)"
    assert repr(R.MixedPrecision(torch.float64, R.Descent())) == (
        "MixedPrecision(dtype=torch.float64, rule=Descent(eta=0.1))"
    )


def test_positional_keyword_equivalence():
    assert R.Nesterov(rho=0.8, eta=0.1) == R.Nesterov(0.1, 0.8)
    assert R.AdamW(lambda_=0.3, eta=0.1) == R.AdamW(0.1, (0.9, 0.999), 0.3, 1.0e-8)
    assert R.Adam(0.01) == R.Adam(eta=0.01)
    assert R.Adam(eta=0.01, beta=(0.8, 0.99)).beta == (0.8, 0.99)
    assert R.RMSProp(0.1, centered=True) == R.RMSProp(0.1, centred=True)
    assert R.RMSProp(0.1, centered=True).centred is True
    assert R.ClipNorm(5, 1, throw=False) == R.ClipNorm(omega=5.0, p=1.0, throw=False)
    assert R.MixedPrecision(R.Adam()) == R.MixedPrecision(torch.float32, R.Adam())


def test_integers_become_floats():
    assert R.ClipGrad(13).delta == 13.0 and type(R.ClipGrad(13).delta) is float
    assert R.Descent(1).eta == 1.0


def test_rules_are_immutable_and_hashable():
    rule = R.Adam()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.eta = 0.1  # type: ignore[misc]
    chain = R.OptimiserChain(R.ClipGrad(), rule)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chain.opts = ()  # type: ignore[misc]
    assert len({R.Adam(), R.Adam(), R.Adam(0.1)}) == 2


# ------------------------------------------------------------------ bad hyperparameters
@pytest.mark.parametrize(
    "make,exc,words",
    [
        (lambda: R.Adam("0.1"), TypeError, ["eta", "not a number"]),
        (lambda: R.Adam(0.1 + 1j), TypeError, ["eta", "complex"]),
        (lambda: R.Momentum(0.1, rho=1j), TypeError, ["rho", "complex"]),
        (lambda: R.Adam(beta=(0.9,)), ValueError, ["beta", "2 elements"]),
        (lambda: R.Adam(beta=(0.9, 0.99, 0.999)), ValueError, ["beta", "2 elements"]),
        (lambda: R.Adam(beta=0.9), TypeError, ["beta", "not a tuple"]),
        (lambda: R.Adam(beta=[0.9, 0.999]), TypeError, ["beta", "not a tuple"]),
        (lambda: R.Adam(beta=(0.9, "x")), TypeError, ["beta[1]", "not a number"]),
        (lambda: R.Rprop(gamma=(1e-6, 2j)), TypeError, ["gamma[1]", "complex"]),
        (lambda: R.Adam(float("nan")), ValueError, ["eta", "NaN"]),
        (lambda: R.AdamW(couple=1), TypeError, ["couple", "True or False"]),
        (lambda: R.ClipNorm(throw="yes"), TypeError, ["throw"]),
        (lambda: R.AccumGrad(0), ValueError, ["at least one gradient"]),
        (lambda: R.AccumGrad(-2), ValueError, ["at least one gradient"]),
        (lambda: R.AccumGrad(2.0), TypeError, ["n", "integer"]),
        (lambda: R.ExpDecay(decay_step=0), ValueError, ["decay_step"]),
        (lambda: R.ExpDecay(decay_step=10.5), TypeError, ["decay_step", "integer"]),
        (lambda: R.MixedPrecision(torch.int32, R.Adam()), TypeError, ["dtype"]),
        (lambda: R.MixedPrecision("Adam"), TypeError, ["rule"]),
        (lambda: R.OptimiserChain(R.Adam(), "Descent"), TypeError, ["member 1", "not a rule"]),
        (lambda: R.OptimiserChain(R.MixedPrecision(R.Adam())), ValueError,
         ["MixedPrecision", "wrap the entire OptimiserChain"]),
    ],
)
def test_bad_hyperparameters(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize(
    "cls", [R.Descent, R.Momentum, R.Nesterov, R.RMSProp, R.Rprop, R.Adam, R.Lion, R.RAdam,
            R.AdaMax, R.OAdam, R.AdaGrad, R.AMSGrad, R.NAdam, R.AdamW, R.AdaBelief, R.ExpDecay]
)
def test_negative_eta_is_domain_error(cls):
    with pytest.raises(DomainError, match="learning rate cannot be negative"):
        cls(-0.1)
    with pytest.raises(DomainError):
        cls().adjust(-1.0)  # adjust re-validates


def test_gradient_shape_mismatch_names_both_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError) as info:
        check_grad(x, torch.zeros(3, 2))
    assert "(3, 2)" in str(info.value) and "(2, 3)" in str(info.value)
    with pytest.raises(TypeError, match="must be a tensor"):
        check_grad(x, [[0.0] * 3] * 2)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize(
    "rule", [R.Descent(), R.Adam(), R.AccumGrad(2), R.OptimiserChain(R.ClipGrad(), R.Adam()),
             R.MixedPrecision(R.Adam()), R.InvDecay(), R.ExpDecay()], ids=repr
)
def test_integer_parameters_are_refused(rule, dtype):
    with pytest.raises(TypeError) as info:
        rule.init(torch.zeros(3, dtype=dtype))
    assert str(dtype) in str(info.value) and "floating-point" in str(info.value)


def test_integer_gradient_is_promoted_to_parameter_dtype():
    # Julia: Int * Float64 is Float64 (torch alone would give float32)
    x = torch.zeros(3, dtype=torch.float64)
    _, step = R.Descent(0.1).apply(None, x, torch.tensor([4, 5, 6]))
    assert step.dtype == torch.float64 and step.tolist() == [4 * 0.1, 5 * 0.1, 6 * 0.1]


def test_clipnorm_nonfinite_norm():
    x = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, 10.0, math.nan], dtype=torch.float64)
    with pytest.raises(DomainError, match="2.0-norm nan") as info:
        R.ClipNorm(10.0).apply(None, x, g)
    assert "(3,)" in str(info.value)
    with pytest.raises(DomainError, match="inf"):
        R.ClipNorm(10.0, 1.0).apply(None, x, torch.tensor([1.0, 10.0, math.inf]))
    # throw=False: an Inf entry under p=1 makes the factor 0 and the entry NaN
    _, step = R.ClipNorm(5.0, 1.0, throw=False).apply(
        None, x, torch.tensor([1.0, 10.0, math.inf], dtype=torch.float64)
    )
    assert step[0].item() == 0.0 and step[1].item() == 0.0 and math.isnan(step[2].item())
    # a zero gradient: omega/0 = Inf, factor 1
    _, step = R.ClipNorm(1.0).apply(None, x, torch.zeros(3, dtype=torch.float64))
    assert step.tolist() == [0.0, 0.0, 0.0]


def test_clipnorm_orders():
    x = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    _, s = R.ClipNorm(10.0).apply(None, x, g)
    assert torch.linalg.vector_norm(s).item() == pytest.approx(10.0, rel=1e-15)
    _, s = R.ClipNorm(5.0, 1.0).apply(None, x, g)
    assert s.abs().sum().item() == pytest.approx(5.0, rel=1e-15)
    _, s = R.ClipNorm(5.0, math.inf).apply(None, x, g)
    assert s.abs().max().item() == pytest.approx(5.0, rel=1e-15)
    _, s = R.ClipNorm(1000.0, 2.0).apply(None, x, g)
    assert torch.equal(s, g)  # below the threshold: factor exactly 1


# ------------------------------------------------------------------ adjust
def test_adjust_rule_level():
    assert R.Momentum(0.1, 0.9).adjust(0.2) == R.Momentum(0.2, 0.9)
    assert R.Momentum(0.1, 0.9).adjust(eta=0.3, rho=0.7) == R.Momentum(0.3, 0.7)
    assert R.Momentum().adjust(zeta="ignored") == R.Momentum()  # unknown keywords ignored
    assert R.ClipGrad(2.0).adjust(0.2) == R.ClipGrad(2.0)  # no eta field
    assert R.AdaDelta().adjust(0.2) == R.AdaDelta()
    assert R.AdamW().adjust(lambda_=0.1).lambda_ == 0.1
    with pytest.raises(ValueError, match="something to act on"):
        R.Adam().adjust()
    with pytest.raises(ValueError, match="2 elements"):
        R.Adam().adjust(beta=(0.9,))


def test_adjust_chain_forwards_to_every_member():
    c = R.OptimiserChain(R.ClipGrad(2.0), R.Adam(), R.WeightDecay(), R.AdamW())
    c2 = c.adjust(0.2)
    assert c2.opts[0] == R.ClipGrad(2.0) and c2.opts[1].eta == 0.2 and c2.opts[3].eta == 0.2
    c3 = c.adjust(delta=2.5, lambda_=0.01)
    assert c3.opts[0].delta == 2.5 and c3.opts[2].lambda_ == 0.01 and c3.opts[3].lambda_ == 0.01
    assert c3.opts[1] == R.Adam()


def test_adjust_rmsprop_centred_refused():
    with pytest.raises(ValueError, match="centred"):
        R.RMSProp().adjust(centred=True)
    # `centered` is not a field: ignored, like any unknown keyword
    assert R.RMSProp().adjust(centered=True) == R.RMSProp()


def test_adjust_weightdecay_gamma_is_deprecated():
    with pytest.warns(FluxDeprecationWarning, match="lambda_"):
        wd = R.WeightDecay().adjust(gamma=0.1)
    assert wd == R.WeightDecay(0.1)


def test_adjust_mixed_precision_forwards():
    mp = R.MixedPrecision(torch.float64, R.Adam(1e-3))
    mp2 = mp.adjust(2e-3)
    assert isinstance(mp2, R.MixedPrecision) and mp2.dtype == torch.float64
    assert mp2.rule == R.Adam(2e-3)
    assert mp.adjust(beta=(0.8, 0.9)).rule.beta == (0.8, 0.9)


def test_states_are_named_tuples():
    x = torch.zeros(2)
    st = R.Adam().init(x)
    assert st.m is st[0] and st.beta_t == (0.8999999761581421, 0.9990000128746033)  # float32
    assert R.RAdam().init(x).t == 1
    assert R.RMSProp().init(x).lin is False
    assert R.AccumGrad(3).init(x).counter == 1
    assert R.ExpDecay().init(x) == R.ExpDecayState(0, 0.001)
    assert R.InvDecay().init(x) == 1
    assert R.OptimiserChain(R.ClipGrad(), R.Descent()).init(x) == (None, None)
    assert R.OptimiserChain().init(x) == ()
    st = R.AdaGrad().init(torch.zeros(2, dtype=torch.float64))
    assert st.tolist() == [1e-8, 1e-8]  # AdaGrad starts at epsilon
