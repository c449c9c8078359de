"""Helpers shared by the first-day tests: twin models, a plain torch.optim loop, comparisons."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# fluxtrain vs torch.optim on float32. Descent/SGD and the momentum rules agree to a few
# ulps; Adam writes its bias corrections in another order (Optimisers.jl:
# m/bc1 / (sqrt(v/bc2) + eps) * eta; torch: lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)), so the
# two drift apart by a few ulps per step. The tolerances are those of
# tests/core/test_core_torch_optim.py (largest difference seen there: 7e-7 after 30 steps).
F32 = {"rtol": 1e-5, "atol": 1e-6}


def seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def twins(make: Callable[[], nn.Module], seed: int = 0, n: int = 2) -> list[nn.Module]:
    """``n`` models with the same initial weights (one built from the seed, the others copies)."""
    m = seeded(make, seed)
    return [m] + [copy.deepcopy(m) for _ in range(n - 1)]


def mlp(din: int = 4, hidden: int = 8, dout: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(din, hidden), nn.Tanh(), nn.Linear(hidden, dout))


def regression(n: int = 64, din: int = 4, dout: int = 2, seed: int = 1,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, din, generator=g)
    W = torch.randn(din, dout, generator=g)
    Y = X @ W + 0.1 * torch.randn(n, dout, generator=g)
    return X.to(dtype), Y.to(dtype)


def loader(X: torch.Tensor, Y: torch.Tensor, batch_size: int = 16, **kw: Any) -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=batch_size, **kw)


def mse(m: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((m(x) - y) ** 2).mean()


def torch_train(model: nn.Module, opt: torch.optim.Optimizer, data: Iterable[Any],
                loss: Callable[..., torch.Tensor] = mse, scheduler: Any = None,
                splat: bool = True) -> None:
    """The loop a PyTorch user writes: zero_grad, loss, backward, step (and scheduler.step)."""
    for batch in data:
        opt.zero_grad()
        out = loss(model, *batch) if splat else loss(model, batch)
        out.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_params(a: nn.Module, b: nn.Module, **tol: Any) -> None:
    """Parameters of ``a`` and ``b`` (paired by name) agree: bit for bit unless tolerances
    are given."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for n in pa:
        if tol:
            torch.testing.assert_close(pa[n].detach(), pb[n].detach(),
                                       msg=lambda m, n=n: f"{n}: {m}", **tol)
        else:
            assert torch.equal(pa[n].detach(), pb[n].detach()), (
                f"{n} differs: max |diff| "
                f"{(pa[n].detach().double() - pb[n].detach().double()).abs().max().item()}")


def assert_moved(model: nn.Module, before: dict[str, torch.Tensor], atol: float = 1e-4) -> None:
    """The run changed every parameter (so that a comparison is not vacuous)."""
    for n, p in model.named_parameters():
        d = (p.detach().double() - before[n].double()).abs().max().item()
        assert d > atol, f"{n} barely moved ({d})"
