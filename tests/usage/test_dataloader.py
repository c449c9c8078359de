"""Day one: training on a ``torch.utils.data.DataLoader``, in both styles.

The batch rule (DESIGN.md "Data and batches"): a tuple or a list batch is splatted,
``loss(model, *batch)`` / ``loss(*batch)``; any other batch (a dict from a dataset of dicts,
a bare tensor) is passed whole as one argument. Each run is checked against the loop a
PyTorch user writes with torch.optim on a twin model with the same initial weights and the
same batches in the same order (``shuffle=False``, or ``shuffle=True`` with a generator
seeded the same way on both sides).
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

import fluxtrain
from fluxtrain.optimisers import Adam

from .usageutil import F32, assert_moved, assert_same_params, mlp, mse, params_of, regression, twins

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EPOCHS = 3
LR = 1e-2


class DictDataset(Dataset):
    """A dataset of dicts, as Hugging Face-style pipelines yield: batches are dicts."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self.X, self.Y = X, Y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.X[i], "y": self.Y[i]}


def make_loader(kind: str, X: torch.Tensor, Y: torch.Tensor, shuffle: bool = False) -> DataLoader:
    kw: dict = {"batch_size": 16, "shuffle": shuffle}
    if shuffle:
        kw["generator"] = torch.Generator().manual_seed(1234)
    if kind == "list":  # TensorDataset + default_collate: each batch is a list [x, y]
        return DataLoader(TensorDataset(X, Y), **kw)
    if kind == "tuple":
        return DataLoader(TensorDataset(X, Y), collate_fn=lambda b: tuple(default_collate(b)),
                          **kw)
    if kind == "dict":
        return DataLoader(DictDataset(X, Y), **kw)
    raise AssertionError(kind)


def dict_mse(m, batch):
    return mse(m, batch["x"], batch["y"])


def test_batches_are_what_the_rule_says():
    # the premise of the other tests: torch's DataLoader yields lists by default
    X, Y = regression()
    assert type(next(iter(make_loader("list", X, Y)))) is list
    assert type(next(iter(make_loader("tuple", X, Y)))) is tuple
    assert type(next(iter(make_loader("dict", X, Y)))) is dict


def _torch_run(model, kind, X, Y, shuffle):
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(EPOCHS):
        for batch in make_loader(kind, X, Y, shuffle):
            opt.zero_grad()
            (dict_mse(model, batch) if kind == "dict" else mse(model, *batch)).backward()
            opt.step()


def _explicit_run(model, kind, X, Y, shuffle):
    opt_state = fluxtrain.setup(Adam(LR), model)
    loss = dict_mse if kind == "dict" else mse
    for _ in range(EPOCHS):
        fluxtrain.train_(loss, model, make_loader(kind, X, Y, shuffle), opt_state)


def _implicit_run(model, kind, X, Y, shuffle):
    ps = fluxtrain.params(model)
    opt = fluxtrain.optimise.Adam(LR)
    if kind == "dict":
        def loss(batch):
            return dict_mse(model, batch)
    else:
        def loss(x, y):
            return mse(model, x, y)
    for _ in range(EPOCHS):
        fluxtrain.train_(loss, ps, make_loader(kind, X, Y, shuffle), opt)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "seeded-shuffle"])
@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_dataloader_matches_torch_optim(style, kind, shuffle):
    X, Y = regression()
    ours, theirs = twins(mlp)
    before = params_of(ours)
    (_explicit_run if style == "explicit" else _implicit_run)(ours, kind, X, Y, shuffle)
    _torch_run(theirs, kind, X, Y, shuffle)
    assert_moved(ours, before)
    # Adam: same formula, bias corrections rounded in another order (see usageutil.F32)
    assert_same_params(ours, theirs, **F32)


@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_dataloader_explicit_equals_implicit(kind):
    # both styles run one rule core: bit for bit the same on the same batches
    X, Y = regression()
    a, b = twins(mlp)
    _explicit_run(a, kind, X, Y, False)
    _implicit_run(b, kind, X, Y, False)
    assert_same_params(a, b)


def test_single_tensor_dataset_batch_is_a_one_element_list():
    # TensorDataset(X) yields [x]: splatted, so the loss takes the tensor itself
    # (an autoencoder's loss(m, x)); checked against torch.optim.SGD
    X, _ = regression()
    ours, theirs = twins(lambda: mlp(4, 3, 4))

    def recon(m, x):
        return ((m(x) - x) ** 2).mean()

    opt_state = fluxtrain.setup(fluxtrain.optimisers.Descent(0.1), ours)
    fluxtrain.train_(recon, ours, DataLoader(TensorDataset(X), batch_size=16), opt_state)
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for (x,) in DataLoader(TensorDataset(X), batch_size=16):
        opt.zero_grad()
        recon(theirs, x).backward()
        opt.step()
    # Descent: x - eta*g, torch: x + (-lr)*g; equal up to one rounding per step
    assert_same_params(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_bare_tensor_batches_are_passed_whole(style):
    # DataLoader over a plain tensor yields tensors: "anything else" is one argument
    X, _ = regression()
    ours, theirs = twins(lambda: mlp(4, 3, 4))

    def recon(m, x):
        return ((m(x) - x) ** 2).mean()

    data = DataLoader(X, batch_size=16)
    assert isinstance(next(iter(data)), torch.Tensor)
    if style == "explicit":
        st = fluxtrain.setup(fluxtrain.optimisers.Descent(0.1), ours)
        fluxtrain.train_(recon, ours, data, st)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            fluxtrain.train_(lambda x: recon(ours, x), fluxtrain.params(ours), data,
                             fluxtrain.optimise.Descent(0.1))
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x in data:
        opt.zero_grad()
        recon(theirs, x).backward()
        opt.step()
    assert_same_params(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_any_mapping_is_passed_whole(style):
    # not only dict: a read-only MappingProxyType batch arrives as one argument too,
    # and trains exactly as the same batches as dicts
    X, Y = regression()
    dicts = [{"x": X[i:i + 16], "y": Y[i:i + 16]} for i in range(0, 64, 16)]
    proxies = [types.MappingProxyType(d) for d in dicts]
    a, b = twins(mlp)
    for model, data in ((a, dicts), (b, proxies)):
        if style == "explicit":
            fluxtrain.train_(dict_mse, model, data, fluxtrain.setup(Adam(LR), model))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                fluxtrain.train_(lambda batch, model=model: dict_mse(model, batch),
                                 fluxtrain.params(model), data, fluxtrain.optimise.Adam(LR))
    assert_same_params(a, b)
