"""Day one: a ``nn.TransformerEncoderLayer`` with a rule per part, the way torch users write
param groups.

* ``setup({pattern: rule}, model)`` with three different rules against three torch
  optimizers, one per part (one torch optimizer cannot mix classes);
* ``no_decay_on_bias_and_norm(AdamW(...))`` against ``torch.optim.AdamW`` with two param
  groups, ``weight_decay=0`` for biases and LayerNorm parameters (every parameter with at most
  one dimension). fluxtrain's ``AdamW`` defaults to ``couple=True`` (Optimisers.jl >= 0.4:
  the step is ``eta * (adam + lambda_ * x)``, x before the step), which is torch's AdamW
  (``p *= 1 - lr*wd`` then the Adam step): the same arithmetic in another order, so they
  agree to float32 rounding, not bit for bit.

Adam's epsilon is 1e-4 here, not 1e-8: the attention's key bias has a gradient that is
zero in exact arithmetic (softmax ignores a shift shared by all keys), so it gets rounding
noise of ~1e-9, which Adam with eps=1e-8 turns into full-size steps whose sign follows the
noise: the two libraries' last-bit differences elsewhere would then flip those steps. With
eps=1e-4 that noise moves nothing, and every other gradient (~1e-2) still gets Adam's
normalisation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fluxtrain
from fluxtrain.optimisers import Adam, AdamW, Descent, Momentum, no_decay_on_bias_and_norm

from .usageutil import F32, assert_moved, assert_same_params, params_of, twins

STEPS = 8
EPS = 1e-4


def encoder() -> nn.Module:
    # dropout=0: the forward pass is deterministic, so both sides see the same gradients
    return nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                      batch_first=True)


def batches(n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 5, 16, generator=g), torch.randn(4, 5, 16, generator=g))
            for _ in range(n)]


def loss(m, x, y):
    return ((m(x) - y) ** 2).mean()


def test_per_part_rules_match_one_torch_optimizer_per_part():
    ours, theirs = twins(encoder)
    before = params_of(ours)
    opt_state = fluxtrain.setup({"self_attn.*": Adam(1e-3, epsilon=EPS),
                                 "linear*": Momentum(1e-2, 0.9),
                                 "norm*": Descent(1e-2)}, ours)
    fluxtrain.train_(loss, ours, batches(), opt_state)

    def part(prefix):
        return [p for n, p in theirs.named_parameters() if n.startswith(prefix)]

    # Momentum(eta, rho): v = rho*v + eta*g, x -= v. torch SGD(momentum=mu):
    # buf = mu*buf + g, p -= lr*buf. With v = lr*buf these are one recurrence
    # (docs/torch_optim.md); they round differently, hence a float32 tolerance.
    opts = [torch.optim.Adam(part("self_attn."), lr=1e-3, eps=EPS),
            torch.optim.SGD(part("linear"), lr=1e-2, momentum=0.9),
            torch.optim.SGD(part("norm"), lr=1e-2)]
    for x, y in batches():
        for o in opts:
            o.zero_grad()
        loss(theirs, x, y).backward()
        for o in opts:
            o.step()
    assert_moved(ours, before, atol=1e-5)
    assert_same_params(ours, theirs, **F32)


def test_no_decay_on_bias_and_norm_matches_torch_adamw_param_groups():
    lr, wd = 1e-2, 0.1
    ours, theirs = twins(encoder)
    before = params_of(ours)
    opt_state = fluxtrain.setup(no_decay_on_bias_and_norm(AdamW(lr, (0.9, 0.999), wd, EPS)),
                                ours)
    # the split a torch user writes by hand: decay only the matrices
    decayed = {n for n, p in theirs.named_parameters() if p.ndim >= 2}
    assert decayed == {"self_attn.in_proj_weight", "self_attn.out_proj.weight",
                       "linear1.weight", "linear2.weight"}
    for name, _ in ours.named_parameters():
        leaf = opt_state
        for key in name.split("."):
            leaf = getattr(leaf, key)
        assert leaf.rule.lambda_ == (wd if name in decayed else 0.0), name
    fluxtrain.train_(loss, ours, batches(), opt_state)

    opt = torch.optim.AdamW(
        [{"params": [p for n, p in theirs.named_parameters() if n in decayed],
          "weight_decay": wd},
         {"params": [p for n, p in theirs.named_parameters() if n not in decayed],
          "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=EPS)
    for x, y in batches():
        opt.zero_grad()
        loss(theirs, x, y).backward()
        opt.step()
    assert_moved(ours, before, atol=1e-4)
    assert_same_params(ours, theirs, **F32)


def test_one_decay_group_would_not_match():
    # the comparison above is not vacuous: torch.optim.AdamW decaying every parameter
    # (one group) ends measurably elsewhere than the preset
    lr, wd = 1e-2, 0.1
    ours, theirs = twins(encoder)
    fluxtrain.train_(loss, ours, batches(), fluxtrain.setup(
        no_decay_on_bias_and_norm(AdamW(lr, (0.9, 0.999), wd, EPS)), ours))
    opt = torch.optim.AdamW(theirs.parameters(), lr=lr, betas=(0.9, 0.999), eps=EPS,
                            weight_decay=wd)
    for x, y in batches():
        opt.zero_grad()
        loss(theirs, x, y).backward()
        opt.step()
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours.norm1.weight, theirs.norm1.weight, **F32)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_per_part_rules_explicit_vs_implicit_groups():
    # the implicit era's way: one old optimiser per params group, bit for bit the same
    ours, old = twins(encoder)
    fluxtrain.train_(loss, ours, batches(), fluxtrain.setup(
        {"self_attn.*": Adam(1e-3, epsilon=EPS), "linear*": Descent(1e-2),
         "norm*": Descent(1e-2)}, ours))
    ps = fluxtrain.params(old)
    attn = fluxtrain.params([p for n, p in old.named_parameters() if n.startswith("self_attn")])
    rest = fluxtrain.params([p for n, p in old.named_parameters()
                             if not n.startswith("self_attn")])
    adam = fluxtrain.optimise.Adam(1e-3, epsilon=EPS)
    sgd = fluxtrain.optimise.Descent(1e-2)
    for x, y in batches():
        gs = fluxtrain.gradient(lambda x=x, y=y: loss(old, x, y), ps)
        fluxtrain.update_(adam, attn, gs)
        fluxtrain.update_(sgd, rest, gs)
    assert_same_params(ours, old)
