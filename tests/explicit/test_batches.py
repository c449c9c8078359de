"""Issue 22 item 1 (DESIGN.md "Data and batches"): ``train_`` in both styles splats tuple AND
list items (a torch DataLoader yields lists), and passes any other item, a Mapping included,
whole. Checked against a hand-written loop of torch.optim.SGD steps."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fluxtrain
from fluxtrain import FluxDeprecationWarning
from fluxtrain import optimisers as O


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(48, 3, generator=g), torch.randn(48, 1, generator=g)


def _model() -> torch.nn.Linear:
    torch.manual_seed(3)
    return torch.nn.Linear(3, 1)


def _by_hand(batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> torch.nn.Linear:
    m = _model()
    sgd = torch.optim.SGD(m.parameters(), lr=lr)
    for x, y in batches:
        sgd.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        sgd.step()
    return m


class DictSet(Dataset):
    def __init__(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self.X, self.Y = X, Y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.X[i], "y": self.Y[i]}


def test_dataloader_yields_lists() -> None:
    X, Y = _data()
    item = next(iter(DataLoader(TensorDataset(X, Y), batch_size=16)))
    assert type(item) is list  # what made train_ fail before


def test_explicit_dataloader_list_batches() -> None:
    X, Y = _data()
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)
    m = _model()
    st = fluxtrain.setup(O.Descent(0.1), m)
    fluxtrain.train_(lambda m, x, y: ((m(x) - y) ** 2).mean(), m, loader, st)
    ref = _by_hand([(x, y) for x, y in loader], 0.1)
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_implicit_dataloader_list_batches() -> None:
    X, Y = _data()
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)
    m = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        fluxtrain.train_(lambda x, y: ((m(x) - y) ** 2).mean(), fluxtrain.params(m), loader,
                         fluxtrain.Descent(0.1))
    ref = _by_hand([(x, y) for x, y in loader], 0.1)
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_both_styles_dict_batches_passed_whole() -> None:
    X, Y = _data()
    loader = DataLoader(DictSet(X, Y), batch_size=16)
    first = next(iter(loader))
    assert isinstance(first, dict) and set(first) == {"x", "y"}
    ref = _by_hand([(b["x"], b["y"]) for b in loader], 0.05)
    m1 = _model()
    fluxtrain.train_(lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(), m1, loader,
                     fluxtrain.setup(O.Descent(0.05), m1))
    m2 = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        fluxtrain.train_(lambda b: ((m2(b["x"]) - b["y"]) ** 2).mean(), fluxtrain.params(m2),
                         loader, fluxtrain.Descent(0.05))
    for a, b, c in zip(m1.parameters(), m2.parameters(), ref.parameters()):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-7)
        assert torch.equal(a, b)  # implicit = explicit, bit for bit


def test_tuple_list_and_bare_items_in_plain_lists() -> None:
    seen: list[tuple[object, ...]] = []

    def loss(m, *a):  # type: ignore[no-untyped-def]
        seen.append(a)
        return (m["w"] * 0).sum()

    model = {"w": torch.zeros(1)}
    data = [(1, 2), [3, 4], {"k": 5}, 6, torch.tensor([7.0])]
    fluxtrain.train_(loss, model, data, fluxtrain.setup(O.Descent(), model))
    assert seen[:4] == [(1, 2), (3, 4), ({"k": 5},), (6,)]
    assert len(seen[4]) == 1 and seen[4][0].tolist() == [7.0]  # a tensor is passed whole


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_wrong_arity_names_the_call_before_any_step(style: str) -> None:
    X, Y = _data()
    loader = DataLoader(TensorDataset(X, Y), batch_size=16)
    m = _model()
    before = [p.clone() for p in m.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FluxDeprecationWarning)
        if style == "explicit":
            with pytest.raises(TypeError, match=r"loss\(model, \*item\).*3 arguments.*splatted"):
                fluxtrain.train_(lambda m, batch: m(batch[0]).sum(), m, loader,
                                 fluxtrain.setup(O.Descent(), m))
        else:
            with pytest.raises(TypeError, match=r"loss\(\*item\).*2 arguments.*splatted"):
                fluxtrain.train_(lambda batch: m(batch[0]).sum(), fluxtrain.params(m), loader,
                                 fluxtrain.Descent())
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), before))
