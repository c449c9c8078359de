"""reference/optimisers.md §7.1 examples 2, 9, 10, 11, 14 and the §7.2 chain table,
written tree-free: the rules applied directly to tensors (the tree API is layer 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coreutil import init_all, step_all

from fluxtrain.core import rules as R

f64 = torch.float64


def test_example_2_descent_apply():
    # apply!(Descent(0.1), nothing, Float32[1,2,3], [4,5,6]) -> Float32[0.4, 0.5, 0.6]
    x = torch.tensor([1.0, 2.0, 3.0])
    state, step = R.Descent(0.1).apply(None, x, torch.tensor([4, 5, 6]))
    assert state is None and step.dtype == torch.float32
    want = np.array([4, 5, 6], dtype=np.float32) * np.float32(0.1)  # Int * Float32 in Float32
    assert step.numpy().tobytes() == want.tobytes()
    assert R.Descent(0.1).init(x) is None  # example 1
    v0 = R.Momentum().init(torch.tensor([1.0, 2.0], dtype=f64))
    assert torch.equal(v0, torch.zeros(2, dtype=f64))


def test_example_9_chain_clips_before_discounting():
    rule = R.OptimiserChain(R.ClipGrad(1.0), R.Descent(0.1))
    x = torch.zeros(3, dtype=f64)
    (state,) = init_all(rule, [x])
    assert state == (None, None)
    step_all(rule, [state], [x], [torch.tensor([0.3, 1, 7], dtype=f64)])
    # printed as [-0.03, -0.1, -0.1]; 0.3*0.1 is 0.030000000000000002 in float64
    assert x.tolist() == pytest.approx([-0.03, -0.1, -0.1], rel=1e-15)
    assert x.tolist()[1:] == [-0.1, -0.1]


def test_example_10_accumgrad_chain():
    rule = R.OptimiserChain(R.AccumGrad(2), R.WeightDecay(0.01), R.Descent(0.1))
    xs = [torch.tensor([1.0]), torch.tensor([2.0])]
    states = init_all(rule, xs)
    states = step_all(rule, states, xs, [torch.tensor([33]), torch.tensor([0])])
    assert [x.item() for x in xs] == [1.0, 2.0]  # model not yet changed
    states = step_all(rule, states, xs, [torch.tensor([0]), torch.tensor([444])])
    # Float32[-0.651], Float32[-20.202002] (verified in float32 by the reference)
    assert xs[0].item() == float(np.float32(-0.651))
    assert xs[1].item() == float(np.float32(-20.202002))


def test_example_11_nothing_gradients():
    rule = R.Adam(0.1)
    a, b = torch.ones(2, dtype=f64), torch.ones(2, dtype=f64)
    sa, sb = init_all(rule, [a, b])
    assert sa.m.tolist() == [0.0, 0.0] and sa.beta_t == (0.9, 0.999)
    sa, sb = step_all(rule, [sa, sb], [a, b], [torch.ones(2, dtype=f64)] * 2)
    # the reference prints states compactly (6 significant digits); beta_t is also
    # checked exactly against float64 products
    for s in (sa, sb):
        assert s.m.tolist() == pytest.approx([0.1, 0.1], rel=1e-6)
        assert s.v.tolist() == pytest.approx([0.001, 0.001], rel=1e-6)
        assert s.beta_t == (0.9 * 0.9, 0.999 * 0.999)
    b_before = (sb.m.clone(), sb.v.clone(), sb.beta_t, b.clone())
    # a gets a zero gradient, b gets none (its rule is not called at all)
    (sa,) = step_all(rule, [sa], [a], [torch.zeros(2, dtype=f64)])
    assert sa.m.tolist() == pytest.approx([0.09, 0.09], rel=1e-6)
    assert sa.v.tolist() == pytest.approx([0.000999, 0.000999], rel=1e-6)
    assert sa.beta_t == pytest.approx((0.729, 0.997003), rel=1e-6)
    assert sa.beta_t == (0.9 * 0.9 * 0.9, 0.999 * 0.999 * 0.999)
    assert torch.equal(sb.m, b_before[0]) and torch.equal(sb.v, b_before[1])
    assert sb.beta_t == b_before[2] and torch.equal(b, b_before[3])


def test_example_14_momentum_float16():
    rule = R.Momentum(1 / 9)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)
    (state,) = init_all(rule, [x])
    assert state.dtype == torch.float16 and state.tolist() == [0.0, 0.0, 0.0]
    (state,) = step_all(rule, [state], [x], [torch.tensor([1, 0, -4], dtype=torch.float16)])
    # Float16[0.8887, 2.0, 3.445], state Float16[0.1111, 0.0, -0.4443] (verified in float16)
    assert torch.equal(x, torch.tensor([0.8887, 2.0, 3.445], dtype=torch.float16))
    assert torch.equal(state, torch.tensor([0.1111, 0.0, -0.4443], dtype=torch.float16))


# §7.2 "OptimiserChain": x = [1, 10, 100], g = [1, 2, 3], one update
CHAIN_CASES = [
    (R.WeightDecay(0.1), [1 - 0.1 - 1, 10 - 1 - 2, 100 - 10 - 3]),
    (R.SignDecay(0.1), [1 - 0.1 - 1, 10 - 0.1 - 2, 100 - 0.1 - 3]),
    (R.ClipGrad(2), [0, 8, 98]),
    (R.OptimiserChain(R.ClipGrad(2), R.WeightDecay(0.1)), [1 - 0.1 - 1, 10 - 1 - 2, 100 - 10 - 2]),
    (R.OptimiserChain(R.OptimiserChain(R.ClipGrad(2), R.WeightDecay(0.1))),
     [1 - 0.1 - 1, 10 - 1 - 2, 100 - 10 - 2]),
    (R.OptimiserChain(R.Descent(0.1)), [0.9, 9.8, 99.7]),
    (R.OptimiserChain(), [0, 8, 97]),
]


@pytest.mark.parametrize("rule,want", CHAIN_CASES, ids=[repr(c[0]) for c in CHAIN_CASES])
def test_chain_table(rule, want):
    x = torch.tensor([1, 10, 100.0], dtype=f64)
    step_all(rule, init_all(rule, [x]), [x], [torch.tensor([1, 2, 3.0], dtype=f64)])
    assert x.tolist() == pytest.approx(want, abs=1e-13)


def test_signdecay_signs():
    x = torch.tensor([1, -10, 100.0], dtype=f64)
    rule = R.SignDecay(0.1)
    step_all(rule, [None], [x], [torch.tensor([3, 2, -1.0], dtype=f64)])
    assert x.tolist() == pytest.approx([1 - 0.1 - 3, -10 + 0.1 - 2, 100 - 0.1 + 1], abs=1e-13)
