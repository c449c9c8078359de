"""Day one: fine-tuning a head on a frozen backbone (``requires_grad_(False)``), both styles.

DESIGN.md "Trainable means": an ``nn.Parameter`` with ``requires_grad=False`` is not
trainable in either style (``setup`` and ``params(model)`` skip it); a plain tensor is
trainable whatever its ``requires_grad`` (a ``torch.randn`` tensor has it False), so
``params(w, b)`` of such tensors keeps working. Checked: the backbone is bit for bit
unchanged and keeps ``requires_grad=False`` and ``.grad is None``; the head equals
torch.optim training only the head's parameters.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fluxtrain
from fluxtrain.optimisers import Adam, Descent

from .usageutil import F32, assert_moved, assert_same_params, params_of, regression, twins

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


def frozen_net() -> Net:
    net = Net()
    net.backbone.requires_grad_(False)
    return net


def data():
    X, Y = regression()
    # tuples: this file is about freezing, not the batch rule (see test_dataloader.py)
    return [tuple(b) for b in DataLoader(TensorDataset(X, Y), batch_size=16)]


def loss(m, x, y):
    return ((m(x) - y) ** 2).mean()


def torch_head_only(model, epochs):
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(epochs):
        for x, y in data():
            opt.zero_grad()
            loss(model, x, y).backward()
            opt.step()


def check(ours, theirs, backbone_before, head_before):
    for n, p in ours.backbone.named_parameters():
        assert torch.equal(p, backbone_before["backbone." + n]), f"backbone.{n} changed"
        assert p.requires_grad is False and p.grad is None, n
    assert_moved(ours.head, head_before)
    assert_same_params(ours, theirs, **F32)   # Adam vs torch.optim.Adam: see usageutil.F32


def test_frozen_backbone_explicit():
    ours, theirs = twins(frozen_net)
    before, head_before = params_of(ours), params_of(ours.head)
    opt_state = fluxtrain.setup(Adam(1e-2), ours)
    assert [id(t) for t in fluxtrain.trainables(ours)] == [id(ours.head.weight),
                                                           id(ours.head.bias)]
    for _ in range(3):
        fluxtrain.train_(loss, ours, data(), opt_state)
    torch_head_only(theirs, 3)
    check(ours, theirs, before, head_before)


def test_frozen_backbone_implicit():
    ours, theirs = twins(frozen_net)
    before, head_before = params_of(ours), params_of(ours.head)
    ps = fluxtrain.params(ours)
    assert len(ps) == 2, "params(model) must skip the frozen backbone's Parameters"
    assert {id(p) for p in ps} == {id(ours.head.weight), id(ours.head.bias)}
    opt = fluxtrain.optimise.Adam(1e-2)
    for _ in range(3):
        fluxtrain.train_(lambda x, y: loss(ours, x, y), ps, data(), opt)
    torch_head_only(theirs, 3)
    check(ours, theirs, before, head_before)


def test_frozen_backbone_implicit_manual_loop():
    # gradient(() -> loss, params(model)) then update_: the loop old scripts write
    ours, theirs = twins(frozen_net)
    before, head_before = params_of(ours), params_of(ours.head)
    ps = fluxtrain.params(ours)
    opt = fluxtrain.optimise.Adam(1e-2)
    for x, y in data():
        gs = fluxtrain.gradient(lambda x=x, y=y: loss(ours, x, y), ps)
        fluxtrain.update_(opt, ps, gs)
    torch_head_only(theirs, 1)
    check(ours, theirs, before, head_before)


def test_implicit_equals_explicit_with_frozen_backbone():
    a, b = twins(frozen_net)
    fluxtrain.train_(loss, a, data(), fluxtrain.setup(Adam(1e-2), a))
    fluxtrain.train_(lambda x, y: loss(b, x, y), fluxtrain.params(b), data(),
                     fluxtrain.optimise.Adam(1e-2))
    assert_same_params(a, b)


def test_unfreezing_trains_the_backbone_again():
    # requires_grad_(True) later: setup/params called afterwards see the backbone again
    ours, theirs = twins(frozen_net)
    ours.backbone.requires_grad_(True)
    theirs.backbone.requires_grad_(True)
    fluxtrain.train_(loss, ours, data(), fluxtrain.setup(Adam(1e-2), ours))
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    for x, y in data():
        opt.zero_grad()
        loss(theirs, x, y).backward()
        opt.step()
    assert_same_params(ours, theirs, **F32)


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_plain_tensors_are_trainable_whatever_requires_grad(style):
    # w, b from torch.randn have requires_grad=False and are trained (hand formula:
    # Descent x <- x - eta*g, g of sum((x@w + b - y)^2) computed by hand); a frozen
    # nn.Parameter in the same tree is not
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    w, b = torch.randn(3, 2, generator=g), torch.randn(2, generator=g)
    scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)
    assert not w.requires_grad and not b.requires_grad
    w0, b0 = w.clone(), b.clone()
    r = x @ w0 * scale.detach() + b0 - y
    gw, gb = 2 * scale.detach() * x.T @ r, 2 * r.sum(0)

    def f(w, b, scale):
        return ((x @ w * scale + b - y) ** 2).sum()

    if style == "explicit":
        model = {"w": w, "b": b, "scale": scale}
        st = fluxtrain.setup(Descent(0.01), model)
        grads = fluxtrain.gradient(lambda m: f(m["w"], m["b"], m["scale"]), model)[0]
        assert grads["scale"] is None
        fluxtrain.update_(st, model, grads)
    else:
        ps = fluxtrain.params(w, b, scale)
        assert len(ps) == 2
        gs = fluxtrain.gradient(lambda: f(w, b, scale), ps)
        fluxtrain.update_(fluxtrain.optimise.Descent(0.01), ps, gs)
    torch.testing.assert_close(w, w0 - 0.01 * gw, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b, b0 - 0.01 * gb, rtol=1e-6, atol=1e-6)
    assert scale.item() == 2.0 and scale.requires_grad is False
    assert not w.requires_grad and not b.requires_grad   # left as they were
