"""Data-parallel training of a small MLP with fluxtrain on torch.distributed.

Run on one machine's CPU with two processes (gloo backend)::

    torchrun --nproc_per_node=2 examples/distributed/distributed_mlp.py

(``python examples/distributed/distributed_mlp.py`` runs the same script in one process.)

Each process holds the whole model; a ``DistributedSampler`` gives every
process a different shard of each epoch's data; after each gradient the
processes average their gradients (``fluxtrain.distributed.average_gradient_tree``,
a bucketed all-reduce), so they all take the same step and the models stay
identical. Only rank 0 prints and writes the checkpoint.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import fluxtrain
from fluxtrain import checkpoint, distributed
from fluxtrain import optimisers as O


def main() -> None:
    if "RANK" in os.environ:  # started by torchrun
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device("cuda") if dist.is_initialized() and dist.get_backend() == "nccl" \
        else torch.device("cpu")
    torch.set_num_threads(1)

    # the same data and the same initial model on every rank (same seeds)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    y = (x[:, :3].sum(dim=1, keepdim=True) > 0).float()
    data = TensorDataset(x, y)
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    ).to(device)

    # every rank reads its own shard; the global batch is world_size * 32 rows
    sampler = DistributedSampler(data, shuffle=True, seed=0) if distributed.is_distributed() \
        else None
    loader = DataLoader(data, batch_size=32, sampler=sampler, shuffle=sampler is None)

    def loss(m, xb, yb):
        return torch.nn.functional.binary_cross_entropy_with_logits(m(xb), yb)

    opt_state = fluxtrain.setup(O.Adam(0.01), model)
    for epoch in range(5):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a different shuffle (and sharding) each epoch
        total, n = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            val, grads = fluxtrain.withgradient(loss, model, xb, yb)
            g0 = distributed.average_gradient_tree(grads[0], model)  # no-op in one process
            fluxtrain.update_(opt_state, model, g0)
            total += float(val)
            n += 1
        if distributed.is_rank0():
            print(f"epoch {epoch}: mean loss on rank 0's shard {total / n:.4f} "
                  f"({n} steps, world size {distributed.world_size()})")

    # the ranks' models are identical: compare a checksum across processes
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    if distributed.is_distributed():
        sums = [torch.zeros(2, dtype=torch.float64, device=device)
                for _ in range(distributed.world_size())]
        dist.all_gather(sums, torch.stack([flat.sum(), (flat * flat).sum()]))
        same = all(torch.equal(s, sums[0]) for s in sums)
    else:
        same = True
    if distributed.is_rank0():
        print("parameters identical on all ranks:", same)
        torch.save({"model": model.state_dict(), "opt": checkpoint.state_dict(opt_state, model)},
                   "distributed_mlp.pt")
        print("checkpoint written to distributed_mlp.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
