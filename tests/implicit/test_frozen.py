"""Issue 22 item 4 (DESIGN.md "Trainable means"): implicit ``params(model)`` skips an
``nn.Parameter`` with ``requires_grad=False`` exactly as the explicit ``setup``/``trainables``
do; plain tensors stay trainable whatever their ``requires_grad``; the implicit gradient never
switches a frozen Parameter on. A frozen-backbone model trained implicitly leaves the backbone
bit-identical and trains the head exactly as the explicit style (and as torch.optim)."""

from __future__ import annotations

import warnings

import pytest
import torch

import fluxtrain
from fluxtrain import FluxDeprecationWarning
from fluxtrain import optimisers as O


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", FluxDeprecationWarning)


def _frozen_backbone() -> torch.nn.Sequential:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    for p in m[0].parameters():
        p.requires_grad_(False)
    return m


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)) for _ in range(5)]


def test_params_skips_frozen_parameters_like_trainables() -> None:
    m = _frozen_backbone()
    ps = fluxtrain.params(m)
    assert [id(p) for p in ps] == [id(p) for p in fluxtrain.trainables(m)]
    assert [id(p) for p in ps] == [id(m[2].weight), id(m[2].bias)]
    assert m[0].weight not in ps
    assert len(fluxtrain.params(m[0].weight)) == 0  # a frozen Parameter given directly too


def test_plain_tensors_stay_trainable() -> None:
    w, b = torch.randn(3), torch.randn(1)
    assert not w.requires_grad
    ps = fluxtrain.params(w, b)
    assert len(ps) == 2
    x = torch.tensor([1.0, 2.0, 3.0])
    gs = fluxtrain.gradient(lambda: (w @ x + b).sum(), ps)
    assert gs[w].tolist() == [1.0, 2.0, 3.0] and gs[b].tolist() == [1.0]
    assert not w.requires_grad and not b.requires_grad
    before = w.clone()
    fluxtrain.update_(fluxtrain.Descent(0.5), ps, gs)
    assert torch.equal(w, before - 0.5 * x)


def test_implicit_gradient_does_not_switch_frozen_parameters_on() -> None:
    m = _frozen_backbone()
    x, _ = _batches()[0]
    ps = fluxtrain.Params(list(m.parameters()))  # built by hand, frozen ones included
    gs = fluxtrain.gradient(lambda: m(x).sum(), ps)
    assert gs[m[0].weight] is None and gs[m[0].bias] is None
    assert gs[m[2].weight] is not None
    assert not m[0].weight.requires_grad and m[0].weight.grad is None


@pytest.mark.parametrize("rule", ["Descent", "Momentum", "Adam"])
def test_frozen_backbone_implicit_equals_explicit_and_torch(rule: str) -> None:
    data = _batches()

    def loss_of(m, x, y):  # type: ignore[no-untyped-def]
        return ((m(x) - y) ** 2).mean()

    old = {"Descent": lambda: fluxtrain.Descent(0.1), "Momentum": lambda: fluxtrain.Momentum(0.1),
           "Adam": lambda: fluxtrain.Adam(0.01)}[rule]
    new = {"Descent": lambda: O.Descent(0.1), "Momentum": lambda: O.Momentum(0.1),
           "Adam": lambda: O.Adam(0.01)}[rule]
    imp = _frozen_backbone()
    backbone = [p.clone() for p in imp[0].parameters()]
    fluxtrain.train_(lambda x, y: loss_of(imp, x, y), fluxtrain.params(imp), data, old())
    exp = _frozen_backbone()
    fluxtrain.train_(loss_of, exp, data, fluxtrain.setup(new(), exp))
    # the backbone is bit-identical, and the head trained the same in both styles
    for a, b in zip(imp[0].parameters(), backbone):
        assert torch.equal(a, b) and not a.requires_grad
    for a, b in zip(imp.parameters(), exp.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(imp[2].weight, _frozen_backbone()[2].weight)
    # and as torch.optim trains the trainable parameters
    ref = _frozen_backbone()
    topt = {"Descent": lambda ps: torch.optim.SGD(ps, lr=0.1),
            "Momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
            "Adam": lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-8)}[rule](
        [p for p in ref.parameters() if p.requires_grad])
    for x, y in data:
        topt.zero_grad()
        loss_of(ref, x, y).backward()
        topt.step()
    for a, b in zip(imp.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
