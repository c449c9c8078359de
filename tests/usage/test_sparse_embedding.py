"""Day one: ``nn.Embedding(..., sparse=True)``, whose weight gets a sparse COO gradient.

Wanted (issue 22, item 5): ``Descent`` matches ``torch.optim.SGD`` on sparse gradients
(only the rows looked up move, by ``-lr * g``; repeated indices add up); every other rule
refuses with an error that names sparse gradients, as torch's Adam does ("Adam does not
support sparse gradients"), before anything is changed: the parameters and the optimiser
state are bit for bit as they were.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fluxtrain
from fluxtrain.optimisers import Adam, Descent, Momentum

from .usageutil import seeded

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Bag(nn.Module):
    """A sparse embedding followed by a dense layer, as in a recommender."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.out = nn.Linear(4, 1)

    def forward(self, idx):
        return self.out(self.emb(idx).mean(1))


def batches():
    g = torch.Generator().manual_seed(2)
    # repeated indices inside a batch: the sparse gradient has duplicate entries
    return [(torch.randint(0, 10, (6, 3), generator=g), torch.randn(6, 1, generator=g))
            for _ in range(8)]


def loss(m, idx, y):
    return ((m(idx) - y) ** 2).mean()


def test_the_gradient_is_sparse():
    m = seeded(Bag)
    g = fluxtrain.gradient(loss, m, *batches()[0])[0]
    assert g.emb.weight.layout == torch.sparse_coo
    assert g.out.weight.layout == torch.strided


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_descent_matches_sgd(style):
    ours = seeded(Bag)
    theirs = copy.deepcopy(ours)
    before = ours.emb.weight.detach().clone()
    if style == "explicit":
        fluxtrain.train_(loss, ours, batches(), fluxtrain.setup(Descent(0.1), ours))
    else:
        fluxtrain.train_(lambda i, y: loss(ours, i, y), fluxtrain.params(ours), batches(),
                         fluxtrain.optimise.Descent(0.1))
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    seen = set()
    for idx, y in batches():
        seen |= set(idx.flatten().tolist())
        opt.zero_grad()
        loss(theirs, idx, y).backward()
        opt.step()
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert a.layout == torch.strided, n
        # x - lr*g, rows added in the same order; one rounding per step apart at most
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7,
                                   msg=lambda m, n=n: f"{n}: {m}")
    rows = sorted(seen)
    unseen = [r for r in range(10) if r not in seen]
    assert not torch.equal(ours.emb.weight[rows], before[rows])
    assert torch.equal(ours.emb.weight[unseen], before[unseen])   # untouched rows stay


def test_descent_one_step_hand_formula():
    # one step, by hand: row r moves by -lr * (sum of the gradient entries for r)
    emb = seeded(lambda: nn.Embedding(5, 2, sparse=True))
    w0 = emb.weight.detach().clone()
    idx = torch.tensor([1, 3, 1])
    st = fluxtrain.setup(Descent(0.5), emb)
    g = fluxtrain.gradient(lambda m: m(idx).sum(), emb)[0]
    fluxtrain.update_(st, emb, g)
    want = w0.clone()
    want[1] -= 0.5 * 2      # looked up twice, d(sum)/dw = 1 per lookup
    want[3] -= 0.5 * 1
    # duplicates may be added before or after scaling: equal up to one rounding
    torch.testing.assert_close(emb.weight.detach(), want, rtol=1e-6, atol=1e-7)
    assert torch.equal(emb.weight[[0, 2, 4]], w0[[0, 2, 4]])


@pytest.mark.parametrize("rule", [Adam(1e-2), Momentum(1e-2, 0.9)], ids=["Adam", "Momentum"])
@pytest.mark.parametrize("style", ["explicit-fresh", "explicit-warm", "implicit"])
def test_other_rules_refuse_sparse_gradients_and_change_nothing(style, rule):
    # explicit-warm: one dense step first (the state holds something worth protecting, and
    # the step plan of a dense step is cached: the refusal must not depend on it)
    m = seeded(Bag)
    idx, y = batches()[0]
    # torch refuses too: the behaviour to mirror
    with pytest.raises(RuntimeError, match="sparse"):
        t = copy.deepcopy(m)
        opt = torch.optim.Adam(t.parameters(), lr=1e-2)
        loss(t, idx, y).backward()
        opt.step()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    if style.startswith("explicit"):
        st = fluxtrain.setup(rule, m)
        if style == "explicit-warm":
            fluxtrain.update_(st, m, {"emb.weight": torch.ones(10, 4),
                                      "out.weight": torch.ones(1, 4), "out.bias": torch.ones(1)})
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        state_before = copy.deepcopy(st)
        with pytest.raises((TypeError, ValueError, RuntimeError), match="(?i)sparse") as info:
            fluxtrain.train_(loss, m, [(idx, y)], st)
        _assert_same_tree(st, state_before)
    else:
        opt = fluxtrain.optimise.Adam(1e-2) if isinstance(rule, Adam) else \
            fluxtrain.optimise.Momentum(1e-2, 0.9)
        with pytest.raises((TypeError, ValueError, RuntimeError), match="(?i)sparse") as info:
            fluxtrain.train_(lambda i, yy: loss(m, i, yy), fluxtrain.params(m), [(idx, y)], opt)
    assert "storage" not in str(info.value)     # not the internal crash of today
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed although the step was refused"


def _assert_same_tree(a, b):
    """Every tensor of two state trees is equal (compared through their reprs' structure)."""
    ta, tb = _tensors(a), _tensors(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert torch.equal(x, y)


def _tensors(st):
    from fluxtrain.optimisers import Leaf, StateTree

    out = []
    if isinstance(st, Leaf):
        _flat(st.state, out)
    elif isinstance(st, StateTree):
        for v in st._children.values():
            out += _tensors(v)
    return out


def _flat(s, out):
    if isinstance(s, torch.Tensor):
        out.append(s)
    elif isinstance(s, tuple | list):
        for e in s:
            _flat(e, out)
