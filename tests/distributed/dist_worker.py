"""One rank of the 2-process gloo tests (run as a script by test_distributed.py).

Usage: python dist_worker.py RANK WORLD PORT OUTFILE

Runs every scenario of :data:`SCENARIOS` in one process group (starting
Python and torch once per rank keeps the tests fast) and saves, per scenario,
the final parameters (or the error message) and the number of all-reduce calls
made, with ``torch.save`` to OUTFILE.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import distcommon as C  # noqa: E402

import fluxtrain  # noqa: E402
from fluxtrain import distributed as D  # noqa: E402
from fluxtrain import optimisers as O  # noqa: E402

_calls = {"n": 0}
_real_all_reduce = dist.all_reduce


def _counting_all_reduce(*args, **kwargs):
    _calls["n"] += 1
    return _real_all_reduce(*args, **kwargs)


dist.all_reduce = _counting_all_reduce  # the module's own calls go through this name


def params_of(model):
    return [p.detach().clone() for p in fluxtrain.trainables(model)]


# ---------------------------------------------------------------------------- scenarios
def hand_explicit(rank, world):
    model = C.make_model()
    st = O.setup(O.Adam(C.ETA), model)
    for x, y in C.local_batches(rank, world):
        g = fluxtrain.gradient(C.loss, model, x, y)[0]
        g = D.average_gradient_tree(g, model)
        fluxtrain.update_(st, model, g)
    return params_of(model)


def hand_implicit(rank, world):
    model = C.make_model()
    ps = fluxtrain.params(model)
    opt = fluxtrain.optimise.Adam(C.ETA)
    for x, y in C.local_batches(rank, world):
        gs = fluxtrain.gradient(lambda x=x, y=y: C.loss(model, x, y), ps)
        gs = D.sync_gradients(ps, gs)
        fluxtrain.update_(opt, ps, gs)
    return params_of(model)


def train_explicit(rank, world):
    model = C.make_model()
    st = fluxtrain.setup(O.Adam(C.ETA), model)
    fluxtrain.train_(C.loss, model, C.local_batches(rank, world), st)
    return params_of(model)


def train_implicit(rank, world):
    model = C.make_model()
    ps = fluxtrain.params(model)
    opt = fluxtrain.optimise.Adam(C.ETA)
    fluxtrain.train_(lambda x, y: C.loss(model, x, y), ps, C.local_batches(rank, world), opt)
    return params_of(model)


def train_ddp(rank, world):
    model = C.make_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    st = fluxtrain.setup(O.Adam(C.ETA), ddp)
    fluxtrain.train_(C.loss, ddp, C.local_batches(rank, world), st)
    return params_of(model)


def ddp_backward(rank, world):
    """DDP's own averaging (loss.backward) + sync_gradients: must not average again."""
    model = C.make_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    st = fluxtrain.setup(O.Adam(C.ETA), ddp)
    ours = 0
    for x, y in C.local_batches(rank, world):
        for p in ddp.parameters():
            p.grad = None
        C.loss(ddp, x, y).backward()
        grads = {n: p.grad for n, p in ddp.named_parameters()}
        before = _calls["n"]
        g = D.sync_gradients(ddp, grads)
        ours += _calls["n"] - before
        assert g is grads
        fluxtrain.update_(st, ddp, g)
    return {"params": params_of(model), "fluxtrain_all_reduces": ours}


def none_pattern(rank, world):
    """Rank 1 never uses "b": its gradient there is None and must count as zeros."""
    m = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5, 3.0])}
    st = O.setup(O.Descent(0.1), m)
    g = fluxtrain.gradient(lambda m: C.none_loss(m, rank), m)[0]
    had_none = g["b"] is None
    g2 = D.average_gradient_tree(g, m)
    fluxtrain.update_(st, m, g2)
    try:
        D.average_gradients([g["a"], g["b"]])  # without parameters: a clear error
        err = None
    except ValueError as e:
        err = str(e)
    return {"a": m["a"].clone(), "b": m["b"].clone(), "had_none": had_none, "error": err}


def none_module(rank, world):
    """A whole submodule without gradient on rank 1, explicit tree and implicit Grads."""
    m = C.TwoHeads()
    st = O.setup(O.Descent(0.1), m)
    g = fluxtrain.gradient(lambda m: C.heads_loss(m, rank), m)[0]
    sub_none = g.b.weight is None and g.b.bias is None
    if rank == 1:  # a hand-made tree may have None for the whole submodule: rebuilt with zeros
        from fluxtrain.optimisers.tree import StateTree

        g = StateTree({"a": g.a, "b": None})
    g = D.sync_gradients(m, g)
    fluxtrain.update_(st, m, g)
    m2 = C.TwoHeads()
    ps = fluxtrain.params(m2)
    gs = fluxtrain.gradient(lambda: C.heads_loss(m2, rank), ps)
    gs = D.sync_gradients(ps, gs)
    fluxtrain.update_(fluxtrain.optimise.Descent(0.1), ps, gs)
    return {"explicit": params_of(m), "implicit": params_of(m2), "sub_none": sub_none}


def buckets(rank, world):
    """all-reduce calls: 1 flags + one per (dtype) group with the default cap; more if tiny."""
    xs = [torch.full((1000,), float(rank + 1)), torch.full((10,), 2.0 * rank, dtype=torch.float64),
          torch.full((3, 4), float(rank)), torch.full((5,), -1.0 * rank, dtype=torch.float64)]
    before = _calls["n"]
    D.average_gradients(xs)
    big = _calls["n"] - before
    ys = [torch.full((1000,), float(rank + 1)) for _ in range(4)]
    before = _calls["n"]
    D.average_gradients(ys, bucket_cap_mb=4000 * 1.5 / 2**20)  # 1.5 tensors per bucket
    small = _calls["n"] - before
    return {"xs": xs, "ys": ys, "calls_default": big, "calls_small": small}


def ckpt_ddp(rank, world):
    """Checkpoints of a DDP model use the inner paths and load onto DDP and plain models."""
    from fluxtrain import checkpoint as CK

    model = C.make_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    st = O.setup(O.Adam(C.ETA), ddp)
    for x, y in C.local_batches(rank, world)[:3]:
        g = D.sync_gradients(ddp, fluxtrain.gradient(C.loss, ddp, x, y)[0])
        fluxtrain.update_(st, ddp, g)
    d = CK.state_dict(st, ddp)
    st_ddp = CK.load_state_dict(d, ddp)
    st_plain = CK.load_state_dict(d, C.make_model())
    return {"paths": d["paths"], "ddp_keys": list(st_ddp), "equal": st_ddp == st,
            "plain_equal": st_plain == st["module"]}


def rank0_only(rank, world):
    """Progress bar and deprecation warnings: rank 0 only (once train_ etc. are wired)."""
    from fluxtrain.errors import reset_deprecation_sites
    from fluxtrain.progress import wants_progress

    reset_deprecation_sites()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fluxtrain.params(torch.zeros(1))
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    return {"progress": wants_progress(True), "warned": bool(deprecations)}


def expanded(rank, world):
    """autograd returns an expanded (stride-0) gradient for x.sum(): averaged as a copy."""
    f = float(rank + 1)
    out = {}
    m = {"w": torch.ones(3), "v": torch.ones(2)}
    g = fluxtrain.gradient(lambda m: (m["w"].sum() + m["v"].sum()) * f, m)[0]
    out["was_expanded"] = g["w"].stride() == (0,)
    out["tree"] = D.sync_gradients(m, g)["w"]
    g = fluxtrain.gradient(lambda m: m["w"].sum() * f, m)[0]
    out["tree_nomodel"] = D.average_gradient_tree(g)["w"]
    ps = fluxtrain.params(m["w"])
    gs = D.sync_gradients(ps, fluxtrain.gradient(lambda: m["w"].sum() * f, ps))
    out["grads"] = gs[m["w"]]
    lst = [fluxtrain.gradient(lambda m: m["w"].sum() * f, m)[0]["w"]]
    D.average_gradients(lst)
    out["list"] = lst[0]
    try:
        D.average_gradients((fluxtrain.gradient(lambda m: m["w"].sum() * f, m)[0]["w"],))
        out["tuple_error"] = None
    except ValueError as e:
        out["tuple_error"] = str(e)
    return out


def nonfinite_loss(rank, world):
    """A NaN loss on rank 1 stops every rank (no rank left waiting in an all-reduce)."""
    m = {"w": torch.ones(2)}
    lv = float("nan") if rank == 1 else 0.5
    g = {"w": torch.ones(2)}
    try:
        D.sync_gradients(m, g, loss=lv, item=3)
        first = None
    except fluxtrain.DomainError as e:
        first = str(e)
    g = D.sync_gradients(m, {"w": torch.full((2,), float(rank))}, loss=torch.tensor(1.0))
    return {"error": first, "after": g["w"]}


SCENARIOS = {
    "nonfinite_loss": nonfinite_loss,
    "expanded": expanded,
    "rank0_only": rank0_only,
    "ckpt_ddp": ckpt_ddp,
    "hand_explicit": hand_explicit,
    "hand_implicit": hand_implicit,
    "train_explicit": train_explicit,
    "train_implicit": train_implicit,
    "train_ddp": train_ddp,
    "ddp_backward": ddp_backward,
    "none_pattern": none_pattern,
    "buckets": buckets,
    "none_module": none_module,
}


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results = {}
    for name, fn in SCENARIOS.items():
        dist.barrier()
        try:
            results[name] = {"ok": fn(rank, world)}
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    results["rank0"] = D.is_rank0()
    results["is_distributed"] = D.is_distributed()
    dist.barrier()
    dist.destroy_process_group()
    torch.save(results, out)


if __name__ == "__main__":
    main()
