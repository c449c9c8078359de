"""The audit of issue 20 item 1: every entry point of flux-implicit-full.md §1-5, one test
each, through the public API, against the reference's numbers or a hand-written formula.
The table in docs/implicit.md lists each entry point with the test that covers it (here, or
an older test file named there)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import fluxtrain
from fluxtrain import FluxDeprecationWarning, optimise
from fluxtrain import optimisers as O
from fluxtrain.errors import reset_deprecation_sites

F64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", FluxDeprecationWarning)


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def two_steps(opt: object) -> tuple[list[float], list[float]]:
    """§1.5's protocol through the public update_(opt, ps, gs)."""
    x = t(1.0, -2.0)
    ps = fluxtrain.Params([x])
    out = []
    for g in (t(0.5, -0.25), t(0.1, 0.4)):
        fluxtrain.update_(opt, ps, fluxtrain.Grads({x: g}, ps))
        out.append(x.tolist())
    return out[0], out[1]


# ------------------------------------------------------------------ §1 old optimisers
@pytest.mark.parametrize(
    ("make", "step1", "step2"),
    [
        (lambda: fluxtrain.Descent(), [0.95, -1.975], [0.94, -2.015]),
        (lambda: fluxtrain.Momentum(), [0.995, -1.9975], [0.9895, -1.99925]),
        (lambda: fluxtrain.Nesterov(), [0.99905, -1.999525], [0.998455, -2.0000825]),
        (lambda: fluxtrain.RMSProp(), [0.9968377225398316, -1.9968377227398315],
         [0.9961853945093313, -1.9995578041585327]),
        (lambda: fluxtrain.Adam(), [0.99900000002, -1.99900000004],
         [0.9981969590638465, -1.9992761130237564]),
        (lambda: fluxtrain.RAdam(), [0.9995, -1.99975], [0.9992105263157895, -1.9998421052631579]),
        (lambda: fluxtrain.AdaMax(), [0.99900000002, -1.99900000004],
         [0.9984204731362858, -1.9992302631921381]),
        (lambda: fluxtrain.OAdam(), [0.99800000004, -1.99800000008],
         [0.997673065055109, -2.0000868514170715]),
        (lambda: fluxtrain.AdaGrad(), [0.9000000039999998, -1.9000000119999982],
         [0.8803883912479431, -1.9847998386971402]),
        (lambda: fluxtrain.AdaDelta(), [0.9996837722972287, -1.9996837724869652],
         [0.9995915192052794, -2.000068449873619]),
        (lambda: fluxtrain.AMSGrad(), [0.9968377869509664, -1.9968379801764522],
         [0.9934252578554759, -1.9980113210871286]),
        (lambda: fluxtrain.NAdam(), [0.9985255784237791, -1.9985255784532823],
         [0.997872528490494, -1.9993313230916845]),
        (lambda: fluxtrain.AdaBelief(), [0.9988888888888892, -1.99888888888889],
         [0.9979834536587793, -1.9991823762174281]),
        (lambda: fluxtrain.AdamW(0.001, (0.9, 0.999), 0.1), [0.89900000002, -1.79900000004],
         [0.8082969590618465, -1.6193761130197564]),
        (lambda: fluxtrain.InvDecay(), [0.5004995004995004, -1.7502497502497503],
         [0.40069910129790365, -2.1494513470561376]),
        (lambda: fluxtrain.WeightDecay(0.1), [0.4, -1.55], [0.26, -1.795]),
        (lambda: fluxtrain.ClipValue(0.3), [0.7, -1.75], [0.6, -2.05]),
        (lambda: fluxtrain.ClipNorm(0.3), [0.7316718427000253, -1.8658359213500126],
         [0.6589111551891254, -2.156878671393612]),
    ],
)
def test_1_2_each_rule_reference_values(make, step1, step2) -> None:  # type: ignore[no-untyped-def]
    s1, s2 = two_steps(make())
    assert s1 == pytest.approx(step1, rel=0, abs=1e-12)
    assert s2 == pytest.approx(step2, rel=0, abs=1e-12)


def test_1_2_constructor_defaults_and_field_names() -> None:
    assert (fluxtrain.Descent().eta, fluxtrain.Momentum().rho, fluxtrain.Nesterov().eta) == \
        (0.1, 0.9, 0.001)
    assert fluxtrain.OAdam().beta == (0.5, 0.9) and fluxtrain.OAdam().eta == 0.001
    assert fluxtrain.AdaGrad().eta == 0.1 and fluxtrain.AdaDelta().rho == 0.9
    assert fluxtrain.WeightDecay().wd == 0 and fluxtrain.InvDecay().gamma == 0.001
    e = fluxtrain.ExpDecay()
    assert (e.eta, e.decay, e.step, e.clip, e.start) == (0.001, 0.1, 1000, 1e-4, 0)
    assert fluxtrain.ClipValue(2.0).thresh == 2.0 and fluxtrain.ClipNorm(3.0).thresh == 3.0
    for o, field in ((fluxtrain.Momentum(), "velocity"), (fluxtrain.Nesterov(), "velocity"),
                     (fluxtrain.RMSProp(), "acc"), (fluxtrain.AdaGrad(), "acc"),
                     (fluxtrain.Adam(), "state"), (fluxtrain.InvDecay(), "state"),
                     (fluxtrain.ExpDecay(), "current")):
        assert len(getattr(o, field)) == 0
    with pytest.raises(TypeError):
        fluxtrain.ClipValue()  # type: ignore[call-arg]  # no default, as Flux


def test_1_1_mutable_eta_and_chain_member_eta() -> None:
    opt = fluxtrain.Descent(0.1)
    x = t(1.0)
    fluxtrain.update_(opt, x, t(1.0))
    opt.eta = 0.5
    fluxtrain.update_(opt, x, t(1.0))
    assert x.tolist() == [1.0 - 0.1 - 0.5]
    w = fluxtrain.AdamW(0.001)
    w[0].eta = 0.01  # Flux's opt[1].eta, 0-based
    assert fluxtrain.setup(w, {"x": t(1.0)})["x"].rule.opts[0].eta == 0.01


def test_1_1_apply_returns_the_step_and_leaves_x() -> None:
    x = t(1.0, -2.0)
    step = fluxtrain.Descent(0.1).apply_(x, t(0.5, -0.25))
    assert step.tolist() == [0.05, -0.025] and x.tolist() == [1.0, -2.0]


def test_1_1_state_by_identity_continues_across_train_calls() -> None:
    x = t(0.0)
    opt = fluxtrain.Momentum(0.1, 0.9)
    for _ in range(2):  # two "epochs": the velocity carries over (v = 0.1 then 0.19)
        fluxtrain.train_(lambda: (x * 1.0).sum(), fluxtrain.params(x), [()], opt)
    assert x.tolist() == pytest.approx([-0.1 - 0.19])
    y = t(0.0)  # another array: its own state
    fluxtrain.update_(opt, y, t(1.0))
    assert y.tolist() == [-0.1] and len(opt.velocity) == 2


def test_1_2_optimiser_container_api() -> None:
    a, b, c = fluxtrain.ClipValue(1.0), fluxtrain.Descent(0.1), fluxtrain.WeightDecay(0.0)
    opt = fluxtrain.Optimiser(a, b)
    assert opt[0] is a and opt[-1] is b and opt.first() is a and opt.last() is b
    assert len(opt) == 2 and list(opt) == [a, b]
    sub = opt[0:1]
    assert isinstance(sub, fluxtrain.Optimiser) and sub[0] is a  # shares the member
    opt.push(c)
    opt[2] = fluxtrain.WeightDecay(0.5)
    assert len(opt) == 3 and opt[2].wd == 0.5
    assert fluxtrain.Optimiser([a, b])[1] is b  # Optimiser(vector)
    with pytest.raises(TypeError, match="not an old optimiser"):
        fluxtrain.Optimiser(a, O.Descent())


def test_1_2_expdecay_A10() -> None:
    o = fluxtrain.ExpDecay(0.2, 0.5, 1, 1e-3)
    p = t(0.0)
    assert [o.apply_(p, t(1.0)).item() for _ in range(8)] == \
        [0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625, 0.001]
    o = fluxtrain.ExpDecay(0.2, 0.5, 1, 1e-3, 4)
    assert [o.apply_(p, t(1.0)).item() for _ in range(8)] == \
        [0.2, 0.2, 0.2, 0.2, 0.1, 0.05, 0.025, 0.0125]


def test_1_3_names_aliases_and_flux_chain_names() -> None:
    reset_deprecation_sites()
    with pytest.warns(FluxDeprecationWarning, match="ADAM is deprecated, use Adam"):
        a = fluxtrain.ADAM(0.1)
    assert type(a) is fluxtrain.Adam and a.eta == 0.1
    for old, new in (("NADAM", "NAdam"), ("RADAM", "RAdam"), ("OADAM", "OAdam"),
                     ("ADAGrad", "AdaGrad"), ("ADADelta", "AdaDelta")):
        assert type(getattr(fluxtrain, old)()) is getattr(fluxtrain, new)
    assert isinstance(fluxtrain.ADAMW(), fluxtrain.Optimiser)
    assert fluxtrain.OptimiserChain is optimise.Optimiser
    assert fluxtrain.ClipGrad is optimise.ClipValue
    assert fluxtrain.Adam is optimise.Adam


def test_1_4_translation_adabelief_and_clipnorm() -> None:
    # translated AdaBelief keeps Flux 0.13's numbers (epsilon squared); ClipNorm's translation
    # throws on a non-finite norm
    st = fluxtrain.setup(fluxtrain.AdaBelief(), {"x": t(1.0, -2.0)})
    assert st["x"].rule.epsilon == pytest.approx(1e-16)
    assert isinstance(fluxtrain.setup(fluxtrain.ClipNorm(1.0), {"x": t(1.0)})["x"].rule, O.ClipNorm)
    st = fluxtrain.setup(fluxtrain.ClipValue(1.0), {"x": t(1.0)})
    assert isinstance(st["x"].rule, O.ClipGrad)


def test_1_2_complex_parameters_A14() -> None:
    for make in (fluxtrain.Adam, fluxtrain.RMSProp, fluxtrain.RAdam, fluxtrain.OAdam,
                 fluxtrain.AdaGrad, fluxtrain.AdaDelta, fluxtrain.NAdam, fluxtrain.AdaBelief):
        w = torch.zeros(1, 1, dtype=torch.complex64)
        x = torch.tensor([[1 + 1j]], dtype=torch.complex64)
        opt = make(1e-2)
        ps = fluxtrain.params(w)

        def loss(w: torch.Tensor = w, x: torch.Tensor = x) -> torch.Tensor:
            return ((w @ x - x.conj()).abs() ** 2).sum()

        losses = []
        for _ in range(10):
            losses.append(loss().item())
            fluxtrain.update_(opt, ps, fluxtrain.gradient(loss, ps))
        losses.append(loss().item())
        assert all(b < a for a, b in zip(losses, losses[1:])), (make, losses)


# ------------------------------------------------------------------ §2 params / Params / Grads
def test_2_1_params_algorithm_A1() -> None:
    lin = torch.nn.Linear(3, 2)
    lin.weight.data.fill_(1.0)
    ps = fluxtrain.params(torch.nn.Sequential(lin, torch.nn.Softmax(dim=0)))
    assert [p is q for p, q in zip(ps, (lin.weight, lin.bias))] == [True, True]
    bn = torch.nn.BatchNorm1d(2)
    assert [tuple(p.tolist()) for p in fluxtrain.params(bn)] == [(1.0, 1.0), (0.0, 0.0)]
    i1, i2 = torch.tensor([1, 2, 3]), torch.tensor([4])
    assert len(fluxtrain.params(i1, i2)) == 2 and len(fluxtrain.params([i1, i2])) == 2
    a = torch.tensor([3.0, 3.0, 3.0])
    ps = fluxtrain.params(1, torch.tensor([[2.0, 2.0]]), {"alpha": a, "beta": 4, "gamma": math.sin})
    assert [tuple(p.shape) for p in ps] == [(1, 2), (3,)]


def test_2_1_params_dedup_cycles_views_A2_A3() -> None:
    m = torch.nn.Linear(2, 2)
    assert len(fluxtrain.params(torch.nn.Sequential(m, m))) == 2  # shared layer once
    r: list = [None, m]
    r[0] = r  # a list that holds itself
    assert len(fluxtrain.params(r)) == 2
    mat = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert len(fluxtrain.params((None, mat, (3, mat, 4)))) == 1
    ps = fluxtrain.params({"m": mat, "a": mat.T})  # the transpose stands for mat
    assert len(ps) == 1 and ps[0] is mat
    v = torch.arange(3.0)[:2]  # a view of part of an array is kept as the view
    assert fluxtrain.params(v)[0] is v


def test_2_2_params_operations() -> None:
    x, y, z = torch.zeros(2), torch.zeros(1), torch.zeros(3)
    ps = fluxtrain.Params([x, y])
    assert len(fluxtrain.Params()) == len(fluxtrain.Params(())) == len(fluxtrain.Params([])) == 0
    assert ps[0] is x and ps[0:2] == [x, y] and list(ps) == [x, y]
    assert x in ps and z not in ps and torch.zeros(2) not in ps  # by identity
    ps.push(z, x)
    assert len(ps) == 3
    ps.delete(z)
    assert list(ps) == [x, y]
    assert fluxtrain.Params([x, y]) == fluxtrain.Params([x, y])
    assert fluxtrain.Params([x, y]) != fluxtrain.Params([y, x])
    u = ps.union([z])
    assert len(u) == 3 and len(ps) == 2
    ps.union_([z])
    assert len(ps) == 3
    assert list(fluxtrain.Params([x, y]).intersect([y, z])) == [y]
    assert len(fluxtrain.Params([x]).intersect(fluxtrain.Params([y]))) == 0
    assert fluxtrain.Params([x, y]).issetequal([y, x])
    c = ps.copy()
    assert c is not ps and list(c) == list(ps)
    assert [p.numel() for p in fluxtrain.Params([x, y])] == [2, 1]  # length.(ps)
    assert repr(fluxtrain.Params([y])) == "Params([tensor([0.])])"


def test_2_2_params_copy_to_and_from_flat_A7() -> None:
    x, y = torch.zeros(2), torch.zeros(1)
    fluxtrain.Params([x, y]).copy_(torch.tensor([1.0, 2.0, 3.0]))
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [3.0]
    assert fluxtrain.Params([x, y]).flatten().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="flat vector of 3 elements"):
        fluxtrain.Params([x, y]).copy_(torch.zeros(2))


def test_2_3_implicit_gradient_A5_A6() -> None:
    x, y = t(2.0, 1.0), t(2.0, 0.0)
    gs = fluxtrain.gradient(lambda: ((x - y) ** 2).sum(), fluxtrain.params(x, y))
    assert gs[x].tolist() == [0.0, 2.0] and gs[y].tolist() == [-0.0, -2.0]
    X = torch.tensor([[1.0, 2, 3], [4, 5, 6]])
    Y, Z = torch.tensor([7.0, 8]), torch.tensor([1.0, 10, 100])
    g = fluxtrain.gradient(lambda: (X * Y[:, None] * Z[None, :]).sum(), fluxtrain.Params([X, Y]))
    assert g[X].tolist() == [[7, 70, 700], [8, 80, 800]]
    assert Z not in g  # haskey(g, z) == false


def test_2_3_uses_accumulate_and_unused_is_none() -> None:
    w, u = t(3.0), t(1.0)
    gs = fluxtrain.gradient(lambda: (w * w).sum() + (2 * w).sum(), fluxtrain.params(w, u))
    assert gs[w].tolist() == [8.0] and gs[u] is None


def test_2_3_withgradient() -> None:
    w = t(3.0)
    val, grad = fluxtrain.withgradient(lambda: (w ** 2).sum(), fluxtrain.Params([w]))
    assert val.item() == 9.0 and grad[w].tolist() == [6.0]


def test_2_3_pullback_reuses_one_grads() -> None:
    w = t(3.0)
    y, back = fluxtrain.pullback(lambda: (w ** 2).sum(), fluxtrain.Params([w]))
    g1 = back(1.0)
    kept = g1.copy()
    g2 = back(None)  # Zygote: the same dictionary, all entries nothing now
    assert y.item() == 9.0 and g1 is g2 and g1[w] is None and kept[w].tolist() == [6.0]
    assert back(2.0)[w].tolist() == [12.0]


def test_2_3_output_must_be_a_real_scalar() -> None:
    w = t(1.0, 2.0)
    ps = fluxtrain.Params([w])
    with pytest.raises(TypeError, match="complex"):
        fluxtrain.gradient(lambda: (w * 1j).sum(), ps)
    with pytest.raises(ValueError, match="jacobian"):
        fluxtrain.gradient(lambda: w * 2, ps)
    with pytest.raises(TypeError, match="scalar"):
        fluxtrain.gradient(lambda: "loss", ps)


def test_2_3_nested_implicit_gradient_second_order() -> None:
    w = t(1.0, 2.0)
    ps = fluxtrain.Params([w])
    outer = fluxtrain.gradient(lambda: fluxtrain.gradient(lambda: (w ** 3).sum(), ps)[w].sum(), ps)
    assert outer[w].tolist() == [6.0, 12.0]  # d/dw sum(3 w^2) = 6 w


def test_2_4_grads_mapping_api() -> None:
    w, b = t(1.0, 2.0), t(0.0)
    ps = fluxtrain.Params([w, b])
    gs = fluxtrain.gradient(lambda: (w * w).sum(), ps)
    assert gs[w].tolist() == [2.0, 4.0] and gs[b] is None
    assert w in gs and gs.haskey(b) and torch.ones(1) not in gs
    assert gs.keys() is ps and len(gs) == 2
    assert [v is None for v in gs.values()] == [False, True]
    assert [p is q for (p, _), q in zip(gs.items(), (w, b))] == [True, True]
    assert [v is None for v in gs] == [False, True]  # iteration yields gradients
    with pytest.raises(KeyError):
        gs[torch.ones(1)]
    with pytest.raises(TypeError, match="Only tensors"):
        gs[3]
    gs[b] = t(5.0)
    assert gs[b].tolist() == [5.0]
    for g in gs:  # clamp in place through iteration
        g.clamp_(-1.0, 1.0)
    assert gs[w].tolist() == [1.0, 1.0]


def test_2_4_grads_broadcast_arithmetic_A7() -> None:
    w, b = t(1.0, 2.0), t(1.0)
    ps = fluxtrain.Params([w, b])
    g1 = fluxtrain.gradient(lambda: (w * w).sum(), ps)  # b unused: None
    g2 = fluxtrain.gradient(lambda: (w + 3 * b).sum(), ps)
    assert (2 * g1)[w].tolist() == (g1 * 2)[w].tolist() == [4.0, 8.0]
    assert (g1 / 2)[w].tolist() == [1.0, 2.0] and (-g1)[w].tolist() == [-2.0, -4.0]
    assert (g1 + g2)[b].tolist() == [6.0]  # None read as zeros (b is used twice in g2)
    assert (g1 - g2)[w].tolist() == [1.0, 3.0]
    assert g1.map(torch.sqrt)[b].tolist() == [0.0]
    other = fluxtrain.gradient(lambda: w.sum(), fluxtrain.Params([w]))
    with pytest.raises(ValueError, match="same Params"):
        g1 + other
    same = g1
    g1 += {w: t(1.0, 1.0), b: t(1.0)}  # `gs .+= IdDict(...)`: in place
    assert same is g1 and g1[w].tolist() == [3.0, 5.0] and g1[b].tolist() == [1.0]


def test_2_4_grads_merge_copy_and_flat() -> None:
    w, b, c = t(1.0), t(2.0), t(3.0)
    g1 = fluxtrain.gradient(lambda: (2 * w).sum(), fluxtrain.Params([w, b]))
    g2 = fluxtrain.gradient(lambda: (3 * c).sum(), fluxtrain.Params([c]))
    cp = g1.copy()
    assert cp.params is g1.params and cp._grads is not g1._grads
    g1.merge_(g2)
    assert len(g1) == 3 and g1[c].tolist() == [3.0]
    assert g1.flatten().tolist() == [2.0, 0.0, 3.0]
    g1.copy_(torch.tensor([7.0, 8.0, 9.0], dtype=F64))
    assert g1[b].tolist() == [8.0]


# ------------------------------------------------------------------ §3 update!
def test_3_update_one_array_copies_gradient_and_refuses_none() -> None:
    x, g = t(1.0, 2.0), t(1.0, 1.0)
    fluxtrain.update_(fluxtrain.Descent(0.1), x, g)
    assert x.tolist() == [0.9, 1.9] and g.tolist() == [1.0, 1.0]
    fill = torch.ones((), dtype=F64).expand(2)  # a lazy Fill (stride 0) as gradient, A12
    fluxtrain.update_(fluxtrain.Descent(0.1), x, fill)
    assert x.tolist() == pytest.approx([0.8, 1.8])
    with pytest.raises(TypeError, match="got None"):
        fluxtrain.update_(fluxtrain.Descent(0.1), x, None)


def test_3_update_params_skips_none_ignores_extras_needs_every_key() -> None:
    w, b, z = t(1.0), t(1.0), t(1.0)
    ps = fluxtrain.Params([w, b])
    fluxtrain.update_(fluxtrain.Descent(0.5), ps, {w: t(1.0), b: None, z: t(9.0)})
    assert (w.item(), b.item(), z.item()) == (0.5, 1.0, 1.0)
    with pytest.raises(KeyError, match="no entry"):
        fluxtrain.update_(fluxtrain.Descent(0.5), ps, {w: t(1.0)})
    assert w.item() == 0.5


def test_3_update_two_arguments_E11() -> None:
    reset_deprecation_sites()
    x = t(1.0, 2.0)
    with pytest.warns(FluxDeprecationWarning, match="`x -= dx`"):
        assert fluxtrain.update_(x, t(0.5, 0.5)) is x
    assert x.tolist() == [0.5, 1.5]


def test_3_user_defined_old_optimiser() -> None:
    class Halve(optimise.AbstractOptimiser):
        def __init__(self) -> None:
            self.state = {}

        def apply_(self, x, dx):  # type: ignore[no-untyped-def]
            self.state[x] = self.state.get(x, 0) + 1
            return dx / 2

    x = t(1.0)
    opt = Halve()
    ps = fluxtrain.Params([x])
    fluxtrain.update_(opt, ps, fluxtrain.Grads({x: t(1.0)}, ps))
    fluxtrain.update_(opt, x, t(1.0))
    fluxtrain.train_(lambda: (x * 1.0).sum(), fluxtrain.params(x), [()], opt)
    assert x.tolist() == [-0.5] and opt.state[x] == 3


# ------------------------------------------------------------------ §4 train!, callbacks
def test_4_1_train_items_splat_and_update_then_cb() -> None:
    w = t(0.0)
    order: list[object] = []
    data = [(1.0, 2.0), [3.0, 4.0]]
    fluxtrain.train_(lambda a, b: (w * (a + b)).sum(), fluxtrain.params(w), data,
                     fluxtrain.Descent(0.1), cb=[lambda: order.append(w.item()), lambda: None])
    assert order == pytest.approx([-0.3, -1.0])
    r = torch.rand(3, 3, dtype=F64)
    r0 = r.clone()
    fluxtrain.train_(lambda x: (x * x).sum(), fluxtrain.params(r), (r,), fluxtrain.Descent())
    assert torch.allclose(r, 0.8 * r0)  # A15e: one item, r itself, r <- 0.8 r


def test_4_1_nan_loss_domain_error_A16() -> None:
    m = torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        m.weight.zero_()
        m.bias.zero_()
    n = [0]

    def loss(i: int) -> torch.Tensor:
        n[0] += 1
        return (math.nan if i == 51 else 1.0) * m(t(1.0)).sum()

    msg = "Loss is NaN on data item 51, stopping training"
    with pytest.raises(fluxtrain.DomainError, match=msg):
        fluxtrain.train_(loss, fluxtrain.params(m), range(1, 101), fluxtrain.Descent(0.1))
    assert n[0] == 51 and m.weight.item() == pytest.approx(-5.0)


def test_4_2_stop_and_skip() -> None:
    w = t(0.0)
    seen: list[float] = []

    def loss(x: float) -> torch.Tensor:
        if x == 2.0:
            fluxtrain.skip()  # in the loss: no update for this item
        if x == 4.0:
            fluxtrain.stop()  # in the loss: stops before this item's update
        return (w * x).sum()

    fluxtrain.train_(loss, fluxtrain.params(w), [1.0, 2.0, 3.0, 4.0, 5.0], fluxtrain.Descent(1.0),
                     cb=lambda: seen.append(w.item()))
    assert w.item() == -4.0 and seen == [-1.0, -4.0]
    with pytest.raises(optimise.StopException):
        fluxtrain.stop()


def test_4_3_throttle_leading_and_trailing() -> None:
    from fluxtrain.implicit import callbacks

    now = [0.0]
    saved = callbacks._now, callbacks._schedule
    callbacks._now, callbacks._schedule = (lambda: now[0]), (lambda d, fn: None)
    try:
        got: list[int] = []
        g = fluxtrain.throttle(got.append, 1, leading=True, trailing=True)
        g(1), g(2), g(3)
        assert got == [1]
        now[0] = 1.01
        g._tick()  # type: ignore[attr-defined]  # the timer firing
        assert got == [1, 3]
    finally:
        callbacks._now, callbacks._schedule = saved


def test_4_4_epochs_logs_and_breaks(caplog: pytest.LogCaptureFixture) -> None:
    reset_deprecation_sites()
    with pytest.warns(FluxDeprecationWarning, match="for epoch in range"):
        it = fluxtrain.epochs(5)
    done = []
    with caplog.at_level("INFO", logger="fluxtrain.epochs"):
        for i in it:
            done.append(i)
            if i == 2:
                break
    assert done == [1, 2] and [r.getMessage() for r in caplog.records] == ["Epoch 1", "Epoch 2"]


def test_4_5_patience_early_stopping_plateau_A22() -> None:
    trigger = fluxtrain.patience(lambda: True, 3)
    assert [trigger() for _ in range(3)] == [False, False, True]
    v = [False, True, False, True, True, True]
    trigger = fluxtrain.patience(lambda i: v[i], 3)
    n = next(i for i in range(len(v)) if trigger(i))
    assert n == 5  # triggers on the 6th call: the loop breaks after 5 completed iterations

    es = fluxtrain.early_stopping(lambda x, y=1: x + y, 10, min_dist=3)
    n = next(n for n in range(100) if es(-n, y=-n))
    assert n == 9
    es = fluxtrain.early_stopping(lambda x: x, 10, distance=lambda b, s: s - b)
    assert not any(es(n) for n in range(100))
    es = fluxtrain.early_stopping(lambda x: x, 10, init_score=10)
    assert next(n for n in range(100) if es(n)) == 10

    seq = iter([-9, 8, -7, 6, -5, 4])
    pl = fluxtrain.plateau(lambda: next(seq), 3, init_score=10, min_dist=18)
    assert next(n for n in range(6) if pl()) == 3  # the 4th call: 4 epochs logged


def test_4_6_loadparams_deprecated() -> None:
    reset_deprecation_sites()
    lin = torch.nn.Linear(2, 1)
    with pytest.warns(FluxDeprecationWarning, match="load_state_dict"):
        fluxtrain.loadparams_(lin, [torch.ones(1, 2), torch.zeros(1)])
    assert lin.weight.tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match=r"Expected param size \(1, 2\), got \(2,\)"):
        fluxtrain.loadparams_(lin, [torch.ones(2), torch.zeros(1)])
    assert lin.weight.tolist() == [[1.0, 1.0]]


# ------------------------------------------------------------------ §5 explicit API and bridge
def test_5_1_setup_translates_old_rule_A17() -> None:
    lin = torch.nn.Linear(2, 1, dtype=F64)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    st = fluxtrain.setup(fluxtrain.Momentum(0.1), lin)
    data = [(t(0.2, -0.3), t(0.4))]
    loss = lambda m, x, y: (torch.nn.functional.leaky_relu(m(x)) - y).abs().sum() * 100  # noqa: E731
    fluxtrain.train_(loss, lin, data + [(t(0.2, -0.3), t(0.4))], st)
    assert lin.bias.tolist() == pytest.approx([10.19])
    assert st.weight.state.flatten().tolist() == pytest.approx([-2.018, 3.027])
    assert st.bias.state.tolist() == pytest.approx([-10.09])


def test_5_2_explicit_train_with_old_optimiser_and_non_tuple_items() -> None:
    m = {"w": t(0.0)}
    fluxtrain.train_(lambda m, x: (m["w"] * x).sum(), m, [1.0, 2.0], fluxtrain.Descent(0.1))
    assert m["w"].tolist() == pytest.approx([-0.3])


def test_5_4_stateful_rule_given_to_train_warns() -> None:
    m = {"w": t(0.0)}
    with pytest.warns(UserWarning, match="state.*will be discarded"):
        fluxtrain.train_(lambda m, x: (m["w"] * x).sum(), m, [1.0], fluxtrain.Adam())


@pytest.mark.parametrize(
    ("name", "call", "exc", "match"),
    [
        ("E1", lambda m, ps, st: fluxtrain.train_(lambda: 0.0, ps, [()], st), TypeError,
         "can't mix implicit Params with explicit state"),
        ("E2", lambda m, ps, st: fluxtrain.train_(lambda: 0.0, ps, [()], O.Adam()), TypeError,
         "can't mix implicit Params with the explicit rule"),
        ("E4", lambda m, ps, st: fluxtrain.train_(lambda m: 0.0, m, [()], st, cb=print),
         TypeError, "does not support callbacks"),
        ("E5", lambda m, ps, st: fluxtrain.update_(fluxtrain.Adam(), m, {}), TypeError,
         "Invalid input to update_"),
        ("E8", lambda m, ps, st: fluxtrain.update_(fluxtrain.Adam(), ps, ({},)), TypeError,
         "can't mix implicit Params with explicit gradients"),
        ("E9", lambda m, ps, st: fluxtrain.update_(
            st, m, fluxtrain.gradient(lambda: m(torch.ones(2)).sum(), ps)), TypeError,
         "cannot be used with implicit gradients"),
        ("E10", lambda m, ps, st: fluxtrain.setup(fluxtrain.Optimiser(fluxtrain.ClipValue(1.0),
                                                                     _Custom()), m),
         TypeError, "does not know how to translate"),
    ],
)
def test_5_5_mixing_errors(name, call, exc, match) -> None:  # type: ignore[no-untyped-def]
    m = torch.nn.Linear(2, 1)
    ps = fluxtrain.params(m)
    st = fluxtrain.setup(O.Adam(), m)
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(exc, match=match):
        call(m, ps, st)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


class _Custom(optimise.AbstractOptimiser):
    def apply_(self, x, dx):  # type: ignore[no-untyped-def]
        return dx


def test_5_5_E6_whole_gradient_tuple_warns_and_works() -> None:
    m = torch.nn.Linear(2, 1)
    st = fluxtrain.setup(O.Descent(0.1), m)
    gs = fluxtrain.gradient(lambda m: m(torch.ones(2)).sum(), m)
    w0 = m.weight.clone()
    with pytest.warns(UserWarning, match=r"you probably want grads\[0\]"):
        fluxtrain.update_(st, m, gs)
    assert torch.allclose(m.weight, w0 - 0.1)


def test_5_implicit_and_explicit_same_bits() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(3)]
    fluxtrain.train_(lambda x, y: ((a(x) - y) ** 2).mean(), fluxtrain.params(a), data,
                     fluxtrain.Adam(0.01))
    fluxtrain.train_(lambda m, x, y: ((m(x) - y) ** 2).mean(), b, data,
                     fluxtrain.setup(O.Adam(0.01), b))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_numpy_arrays_as_parameters() -> None:
    w = np.array([1.0, 2.0])
    ps = fluxtrain.params(w)
    assert w in ps
    fluxtrain.update_(fluxtrain.Descent(0.5), ps,
                      fluxtrain.Grads([(w, torch.tensor([1.0, 1.0], dtype=F64))], ps))
    assert w.tolist() == [0.5, 1.5]
