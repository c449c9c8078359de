"""Allocation-free fused steps for ``Descent``, ``Momentum`` and ``Adam``.

Both tree APIs (explicit ``update_``, implicit ``update_``) commit a step in two
parts: the rules run, then parameters and states are written together. For the
three commonest rules this module runs the *whole* rule inside the commit
instead, as a fixed sequence of in-place and ``out=`` ``torch._foreach_*``
kernels on tensors that were all checked beforehand (dtype, device, shape,
writability). That buys three things, with the same bits:

* no per-step allocation: the temporaries of ``apply_many`` (``dx*c1``,
  ``|dx|^2*c2``, the step, the denominator) go to scratch buffers kept in a
  per-rule workspace and reused from step to step;
* no backup copy of the state: the state is only written inside the commit
  (nothing that can fail runs after the first write), so there is nothing to
  roll back;
* cache-sized passes on the CPU: leaves are cut into runs of about
  :data:`fluxtrain.core.batched.CPU_CHUNK_BYTES` (large contiguous leaves into
  flat slices), and every kernel of the step, including ``x -= step``, runs on
  one run before the next, so the data stays in cache between kernels.

Every elementwise operation is the one the rule's ``apply`` performs, in the
same order, on the same operands (floating-point elementwise kernels give the
same bits on a slice as on the whole tensor). The path is taken only for the
exact built-in classes whose ``apply``/``apply_many`` are unchanged (a patched
or subclassed rule goes the general way) and for leaves whose parameter,
gradient and state share dtype and device, are real, writable and not
expanded; :func:`prepare` returns ``None`` otherwise and the caller uses
:func:`fluxtrain.core.apply_batched` for the rule's whole leaf set.

>>> import torch
>>> from fluxtrain.core import Momentum
>>> rule = Momentum(0.1, 0.9)
>>> x, dx = torch.ones(3), torch.full((3,), 2.0)
>>> v = rule.init(x)
>>> [pending] = prepare(rule, [v], [x], [dx])   # one (device, dtype) group
>>> states = pending.run()                      # writes v and x in place
>>> x.tolist(), states[0] is v
([0.800000011920929, 0.800000011920929, 0.800000011920929], True)
"""

from __future__ import annotations

import threading
import weakref
from array import array
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np
import torch

from fluxtrain.core import base, native, tensormeta
from fluxtrain.core import rules as R
from fluxtrain.core.base import State, maywrite
from fluxtrain.core.batched import CPU_CHUNK_BYTES
from fluxtrain.core.hyper import cast

__all__ = ["prepare", "Pending", "trusted"]

_aten = torch.ops.aten
_ORIGINAL: dict[type, tuple[Any, Any]] = {
    cls: (cls.__dict__["apply"], cls.__dict__["apply_many"])
    for cls in (R.Descent, R.Momentum, R.Adam)
}
#: dtypes of the fused path: for these, every kernel used gives the same bits on a
#: slice, a list or one tensor (bfloat16 scalar kernels were seen to differ)
_DTYPES = (torch.float32, torch.float64)
#: scratch buffers per rule class (Adam on the CPU adds one for a flat copy of dx)
_NSCRATCH = {R.Descent: 1, R.Momentum: 1, R.Adam: 2}


def trusted(rule: object) -> bool:
    """Whether ``rule`` is a plain built-in Descent/Momentum/Adam (nothing patched).

    Decided per instance: a rule with a schedule in a field (whose instance
    ``apply``/``apply_many`` shadow the class's, see :mod:`fluxtrain.core.schedules`)
    or with methods assigned on the instance is not plain, and goes the general way.
    """
    cls = type(rule)
    orig = _ORIGINAL.get(cls)
    if (
        orig is None
        or cls.__dict__.get("apply") is not orig[0]
        or cls.__dict__.get("apply_many") is not orig[1]
    ):
        return False
    own = getattr(rule, "__dict__", None)
    return own is None or ("apply" not in own and "apply_many" not in own)


# ----------------------------------------------------------------------- workspace
class _Workspace:
    """Scratch buffers and their per-run views, reused while the leaves' shapes stay."""

    __slots__ = ("sig", "runs", "bufs", "flat", "spans", "homes", "ptrs", "starts", "nstate",
                 "native", "scalars")

    def __init__(self) -> None:
        self.sig: Any = None
        self.runs: list[tuple[list[tuple[int, int, int]], list[list[torch.Tensor]]]] = []
        self.bufs: list[torch.Tensor] = []
        #: CPU, stateful rules: the state tensors live in ``homes`` (one flat buffer
        #: per state slot, leaves back to back); ``spans`` is each run's range there
        self.flat = False
        self.spans: list[tuple[int, int]] = []
        self.homes: list[torch.Tensor] = []
        self.ptrs: list[list[int]] = []
        self.starts: list[int] = []
        self.nstate = 0
        self.native: _NativeCache | None = None
        #: the rule's scalars rounded to this workspace's dtype (the rule is frozen)
        self.scalars: tuple[float, ...] | None = None


_WS: dict[int, tuple[Any, dict[Any, Any]]] = {}


def _workspaces(rule: object) -> dict[Any, Any]:
    """The rule's table: ``(device, dtype, thread)``: workspace; ``("leaves", thread)``: _Leaves."""
    hit = _WS.get(id(rule))
    if hit is not None and hit[0]() is rule:
        return hit[1]
    key = id(rule)
    table: dict[Any, Any] = {}
    _WS[key] = (weakref.ref(rule, lambda _r: _WS.pop(key, None)), table)
    return table


def _layout(ws: _Workspace, xs: Sequence[torch.Tensor], nscratch: int, nstate: int) -> None:
    """Cut the leaves into runs and make scratch views for each (cached by shapes)."""
    x0 = xs[0]
    sig = (x0.device, x0.dtype, nscratch, nstate, [x.shape for x in xs])
    if ws.sig == sig:
        return
    ws.sig = None
    esize = x0.element_size()
    runs: list[list[tuple[int, int, int]]] = []  # (leaf, start, stop); stop -1 = whole leaf
    if x0.device.type == "cpu":
        cap = max(1, CPU_CHUNK_BYTES // esize)
        cur: list[tuple[int, int, int]] = []
        size = 0
        for i, x in enumerate(xs):
            n = x.numel()
            if n > cap:
                if cur:
                    runs.append(cur)
                    cur, size = [], 0
                for a in range(0, n, cap):
                    runs.append([(i, a, min(n, a + cap))])
                continue
            if cur and size + n > cap:
                runs.append(cur)
                cur, size = [], 0
            cur.append((i, 0, -1))
            size += n
        if cur:
            runs.append(cur)
        total = max((sum((b - a) if b >= 0 else xs[i].numel() for i, a, b in r) for r in runs),
                    default=0)
    else:
        runs = [[(i, 0, -1) for i in range(len(xs))]]
        total = sum(x.numel() for x in xs)
    flat = x0.device.type == "cpu" and nstate > 0
    nbuf = nscratch + (1 if flat and nstate == 2 else 0)  # Adam copies dx to a flat g
    bufs = [torch.empty(total, dtype=x0.dtype, device=x0.device) for _ in range(nbuf)]
    out = []
    for r in runs:
        views: list[list[torch.Tensor]] = []
        for buf in bufs:
            vs, off = [], 0
            for i, a, b in r:
                if b < 0:
                    n = xs[i].numel()
                    vs.append(buf[off:off + n].view(xs[i].shape))
                else:
                    n = b - a
                    vs.append(buf[off:off + n])
                off += n
            views.append(vs)
        out.append((r, views))
    starts = [0] * len(xs)
    pos = 0
    for i, x in enumerate(xs):
        starts[i] = pos
        pos += x.numel()
    spans = []
    for r in runs:
        (i0, a0, _), (i1, _, b1) = r[0], r[-1]
        spans.append((starts[i0] + a0, starts[i1] + (b1 if b1 >= 0 else xs[i1].numel())))
    ws.runs, ws.bufs, ws.flat, ws.spans, ws.sig = out, bufs, flat, spans, sig
    ws.homes, ws.ptrs, ws.starts = [], [], starts if flat else []
    ws.nstate = nstate if flat else 0


def _home(ws: _Workspace, slots: list[list[torch.Tensor]]) -> None:
    """Make the state tensors live in ``ws.homes`` (values kept, objects kept).

    ``slots[k][i]`` is leaf i's k-th state tensor. If every tensor is already at
    its place (one pointer comparison each) nothing happens. Otherwise new flat
    buffers are made and *all* tensors are copied there and re-pointed with
    ``set_`` (the objects users hold stay the state, as ``update_`` promises);
    buffers that other tensors may still use are never written.
    """
    if ws.homes and all(
        t.data_ptr() == p and t.is_contiguous()
        for ptrs, ts in zip(ws.ptrs, slots)
        for t, p in zip(ts, ptrs)
    ):
        return
    ws.homes, ws.ptrs = [], []  # a failure below leaves no half-made homes
    total = ws.starts[-1] + slots[0][-1].numel()
    x0 = slots[0][0]
    homes = [torch.empty(total, dtype=x0.dtype, device=x0.device) for _ in slots]
    for home, ts in zip(homes, slots):
        storage = home.untyped_storage()
        for t, off in zip(ts, ws.starts):
            place = home[off:off + t.numel()].view(t.shape)
            place.copy_(t)
            t.set_(storage, off, t.shape, place.stride())  # place's contiguous strides
    esize = x0.element_size()
    ws.homes = homes
    ws.ptrs = [[h.data_ptr() + st * esize for st in ws.starts] for h in homes]


# ----------------------------------------------------------------------- pending step
class Pending:
    """A checked, not yet applied step of one rule over one (device, dtype) group.

    ``run()`` performs it (state and parameters in place) and returns the new
    states; it allocates nothing and raises nothing for the checked inputs, so
    callers run it inside their commit. ``states`` are the new states already
    (they hold the tensors ``run()`` updates), so a caller may store them before
    running; ``kept`` says they are the very state objects given (Descent,
    Momentum), so there is nothing to store.
    """

    __slots__ = ("states", "idx", "_run", "kept", "raw")

    def __init__(self, states: list[State], run: Callable[[], None], kept: bool = False,
                 raw: bool = False) -> None:
        self.states = states
        self.idx: list[int] = []  # positions of this group's leaves in prepare's input
        self._run = run
        self.kept = kept
        self.raw = raw  # run calls no torch operation (the native kernel): no autograd mode

    def run(self) -> list[State]:
        if self.raw:
            self._run()
        else:
            with torch.no_grad():
                self._run()
        return self.states


def _cut(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return t if b < 0 else t.view(-1)[a:b]


def _ok_tensor(t: Any, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> bool:
    return (
        type(t) is torch.Tensor
        and t.shape == shape
        and t.dtype == dtype
        and t.device == device
    )


def prepare(
    rule: object,
    states: Sequence[State],
    xs: Sequence[torch.Tensor],
    dxs: Sequence[torch.Tensor],
) -> list[Pending] | None:
    """Check ``rule``'s whole leaf set for the fused path; ``None`` if any leaf does not fit.

    Returns one :class:`Pending` per (device, dtype) group. Nothing is written.

    The checks of parameters and states are cached per rule and thread (see
    :class:`_Leaves`): while every parameter and state tensor keeps its type,
    address, shape, strides, dtype and device, a step re-checks only those
    fingerprints, the parameters' writability, and the gradients.
    """
    if not xs or not trusted(rule):
        return None
    cls = type(rule)
    nstate = 0 if cls is R.Descent else 1 if cls is R.Momentum else 2
    table = _workspaces(rule)
    thread = threading.get_ident()  # scratch is per thread: steps may run concurrently
    lkey = ("leaves", thread)
    lc = table.get(lkey)
    if lc is not None:
        try:
            res = _prepare_cached(lc, cls, rule, nstate, table, thread, states, xs, dxs)
        except Exception:  # anything unusual: the full checks decide (and raise) as before
            res = _MISS
        if res is not _MISS:
            return res  # type: ignore[return-value]
    out = _prepare_full(cls, rule, nstate, table, thread, states, xs, dxs)
    if out is not None and len(states) == len(xs) == len(dxs):
        table[lkey] = _Leaves(cls, nstate, table, thread, states, xs, out)
    return out


def _prepare_full(cls: type, rule: object, nstate: int, table: dict[Any, Any], thread: int,
                  states: Sequence[State], xs: Sequence[torch.Tensor],
                  dxs: Sequence[torch.Tensor]) -> list[Pending] | None:
    """:func:`prepare` without the cache: every check on every leaf."""
    ptrs = set()
    nonempty = 0
    for x in xs:
        if x.numel():  # empty tensors (address 0 or shared) have nothing to write
            ptrs.add(x.data_ptr())
            nonempty += 1
    if len(ptrs) != nonempty:
        return None  # parameters sharing memory: keep the general order
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    tensor_types = _TENSOR_TYPES
    overlap = torch._debug_has_internal_overlap
    for i, (s, x, dx) in enumerate(zip(states, xs, dxs)):
        # each property is read once per tensor (torch makes a new object per read)
        xdt, xdev, xshape = x.dtype, x.device, x.shape
        if (
            type(x) not in tensor_types
            or xdt not in _DTYPES
            or type(dx) not in tensor_types
            or dx.dtype != xdt
            or dx.device != xdev
            or dx.shape != xshape
            or dx.layout is not torch.strided  # (a sparse one has no data pointer)
            or not maywrite(x)
            or overlap(x) != 0
            or (dx is not x and dx.numel() and dx.data_ptr() in ptrs)
        ):
            return None
        if nstate == 1 and not _ok_tensor(s, xshape, xdt, xdev):
            return None
        if nstate == 2 and not (
            type(s) is R.AdamState and _ok_tensor(s.m, xshape, xdt, xdev)
            and _ok_tensor(s.v, xshape, xdt, xdev)
            and type(s.beta_t) is tuple and len(s.beta_t) == 2
        ):
            return None
        if _big(x, xdev) and not (x.is_contiguous() and dx.is_contiguous()):
            return None  # sliced into runs: needs flat views (homed states are contiguous)
        gkey = (xdev, xdt)
        grp = groups.get(gkey)
        if grp is None:
            groups[gkey] = [i]
        else:
            grp.append(i)
    out = []
    for (dev, dt), idx in groups.items():
        ws = _workspace(table, dev, dt, thread)
        gxs = [xs[i] for i in idx]
        gst = [states[i] for i in idx]
        gdx = [dxs[i] for i in idx]
        out.append(_engine(cls, rule, nstate, ws, dev, idx, gst, gxs, gdx, None))
    return out


def _engine(cls: type, rule: object, nstate: int, ws: _Workspace, dev: torch.device,
            idx: list[int], gst: list[Any], gxs: list[torch.Tensor], gdx: list[torch.Tensor],
            known: _Known | None) -> Pending:
    """The step of one checked group: the native kernel where it applies, else foreach."""
    p = None
    if dev.type == "cpu" and native.available():
        p = _native(cls, rule, ws, gst, gxs, gdx, known)  # None: not eligible this step
    if p is None:
        p = _foreach(cls, rule, nstate, ws, gst, gxs, gdx)
    p.idx = idx
    return p


def _big(x: torch.Tensor, dev: torch.device) -> bool:
    """Whether the foreach runs cut ``x`` into flat slices (it must then be contiguous)."""
    return dev.type == "cpu" and x.numel() * x.element_size() > CPU_CHUNK_BYTES


def _workspace(table: dict[Any, Any], dev: torch.device, dt: torch.dtype,
               thread: int) -> _Workspace:
    key = (dev, dt, thread)
    ws = table.get(key)
    if ws is None:
        ws = table[key] = _Workspace()
    return ws


def _foreach(cls: type, rule: object, nstate: int, ws: _Workspace, gst: list[Any],
             gxs: list[torch.Tensor], gdx: list[torch.Tensor]) -> Pending:
    """The foreach-runs engine for one checked group."""
    _layout(ws, gxs, _NSCRATCH[cls], nstate)
    if ws.flat:
        _home(ws, [gst] if nstate == 1 else [[s.m for s in gst], [s.v for s in gst]])
    if cls is R.Descent:
        return _descent(rule, ws, gst, gxs, gdx)
    if cls is R.Momentum:
        return _momentum(rule, ws, gst, gxs, gdx)
    return _adam(rule, ws, gst, gxs, gdx)


# ----------------------------------------------------------------------- leaf-set cache
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_MISS = object()
_ptr = torch.Tensor.data_ptr
_stride = torch.Tensor.stride
_contig = torch.Tensor.is_contiguous
_inference = torch.Tensor.is_inference
_shape = attrgetter("shape")
_dtype = attrgetter("dtype")
_device = attrgetter("device")
_is_cpu = attrgetter("is_cpu")
_m = attrgetter("m")
_v = attrgetter("v")
_beta_t = attrgetter("beta_t")
#: a storage's reference count (private; without it the flat check reads every address)
_storage_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)
_MAYWRITE = base.maywrite
_RO = "_fluxtrain_readonly"


def _mode(ts: Sequence[torch.Tensor]) -> tuple[bool, bool]:
    """(all contiguous, all on the CPU): what :func:`_fingerprint` may read more cheaply."""
    return all(map(_contig, ts)), all(map(_is_cpu, ts))


def _fingerprint(ts: Sequence[Any], mode: tuple[bool, bool]) -> tuple[list[Any], ...]:
    """Type, address, shape, strides, dtype and device of every tensor in ``ts``.

    With ``mode[0]`` (recorded when all were contiguous) the strides are read as
    ``is_contiguous()``: same shape and contiguous is all that is used of them.
    With ``mode[1]`` (all on the CPU) the device is read as ``is_cpu``.
    """
    return (list(map(type, ts)), list(map(_ptr, ts)), list(map(_shape, ts)),
            list(map(_contig if mode[0] else _stride, ts)), list(map(_dtype, ts)),
            list(map(_is_cpu if mode[1] else _device, ts)))


def _slots(nstate: int, states: Sequence[Any]) -> list[list[torch.Tensor]]:
    if nstate == 0:
        return []
    if nstate == 1:
        return [list(states)]
    return [list(map(_m, states)), list(map(_v, states))]


class _Group:
    """One (device, dtype) group of a cached leaf set."""

    __slots__ = ("dev", "dt", "idx", "whole", "contig", "nc", "gsz")

    def __init__(self, dev: torch.device, dt: torch.dtype, idx: list[int], n: int,
                 contig: bool, nc: _NativeCache | None, gsz: np.ndarray) -> None:
        self.dev, self.dt, self.idx = dev, dt, idx
        self.whole = len(idx) == n  # the group is the whole leaf set, in order
        self.contig = contig  # every parameter and state tensor contiguous
        self.nc = nc  # the native arrays (None: parameters/states overlap, or not CPU)
        self.gsz = gsz  # bytes per gradient (gradient shapes equal the parameters')


class _Leaves:
    """What :func:`prepare` found about a leaf set that passed all its checks.

    Everything recorded is a function of the parameters' and states'
    fingerprints (type, ``data_ptr``, shape, strides, dtype, device: dtype check,
    internal overlap, distinct addresses, contiguity, the native kernel's pointer
    arrays and overlap ranges), so it holds for as long as they do. A later
    step with equal fingerprints needs only the per-step checks: writability of
    each parameter (``_fluxtrain_readonly``, inference mode), the Adam state
    structure, and the gradients. States that are the very objects the last
    step returned (``last``: the usual case) are checked by their tensors'
    addresses only, which catches a state tensor re-pointed in place; resizing
    or re-striding an optimiser state tensor in place is not supported.
    """

    __slots__ = ("n", "xmode", "xfp", "smodes", "sfp", "ptrs", "numels", "big", "groups",
                 "last", "flat", "armed", "xids", "gids", "gptr", "refs", "counts",
                 "meta", "xkey", "xlike", "skeys", "saddr", "gapart", "__weakref__")

    def __init__(self, cls: type, nstate: int, table: dict[Any, Any], thread: int,
                 states: Sequence[Any], xs: Sequence[torch.Tensor], out: list[Pending]) -> None:
        n = self.n = len(xs)
        slots = _slots(nstate, states)  # taken now: the foreach engine may have moved them
        self.xmode = _mode(xs)
        self.xfp = _fingerprint(xs, self.xmode)
        self.smodes = [_mode(ts) for ts in slots]
        self.sfp = [_fingerprint(ts, m) for ts, m in zip(slots, self.smodes)]
        # the same facts as bytes, read in one call per list by the C++ extension (once it
        # is built): what the per-step checks then compare instead of the lists above
        self.meta: Any = None
        # gradient addresses of the last step found apart from every parameter's
        self.gapart: list[int] | None = None
        self.adopt(xs, slots)
        self.numels = list(map(torch.Tensor.numel, xs))
        self.ptrs = {p for p, k in zip(self.xfp[1], self.numels) if k}
        self.big = [i for i, x in enumerate(xs) if _big(x, x.device)]
        cont = [all(ts) for ts in zip(map(_contig, xs), *(map(_contig, t) for t in slots))]
        self.groups = []
        lib = native.available()
        for p in out:
            idx = p.idx
            x0 = xs[idx[0]]
            dev, dt = x0.device, x0.dtype
            contig = all(cont[i] for i in idx)
            nc = None
            if dev.type == "cpu" and lib and contig:
                ws = _workspace(table, dev, dt, thread)
                nc = _native_cache(ws, [xs[i] for i in idx], [[t[i] for i in idx] for t in slots])
            gsz = np.array([self.numels[i] for i in idx], dtype=np.int64) * x0.element_size()
            self.groups.append(_Group(dev, dt, idx, n, contig, nc, gsz))
        self.last: list[Any] | None = None
        self.remember(out)
        # one group whose parameters and states are each back to back (a flat layout):
        # steps that pass the very gradient tensors of the last step, still where they
        # were, are checked by identity and address only (see _prepare_flat)
        g0 = self.groups[0] if len(self.groups) == 1 else None
        self.flat = bool(g0 is not None and g0.whole and g0.nc is not None
                         and g0.nc.one is not None)
        # what _prepare_flat compares (set by _arm): the ids of the last step's parameter
        # and gradient objects, the gradients' addresses, and the reference counts of
        # the gradients' and the states' storages
        self.armed = False
        self.xids: list[int] = []
        self.gids: list[int] = []
        self.gptr: list[int] = []
        self.refs: list[weakref.ref[Any]] = []
        self.counts: list[tuple[int, int]] = []

    def adopt(self, xs: Sequence[torch.Tensor], slots: list[list[torch.Tensor]]) -> None:
        """Take the C++ reads for later steps, if built, recording ``xs``' and ``slots``'
        fields now: call it only with tensors that match this record (just checked)."""
        meta = tensormeta.module()
        if meta is None:
            return
        xl = list(xs)
        xkey, xlike, skeys = meta.fingerprint(xl), meta.like(xl), list(map(meta.fingerprint, slots))
        if xkey is not None and xlike is not None and None not in skeys:
            # the state tensors' addresses as meta.slot_addresses reads them (the
            # addresses the fingerprints above hold: all of slot 0, then slot 1)
            self.saddr = np.array([a for fp in self.sfp for a in fp[1]], dtype=np.int64).tobytes()
            self.xkey, self.xlike, self.skeys, self.meta = xkey, xlike, skeys, meta

    def remember(self, out: list[Pending]) -> None:
        """Record the states ``out`` will return (the next step's inputs, once committed).

        A step that is not committed leaves the caller with its old states, which are
        then not these objects, and the next step checks them in full.
        """
        if len(out) == 1 and len(out[0].states) == self.n:  # one group: in order
            self.last = list(out[0].states)
            return
        last: list[Any] = [None] * self.n
        for p in out:
            for i, s in zip(p.idx, p.states):
                last[i] = s
        self.last = last


def _prepare_cached(lc: _Leaves, cls: type, rule: object, nstate: int, table: dict[Any, Any],
                    thread: int, states: Sequence[Any], xs: Sequence[torch.Tensor],
                    dxs: Sequence[torch.Tensor]) -> Any:
    """:func:`prepare` for a leaf set like ``lc``'s: its result, or ``_MISS`` (check fully)."""
    n = lc.n
    if len(xs) != n or len(states) != n or len(dxs) != n or maywrite is not _MAYWRITE:
        return _MISS
    if lc.armed:
        out = _prepare_flat(lc, cls, rule, nstate, table, thread, states, xs, dxs)
        if out is not None:
            return out
    meta = lc.meta
    if meta is not None:  # the same checks, list by list in C++ (fluxtrain.core.tensormeta)
        return _prepare_meta(lc, meta, cls, rule, nstate, table, thread, states, xs, dxs)
    if _fingerprint(xs, lc.xmode) != lc.xfp:
        return _MISS
    slots = _slots(nstate, states)
    if nstate and lc.last is not None and tensormeta.identical(states, lc.last):
        # exactly the states this cache's last step returned, made of the tensors whose
        # fingerprints were checked: only re-pointing one in place (.data =, set_) could
        # have moved them, which changes its address
        if [list(map(_ptr, ts)) for ts in slots] != [fp[1] for fp in lc.sfp]:
            return _MISS
    else:
        if not _adam_states_ok(nstate, n, states):
            return _MISS if nstate == 2 and _not_adam(n, states) else None
        if [_fingerprint(ts, m) for ts, m in zip(slots, lc.smodes)] != lc.sfp:
            return _MISS
    # maywrite(x), as base.maywrite reads it (both can change without a new fingerprint)
    if any(map(getattr, xs, repeat(_RO), repeat(False))) or any(map(_inference, xs)):
        return None
    # the gradients: the checks of _prepare_full, all of them, every step
    types = list(map(type, dxs))
    if types.count(torch.Tensor) + types.count(torch.nn.Parameter) != n:
        return None
    xfp = lc.xfp
    if (list(map(_dtype, dxs)) != xfp[4]
            or list(map(_is_cpu if lc.xmode[1] else _device, dxs)) != xfp[5]
            or list(map(_shape, dxs)) != xfp[2]):
        return None
    dptrs = list(map(_ptr, dxs))
    dcont = list(map(_contig, dxs))
    out = _prepare_tail(lc, cls, rule, nstate, table, thread, states, xs, dxs, dptrs, dcont)
    if out is not None:
        # the C++ reads, built in the background meanwhile, take over from the next step:
        # the parameters and states have just matched this record
        lc.adopt(xs, slots)
    return out


def _not_adam(n: int, states: Sequence[Any]) -> bool:
    return list(map(type, states)).count(R.AdamState) != n


def _adam_states_ok(nstate: int, n: int, states: Sequence[Any]) -> bool:
    """For Adam: every state an ``AdamState`` whose βt is a pair (else the full checks)."""
    if nstate != 2:
        return True
    if _not_adam(n, states):
        return False
    bts = list(map(_beta_t, states))
    return list(map(type, bts)).count(tuple) == n and list(map(len, bts)).count(2) == n


def _prepare_meta(lc: _Leaves, meta: Any, cls: type, rule: object, nstate: int,
                  table: dict[Any, Any], thread: int, states: Sequence[Any],
                  xs: Sequence[torch.Tensor], dxs: Sequence[torch.Tensor]) -> Any:
    """:func:`_prepare_cached`'s checks with the C++ reads: equal bytes, equal fields.

    The parameters' fingerprint includes the inference flag and the read-only mark
    (a full prepare refuses both, so a change is a miss that the full checks then
    refuse).
    """
    n = lc.n
    xl = xs if type(xs) is list else list(xs)
    if meta.fingerprint(xl) != lc.xkey:
        return _MISS
    sl = states if type(states) is list else list(states)
    if nstate and lc.last is not None and tensormeta.identical(sl, lc.last):
        if meta.slot_addresses(sl, nstate) != lc.saddr:
            return _MISS  # a state tensor re-pointed in place
    else:
        if not _adam_states_ok(nstate, n, states):
            return _MISS if nstate == 2 and _not_adam(n, states) else None
        if [meta.fingerprint(ts) for ts in _slots(nstate, states)] != lc.skeys:
            return _MISS
    # (the fingerprint holds each parameter's _fluxtrain_readonly mark: a marked
    # parameter is a miss, which the full checks then refuse)
    # exactly Tensor or Parameter, each gradient's dtype, device and shape those of its
    # parameter, their addresses and whether all are contiguous: one pass
    # (addresses equal to those found apart last step come back as that very list)
    got = meta.gradient_reads(dxs if type(dxs) is list else list(dxs), _TENSOR_TYPES,
                              lc.gapart)
    if got is None or got[0] != lc.xlike:
        return None  # another type, dtype, device or shape (or not readable)
    dptrs = got[1]
    dcont = [True] * n if got[2] else list(map(_contig, dxs))
    return _prepare_tail(lc, cls, rule, nstate, table, thread, states, xs, dxs, dptrs, dcont)


def _prepare_tail(lc: _Leaves, cls: type, rule: object, nstate: int, table: dict[Any, Any],
                  thread: int, states: Sequence[Any], xs: Sequence[torch.Tensor],
                  dxs: Sequence[torch.Tensor], dptrs: list[int], dcont: list[bool]) -> Any:
    """The rest of :func:`_prepare_cached` once parameters, states and gradients passed."""
    n = lc.n
    ptrs = lc.ptrs
    if dptrs is lc.gapart or dptrs == lc.gapart:
        pass  # the very addresses found apart from every parameter's last step
    elif ptrs.isdisjoint(dptrs):
        lc.gapart = dptrs
    else:
        numels = lc.numels
        for i in range(n):
            if dxs[i] is not xs[i] and numels[i] and dptrs[i] in ptrs:
                return None
    dall = dcont.count(True) == n
    if not dall:
        for i in lc.big:
            if not dcont[i]:
                return None
    out = []
    for g in lc.groups:
        ws = _workspace(table, g.dev, g.dt, thread)
        idx = g.idx
        if g.whole:  # (the engines keep no reference to these lists)
            gxs = xs if type(xs) is list else list(xs)
            gst = states if type(states) is list else list(states)
            gdx = dxs if type(dxs) is list else list(dxs)
            gptr, gcont = dptrs, dall
        else:
            gxs = [xs[i] for i in idx]
            gst = [states[i] for i in idx]
            gdx = [dxs[i] for i in idx]
            gptr = [dptrs[i] for i in idx]
            gcont = all(dcont[i] for i in idx)
        ok = g.contig and gcont
        # g.nc None: not known (native was off, or memory overlaps): _native checks
        known = _Known(ok, g.nc, gptr, g.gsz) if g.nc is not None or not ok else None
        out.append(_engine(cls, rule, nstate, ws, g.dev, idx, gst, gxs, gdx, known))
    lc.remember(out)
    if lc.flat and dall:  # (_prepare_flat takes the gradients as contiguous)
        _arm(lc, table, thread, xs, dxs, dptrs)
    return out


def _disarm(ref: weakref.ref[_Leaves]) -> Callable[[Any], None]:
    def gone(_dead: Any) -> None:
        lc = ref()
        if lc is not None:
            lc.armed = False

    return gone


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(address, reference count) of ``t``'s storage."""
    st = t.untyped_storage()
    return st.data_ptr(), _storage_use_count(st._cdata)  # type: ignore[misc]


def _one_storage(t: torch.Tensor, start: int, nbytes: int) -> bool:
    """Whether bytes ``start`` to ``start + nbytes`` all lie in ``t``'s storage (so every
    tensor there is a view of it: separate storages never share memory, barring
    tensors made over foreign memory, which this also refuses when they are apart)."""
    st = t.untyped_storage()
    base = st.data_ptr()
    return base <= start and start + nbytes <= base + st.nbytes()


def _arm(lc: _Leaves, table: dict[Any, Any], thread: int, xs: Sequence[torch.Tensor],
         dxs: Sequence[torch.Tensor], dptrs: list[int]) -> None:
    """Record the step that just passed every check, for :func:`_prepare_flat`.

    Only for gradients that are back to back (a flat layout's ``.grad`` views);
    fresh gradient tensors every step would only pay for the record.
    """
    lc.armed = False
    nc = lc.groups[0].nc
    if nc is None or not np.array_equal(np.array(dptrs, dtype=np.int64) - dptrs[0], nc.gstarts):
        return
    counts: list[tuple[int, int]] = []
    g = lc.groups[0]
    ws = _workspace(table, g.dev, g.dt, thread)
    if _storage_use_count is not None and _one_storage(dxs[0], dptrs[0],
                                                       int(nc.arrays[-1][-1]) * g.dt.itemsize):
        # the counts stand for the addresses only if every gradient is in the first one's
        # storage and every state in the workspace's homes (else: read the addresses)
        if len(ws.ptrs) == len(lc.sfp) and all(
            fp[1] == ptrs for fp, ptrs in zip(lc.sfp, ws.ptrs)
        ):
            counts = [_storage_key(dxs[0])] + [_storage_key(h) for h in ws.homes]
    # the ids stand for the objects while every one is alive: any that dies disarms
    gone = _disarm(weakref.ref(lc))
    lc.refs = [weakref.ref(t, gone) for t in (*xs, *dxs)]
    lc.xids, lc.gids, lc.gptr, lc.counts = list(map(id, xs)), list(map(id, dxs)), dptrs, counts
    lc.armed = True


def _prepare_flat(lc: _Leaves, cls: type, rule: object, nstate: int, table: dict[Any, Any],
                  thread: int, states: Sequence[Any], xs: Sequence[torch.Tensor],
                  dxs: Sequence[torch.Tensor]) -> list[Pending] | None:
    """:func:`_prepare_cached` for a flat layout's usual step, or ``None`` (check as usual).

    The step passes the very parameter, gradient and state objects of the last
    step (same ids, all alive: see :func:`_arm`), which passed every check then,
    and the parameters are still at their addresses. A tensor object's type, dtype,
    device and writability do not change without a new address; its shape and
    strides change only by in-place metadata operations (``t_``, ``resize_``,
    ``as_strided_``), which a flat layout does not support (``fluxtrain.flat``).

    The gradients and the states are each views of one storage (the layout's
    gradient buffer, the workspace's homes). Re-pointing one of them (``.data =``,
    ``set_``) drops that storage's reference count, so an unchanged count stands
    for every address without reading them; a count that changed for any reason
    (a view held elsewhere) only sends the step to the usual checks. Re-pointing
    one to another place *of the same buffer* is not detected (it would also be
    pointless). Without torch's storage counter every address is read instead.
    """
    if list(map(id, dxs)) != lc.gids or list(map(id, xs)) != lc.xids:
        return None
    xptrs = (lc.meta.addresses(xs if type(xs) is list else list(xs)) if lc.meta is not None
             else list(map(_ptr, xs)))
    if xptrs != lc.xfp[1]:
        return None
    if nstate and (lc.last is None or not tensormeta.identical(states, lc.last)):
        return None
    g = lc.groups[0]
    ws = _workspace(table, g.dev, g.dt, thread)
    if lc.counts:
        if [_storage_key(dxs[0])] + [_storage_key(h) for h in ws.homes] != lc.counts:
            return None
    elif list(map(_ptr, dxs)) != lc.gptr or (nstate and [
        list(map(_ptr, ts)) for ts in _slots(nstate, states)
    ] != [fp[1] for fp in lc.sfp]):
        return None
    known = _Known(True, g.nc, lc.gptr, g.gsz)
    out = [_engine(cls, rule, nstate, ws, g.dev, g.idx,
                   states if type(states) is list else list(states),
                   xs if type(xs) is list else list(xs), dxs if type(dxs) is list else list(dxs),
                   known)]
    lc.remember(out)
    return out


class _Known:
    """Facts :func:`_native` would otherwise establish itself (from the leaf-set cache)."""

    __slots__ = ("contig", "nc", "gptr", "gsz")

    def __init__(self, contig: bool, nc: _NativeCache | None, gptr: list[int],
                 gsz: np.ndarray) -> None:
        self.contig, self.nc, self.gptr, self.gsz = contig, nc, gptr, gsz


def _runs(ws: _Workspace, *lists: Sequence[torch.Tensor]) -> list[list[list[torch.Tensor]]]:
    """Per run: the run's slice of every list in ``lists``, then the scratch views."""
    res = []
    for r, views in ws.runs:
        res.append([[_cut(lst[i], a, b) for i, a, b in r] for lst in lists] + views)
    return res


def _descent(rule: Any, ws: _Workspace, states: list[State], xs: list[torch.Tensor],
             dxs: list[torch.Tensor]) -> Pending:
    eta = cast(rule.eta, xs[0].dtype)
    runs = _runs(ws, xs, dxs)

    def run() -> None:
        for x, dx, s1 in runs:
            _aten._foreach_mul.Scalar_out(dx, eta, out=s1)
            torch._foreach_sub_(x, s1)

    return Pending(list(states), run, kept=True)


def _momentum(rule: Any, ws: _Workspace, states: list[State], xs: list[torch.Tensor],
              dxs: list[torch.Tensor]) -> Pending:
    dt = xs[0].dtype
    eta, rho = cast(rule.eta, dt), cast(rule.rho, dt)
    runs = _runs(ws, xs, dxs, states)
    if ws.flat:  # v lives in ws.homes[0]: one kernel per run for the v updates
        home, s1flat = ws.homes[0], ws.bufs[0]
        flat = [(home[lo:hi], s1flat[:hi - lo]) for lo, hi in ws.spans]

        def run() -> None:
            for (x, dx, v, s1), (vf, sf) in zip(runs, flat):
                _aten._foreach_mul.Scalar_out(dx, eta, out=s1)
                vf.mul_(rho)
                vf.add_(sf)
                torch._foreach_sub_(x, v)

        return Pending(list(states), run, kept=True)

    def run_lists() -> None:
        for x, dx, v, s1 in runs:
            _aten._foreach_mul.Scalar_out(dx, eta, out=s1)
            torch._foreach_mul_(v, rho)
            torch._foreach_add_(v, s1)
            torch._foreach_sub_(x, v)

    return Pending(list(states), run_lists, kept=True)


def _bias(states: list[Any], b1: float, b2: float, dt: torch.dtype) -> tuple[
    list[float], list[float], list[State], bool
]:
    """Per leaf ``cast(1-βt1)``, ``cast(1-βt2)``, the advanced states, and whether all βt agree."""
    n = len(states)
    bt = _beta_t(states[0])
    adv = R._advance(bt, b1, b2, dt)
    # AdamState(s.m, s.v, adv) for every state when all βt agree, without a per-leaf
    # Python loop: one C++ call once built (None unless every state is exactly an
    # AdamState holding this very βt object, the usual case from the second step on: the
    # states made here share their advanced βt), else tuple.__new__, which skips the
    # Python-level NamedTuple __new__
    meta = tensormeta.module()
    new = meta.restate(R.AdamState, states, bt, adv) if meta is not None else None
    if new is None and list(map(_beta_t, states)).count(bt) == n:
        new = list(map(tuple.__new__, repeat(R.AdamState),
                       zip(map(_m, states), map(_v, states), repeat(adv))))
    if new is not None:
        return [cast(1 - bt[0], dt)] * n, [cast(1 - bt[1], dt)] * n, new, True
    memo: dict[tuple[float, float], tuple[float, float, tuple[float, float]]] = {}
    d1: list[float] = []
    d2: list[float] = []
    new_states: list[State] = []
    for s in states:
        bt = s.beta_t
        hit = memo.get(bt)
        if hit is None:
            hit = memo[bt] = (cast(1 - bt[0], dt), cast(1 - bt[1], dt),
                              R._advance(bt, b1, b2, dt))
        d1.append(hit[0])
        d2.append(hit[1])
        new_states.append(R.AdamState(s.m, s.v, hit[2]))
    return d1, d2, new_states, len(memo) == 1


def _adam(rule: Any, ws: _Workspace, states: list[Any], xs: list[torch.Tensor],
          dxs: list[torch.Tensor]) -> Pending:
    dt = xs[0].dtype
    eta, b1, b2, c1, c2, eps = rule._scalars(dt)
    d1, d2, new_states, uniform = _bias(states, b1, b2, dt)
    ms = [s.m for s in states]
    vs = [s.v for s in states]
    runs = _runs(ws, xs, dxs, ms, vs)
    if ws.flat and uniform:  # m, v in ws.homes; dx copied to a flat g per run
        u1, u2 = d1[0], d2[0]
        mh, vh = ws.homes
        b_s1, b_s2, b_g = ws.bufs
        flat = [(mh[lo:hi], vh[lo:hi], b_s1[:hi - lo], b_s2[:hi - lo], b_g[:hi - lo])
                for lo, hi in ws.spans]

        def run() -> None:
            for (x, dx, _m, _v, s1, _s2, g), (m, v, f1, f2, gf) in zip(runs, flat):
                torch._foreach_copy_(g, dx)
                # _moment: m.mul_(b1).add_(dx * c1); v.mul_(b2).add_(abs2(dx) * c2)
                torch.mul(gf, c1, out=f1)
                m.mul_(b1)
                m.add_(f1)
                torch.mul(gf, gf, out=f2)
                f2.mul_(c2)
                v.mul_(b2)
                v.add_(f2)
                # step = m / (1-bt1); denom = sqrt(v / (1-bt2)) + eps; step/denom*eta
                torch.div(m, u1, out=f1)
                torch.div(v, u2, out=f2)
                f2.sqrt_()
                f2.add_(eps)
                f1.div_(f2)
                f1.mul_(eta)
                torch._foreach_sub_(x, s1)

        return Pending(new_states, run)
    if uniform:
        per_run: list[Any] = [(d1[0], d2[0])] * len(runs)
    else:
        per_run = [([d1[i] for i, _, _ in r], [d2[i] for i, _, _ in r]) for r, _ in ws.runs]

    def run_lists() -> None:
        for (x, dx, m, v, s1, s2, *_g), (e1, e2) in zip(runs, per_run):
            # _moment: m.mul_(b1).add_(dx * c1); v.mul_(b2).add_(abs2(dx) * c2)
            _aten._foreach_mul.Scalar_out(dx, c1, out=s1)
            torch._foreach_mul_(m, b1)
            torch._foreach_add_(m, s1)
            _aten._foreach_mul.List_out(dx, dx, out=s2)
            torch._foreach_mul_(s2, c2)
            torch._foreach_mul_(v, b2)
            torch._foreach_add_(v, s2)
            # step = m / (1-bt1); denom = sqrt(v / (1-bt2)) + eps; step = step/denom*eta
            if uniform:
                _aten._foreach_div.Scalar_out(m, e1, out=s1)
                _aten._foreach_div.Scalar_out(v, e2, out=s2)
            else:
                _aten._foreach_div.ScalarList_out(m, e1, out=s1)
                _aten._foreach_div.ScalarList_out(v, e2, out=s2)
            torch._foreach_sqrt_(s2)
            torch._foreach_add_(s2, eps)
            torch._foreach_div_(s1, s2)
            torch._foreach_mul_(s1, eta)
            torch._foreach_sub_(x, s1)

    return Pending(new_states, run_lists)


# ----------------------------------------------------------------------- native kernel
#: elements per thread below which the native kernel stays on fewer threads, per rule:
#: measured on the 2-core host with torch's pool just used (as in a training step),
#: splitting pays from 32K elements for Adam (compute-heavy: 44 -> 28 us on 74K
#: elements) and from 64K for Descent/Momentum (at 32K the split costs more than it saves)
NATIVE_MIN_PER_THREAD = {R.Descent: 1 << 15, R.Momentum: 1 << 15, R.Adam: 1 << 14}
_RULE_CODE = {R.Descent: 0, R.Momentum: 1, R.Adam: 2}


class _NativeCache:
    """Per-group arrays for the native kernel, valid while the tensors stay where they are.

    ``key`` is the parameter and state addresses and the shapes; the pointer arrays
    are built once and only the gradient addresses are filled in per step.
    ``lo``/``hi`` are the sorted byte ranges of parameters and states (all pairwise
    disjoint), against which each step's gradients are checked.
    """

    __slots__ = ("key", "arrays", "addr", "lo", "hi", "one", "one_addr", "gstarts", "seen")

    def __init__(self, key: Any, arrays: list[np.ndarray], lo: np.ndarray,
                 hi: np.ndarray, one: list[np.ndarray] | None, gstarts: np.ndarray) -> None:
        self.key = key
        self.arrays = arrays  # x, m, v pointer arrays and the element offsets (kept alive)
        self.addr = [a.ctypes.data for a in arrays]
        self.lo, self.hi = lo, hi
        #: parameters and states each back to back (a flat layout, see
        #: fluxtrain.optimisers.flat): the same arrays for one leaf spanning them all,
        #: used on steps whose gradients are back to back too (``gstarts``: the byte
        #: offset each gradient must have from the first)
        self.one = one
        self.one_addr = [a.ctypes.data for a in one] if one is not None else None
        self.gstarts = gstarts
        #: the last gradient addresses that passed the overlap check, as
        #: ``(list, int64 array or bytes, its data address, back to back)``: the same
        #: addresses against these same ranges (and gradient sizes: the shapes are in
        #: ``key``) pass again
        self.seen: tuple[list[int], Any, int, bool] | None = None


def _ranges(ptrs: list[int], sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    p = np.array(ptrs, dtype=np.int64)
    n = np.array(sizes, dtype=np.int64)
    keep = n > 0
    return p[keep], p[keep] + n[keep]


def _native_cache(ws: _Workspace, xs: list[torch.Tensor],
                  slots: list[list[torch.Tensor]]) -> _NativeCache | None:
    """The cached arrays for these tensors (rebuilt if any moved); None if memory overlaps."""
    key = ([x.data_ptr() for x in xs], [[t.data_ptr() for t in ts] for ts in slots],
           [x.shape for x in xs])
    nc = ws.native
    if nc is not None and nc.key == key:
        return nc
    ws.native = None
    esize = xs[0].element_size()
    numels = [x.numel() for x in xs]
    sizes = [n * esize for n in numels]
    lo, hi = _ranges(key[0] + [p for ps in key[1] for p in ps], sizes * (1 + len(slots)))
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    if lo.size > 1 and bool((lo[1:] < hi[:-1]).any()):
        return None  # parameters/states share memory: keep the general order
    offs = np.zeros(len(xs) + 1, dtype=np.int64)
    np.cumsum(numels, out=offs[1:])
    arrays = [np.array(key[0], dtype=np.int64)]
    arrays += [np.array(ps, dtype=np.int64) for ps in key[1]]
    arrays += [arrays[0]] * (2 - len(slots))  # unused state slots: never read
    arrays.append(offs)
    gstarts = offs[:-1] * esize
    one = None
    if len(xs) > 1 and all(n > 0 for n in numels) and all(
        bool((a == a[0] + gstarts).all()) for a in arrays[:1 + len(slots)]
    ):
        one = [a[:1].copy() for a in arrays[:3]] + [offs[[0, -1]].copy()]
    nc = ws.native = _NativeCache(key, arrays, lo, hi, one, gstarts)
    return nc


def _back_to_back(xs: list[torch.Tensor]) -> bool:
    """Whether ``xs`` are contiguous, non-empty and laid out one after another in memory."""
    esize = xs[0].element_size()
    end = xs[0].data_ptr()
    for x in xs:
        n = x.numel()
        if not n or x.data_ptr() != end or not x.is_contiguous():
            return False
        end += n * esize
    return True


def _native(cls: type, rule: Any, ws: _Workspace, states: list[Any], xs: list[torch.Tensor],
            dxs: list[torch.Tensor], known: _Known | None = None) -> Pending | None:
    """A :class:`Pending` running the single-pass native kernel; None if not eligible.

    Eligible: every parameter, gradient and state tensor contiguous, and no
    gradient overlapping a parameter or state (then every element's update is
    independent, and the kernel's one pass equals the rule's sequence of passes).
    ``known`` (from the leaf-set cache) supplies the contiguity, the cached
    arrays and the gradient addresses instead of reading them from the tensors.
    """
    lib = native.library()
    if lib is None:
        return None
    seen = None
    if known is not None:
        if not known.contig:
            return None
        nc: _NativeCache | None = known.nc
        seen = nc.seen if nc is not None else None
        if seen is not None and seen[0] is not known.gptr and seen[0] != known.gptr:
            seen = None
        gptr: Any = seen[1] if seen is not None else None
        gsz = known.gsz
    else:
        if cls is R.Descent:
            slots: list[list[torch.Tensor]] = []
        elif cls is R.Momentum:
            slots = [states]
        else:
            slots = [[s.m for s in states], [s.v for s in states]]
        for x, dx in zip(xs, dxs):
            if not (x.is_contiguous() and dx.is_contiguous()):
                return None
        for ts in slots:
            for t in ts:
                if not t.is_contiguous():
                    return None
        if slots and len(xs) > 1 and _back_to_back(xs):
            # the parameters are one flat buffer: put the states in flat buffers too
            # (values and objects kept), so that the kernel can take them as one leaf
            _layout(ws, xs, _NSCRATCH[cls], len(slots))
            _home(ws, slots)
        nc = _native_cache(ws, xs, slots)
        gptr = np.array([d.data_ptr() for d in dxs], dtype=np.int64)
        gsz = None
    if nc is None:
        return None
    if seen is None and known is not None:
        meta = tensormeta.module()
        # the checks below in one C++ call, with the addresses as int64 bytes (None: take
        # them here); fresh gradient tensors every step (train_, gradient()) come here
        got = None if meta is None else meta.gradient_check(
            known.gptr, gsz, nc.lo, nc.hi, nc.gstarts if nc.one_addr is not None else None)
        if got is not None:
            if got[2]:
                return None  # a gradient shares memory with a parameter or state
            seen = nc.seen = (known.gptr, got[0], got[1], got[3])
            gptr = got[0]
        else:
            gptr = np.array(known.gptr, dtype=np.int64)
    if seen is None:
        if nc.lo.size:
            if gsz is None:
                gsz = np.array([d.numel() for d in dxs], dtype=np.int64) * xs[0].element_size()
            j = np.searchsorted(nc.lo, gptr + gsz, side="left") - 1
            hit = (j >= 0) & (gsz > 0)
            if bool(hit.any()) and bool((nc.hi[j[hit]] > gptr[hit]).any()):
                return None  # a gradient shares memory with a parameter or state
        # parameters, gradients and states each back to back: the kernel can take them
        # as one leaf (the same elementwise arithmetic; Adam needs one βt for that)
        seen = (list(map(int, gptr)) if known is None else known.gptr, gptr, gptr.ctypes.data,
                nc.one_addr is not None and bool((gptr == gptr[0] + nc.gstarts).all()))
        nc.seen = seen
    dt = xs[0].dtype
    f64 = int(dt is torch.float64)
    code = _RULE_CODE[cls]
    n = len(xs)
    xa, ma, va, offs = nc.addr
    one = seen[3]
    nthreads = torch.get_num_threads()
    keep: list[Any] = [nc, gptr]
    step = lib.fluxtrain_step
    new_states: list[Any] = list(states)  # Descent, Momentum: the same state objects
    sc = ws.scalars
    if sc is None:
        sc = ws.scalars = (rule._scalars(dt) if cls is R.Adam
                           else (cast(rule.eta, dt), cast(rule.rho, dt)) if cls is R.Momentum
                           else (cast(rule.eta, dt),))
    if cls is R.Adam:
        eta, b1, b2, c1, c2, eps = sc
        d1, d2, new_states, uniform = _bias(states, b1, b2, dt)
        one = one and uniform
    if one:
        n = 1
        xa, ma, va, offs = nc.one_addr  # type: ignore[misc]
    ga = seen[2]  # gptr's data: its first entry is the first gradient's address
    if cls is R.Descent:
        (eta,) = sc
        args: tuple[Any, ...] = (code, f64, n, xa, ga, None, None, offs, None, None, 0,
                                 eta, 0.0, 0.0, 0.0, 0.0, 0.0)
    elif cls is R.Momentum:
        eta, rho = sc
        args = (code, f64, n, xa, ga, ma, None, offs, None, None, 0,
                eta, rho, 0.0, 0.0, 0.0, 0.0)
    else:
        # the bias corrections as C doubles (array.array: its address is a cheap read)
        da1, da2 = (array("d", d1[:1]), array("d", d2[:1])) if uniform else (
            array("d", d1), array("d", d2))
        keep += [da1, da2]
        args = (code, f64, n, xa, ga, ma, va, offs, da1.buffer_info()[0],
                da2.buffer_info()[0], 0 if uniform else 1, eta, b1, b2, c1, c2, eps)
    args += (nthreads, NATIVE_MIN_PER_THREAD[cls])

    def run(_keep: tuple[Any, ...] = tuple(keep)) -> None:
        step(*args)  # _keep: the arrays whose addresses args holds stay alive with run

    return Pending(new_states, run, kept=cls is not R.Adam, raw=True)
