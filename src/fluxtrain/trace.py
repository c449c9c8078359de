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
         "values": "base64..."},  # only with FLUXTRAIN_TRACE_VALUES (see below)
        ...]}

Each record is written *after* the step's update, so it fingerprints the
parameters the step produced.

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
callers skip :func:`record_step` entirely, so training pays nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from fluxtrain.errors import _is_nonzero_rank

__all__ = [
    "active",
    "record_step",
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
_lock = threading.Lock()
_counters: dict[str, int] = {}

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
    """Forget the per-path step counters (the next record of each path is step 1)."""
    with _lock:
        _counters.clear()


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
        if names is not None:
            for name, e in zip(names, entries):
                e["name"] = name
        record = {"step": step, "style": style, "loss": _loss_value(loss), "params": entries}
        line = json.dumps(record, separators=(",", ":"))
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def seed_everything(seed: int | None = None) -> int | None:
    """Seed Python's ``random``, numpy and torch (see :mod:`fluxtrain.seeding`)."""
    from fluxtrain.seeding import seed_everything as _seed

    return _seed(seed)
