"""Data-parallel training on ``torch.distributed``: average gradients across processes.

Every process (rank) holds the same model, computes gradients on its own shard
of the data, and then *averages* the gradients over all ranks before the
optimiser step, so that every rank applies the same update and the models stay
identical. The averaging is a bucketed all-reduce: gradients of the same
device and dtype are flattened into buckets of about ``bucket_cap_mb`` MB
(25 by default, as ``DistributedDataParallel``), one ``all_reduce`` per bucket
(launched together, waited for together), then divided by the world size. It
works with every backend that supports ``all_reduce`` with ``SUM`` (gloo on
CPU, NCCL on CUDA).

Nothing happens unless the default process group is initialised with more
than one process (:func:`is_distributed`); single-process code pays nothing.

``None`` gradients (a parameter the loss did not use). Before averaging, the
ranks exchange which entries have a gradient (one tiny all-reduce of flags).
An entry that is ``None`` on every rank stays ``None``. An entry that has a
gradient on some ranks and ``None`` on others is treated as *zero* on the
ranks without one (the mathematically right mean) where the parameter is known
(:func:`sync_gradients`, :func:`average_gradient_tree` with ``model=``);
the low-level :func:`average_gradients`, which sees no parameters, raises a
``ValueError`` on every rank instead (never a hang).

``DistributedDataParallel``. A DDP-wrapped module is an ordinary model for
fluxtrain (its parameters are reached as ``module.*``; ``setup(rule, ddp)``
gives a state tree with a single child ``module``). DDP averages gradients
only in its ``backward`` hooks, i.e. when the user calls ``loss.backward()``
and reads ``p.grad``; ``fluxtrain.gradient`` (``torch.autograd.grad``) does not
trigger them. So: gradients that *are* the ``.grad`` tensors of a DDP module's
parameters are taken as already averaged and left alone; any other gradient of
a DDP model (from ``fluxtrain.gradient`` / ``train_``) is averaged here. Either
way each gradient is averaged exactly once.

Hand-written loops (explicit style)::

    for x, y in loader:                      # loader with a DistributedSampler
        grads = fluxtrain.gradient(loss, model, x, y)
        g = fluxtrain.distributed.average_gradient_tree(grads[0], model)
        fluxtrain.update_(opt_state, model, g)

Implicit style::

    gs = fluxtrain.gradient(lambda: loss(x, y), ps)
    gs = fluxtrain.distributed.sync_gradients(ps, gs)
    fluxtrain.update_(opt, ps, gs)

Log, print and show progress from one process only: ``if is_rank0(): ...``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fluxtrain.core.batched import chunk_by_bytes
from fluxtrain.errors import DomainError
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.tree import StateTree

__all__ = [
    "is_distributed",
    "is_rank0",
    "rank",
    "world_size",
    "is_ddp",
    "unwrap",
    "average_gradients",
    "average_gradient_tree",
    "sync_gradients",
    "DEFAULT_BUCKET_CAP_MB",
]

DEFAULT_BUCKET_CAP_MB = 25.0

Group = Any  # torch.distributed.ProcessGroup | None


# ============================================================================ queries
def is_distributed(group: Group = None) -> bool:
    """Whether ``torch.distributed`` is available, initialised, and has more than one process.

    >>> is_distributed()   # a plain single-process session
    False
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return bool(dist.get_world_size(group) > 1)


def is_rank0(group: Group = None) -> bool:
    """True in the process that should print, log and show progress bars.

    That is rank 0 of the process group when :func:`is_distributed`, and
    always True in a single process (so ``if is_rank0(): print(...)`` is right
    in both).

    >>> is_rank0()
    True
    """
    if not (dist.is_available() and dist.is_initialized()):
        return True
    return bool(dist.get_rank(group) == 0)


def rank(group: Group = None) -> int:
    """This process's rank (0 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return int(dist.get_rank(group))


def world_size(group: Group = None) -> int:
    """The number of processes (1 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def is_ddp(model: Any) -> bool:
    """Whether ``model`` is wrapped in ``torch.nn.parallel.DistributedDataParallel``.

    >>> is_ddp(torch.nn.Linear(2, 1))
    False
    """
    return isinstance(model, nn.parallel.DistributedDataParallel)


def unwrap(model: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` wrapper (anything else unchanged).

    >>> lin = torch.nn.Linear(2, 1)
    >>> unwrap(lin) is lin
    True
    """
    return model.module if is_ddp(model) else model


# ============================================================================ all-reduce
def _flags_device(group: Group) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _presence_counts(
    grads: Sequence[Any], group: Group, loss: Any = None
) -> tuple[list[int], list[int]]:
    """For each entry, on how many ranks it is not ``None`` (one small all-reduce).

    With ``loss`` given, the same all-reduce also tells which ranks have a
    non-finite loss (returned second, empty when all are finite).
    """
    n = len(grads)
    world = dist.get_world_size(group) if loss is not None else 0
    flags = torch.zeros(n + world, dtype=torch.int32, device=_flags_device(group))
    if n:
        flags[:n] = torch.tensor([0 if g is None else 1 for g in grads], dtype=torch.int32)
    if loss is not None and not math.isfinite(_as_float(loss)):
        flags[n + dist.get_rank(group)] = 1
    if n + world:
        dist.all_reduce(flags, op=dist.ReduceOp.SUM, group=group)
    vals = [int(c) for c in flags.tolist()]
    return vals[:n], [r for r, v in enumerate(vals[n:]) if v]


def _as_float(loss: Any) -> float:
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().reshape(-1)[0].item())
    return float(loss)


def _check_losses(bad: list[int], loss: Any, item: int | None, group: Group) -> None:
    if not bad:
        return
    at = f" on data item {item}" if item is not None else ""
    v = _as_float(loss)
    if not math.isfinite(v):
        what = "NaN" if math.isnan(v) else ("Inf" if v > 0 else "-Inf")
        msg = f"Loss is {what}{at} (rank {dist.get_rank(group)}), stopping training"
    else:
        msg = f"Loss is not finite{at} on rank(s) {bad}, stopping training on every rank"
    raise DomainError(msg)


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _buckets(tensors: Sequence[torch.Tensor], cap_bytes: int) -> list[list[int]]:
    """Indices grouped by (device, dtype), each group cut into buckets of at most ``cap_bytes``.

    A tensor larger than the cap gets a bucket of its own. Order within a
    bucket is the input order, so every rank builds the same buckets.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return [b for idx in groups.values() for b in chunk_by_bytes(idx, tensors, cap_bytes)]


def _allreduce_mean_(tensors: Sequence[torch.Tensor], group: Group, bucket_cap_mb: float) -> None:
    """Average ``tensors`` in place over the group, one all-reduce per bucket."""
    seen: set[int] = set()
    unique: list[torch.Tensor] = []
    for t in tensors:  # the same tensor listed twice (a tied gradient) is averaged once
        if id(t) not in seen:
            seen.add(id(t))
            unique.append(t)
    if not unique:
        return
    world = dist.get_world_size(group)
    views = [_real_view(t) for t in unique]
    for t in views:
        if not t.is_floating_point():
            raise TypeError(
                f"distributed: cannot average a gradient of dtype {t.dtype}; gradients must "
                "be floating-point or complex tensors"
            )
    cap = max(1, int(bucket_cap_mb * 1024 * 1024))
    pending: list[tuple[Any, list[torch.Tensor], torch.Tensor]] = []
    with torch.no_grad():
        for bucket in _buckets(views, cap):
            members = [views[i] for i in bucket]
            if len(members) == 1 and members[0].is_contiguous():
                flat = members[0]  # reduce in place, no copy
            else:
                flat = torch._utils._flatten_dense_tensors(members)
            work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group, async_op=True)
            pending.append((work, members, flat))
        for work, members, flat in pending:
            work.wait()
            flat.div_(world)
            if flat is members[0] and len(members) == 1:
                continue
            for t, part in zip(
                members, torch._utils._unflatten_dense_tensors(flat, members)
            ):
                t.copy_(part)


def average_gradients(
    grads: Sequence[torch.Tensor | None],
    *,
    group: Group = None,
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
) -> None:
    """Average gradient tensors in place across all processes (bucketed all-reduce).

    ``grads`` is a sequence of tensors (or ``None``), in the same order on
    every rank (e.g. in :func:`fluxtrain.trainables` order). Tensors of the
    same device and dtype are flattened into buckets of about
    ``bucket_cap_mb`` MB; one ``all_reduce`` per bucket; the sums are divided
    by the world size and written back into the given tensors.

    A non-contiguous tensor (such as the expanded, stride-0 gradient autograd
    returns for ``x.sum()``) cannot be averaged in place: in a ``list`` it is
    replaced by an averaged contiguous copy; other sequences raise ``ValueError``.

    ``None`` entries must be ``None`` on every rank: the pattern is checked
    (one small all-reduce) and a mismatch raises ``ValueError`` on every rank,
    naming the entries. (:func:`sync_gradients`, which knows the parameters,
    fills such gaps with zeros instead.) Does nothing when not
    :func:`is_distributed`.

    >>> g = [torch.ones(3), None]
    >>> average_gradients(g)       # single process: unchanged
    >>> g[0].tolist()
    [1.0, 1.0, 1.0]
    """
    if not is_distributed(group):
        return
    given = grads
    grads = list(grads)
    counts, _ = _presence_counts(grads, group)
    world = dist.get_world_size(group)
    bad = [i for i, c in enumerate(counts) if 0 < c < world]
    if bad:
        raise ValueError(
            f"average_gradients: gradient entries {bad[:10]} are None on some ranks but not on "
            "others; every rank must give gradients for the same entries. Use "
            "fluxtrain.distributed.sync_gradients(params, grads), which treats a missing "
            "gradient as zeros, or replace None by torch.zeros_like(param)"
        )
    work = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        if not g.is_contiguous():
            if not isinstance(given, list):
                raise ValueError(
                    f"average_gradients: gradient {i} is not contiguous (e.g. the expanded "
                    "tensor autograd returns for x.sum()) and cannot be averaged in place; pass "
                    "a list (its entry is then replaced) or use sync_gradients"
                )
            g = given[i] = g.contiguous()
        work.append(g)
    _allreduce_mean_(work, group, bucket_cap_mb)


# ============================================================================ trees
_MISSING: Any = object()


class _Entry:
    """One trainable leaf position of a model with its gradient."""

    __slots__ = ("param", "grad", "new")

    def __init__(self, param: torch.Tensor, grad: Any) -> None:
        self.param = param
        self.grad = grad
        self.new: Any = _MISSING  # replacement gradient object, if any


def _child_grad(g: Any, key: Any, index: int) -> Any:
    """The gradient subtree of ``g`` for the model child ``key`` (``index``-th child)."""
    if g is None:
        return None
    if isinstance(g, StateTree):
        return g._children.get(str(key))
    if isinstance(g, Mapping):
        return g.get(key)
    if isinstance(g, tuple | list):
        return g[index] if index < len(g) else None
    if T.kind(g) in (T.DATACLASS, T.MODULE):
        return getattr(g, str(key), None)
    return None


def _collect(x: Any, g: Any, enabled: bool, out: list[_Entry]) -> None:
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if enabled and T.is_trainable(x, k):
            out.append(_Entry(T.as_tensor(x, k) if k == T.NUMPY else x, g))
        return
    if k == T.OTHER or not enabled:
        return
    for i, (key, child, en) in enumerate(T.children(x, k)):
        _collect(child, _child_grad(g, key, i), en, out)


def _rebuild(x: Any, g: Any, enabled: bool, it: Iterator[_Entry]) -> Any:
    """``g`` with the replaced entries swapped in (walks in :func:`_collect` order)."""
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if enabled and T.is_trainable(x, k):
            e = next(it)
            return e.grad if e.new is _MISSING else e.new
        return g
    if k == T.OTHER or not enabled:
        return g
    kids = T.children(x, k)
    subs = [(key, _rebuild(child, _child_grad(g, key, i), en, it))
            for i, (key, child, en) in enumerate(kids)]
    if g is not None and not isinstance(g, StateTree | Mapping | tuple | list):
        g = None  # a dataclass-shaped gradient: rebuild in the canonical form
    if isinstance(g, StateTree) or (g is None and k in (T.MODULE, T.DATACLASS)):
        old = dict(g._children) if isinstance(g, StateTree) else {}
        old.update((str(key), v) for key, v in subs)
        return StateTree(old)
    if isinstance(g, Mapping) or (g is None and k == T.DICT):
        new = dict(g) if isinstance(g, Mapping) else {}
        new.update(subs)
        return new
    vals = [v for _, v in subs]
    if isinstance(g, list) or (g is None and k == T.LIST):
        return vals
    if k == T.NAMEDTUPLE:
        try:
            return type(x)._make(vals)
        except Exception:  # pragma: no cover - exotic namedtuple
            return tuple(vals)
    return tuple(vals)


def _is_flat_names(model: Any, g: Any) -> bool:
    if T.kind(model) != T.MODULE or isinstance(g, StateTree) or not isinstance(g, Mapping):
        return False
    if not g or not all(isinstance(key, str) for key in g):
        return False
    names = {n for n, _ in model.named_parameters()}
    return any("." in key for key in g) and all(key in names for key in g)


def _ddp_synced(model: Any, entries: Sequence[_Entry]) -> bool:
    """Whether these are a DDP module's own ``.grad`` tensors (averaged by its hooks)."""
    if not is_ddp(model):
        return False
    live = [e for e in entries if e.grad is not None]
    return bool(live) and all(e.grad is e.param.grad for e in live)


def _sync_entries(
    entries: Sequence[_Entry],
    group: Group,
    bucket_cap_mb: float,
    where: str,
    loss: Any = None,
    item: int | None = None,
) -> bool:
    """Average the entries' gradients; returns whether any entry got a new object."""
    counts, bad = _presence_counts([e.grad for e in entries], group, loss)
    _check_losses(bad, loss, item, group)
    work: list[torch.Tensor] = []
    changed = False
    for e, c in zip(entries, counts):
        if c == 0:
            continue
        g = e.grad
        if g is None:  # another rank has a gradient here: ours is zero
            t = torch.zeros_like(e.param.detach())
            e.new = t
            changed = True
        elif isinstance(g, np.ndarray):
            if g.flags.writeable and g.flags.c_contiguous:
                t = torch.from_numpy(g)  # shares memory: averaged in place
            else:
                t = torch.from_numpy(np.array(g, copy=True))
                e.new = t.numpy()
                changed = True
        elif isinstance(g, torch.Tensor):
            if g.shape != e.param.shape:
                raise ValueError(
                    f"{where}: a gradient has shape {tuple(g.shape)} but its parameter has "
                    f"shape {tuple(e.param.shape)}"
                )
            if g.is_contiguous():
                t = g
            else:  # e.g. the expanded (stride-0) tensor autograd returns for x.sum(): a copy
                t = g.contiguous()
                e.new = t
                changed = True
        else:
            raise TypeError(
                f"{where}: gradients must be tensors, numpy arrays or None, got "
                f"{type(g).__name__}"
            )
        work.append(t)
    # Every rank builds the same buckets: zero-filled entries take the parameter's
    # dtype, which agrees across ranks, as do the gradients' own dtypes.
    _allreduce_mean_(work, group, bucket_cap_mb)
    return changed


def average_gradient_tree(
    grads: Any,
    model: Any = None,
    *,
    group: Group = None,
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
) -> Any:
    """Average an explicit gradient tree across processes; returns the tree to use.

    ``grads`` is what ``fluxtrain.gradient(loss, model, ...)[0]`` returns (or
    any gradient tree ``update_`` accepts, including a flat mapping of
    ``named_parameters`` names). The tensors are averaged in place with a
    bucketed all-reduce, so the result is usually ``grads`` itself; a new tree
    is returned only where a gradient that is ``None`` here but present on
    another rank had to be filled with zeros (that needs ``model``), or a
    gradient could not be written in place (a read-only numpy array, an
    expanded tensor) and was replaced by an averaged copy. Use the returned tree.

    Without ``model`` the tree's tensors are averaged as :func:`average_gradients`
    does (same ``None`` pattern required on every rank). A no-op when not
    :func:`is_distributed`.

    >>> m = {"w": torch.ones(2)}
    >>> g = {"w": torch.full((2,), 3.0)}
    >>> average_gradient_tree(g, m) is g     # single process: nothing to do
    True
    """
    if not is_distributed(group):
        return grads
    if model is None:
        leaves = _tree_tensors(grads)
        before = list(leaves)
        average_gradients(leaves, group=group, bucket_cap_mb=bucket_cap_mb)
        if any(a is not b for a, b in zip(leaves, before)):
            return _replace_leaves(grads, iter(leaves))
        return grads
    return sync_gradients(model, grads, group=group, bucket_cap_mb=bucket_cap_mb)


def _tree_tensors(g: Any) -> list[Any]:
    out: list[Any] = []

    def walk(v: Any) -> None:
        if v is None:
            out.append(None)
        elif isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, np.ndarray):
            out.append(torch.from_numpy(v))
        elif isinstance(v, StateTree):
            for c in v._children.values():
                walk(c)
        elif isinstance(v, Mapping):
            for c in v.values():
                walk(c)
        elif isinstance(v, tuple | list):
            for c in v:
                walk(c)

    walk(g)
    return out


def _replace_leaves(v: Any, it: Iterator[Any]) -> Any:
    """``v`` rebuilt with its leaves taken from ``it`` (in :func:`_tree_tensors` order)."""
    if v is None or isinstance(v, torch.Tensor):
        return next(it)
    if isinstance(v, np.ndarray):
        new = next(it)
        return v if isinstance(new, torch.Tensor) and new.data_ptr() == v.ctypes.data \
            else new.numpy()
    if isinstance(v, StateTree):
        return StateTree({k: _replace_leaves(c, it) for k, c in v._children.items()})
    if isinstance(v, Mapping):
        return {k: _replace_leaves(c, it) for k, c in v.items()}
    if isinstance(v, list):
        return [_replace_leaves(c, it) for c in v]
    if isinstance(v, tuple):
        vals = [_replace_leaves(c, it) for c in v]
        return type(v)._make(vals) if hasattr(v, "_fields") else tuple(vals)  # type: ignore[attr-defined]
    return v


def sync_gradients(
    model_or_params: Any,
    grads: Any,
    *,
    loss: Any = None,
    item: int | None = None,
    group: Group = None,
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
) -> Any:
    """Average gradients across processes before an update; returns the gradients to use.

    The one call both ``train_``\\ s make (when :func:`is_distributed`) and the
    helper for hand-written loops. Accepted pairs:

    * a model (``nn.Module``, a ``DistributedDataParallel`` module, or a tree)
      and its gradient tree (``fluxtrain.gradient(loss, model, ...)[0]``, or a
      flat ``{name: grad}`` mapping for a Module);
    * a ``Params`` and its ``Grads`` (implicit style; a Grads is updated in
      place and returned);
    * a sequence of parameter tensors and a same-length sequence of gradients
      (returns a new list).

    A gradient that is ``None`` here but present on another rank becomes zeros
    (of the parameter's shape and dtype).

    ``loss=`` (this rank's loss, a number or 1-element tensor) makes the
    non-finite-loss check collective, at no extra communication: if the loss
    is NaN or infinite on *any* rank, every rank raises
    :class:`~fluxtrain.DomainError` (naming ``item``, the data item number,
    when given) instead of one rank stopping while the others wait for it in
    the next all-reduce. Gradients that are a DDP module's
    own ``.grad`` tensors were already averaged by DDP and are returned as they
    are. Not distributed: returns ``grads`` untouched.

    >>> p = torch.zeros(2)
    >>> g = [torch.ones(2)]
    >>> sync_gradients([p], g) is g   # single process
    True
    """
    if not is_distributed(group):
        return grads
    where = "sync_gradients"
    from fluxtrain.implicit.params import Grads, Params

    if isinstance(grads, Grads) or isinstance(model_or_params, Params):
        ps = grads.params if isinstance(grads, Grads) else model_or_params
        entries = []
        for p in ps:
            if isinstance(grads, Grads):
                g = grads[p]
            elif isinstance(grads, Mapping):
                g = grads.get(p)
            else:
                raise TypeError(
                    f"{where}: with Params, give the Grads from gradient(f, ps), got "
                    f"{type(grads).__name__}"
                )
            entries.append(_Entry(p, g))
        if _sync_entries(entries, group, bucket_cap_mb, where, loss, item):
            if not isinstance(grads, Grads):
                grads = Grads([(e.param, e.grad) for e in entries], ps)
            for e in entries:
                if e.new is not _MISSING:
                    grads[e.param] = e.new
        return grads
    if isinstance(model_or_params, list | tuple) and all(
        isinstance(p, torch.Tensor) for p in model_or_params
    ) and isinstance(grads, Sequence) and not isinstance(grads, Mapping):
        if len(grads) != len(model_or_params):
            raise ValueError(
                f"{where}: {len(model_or_params)} parameters but {len(grads)} gradients; give "
                "one gradient (or None) per parameter, in the same order"
            )
        entries = [_Entry(p, g) for p, g in zip(model_or_params, grads)]
        _sync_entries(entries, group, bucket_cap_mb, where, loss, item)
        return [e.grad if e.new is _MISSING else e.new for e in entries]
    model = model_or_params
    if _is_flat_names(model, grads):
        named = [(n, p) for n, p in model.named_parameters() if n in grads or p.requires_grad]
        entries = [_Entry(p, grads.get(n)) for n, p in named]
        if _ddp_synced(model, entries):
            return grads
        if _sync_entries(entries, group, bucket_cap_mb, where, loss, item):
            out = dict(grads)
            for (n, _), e in zip(named, entries):
                if e.new is not _MISSING:
                    out[n] = e.new
            return out
        return grads
    entries = []
    _collect(model, grads, True, entries)
    if _ddp_synced(model, entries):
        return grads
    if _sync_entries(entries, group, bucket_cap_mb, where, loss, item):
        return _rebuild(model, grads, True, iter(entries))
    return grads
