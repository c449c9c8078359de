"""Model, data and loss shared by the distributed workers and the single-process references."""

from __future__ import annotations

import torch

STEPS = 20
LOCAL_BATCH = 4
ETA = 0.01
D_IN, D_HID, D_OUT = 5, 8, 2


def make_model() -> torch.nn.Module:
    torch.manual_seed(1234)
    return torch.nn.Sequential(
        torch.nn.Linear(D_IN, D_HID), torch.nn.Tanh(), torch.nn.Linear(D_HID, D_OUT)
    )


def global_batches(world: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS global batches of world * LOCAL_BATCH rows each."""
    g = torch.Generator().manual_seed(99)
    out = []
    for _ in range(STEPS):
        x = torch.randn(world * LOCAL_BATCH, D_IN, generator=g)
        y = torch.randn(world * LOCAL_BATCH, D_OUT, generator=g)
        out.append((x, y))
    return out


def local_batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard of every global batch (contiguous rows, equal sizes)."""
    lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
    return [(x[lo:hi], y[lo:hi]) for x, y in global_batches(world)]


def loss(model, x, y):
    """Mean squared error: the mean over a global batch is the mean of the shards' means."""
    return ((model(x) - y) ** 2).mean()


def none_loss(m, rank: int):
    """Rank 0 uses both leaves, rank 1 only "a"."""
    if rank == 0:
        return (m["a"] * m["a"]).sum() + (m["b"] * 3.0).sum()
    return (m["a"] * 2.0).sum()


class TwoHeads(torch.nn.Module):
    """Two linear heads; rank 1 never uses ``b`` (its gradient tree has None for all of b)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Linear(3, 2)
        self.b = torch.nn.Linear(3, 2)


def heads_x(rank: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 6).reshape(2, 3) * (rank + 1)


def heads_loss(m: TwoHeads, rank: int):
    x = heads_x(rank)
    if rank == 0:
        return ((m.a(x) + m.b(x)) ** 2).mean()
    return (m.a(x) ** 2).mean()
