"""Old optimisers: reference values (flux-implicit-full.md §1.5, A10-A12), fields, defaults,
mutable hyperparameters, state keyed by identity, deprecated aliases."""

import gc
import warnings

import pytest
import torch

import fluxtrain
from fluxtrain import optimise as old
from fluxtrain.optimise.optimisers import step_many_

F64 = torch.float64


def t(*v):
    return torch.tensor(v, dtype=F64)


# §1.5: x = [1, -2], gradients [0.5, -0.25] then [0.1, 0.4]; x after step 1 and step 2.
REFERENCE = [
    (lambda: old.Descent(), [0.95, -1.975], [0.94, -2.015]),
    (lambda: old.Momentum(), [0.995, -1.9975], [0.9895, -1.99925]),
    (lambda: old.Nesterov(), [0.99905, -1.999525], [0.998455, -2.0000825]),
    (
        lambda: old.RMSProp(),
        [0.9968377225398316, -1.9968377227398315],
        [0.9961853945093313, -1.9995578041585327],
    ),
    (
        lambda: old.Adam(),
        [0.99900000002, -1.99900000004],
        [0.9981969590638465, -1.9992761130237564],
    ),
    (lambda: old.RAdam(), [0.9995, -1.99975], [0.9992105263157895, -1.9998421052631579]),
    (
        lambda: old.AdaMax(),
        [0.99900000002, -1.99900000004],
        [0.9984204731362858, -1.9992302631921381],
    ),
    (
        lambda: old.OAdam(),
        [0.99800000004, -1.99800000008],
        [0.997673065055109, -2.0000868514170715],
    ),
    (
        lambda: old.AdaGrad(),
        [0.9000000039999998, -1.9000000119999982],
        [0.8803883912479431, -1.9847998386971402],
    ),
    (
        lambda: old.AdaDelta(),
        [0.9996837722972287, -1.9996837724869652],
        [0.9995915192052794, -2.000068449873619],
    ),
    (
        lambda: old.AMSGrad(),
        [0.9968377869509664, -1.9968379801764522],
        [0.9934252578554759, -1.9980113210871286],
    ),
    (
        lambda: old.NAdam(),
        [0.9985255784237791, -1.9985255784532823],
        [0.997872528490494, -1.9993313230916845],
    ),
    (
        lambda: old.AdaBelief(),
        [0.9988888888888892, -1.99888888888889],
        [0.9979834536587793, -1.9991823762174281],
    ),
    (
        lambda: old.AdamW(0.001, (0.9, 0.999), 0.1),
        [0.89900000002, -1.79900000004],
        [0.8082969590618465, -1.6193761130197564],
    ),
    (
        lambda: old.InvDecay(),
        [0.5004995004995004, -1.7502497502497503],
        [0.40069910129790365, -2.1494513470561376],
    ),
    (lambda: old.WeightDecay(0.1), [0.4, -1.55], [0.26, -1.795]),
    (lambda: old.ClipValue(0.3), [0.7, -1.75], [0.6, -2.05]),
    (
        lambda: old.ClipNorm(0.3),
        [0.7316718427000253, -1.8658359213500126],
        [0.6589111551891254, -2.156878671393612],
    ),
]


@pytest.mark.parametrize(
    "make,x1,x2", REFERENCE, ids=lambda v: "" if not callable(v) else type(v()).__name__
)
def test_reference_values(make, x1, x2):
    opt = make()
    x = t(1.0, -2.0)
    ps = fluxtrain.Params([x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
        fluxtrain.update_(opt, ps, fluxtrain.Grads({x: t(0.5, -0.25)}, ps))
        assert x.tolist() == pytest.approx(x1, rel=1e-14, abs=1e-15)
        fluxtrain.update_(opt, x, t(0.1, 0.4))
    assert x.tolist() == pytest.approx(x2, rel=1e-14, abs=1e-15)


def test_expdecay_A10():
    o = old.ExpDecay(0.2, 0.5, 1, 1e-3)
    p = t(0.0)
    got = [o.apply(p, t(1.0)).item() for _ in range(8)]
    assert got == [max(0.2 * 0.5**k, 1e-3) for k in range(1, 9)]
    o = old.ExpDecay(0.2, 0.5, 1, 1e-3, 4)
    p = t(0.0)
    got = [o.apply(p, t(1.0)).item() for _ in range(8)]
    assert got == [max(0.2 * 0.5 ** max(k - 4, 0), 1e-3) for k in range(1, 9)]


def test_expdecay_long_run_decays_at_1000_2000_3000_4000():
    o = old.ExpDecay(0.1, 0.1, 1000, 1e-4)
    p = t(0.0)
    changes = []
    eta = o.eta
    for step in range(1, 6001):
        g = t(1.0)
        s = o.apply(p, g)
        assert s.item() == o.eta * g.item()  # eta read after the call
        if o.eta != eta:
            changes.append(step)
            eta = o.eta
    assert changes == [1000, 2000, 3000, 4000]
    assert o.eta == o.clip


def test_expdecay_user_assignment_resets_current_rate():
    o = old.ExpDecay(0.2, 0.5, 1, 1e-3)
    p = t(0.0)
    o.apply(p, t(1.0))
    o.eta = 0.4
    assert o.apply(p, t(1.0)).item() == 0.2  # continues from the assigned rate, decayed once


def test_fields_and_defaults():
    assert old.Descent().eta == 0.1
    m = old.Momentum()
    assert (m.eta, m.rho) == (0.01, 0.9)
    assert (old.Nesterov().eta, old.Nesterov().rho) == (0.001, 0.9)
    r = old.RMSProp()
    assert (r.eta, r.rho, r.epsilon) == (0.001, 0.9, 1e-8)
    a = old.Adam()
    assert (a.eta, a.beta, a.epsilon) == (0.001, (0.9, 0.999), 1e-8)
    assert old.OAdam().beta == (0.5, 0.9)
    assert (old.AdaGrad().eta, old.AdaGrad().epsilon) == (0.1, 1e-8)
    assert (old.AdaDelta().rho, old.AdaDelta().epsilon) == (0.9, 1e-8)
    assert old.WeightDecay().wd == 0
    assert old.ClipValue(2).thresh == 2 and old.ClipNorm(3).thresh == 3
    assert old.InvDecay().gamma == 0.001
    e = old.ExpDecay()
    assert (e.eta, e.decay, e.decay_step, e.step, e.clip, e.start) == (
        0.001,
        0.1,
        1000,
        1000,
        1e-4,
        0,
    )
    w = old.AdamW()
    assert isinstance(w, old.Optimiser) and isinstance(w[0], old.Adam) and w[1].wd == 0
    with pytest.raises(TypeError):
        old.ClipValue()
    assert fluxtrain.Adam is old.Adam and fluxtrain.OptimiserChain is old.Optimiser
    assert fluxtrain.ClipGrad is old.ClipValue
    assert isinstance(fluxtrain.Adam(), old.AbstractOptimiser)


def test_mutable_hyperparameter_takes_effect_next_step():
    opt = old.Descent(0.1)
    x = t(1.0)
    step_many_(opt, [x], [t(1.0)])
    opt.eta = 0.01
    step_many_(opt, [x], [t(1.0)])
    assert x.item() == pytest.approx(0.89, abs=1e-15)
    chain = old.AdamW(0.1)
    chain[0].eta = 0.0
    y = t(1.0)
    step_many_(chain, [y], [t(1.0)])
    assert y.item() == 1.0


def test_bad_hyperparameter_refused_at_assignment():
    opt = old.Adam()
    with pytest.raises(fluxtrain.DomainError, match="negative"):
        opt.eta = -1.0
    assert opt.eta == 0.001
    with pytest.raises(TypeError, match="beta"):
        opt.beta = 0.9
    with pytest.raises(TypeError, match="not an old optimiser"):
        old.Optimiser(old.Adam(), fluxtrain.optimisers.Adam())


def test_state_per_parameter_by_identity_and_not_kept_alive():
    opt = old.Momentum(0.1)
    x = torch.ones(3)
    twin = torch.ones(3)  # equal values, different tensor
    step_many_(opt, [x], [torch.ones(3)])
    assert x in opt.state and twin not in opt.state
    assert len(opt.state) == 1
    step_many_(opt, [twin], [torch.ones(3)])
    assert len(opt.state) == 2
    del x
    gc.collect()
    assert len(opt.state) == 1


def test_state_continues_across_calls_and_params_objects():
    x1, x2 = t(1.0), t(1.0)
    opt1, opt2 = old.Momentum(0.1), old.Momentum(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            fluxtrain.update_(
                opt1, fluxtrain.Params([x1]), fluxtrain.Grads({x1: t(1.0)}, fluxtrain.Params([x1]))
            )
            fluxtrain.update_(opt2, x2, t(1.0))
    assert torch.equal(x1, x2)
    assert x1.item() == pytest.approx(1 - 0.1 - 0.19 - 0.271)


def test_optimiser_is_list_like():
    a, c = old.ClipValue(1.0), old.Descent()
    o = old.Optimiser(a, old.Adam())
    assert len(o) == 2 and o[0] is a and o.last() is o[1]
    o.push(c)
    assert o[-1] is c and list(o)[2] is c
    sub = o[1:]
    assert isinstance(sub, old.Optimiser) and sub[0] is o[1]
    o[0] = old.ClipNorm(1.0)
    assert isinstance(o[0], old.ClipNorm)
    assert old.Optimiser([a, c]).os == [a, c]


def test_deprecated_aliases_warn_at_caller():
    for alias, cls in [
        ("ADAM", old.Adam),
        ("NADAM", old.NAdam),
        ("RADAM", old.RAdam),
        ("OADAM", old.OAdam),
        ("ADAGrad", old.AdaGrad),
        ("ADADelta", old.AdaDelta),
    ]:
        with pytest.warns(
            fluxtrain.FluxDeprecationWarning, match=f"{alias} is deprecated, use {cls.__name__}"
        ) as rec:
            line = __import__("inspect").currentframe().f_lineno + 1
            o = getattr(fluxtrain, alias)(0.1)
        assert isinstance(o, cls) and o.eta == 0.1 if hasattr(o, "eta") else True
        assert rec[0].filename == __file__ and rec[0].lineno == line
        assert "fluxtrain-migrate" in str(rec[0].message)
    with pytest.warns(fluxtrain.FluxDeprecationWarning, match="ADAMW is deprecated, use AdamW"):
        o = old.ADAMW(0.1)
    assert isinstance(o, old.Optimiser)


def test_clipping_A11():
    torch.manual_seed(0)
    w = torch.randn(10, 10, dtype=F64)
    x = 1000 * torch.randn(10, dtype=F64)
    g = fluxtrain.implicit.gradient.gradient_implicit(lambda: (w @ x).sum(), fluxtrain.Params([w]))[
        w
    ]
    assert (old.ClipValue(1.0).apply(w, g).abs() <= 1).all()
    assert torch.linalg.norm(old.ClipNorm(1.0).apply(w, g)) <= 1 + 1e-12


def test_update_with_index_gradient_A12():
    w = torch.ones(3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = fluxtrain.params(w)
        gs = fluxtrain.gradient(lambda: w[0], ps)
        fluxtrain.update_(old.Descent(0.1), ps, gs)
    assert w.tolist() == [0.9, 1.0, 1.0]


def test_convergence_A8_scaled():
    """A8 scaled down: 2000 steps on a 4x4 problem instead of 10^5 on 10x10."""
    torch.manual_seed(84)
    w = torch.randn(4, 4, dtype=F64)
    for opt in [
        old.AdamW(0.01),
        old.AdaGrad(0.5),
        old.Adam(0.01),
        old.Momentum(0.05),
        old.Descent(0.1),
    ]:
        torch.manual_seed(42)
        w2 = torch.randn(4, 4, dtype=F64)
        ps = fluxtrain.Params([w2])
        for _ in range(2000):
            x = torch.rand(4, dtype=F64)
            gs = fluxtrain.implicit.gradient.gradient_implicit(
                lambda: ((w @ x - w2 @ x) ** 2).mean(), ps
            )
            fluxtrain.implicit.train.update_implicit(opt, ps, gs)
        xs = torch.rand(4, 4, dtype=F64)
        assert ((w @ xs - w2 @ xs) ** 2).mean() < 0.01, opt
