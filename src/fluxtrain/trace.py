"""Training traces: one JSON line per optimisation step (``FLUXTRAIN_TRACE``).

With the environment variable ``FLUXTRAIN_TRACE=PATH`` set, every optimisation
step taken by ``train_`` or ``update_`` (either style) appends one line to PATH.
``fluxtrain-migrate compare`` runs an old-style script and its migration with
tracing on and reports the first step at which the two traces differ.

Record format (one JSON object per line)::

    {"step": 3,                   # 1-based, counted per process and per PATH
     "style": "implicit",         # or "explicit"
     "loss": 0.4871...,           # float, or null where the step does not know it
     "params": [                  # every trainable parameter, in model order
        {"shape": [32, 64], "dtype": "float32",
         "sha256": "...",         # hash of the raw bytes: any one-ulp change shows
         "sum": 1.25, "abssum": 40.5,   # float64 sums: the size of a difference
         "values": "base64...",   # only with FLUXTRAIN_TRACE_VALUES (see below)
         "id": 0},                # which tensor: see "Tensor ids" below
        ...]}

Each record is written *after* the step's update, so it fingerprints the
parameters the step produced. The list holds the parameters *of that step*
(the ``Params`` or the model given to that ``train_``/``update_``): a script
that trains two models in turn (a GAN), builds new parameters mid-run or
grows its ``Params`` writes records of different lengths.

Tensor ids. ``id`` numbers the tensors (and numpy arrays) in the order the
tracer first sees them in this process: 0 for the first, 1 for the next new
one, and so on. The same tensor object keeps its id for as long as it lives,
so a reader can follow one parameter across steps whose parameter lists
differ. Ids are a property of one run: two runs of the same script give the
same ids, a migrated script may not.

The final record. When the interpreter exits with tracing on, one last line is
written (main process only, rank 0 only)::

    {"final": true,
     "tensors": [                 # fingerprints as above, with "name" or "id"
        {"name": "model.0.weight", "id": 0, "shape": ..., "sha256": ..., ...},
        {"name": "W", ...},       # a float tensor or array held by a global
        {"id": 7, ...},           # seen by the tracer, not reachable from a global
        ...]}

It holds the final value of every floating (or complex) tensor and numpy array
reachable from the ``__main__`` module's globals (a tensor, an
``nn.Module``'s parameters and floating buffers, and dict / list / tuple /
dataclass containers of them, up to depth 4; fluxtrain's own objects such as
``Params``, ``Grads``, optimisers and state trees are not entered), named by
the path from the global, then every other tensor the tracer has seen
(:func:`record_step`, :func:`watch`) that is still alive. It lets a reader
compare scripts that train without fluxtrain's step functions (``w -= lr * g``
by hand after a ``gradient``): they write no step record, but their final
values are there. A reader that wants step records only skips lines with
``"final"`` (they have no ``"params"``).

Other environment variables (all read at each step):

``FLUXTRAIN_TRACE_VALUES``
    When set to anything but ``""``/``"0"``, each parameter entry also carries
    its raw bytes (base64, little-endian as in memory) so that a comparison can
    report the maximum absolute and relative difference element by element.
    Parameters with more than ``FLUXTRAIN_TRACE_VALUES_MAX`` elements (default
    ``1048576``) get no ``values``; their sums still show the size.
``FLUXTRAIN_TRACE_MAX_STEPS``
    Record only the first N steps (later steps run but write nothing).

When ``FLUXTRAIN_TRACE`` is unset, :func:`active` is one dictionary look-up and
callers skip :func:`record_step` entirely, so training pays nothing (the exit
hook is one look-up too).
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import hashlib
import json
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from fluxtrain.errors import _is_nonzero_rank

__all__ = [
    "active",
    "record_step",
    "record_final",
    "watch",
    "reset",
    "fingerprint",
    "decode_values",
    "seed_everything",
    "TRACE_ENV",
    "VALUES_ENV",
    "VALUES_MAX_ENV",
    "MAX_STEPS_ENV",
]

TRACE_ENV = "FLUXTRAIN_TRACE"
VALUES_ENV = "FLUXTRAIN_TRACE_VALUES"
VALUES_MAX_ENV = "FLUXTRAIN_TRACE_VALUES_MAX"
MAX_STEPS_ENV = "FLUXTRAIN_TRACE_MAX_STEPS"
DEFAULT_VALUES_MAX = 1 << 20

_STYLES = ("explicit", "implicit")
_lock = threading.RLock()
_counters: dict[str, int] = {}

# Tensor ids (see "Tensor ids" above): id(obj) -> [ordinal, weak or strong reference].
# Weak references let a tensor die (its entry goes with it, so a new object at
# the same address gets a new ordinal); watch(..., keep=True) holds it instead.
_seen: dict[int, list[Any]] = {}
_next_id = [0]

# The final record walks globals at most this deep, and this many tensors in all.
FINAL_DEPTH = 4
FINAL_MAX_TENSORS = 10_000

# ``os.environ.get`` encodes the key and decodes the value at every call (a few
# microseconds); the dict behind ``os.environ`` is kept in sync by every
# ``os.environ[...] = ...``/``del``/``putenv`` through it and reads in ~30 ns.
_ENVIRON = os.environ
try:
    _ENV_DATA: dict[Any, Any] | None = _ENVIRON._data  # type: ignore[attr-defined]
    _TRACE_KEY: Any = _ENVIRON.encodekey(TRACE_ENV)  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - not CPython's os._Environ
    _ENV_DATA = None
    _TRACE_KEY = TRACE_ENV


def active() -> bool:
    """Whether tracing is on: ``FLUXTRAIN_TRACE`` is set to a non-empty path.

    Read afresh at every call (one dictionary look-up), so setting or clearing
    the variable at run time (``os.environ[...] = ...``) takes effect at the next
    step.
    """
    env = os.environ
    if env is _ENVIRON and _ENV_DATA is not None:
        return bool(_ENV_DATA.get(_TRACE_KEY))
    return bool(env.get(TRACE_ENV))


def reset() -> None:
    """Forget the per-path step counters and the tensor ids (the next record is step 1)."""
    with _lock:
        _counters.clear()
        _seen.clear()
        _next_id[0] = 0


def _forget(key: int) -> Any:
    def callback(_ref: Any) -> None:
        with _lock:
            entry = _seen.get(key)
            if entry is not None and entry[1] is _ref:
                del _seen[key]

    return callback


def _tensor_id(x: Any, keep: bool = False) -> int | None:
    """The tracer's id of a tensor or array (see "Tensor ids"); None if it cannot be tracked."""
    key = id(x)
    with _lock:
        entry = _seen.get(key)
        if entry is not None:
            if keep and isinstance(entry[1], weakref.ref):
                entry[1] = x
            return int(entry[0])
        ref: Any
        if keep:
            ref = x
        else:
            try:
                ref = weakref.ref(x, _forget(key))
            except TypeError:  # not weak-referenceable: hold it (it cannot die and reappear)
                ref = x
        n = _next_id[0]
        _next_id[0] = n + 1
        _seen[key] = [n, ref]
        return n


def watch(xs: Iterable[Any] | Any, *, keep: bool = True) -> None:
    """Note tensors for the final record: call with what ``params``/``gradient``/``setup`` see.

    Does nothing when tracing is off. Each floating tensor or numpy array in
    ``xs`` (an iterable, or one tensor) gets an id (see "Tensor ids"); with
    ``keep`` the tracer holds a reference to it until exit, so that the final
    record has its value even when the script's own reference is gone (a model
    local to a function). Holding references keeps memory alive only while
    tracing is on.
    """
    if not active():
        return
    if isinstance(xs, (torch.Tensor, np.ndarray)):
        xs = [xs]
    for x in xs:
        if _is_float_array(x):
            _tensor_id(x, keep=keep)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x)


def _raw_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def fingerprint(
    x: Any, *, values: bool = False, values_max: int = DEFAULT_VALUES_MAX
) -> dict[str, Any]:
    """The trace entry of one parameter (tensor or numpy array).

    ``sha256`` is a hash of the raw bytes (so two entries are equal exactly when
    the parameters are bit for bit equal, shape and dtype included); ``sum``
    and ``abssum`` are float64 sums for the size of a difference. With
    ``values=True`` and at most ``values_max`` elements, ``values`` holds the
    raw bytes in base64 (see :func:`decode_values`).
    """
    t = _as_tensor(x)
    raw = _raw_bytes(t)
    h = hashlib.sha256()
    h.update(str(t.dtype).encode())
    h.update(repr(tuple(t.shape)).encode())
    h.update(raw)
    entry: dict[str, Any] = {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": h.hexdigest(),
    }
    cpu = t.detach().to("cpu")
    wide = cpu.abs().double() if cpu.is_complex() else cpu.double()
    entry["sum"] = float(wide.sum())
    entry["abssum"] = float(wide.abs().sum())
    if values and t.numel() <= values_max:
        entry["values"] = base64.b64encode(raw).decode("ascii")
    return entry


def decode_values(entry: Mapping[str, Any]) -> torch.Tensor | None:
    """The parameter values stored in a trace entry, as a float64 CPU tensor.

    ``None`` when the entry has no ``values`` (values mode off, or too large).
    """
    data = entry.get("values")
    if data is None:
        return None
    dtype = getattr(torch, str(entry["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"trace entry has an unknown dtype {entry['dtype']!r}")
    raw = bytearray(base64.b64decode(data))
    load_dtype = torch.uint8 if dtype == torch.bool else dtype
    if len(raw) == 0:
        t = torch.empty(0, dtype=load_dtype)
    else:
        t = torch.frombuffer(raw, dtype=load_dtype)
    t = t.reshape([int(n) for n in entry["shape"]])
    if t.is_complex():
        return t.abs().double()
    return t.double()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _loss_value(loss: Any) -> float | None:
    if loss is None:
        return None
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            return None
        return float(loss.detach().to("cpu").double())
    try:
        return float(loss)
    except (TypeError, ValueError):
        return None


def record_step(style: str, params: Iterable[Any], loss: Any | None) -> None:
    """Append one step's record to the trace file named by ``FLUXTRAIN_TRACE``.

    ``style`` is ``"explicit"`` or ``"implicit"``; ``params`` the trainable
    tensors in model order (a mapping from names to tensors also works: the
    names are then recorded); ``loss`` a float, a one-element tensor or
    ``None``. Does nothing when tracing is off. Callers are expected to guard
    with :func:`active` so that an untraced step costs nothing.
    """
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    if _is_nonzero_rank():
        return  # data-parallel ranks hold identical parameters: rank 0 records for all
    if style not in _STYLES:
        raise ValueError(f"record_step: style must be 'explicit' or 'implicit', got {style!r}")
    values = _env_flag(VALUES_ENV)
    values_max = _env_int(VALUES_MAX_ENV, DEFAULT_VALUES_MAX)
    max_steps = _env_int(MAX_STEPS_ENV, None)
    with _lock:
        step = _counters.get(path, 0) + 1
        _counters[path] = step
        if max_steps is not None and step > max_steps:
            return
        names: list[str] | None = None
        if isinstance(params, Mapping):
            names = [str(k) for k in params.keys()]
            tensors = list(params.values())
        else:
            tensors = list(params)
        entries = [
            fingerprint(p, values=values, values_max=values_max or DEFAULT_VALUES_MAX)
            for p in tensors
        ]
        for p, e in zip(tensors, entries):
            n = _tensor_id(p)
            if n is not None:
                e["id"] = n
        if names is not None:
            for name, e in zip(names, entries):
                e["name"] = name
        record = {"step": step, "style": style, "loss": _loss_value(loss), "params": entries}
        line = json.dumps(record, separators=(",", ":"))
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _is_float_array(x: Any) -> bool:
    try:
        if isinstance(x, torch.Tensor):
            return (x.is_floating_point() or x.is_complex()) and x.layout == torch.strided
        if isinstance(x, np.ndarray):
            return x.dtype.kind in "fc"
    except Exception:  # an uninitialised or exotic tensor subclass: not a value to record
        return False
    return False


def _key_text(k: Any, i: int) -> str:
    if isinstance(k, (str, int, float, bool)) or k is None:
        return repr(k)
    return f"<{type(k).__name__} #{i}>"  # a tensor or object key: its repr may be huge


def _is_fluxtrain_object(x: Any) -> bool:
    return type(x).__module__.split(".", 1)[0] == "fluxtrain"


def _global_tensors(namespace: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(path, tensor) for each float tensor or array reachable from ``namespace``.

    Each tensor once (first path wins), in the namespace's order; see the
    module docstring ("The final record") for what is entered.
    """
    out: list[tuple[str, Any]] = []
    seen_tensors: set[int] = set()
    entered: set[int] = set()

    def add(path: str, x: Any) -> None:
        if id(x) not in seen_tensors and len(out) < FINAL_MAX_TENSORS:
            seen_tensors.add(id(x))
            out.append((path, x))

    def walk(path: str, x: Any, depth: int) -> None:
        if _is_float_array(x):
            add(path, x)
            return
        if depth >= FINAL_DEPTH or len(out) >= FINAL_MAX_TENSORS or id(x) in entered:
            return
        if isinstance(x, torch.nn.Module):
            entered.add(id(x))
            for name, p in x.named_parameters():
                add(f"{path}.{name}", p)
            for name, buf in x.named_buffers():
                if _is_float_array(buf):
                    add(f"{path}.{name}", buf)
            return
        if _is_fluxtrain_object(x) or isinstance(x, (str, bytes, type)):
            return
        if isinstance(x, dict):
            entered.add(id(x))
            for i, (k, v) in enumerate(list(x.items())):
                walk(f"{path}[{_key_text(k, i)}]", v, depth + 1)
        elif isinstance(x, (list, tuple)):
            entered.add(id(x))
            for i, v in enumerate(list(x)[:FINAL_MAX_TENSORS]):
                walk(f"{path}[{i}]", v, depth + 1)
        elif dataclasses.is_dataclass(x):
            entered.add(id(x))
            for f in dataclasses.fields(x):
                walk(f"{path}.{f.name}", getattr(x, f.name, None), depth + 1)

    for name, value in list(namespace.items()):
        if name.startswith("__") or isinstance(value, type(sys)):
            continue
        walk(name, value, 0)
    return out


def record_final(namespace: Mapping[str, Any] | None = None) -> None:
    """Append the final record (see the module docstring) to ``FLUXTRAIN_TRACE``.

    Called at interpreter exit when tracing is on; ``namespace`` defaults to
    the ``__main__`` module's globals. Does nothing when tracing is off, in a
    data-parallel rank other than 0, or in a child process of
    ``multiprocessing``.
    """
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    if _is_nonzero_rank() or os.environ.get("RANK", "0") not in ("", "0"):
        return  # at exit the process group may be gone: torchrun's RANK still says who we are
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return  # a worker re-imports __main__: its globals are not the script's results
    if namespace is None:
        main = sys.modules.get("__main__")
        namespace = vars(main) if main is not None else {}
    values = _env_flag(VALUES_ENV)
    values_max = _env_int(VALUES_MAX_ENV, DEFAULT_VALUES_MAX) or DEFAULT_VALUES_MAX
    with _lock:
        named = _global_tensors(namespace)
        covered = {id(x) for _, x in named}
        tensors: list[dict[str, Any]] = []
        for name, x in named:
            try:
                e = fingerprint(x, values=values, values_max=values_max)
            except Exception:  # e.g. a tensor on a device that is gone: leave it out
                continue
            e["name"] = name
            entry = _seen.get(id(x))
            if entry is not None:
                e["id"] = int(entry[0])
            tensors.append(e)
        # dict.copy() allocates once, so no weakref callback can resize _seen under it
        for key, (n, ref) in sorted(_seen.copy().items(), key=lambda kv: int(kv[1][0])):
            x = ref() if isinstance(ref, weakref.ref) else ref
            if x is None or key in covered or len(tensors) >= FINAL_MAX_TENSORS:
                continue
            try:
                e = fingerprint(x, values=values, values_max=values_max)
            except Exception:
                continue
            e["id"] = int(n)
            tensors.append(e)
        line = json.dumps({"final": True, "tensors": tensors}, separators=(",", ":"))
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _at_exit() -> None:
    if not active():
        return
    try:
        record_final()
    except Exception as e:  # never turn a script's clean exit into a crash
        print(f"fluxtrain.trace: could not write the final record: {e!r}", file=sys.stderr)


atexit.register(_at_exit)


def seed_everything(seed: int | None = None) -> int | None:
    """Seed Python's ``random``, numpy and torch (see :mod:`fluxtrain.seeding`)."""
    from fluxtrain.seeding import seed_everything as _seed

    return _seed(seed)
