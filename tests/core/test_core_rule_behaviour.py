"""reference/optimisers.md §7.3 rule tests that are quick as written upstream:
element types, mutation check, complex numbers, AccumGrad, Float16 epsilon,
MixedPrecision (and RAdam's float16 branch point from §2.8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coreutil import bits_equal, init_all, step_all
from rulelist import OWN, RULES

from fluxtrain.core import rules as R
from fluxtrain.core import subtract, subtract_

f16, f32, f64 = torch.float16, torch.float32, torch.float64


@pytest.mark.parametrize("rule", RULES + OWN, ids=repr)
def test_element_types_preserved(rule):
    # §7.3.5: (Float32[1,2], Float64[3,4], Float16[5,6]) updated with itself as gradient
    xs = [torch.tensor([1.0, 2.0], dtype=f32), torch.tensor([3.0, 4.0], dtype=f64),
          torch.tensor([5.0, 6.0], dtype=f16)]
    states = init_all(rule, xs)
    for _ in range(2):
        states = step_all(rule, states, xs, [x.clone() for x in xs])
    assert [x.dtype for x in xs] == [f32, f64, f16]
    # non-mutating form too: subtract returns a new tensor of x's dtype
    _, step = rule.apply(rule.init(xs[2]), xs[2], xs[2].clone())
    assert subtract(xs[2], step).dtype == f16


def test_rprop_state_dtypes_with_float64_gradients():
    rule = R.Rprop(0.1)
    for dt in (f16, f32):
        x = torch.tensor([1.0, 2.0], dtype=dt)
        st = rule.init(x)
        for g in ([1.0, -1.0], [1.0, 1.0]):
            st, step = rule.apply(st, x, torch.tensor(g, dtype=f64))
            x = subtract(x, step)
        assert st.grad.dtype == dt and st.eta.dtype == dt and x.dtype == dt


@pytest.mark.parametrize("rule", RULES + OWN, ids=repr)
def test_mutation_check(rule):
    # §7.3.7: a writable and a read-only copy, updated in lock-step, end exactly equal
    gen = torch.Generator().manual_seed(3)

    def int8s():
        return torch.randint(-128, 128, (8,), generator=gen).to(f64)

    x_mut = int8s()
    x_ro = x_mut.clone()
    x_ro._fluxtrain_readonly = True
    s_mut, s_ro = rule.init(x_mut), rule.init(x_ro)
    for _ in range(13):
        g = int8s()
        s_mut, step = rule.apply(s_mut, x_mut, g.clone())
        x_mut_id = id(x_mut)
        x_mut = subtract_(x_mut, step)
        assert id(x_mut) == x_mut_id  # written in place
        s_ro, step = rule.apply(s_ro, x_ro, g.clone())
        x_ro = subtract(x_ro, step)
        x_ro._fluxtrain_readonly = True
    assert bits_equal(x_mut, x_ro)


COMPLEX_RULES = [
    R.Adam(1e-2), R.RMSProp(1e-2), R.RAdam(1e-2), R.OAdam(1e-2), R.AdaGrad(1e-2),
    R.AdaDelta(0.9, 1e-5), R.NAdam(1e-2), R.AdaBelief(1e-2), R.Descent(1e-2),
    R.Momentum(1e-2), R.Nesterov(1e-2), R.AdamW(1e-2),
]


@pytest.mark.parametrize("rule", COMPLEX_RULES, ids=repr)
def test_complex_numbers(rule):
    # §7.3.8 (Flux#1776): w = zeros(ComplexF64, 1); loss |w*x - conj(x)|^2, x = 1+1i.
    # The gradient is torch autograd's (same convention as Zygote: dL/dRe + i dL/dIm).
    x = torch.tensor([1 + 1j], dtype=torch.complex128)

    def loss(w):
        return (w * x - x.conj()).abs().pow(2).sum()

    w = torch.zeros(1, dtype=torch.complex128)
    state = rule.init(w)
    last = loss(w).item()
    assert last == pytest.approx(2.0)
    for i in range(1, 11):
        wg = w.clone().requires_grad_(True)
        loss(wg).backward()
        state, step = rule.apply(state, w, wg.grad)
        w.sub_(step)
        now = loss(w).item()
        if not (isinstance(rule, (R.Momentum, R.Nesterov)) and i > 8):
            assert now < last, f"step {i}: loss {now} did not decrease from {last}"
        last = now
    assert last < 1.9


def test_accumgrad():
    # §7.3.9, with the non-mutating form (subtract returns a new tensor)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, generator=gen, dtype=f64)
    rule = R.OptimiserChain(R.AccumGrad(3), R.Descent(0.01))
    g1, g2, g3, g4 = (torch.rand(5, generator=gen, dtype=f64) for _ in range(4))
    st = rule.init(x0)
    x = x0
    st, step = rule.apply(st, x, g1)
    assert step is None
    st, step = rule.apply(st, x, g2)
    assert step is None and torch.equal(x, x0)
    st, step = rule.apply(st, x, g3)
    x = subtract(x, step)
    torch.testing.assert_close(x, x0 - 0.01 * (g1 + g2 + g3) / 3, rtol=1e-14, atol=1e-15)
    x3 = x
    st, step = rule.apply(st, x, g4)
    assert step is None and torch.equal(x, x3)
    assert st[0].counter == 2  # one gradient accumulated towards the next step


def test_float16_adam_computes_in_float32():
    # §7.3.10's case. Julia computes in Float16: (1-b2)*g^2 underflows for the first two
    # entries and the step is g/eps*eta with eps = Float16(1e-7), giving x = [1.835,
    # -0.886, 0.5493]. fluxtrain computes 16-bit parameters in float32 (torch's opmath,
    # docs/numerics.md): the first step is about eta*sign(g), stored in float16.
    x = torch.tensor([0.579, -0.729, 0.5493], dtype=f16)
    g = torch.tensor([-0.001497, 0.0001875, -0.013176], dtype=f16)
    rule = R.Adam(1e-4)
    st, step = rule.apply(rule.init(x), x, g)
    new = subtract(x, step)
    # the truth: the same rule on float32 copies, the result rounded once to float16
    x32 = x.float()
    st32, step32 = rule.apply(rule.init(x32), x32, g.float())
    assert torch.equal(new, (x32 - step32).to(f16))
    assert torch.equal(st.m, st32.m.to(f16)) and torch.equal(st.v, st32.v.to(f16))
    assert st.m.dtype == f16 and st.beta_t == st32.beta_t
    np.testing.assert_allclose(new.float().numpy(),
                               (x.float() - 1e-4 * torch.sign(g.float())).numpy(), rtol=2e-3)


def test_float16_zero_gradient_steps_by_zero():
    # Julia: AdamW uses plain T(epsilon), Float16(1e-8) == 0, so a zero gradient gives
    # 0/0 = NaN. In float32 opmath epsilon is 1e-8: the step is 0 for every Adam variant.
    x = torch.ones(1, dtype=f16)
    for rule in (R.AdamW(), R.Adam()):
        _, step = rule.apply(rule.init(x), x, torch.zeros(1, dtype=f16))
        assert step.tolist() == [0.0]


def test_mixed_precision():
    # §7.3.11 / §2.23: float16 params, float32 copy and float32 Adam state
    x = torch.tensor([0.25, -0.5, 1.0], dtype=f16)
    rule = R.MixedPrecision(R.Adam(1e-3))
    st = rule.init(x)
    assert st.xT.dtype == f32 and st.state.m.dtype == f32
    assert st.state.beta_t == (np.float32(0.9).item(), np.float32(0.999).item())
    g = torch.tensor([1.0, -2.0, 0.5], dtype=f16)
    st, step = rule.apply(st, x, g)
    assert step is None
    assert torch.equal(x, st.xT.to(f16))
    # the high-precision copy moved by Adam's first step (eta) in float32
    torch.testing.assert_close(
        st.xT, torch.tensor([0.25 - 1e-3, -0.5 + 1e-3, 1.0 - 1e-3], dtype=f32),
        rtol=0, atol=1e-7,
    )
    # x itself cannot move by 1e-3 near 1.0 in float16 (ulp 1e-3): only via xT
    assert x[2].item() == 1.0 or x[2].item() == float(np.float16(1.0 - 1e-3))
    mp = R.MixedPrecision(f64, R.Adam(1e-3)).adjust(2e-3)
    assert mp.dtype == f64 and mp.rule.eta == 2e-3


def test_radam_branch_points():
    # §2.8: rectified from t = 5 in float64/float32; Julia's Float16 arithmetic rectifies
    # from t = 4 (rho_3 == 4, checked below with numpy float16), fluxtrain's float16
    # computes in float32 (docs/numerics.md) and so rectifies from t = 5 too
    rule = R.RAdam()
    for dt, first in ((f64, 5), (f32, 5), (f16, 5)):
        x = torch.ones(1, dtype=dt)
        st = rule.init(x)
        branch = []
        for _ in range(6):
            branch.append(rule._rect(f32 if dt is f16 else dt, st.t, st.beta_t[1]) is not None)
            st, _ = rule.apply(st, x, torch.ones(1, dtype=dt))
        assert branch == [t >= first for t in range(1, 7)], (dt, branch)
    # independent check of the float16 arithmetic with numpy float16, per-op rounding
    h = np.float16
    b2 = h(0.999)
    rinf = h(h(2) / h(h(1) - b2)) - h(1)
    bt2 = h(h(b2 * b2) * b2)
    rho3 = h(rinf - h(h(h(2 * 3) * bt2) / h(h(1) - bt2)))
    assert rho3 == 4.0


def test_invdecay_and_expdecay_values():
    # flux-implicit-full.md §1.5: InvDecay() alone from x = [1, -2]
    x = torch.tensor([1.0, -2.0], dtype=f64)
    rule = R.InvDecay()
    st = rule.init(x)
    for g, want in (([0.5, -0.25], [0.5004995004995004, -1.7502497502497503]),
                    ([0.1, 0.4], [0.40069910129790365, -2.1494513470561376])):
        st, step = rule.apply(st, x, torch.tensor(g, dtype=f64))
        x = subtract(x, step)
        assert x.tolist() == pytest.approx(want, rel=1e-15)
    assert st == 3
    # A10 (a), (b): ExpDecay(0.2, 0.5, 1, 1e-3) steps on gradient [1.0], exact equality
    for start, want in ((0, [0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625, 0.001]),
                        (4, [0.2, 0.2, 0.2, 0.2, 0.1, 0.05, 0.025, 0.0125])):
        rule = R.ExpDecay(0.2, 0.5, 1, 1e-3, start)
        p = torch.zeros(1, dtype=f64)
        st = rule.init(p)
        got = []
        for _ in range(8):
            st, step = rule.apply(st, p, torch.ones(1, dtype=f64))
            got.append(step.item())
        assert got == want


def test_invdecay_rounds_once_in_float64():
    # old Flux computed Δ .*= 1/(1+γn) in Float64 and rounded once into Float32
    x = torch.zeros(1)
    g = torch.tensor([0.3])
    _, step = R.InvDecay(0.3).apply(1, x, g)
    want = np.float32(np.float64(np.float32(0.3)) * (1 / (1 + 0.3 * 1)))
    assert step.dtype == f32 and step.item() == float(want)
