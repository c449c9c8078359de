"""Issue 4 acceptance 1: implicit steps == explicit steps of the translation, bit for bit,
and switching style mid-run (setup(old_opt, model)) loses nothing."""

import warnings

import pytest
import torch

import fluxtrain
from fluxtrain import optimise as old
from fluxtrain import optimisers as new
from fluxtrain.gradients import gradient_explicit
from fluxtrain.implicit.gradient import gradient_implicit
from fluxtrain.implicit.params import collect_params
from fluxtrain.implicit.train import update_implicit

FACTORIES = {
    "Descent": lambda: old.Descent(0.05),
    "Momentum": lambda: old.Momentum(0.02, 0.8),
    "Nesterov": lambda: old.Nesterov(0.01, 0.9),
    "RMSProp": lambda: old.RMSProp(0.003),
    "Adam": lambda: old.Adam(0.01),
    "RAdam": lambda: old.RAdam(0.01),
    "AdaMax": lambda: old.AdaMax(0.01),
    "OAdam": lambda: old.OAdam(0.01),
    "AdaGrad": lambda: old.AdaGrad(0.05),
    "AdaDelta": lambda: old.AdaDelta(0.9),
    "AMSGrad": lambda: old.AMSGrad(0.01),
    "NAdam": lambda: old.NAdam(0.01),
    "AdamW": lambda: old.AdamW(0.01, (0.9, 0.999), 0.01),
    "AdaBelief": lambda: old.AdaBelief(0.01),
    "InvDecay": lambda: old.Optimiser(old.Descent(0.05), old.InvDecay(0.1)),
    "ExpDecay": lambda: old.ExpDecay(0.01, 0.5, 10, 1e-4),
    "WeightDecay": lambda: old.Optimiser(old.WeightDecay(0.1), old.Descent(0.05)),
    "ClipValue": lambda: old.ClipValue(0.05),
    "ClipNorm": lambda: old.ClipNorm(0.1),
    "Optimiser3": lambda: old.Optimiser(old.ClipNorm(1.0), old.Momentum(0.01), old.InvDecay(0.01)),
}

STEPS = 50


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def batches():
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(STEPS)
    ]


def lossf(m, x, y):
    return ((m(x) - y) ** 2).mean()


def implicit_steps(model, opt, data):
    ps = collect_params(model)
    for x, y in data:
        gs = gradient_implicit(lambda: lossf(model, x, y), ps)
        update_implicit(opt, ps, gs)


def explicit_steps(model, state, data):
    for x, y in data:
        g = gradient_explicit(lambda m: lossf(m, x, y), model)[0]
        new.update_(state, model, g)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_bits_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        assert torch.isfinite(x).all()
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_implicit_equals_explicit_translation_bit_for_bit(name):
    data = batches()
    m_old = make_model()
    opt = FACTORIES[name]()
    implicit_steps(m_old, opt, data)

    m_new = make_model()
    rule = old.translate(FACTORIES[name]())
    assert isinstance(rule, new.AbstractRule)
    explicit_steps(m_new, new.setup(rule, m_new), data)

    assert_bits_equal(snapshot(m_old), snapshot(m_new))
    # and training did something
    assert not all(torch.equal(a, b) for a, b in zip(snapshot(m_old), snapshot(make_model())))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_switch_style_midway_keeps_state(name):
    data = batches()
    m_ref = make_model()
    implicit_steps(m_ref, FACTORIES[name](), data)

    m = make_model()
    opt = FACTORIES[name]()
    implicit_steps(m, opt, data[:25])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
        state = fluxtrain.setup(opt, m)
    explicit_steps(m, state, data[25:])

    assert_bits_equal(snapshot(m_ref), snapshot(m))


def test_switch_without_carried_state_would_differ():
    """The carried state matters: a fresh translation after 25 steps gives other numbers."""
    data = batches()
    m_ref = make_model()
    implicit_steps(m_ref, old.Adam(0.01), data)
    m = make_model()
    opt = old.Adam(0.01)
    implicit_steps(m, opt, data[:25])
    explicit_steps(m, new.setup(old.translate(opt), m), data[25:])
    assert not all(torch.equal(a, b) for a, b in zip(snapshot(m_ref), snapshot(m)))


def test_carried_state_is_a_copy():
    m = make_model()
    opt = old.Momentum(0.1)
    implicit_steps(m, opt, batches()[:3])
    w = m[0].weight
    before = opt.state[w].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = fluxtrain.setup(opt, m)
    explicit_steps(m, st, batches()[3:6])
    assert torch.equal(opt.state[w], before)


def test_translation_table():
    t = old.translate
    assert t(old.ClipValue(0.5)) == new.ClipGrad(0.5)
    assert t(old.ClipNorm(2.0)) == new.ClipNorm(2.0)
    assert t(old.WeightDecay(0.3)) == new.WeightDecay(0.3)
    assert t(old.RMSProp(0.1, 0.8, 1e-7)) == new.RMSProp(0.1, 0.8, 1e-7)
    assert t(old.AdaBelief(0.1, (0.8, 0.9), 1e-6)) == new.AdaBelief(0.1, (0.8, 0.9), 1e-12)
    assert t(old.AdamW(0.1, (0.8, 0.9), 0.2)) == new.OptimiserChain(
        new.Adam(0.1, (0.8, 0.9), 1e-8), new.WeightDecay(0.2)
    )
    assert t(old.Optimiser(old.Descent(0.1), old.Momentum())) == new.OptimiserChain(
        new.Descent(0.1), new.Momentum(0.01, 0.9)
    )
    assert t(old.InvDecay(0.1)) == new.InvDecay(0.1)
    assert t(old.ExpDecay(0.1, 0.5, 10, 1e-3, 2)) == new.ExpDecay(0.1, 0.5, 10, 1e-3, 2)


def test_old_adamw_equals_new_adamw_uncoupled():
    """Old AdamW (Adam then WeightDecay) == new AdamW(couple=False), within rounding."""
    data = batches()[:10]
    m1, m2 = make_model(), make_model()
    implicit_steps(m1, old.AdamW(0.01, (0.9, 0.999), 0.01), data)
    explicit_steps(m2, new.setup(new.AdamW(0.01, (0.9, 0.999), 0.01, 1e-8, couple=False), m2), data)
    for a, b in zip(snapshot(m1), snapshot(m2)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_setup_of_old_optimiser_warns_and_names_new_rule():
    m = make_model()
    with pytest.warns(fluxtrain.FluxDeprecationWarning, match="Adam") as rec:
        fluxtrain.setup(old.Adam(), m)
    assert rec[0].filename == __file__


def test_explicit_train_with_old_optimiser_translates():
    data = batches()[:5]
    m1, m2 = make_model(), make_model()
    with pytest.warns(fluxtrain.FluxDeprecationWarning, match="Descent"):
        fluxtrain.train_(lossf, m1, data, old.Descent(0.1), progress=False)
    implicit_steps(m2, old.Descent(0.1), data)
    assert_bits_equal(snapshot(m1), snapshot(m2))
