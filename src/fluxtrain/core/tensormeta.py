"""Bulk reads of tensor metadata for the fused step's checks: build, cache and load.

Every fused step re-checks each parameter's type, address, dtype, device, shape,
layout and inference flag, and each gradient's dtype, device, shape and address
(``fluxtrain.core.plan``). From Python that is one attribute read per tensor and
field, about a microsecond per leaf in all; ``_native/tensormeta.cpp`` reads a
whole list in one call instead (equal bytes mean equal fields).

It is a small CPython extension built against the installed torch (its headers
and libraries) with the system C++ compiler (``$CXX`` or ``c++``), cached next to
the step kernel (:func:`fluxtrain.core.native.cache_dir`) under a name keyed by the
source, the compiler, torch and Python. A cached build loads at once. Otherwise the
build (some seconds) runs on a background thread started by the first
:func:`module` call, and the steps use the Python reads until it is done: nothing
waits for it. If there is no compiler, the build fails or its self-check does, or
``FLUXTRAIN_NATIVE=0`` is set, :func:`module` stays ``None`` and the Python reads
stay in use (:func:`why_unavailable` says why). The decisions are the same either
way; the tests run both.

>>> from fluxtrain.core import tensormeta
>>> m = tensormeta.module(wait=True)
>>> m is None or m.addresses([]) == []
True
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from operator import attrgetter, is_, methodcaller
from pathlib import Path
from types import ModuleType
from typing import Any

from fluxtrain.core import native

try:
    import fcntl
except ImportError:  # not POSIX: concurrent builds still end in an atomic rename
    fcntl = None  # type: ignore[assignment]

__all__ = ["module", "why_unavailable", "all_float_or_complex", "all_require_grad",
           "any_requires_grad", "identical", "grads_by_id", "values_if_keys"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_native") / "tensormeta.cpp"
#: must match FLUXTRAIN_TENSORMETA_ABI in tensormeta.cpp
ABI = 6
#: C++ standards tried in order (newer torch headers ask for C++17 at least)
_STANDARDS = ("-std=c++17", "-std=c++20")
_BUILD_TIMEOUT_S = 300

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "mod" (module or None, once decided), "why", "thread"


def _disabled() -> bool:
    return os.environ.get("FLUXTRAIN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> list[str] | None:
    parts = shlex.split(os.environ.get("CXX") or "c++")
    if not parts or shutil.which(parts[0]) is None:
        return None
    return parts


def _torch_build() -> tuple[list[str], list[str], str]:
    """Compile flags and link arguments for the installed torch, and its identity."""
    import torch

    root = Path(torch.__file__).parent
    include = [root / "include", root / "include" / "torch" / "csrc" / "api" / "include"]
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    cflags = ["-O2", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
              f"-I{sysconfig.get_paths()['include']}"] + [f"-I{p}" for p in include]
    lib = root / "lib"
    link = [f"-L{lib}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python",
            f"-Wl,-rpath,{lib}"]
    return cflags, link, f"{torch.__version__} {root}"


def _target(key_parts: list[bytes]) -> Path:
    key = hashlib.sha256(b"\0".join(key_parts)).hexdigest()[:24]
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return native.cache_dir() / f"tensormeta-{key}{suffix}"


def _load_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("fluxtrain_tensormeta", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _selfcheck(mod: ModuleType) -> str | None:
    """The extension's answers against torch's own reads on a few tensors; error or None."""
    import torch

    a = torch.arange(12.0).reshape(3, 4)
    ts = [a, a.t(), a[1:], torch.zeros(2, dtype=torch.float64), torch.nn.Parameter(a.clone()),
          torch.empty(0)]
    if mod.abi() != ABI:
        return "tensormeta: interface version mismatch"
    if mod.addresses(ts) != [t.data_ptr() for t in ts]:
        return "tensormeta: addresses differ from data_ptr()"
    if mod.all_contiguous(ts) is not False or mod.all_contiguous([a, a[1:]]) is not True:
        return "tensormeta: contiguity differs from is_contiguous()"
    fp = mod.fingerprint
    if (fp(ts) != fp(list(ts)) or fp([a]) == fp([a.clone()])
            or fp([a]) == fp([a.view(4, 3)]) or fp([a.t()]) == fp([a.t().contiguous().t()])
            or fp([a]) == fp([torch.nn.Parameter(a)]) or fp([a, 1]) is not None):
        return "tensormeta: fingerprints do not tell the tensors apart"
    if (mod.all_float_or_complex([a, a.double(), a.to(torch.complex64)]) is not True
            or mod.all_float_or_complex([a, a.int()]) is not False
            or mod.all_require_grad([ts[4]]) is not True or mod.all_require_grad(ts) is not False
            or mod.any_requires_grad(ts) is not True or mod.any_requires_grad([a]) is not False
            or mod.any_requires_grad([a, 1]) is not None):
        return "tensormeta: dtype kinds or requires_grad differ from torch's"
    like = mod.like
    if (like([a, a.t()]) != like([torch.zeros(3, 4), torch.zeros(4, 3)])
            or like([a]) == like([a.double()]) or like([a]) == like([a.view(12)])):
        return "tensormeta: like() does not compare dtype and shape"
    marked = a.clone()
    marked._fluxtrain_readonly = True  # type: ignore[attr-defined]
    if fp([marked]) == fp([marked.clone()]) or fp([a]) != fp([a]):
        return "tensormeta: fingerprints do not tell read-only marks apart"
    types = (torch.Tensor, torch.nn.Parameter)
    got = mod.gradient_reads(ts, types)
    if (got is None or got[0] != like(ts) or got[1] != mod.addresses(ts) or got[2] is not False
            or mod.gradient_reads(ts, (torch.Tensor,)) is not None):
        return "tensormeta: gradient_reads differs from like/addresses/all_contiguous"
    from fluxtrain.core.rules import AdamState

    b, c, bt = torch.zeros(2), torch.ones(2), (0.9, 0.99)
    states = [AdamState(b, c, bt), AdamState(c, b, bt)]
    new = mod.restate(AdamState, states, bt, (0.5, 0.25))
    if (new != [AdamState(b, c, (0.5, 0.25)), AdamState(c, b, (0.5, 0.25))]
            or type(new[0]) is not AdamState or new[0].m is not b
            or mod.restate(AdamState, states, tuple([0.9, 0.99]), bt) is not None):
        return "tensormeta: restate differs from AdamState(m, v, beta_t)"
    addrs = [b.data_ptr(), c.data_ptr(), c.data_ptr(), b.data_ptr()]
    if mod.slot_addresses(states, 2) != b"".join(p.to_bytes(8, sys.byteorder, signed=True)
                                                 for p in addrs):
        return "tensormeta: slot_addresses differs from data_ptr()"
    # lists from parallel_threshold() items on are read on several threads: the same
    # answers as on the calling thread (each element's bytes are its own)
    k = max(1, -(-mod.parallel_threshold() // len(ts)))
    big = ts * k
    if (fp(big) != fp(ts) * k or mod.addresses(big) != mod.addresses(ts) * k
            or mod.gradient_reads(big, types) != (got[0] * k, got[1] * k, False)
            or mod.all_contiguous(big) is not False
            or mod.all_float_or_complex(big + [a.int()]) is not False
            or mod.all_require_grad([ts[4]] * len(big)) is not True
            or mod.slot_addresses(states * k * 3, 2) != b"".join(
                p.to_bytes(8, sys.byteorder, signed=True)
                for p in addrs[:2] * k * 3 + addrs[2:] * k * 3)):
        return "tensormeta: reads of long lists differ from reads of short ones"

    # (a module built without initialisers: the check must draw no random numbers, or a
    # training script whose steps load this module would draw different ones afterwards)
    lin = torch.nn.Module()
    lin.register_parameter("weight", torch.nn.Parameter(torch.zeros(1)))
    lin.register_parameter("bias", torch.nn.Parameter(torch.zeros(1)))
    d = {"w": a, "b": b}
    rec = (d, tuple(d), tuple(d.values()))
    mrec = (lin, tuple(lin._parameters), tuple(lin._parameters.values()), (), ())
    if (mod.entries_unchanged([rec], [mrec]) is not True
            or mod.entries_unchanged([(d, ("w", "c"), rec[2])], []) is not False
            or mod.entries_unchanged([(d, rec[1], (a, c))], []) is not False
            or mod.entries_unchanged([], [(lin, ("weight",), mrec[2][:1], (), ())]) is not False
            or mod.entries_unchanged([(dict(d), rec[1], rec[2])], []) is not True
            or mod.entries_unchanged([({1: a}, (1.0,), (a,))], []) is not None):
        return "tensormeta: entries_unchanged differs from the dict comparisons"

    class Holder:
        __slots__ = ("state",)
        state: Any

    holders = [Holder(), Holder()]
    if mod.store_states(holders, states) is not True or [h.state for h in holders] != states:
        return "tensormeta: store_states differs from setattr"
    if (mod.identical(ts, list(ts)) is not True or mod.identical(ts, ts[::-1]) is not False
            or mod.identical([], ()) is not True or mod.identical(ts, iter(ts)) is not None):
        return "tensormeta: identical() does not compare by identity"
    g0, g1 = torch.ones(1), torch.zeros(1, requires_grad=True)
    by_id = {id(a): g0, id(b): g1}
    if (mod.grads_by_id(by_id, [a, b], torch.Tensor) != ([g0, g1], True)
            or mod.grads_by_id(by_id, [a, c], torch.Tensor) is not None
            or mod.grads_by_id({id(a): a}, [a], torch.Tensor) is not None
            or mod.values_if_keys(by_id, list(by_id)) != [g0, g1]
            or mod.values_if_keys(by_id, list(by_id)[::-1]) is not None
            or mod.values_if_keys(by_id, [id(a), id(b)]) is not None):  # equal, not the keys
        return "tensormeta: grads_by_id / values_if_keys differ from the dict lookups"
    import numpy as np

    i64 = np.int64
    lo, hi = np.array([100, 200], dtype=i64), np.array([150, 260], dtype=i64)
    check = mod.gradient_check
    got = check([150, 160], np.array([50, 40], dtype=i64), lo, hi, np.array([0, 10], dtype=i64))
    if (got is None or got[0] != b"".join(p.to_bytes(8, sys.byteorder) for p in (150, 160))
            or got[2:] != (False, True)
            or check([140], np.array([8], dtype=i64), lo, hi, None)[2:] != (True, False)
            or check([190], np.array([20], dtype=i64), lo, hi, None)[2] is not True
            or check([190], np.array([10], dtype=i64), lo, hi, None)[2] is not False
            or check([120], np.array([0], dtype=i64), lo, hi, None)[2] is not False
            or check([1], np.array([1.0]), lo, hi, None) is not None):
        return "tensormeta: gradient_check differs from the overlap rule"
    return None


def _candidates() -> tuple[list[tuple[str, tuple[str, ...], Path]], list[str], list[str]]:
    """The builds to try (standard, flags, cache file), the link arguments and the compiler."""
    cxx = _compiler()
    if cxx is None:
        raise OSError(f"no C++ compiler found ({os.environ.get('CXX') or 'c++'!r}; set CXX)")
    try:
        version = subprocess.run(cxx + ["--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except subprocess.SubprocessError as exc:
        raise OSError(f"cannot run {cxx[0]!r} --version: {exc}") from exc
    src = _SOURCE.read_bytes()
    cflags, link, torch_id = _torch_build()
    out = []
    for std, omp in ((s, o) for s in _STANDARDS for o in (True, False)):
        # -fopenmp: long lists are read on the process's OpenMP threads (torch's libgomp,
        # as for the step kernel); retried without if the compiler rejects it
        flags = tuple(cflags + [std] + (["-fopenmp"] if omp else []))
        key = _target([src, " ".join(cxx).encode(), " ".join(flags).encode(),
                       version.encode(), torch_id.encode(), sys.version.encode(),
                       platform.machine().encode(), str(ABI).encode()])
        out.append((f"{std} -fopenmp" if omp else std, flags, key))
    return out, link, cxx


def _checked(target: Path) -> ModuleType:
    """Load ``target`` and self-check it (ImportError/OSError with the reason if not)."""
    mod = _load_file(target)
    why = _selfcheck(mod)
    if why is not None:
        raise ImportError(why)
    return mod


def _compile(cxx: list[str], flags: tuple[str, ...], target: Path, link: list[str]) -> str | None:
    """Build ``target``; the error, or None.

    Where there is a POSIX shell, the compiler and the rename into place run in one shell
    process, so that a build outlives the process that started it: a short script that
    exits first (its background thread dies with it) still leaves the build in the cache
    for the next run, instead of a temporary file.
    """
    sh = shutil.which("sh")
    if sh is None:
        return native._compile(cxx, flags, _SOURCE, target, after=tuple(link),
                               timeout=_BUILD_TIMEOUT_S)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    script = 'set -e; "$@"; mv -f "$FT_TMP" "$FT_TARGET"'
    cmd = [sh, "-c", script, "sh", *cxx, *flags, "-o", str(tmp), str(_SOURCE), *link]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S,
                             env={**os.environ, "FT_TMP": str(tmp), "FT_TARGET": str(target)})
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if tmp.exists() and not target.exists():
            tmp.unlink(missing_ok=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        return (res.stderr or res.stdout).strip()[-2000:] or f"exit {res.returncode}"
    return None


def _failed_marker(cands: list[tuple[str, tuple[str, ...], Path]]) -> Path:
    """Where a failed build records why (same key: a changed input builds again)."""
    return cands[0][2].with_name(cands[0][2].name + ".failed")


def _cached() -> tuple[ModuleType | None, str | None]:
    """A cached build that loads and passes its check: ``(module, None)``; ``(None, None)``
    if there is none (build one); ``(None, why)`` if there can be none."""
    try:
        cands, _, _ = _candidates()
    except OSError as exc:
        return None, str(exc)
    for _, _, target in cands:
        if target.is_file():
            try:
                return _checked(target), None
            except (ImportError, OSError):
                continue  # rebuilt by _build
    marker = _failed_marker(cands)
    if marker.is_file():  # every process would otherwise spend its own failing build
        try:
            return None, "an earlier build failed: " + marker.read_text(errors="replace")
        except OSError:
            pass
    return None, None


def _build() -> tuple[ModuleType | None, str]:
    """Build and load the extension: the module, or None and why not.

    One process builds at a time (an exclusive lock next to the cache files, where the
    platform has ``fcntl``): the others wait for it, on their background threads, and
    load its result. A failure is recorded, so that later processes do not retry it.
    """
    try:
        cands, link, cxx = _candidates()
    except OSError as exc:
        return None, str(exc)
    lock_path = cands[0][2].with_name(cands[0][2].name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        mod, why = _cached()  # built meanwhile by the process that held the lock?
        if mod is not None or why is not None:
            return mod, why or ""
        errors = []
        for std, flags, target in cands:
            err = _compile(cxx, flags, target, link)
            if err is not None:
                errors.append(f"{' '.join(cxx)} {std}: {err}")
                continue
            try:
                return _checked(target), ""
            except (ImportError, OSError) as exc:
                errors.append(f"{target}: {exc}")
        why = "; ".join(errors) or "unknown failure"
        try:
            _failed_marker(cands).write_text(why[-4000:])
        except OSError:
            pass
        return None, why


def _finish(mod: ModuleType | None, why: str) -> None:
    _state["mod"] = mod  # before "why": a reader that sees "why" finds the module
    _state["why"] = why
    if mod is None:
        log.debug("fluxtrain tensormeta unavailable (Python reads in use): %s", why)


def module(wait: bool = False) -> ModuleType | None:
    """The loaded extension, or ``None`` while it is not (yet) available.

    The first call starts the build on a background thread unless a cached build
    exists; ``wait=True`` waits for the build to end (tests, benchmarks).
    """
    mod = _state.get("mod")
    if mod is not None or "why" in _state:
        return mod
    with _lock:
        if "why" not in _state and "thread" not in _state:
            if _disabled():
                _finish(None, "disabled by FLUXTRAIN_NATIVE=0")
            elif not _SOURCE.is_file():
                _finish(None, f"source {_SOURCE} is missing")
            else:
                mod, why = _cached()
                if mod is not None or why is not None:
                    _finish(mod, why or "")
                else:  # build in the background; the Python reads serve meanwhile
                    build = threading.Thread(target=lambda: _finish(*_build()), daemon=True,
                                             name="fluxtrain-tensormeta-build")
                    _state["thread"] = build
                    build.start()
        running: threading.Thread | None = _state.get("thread")
    if wait and running is not None:
        running.join()
    return _state.get("mod")


# ---------------------------------------------------------------- whole-list answers
# One C++ call once the extension is built; torch's own reads per tensor before that (or
# where the C++ read answers None: a list it cannot read).
_is_floating_point = methodcaller("is_floating_point")
_requires_grad = attrgetter("requires_grad")


def all_float_or_complex(ts: list[Any]) -> bool:
    """Whether every tensor of ``ts`` is floating-point or complex."""
    mod = module()
    got = mod.all_float_or_complex(ts) if mod is not None else None
    if got is None:
        return all(map(_is_floating_point, ts)) or all(
            t.is_floating_point() or t.is_complex() for t in ts)
    return bool(got)


def all_require_grad(ts: list[Any]) -> bool:
    """Whether every tensor of ``ts`` requires grad."""
    mod = module()
    got = mod.all_require_grad(ts) if mod is not None else None
    return all(map(_requires_grad, ts)) if got is None else bool(got)


def any_requires_grad(ts: list[Any]) -> bool:
    """Whether some tensor of ``ts`` requires grad."""
    mod = module()
    got = mod.any_requires_grad(ts) if mod is not None else None
    return any(map(_requires_grad, ts)) if got is None else bool(got)


def identical(a: Any, b: Any) -> bool:
    """Whether sequences ``a`` and ``b`` hold the very same objects in order (``is``).

    The C++ read compares the pointers of two lists or tuples without touching the
    objects (whose reference counts a Python loop would write, one cache miss each).
    """
    mod = module()
    got = mod.identical(a, b) if mod is not None else None
    if got is None:
        return len(a) == len(b) and all(map(is_, a, b))
    return bool(got)


def grads_by_id(by_id: dict[int, Any], xs: list[Any],
                tensor_type: type) -> tuple[list[Any], bool] | None:
    """``([by_id[id(x)] for x in xs], whether one requires grad)`` if every such gradient
    is there, exactly of type ``tensor_type`` and not ``x`` itself; else ``None``.

    The implicit step's gradient lookup (``Grads`` stores them by ``id``), in one pass.
    """
    mod = module()
    if mod is not None:
        return mod.grads_by_id(by_id, xs, tensor_type)  # type: ignore[no-any-return]
    every = list(map(by_id.get, map(id, xs)))
    if list(map(type, every)).count(tensor_type) != len(every) or any(map(is_, every, xs)):
        return None
    return every, any(map(_requires_grad, every))


def values_if_keys(d: dict[Any, Any], keys: list[Any]) -> list[Any] | None:
    """``list(d.values())`` if ``d``'s keys are exactly the objects ``keys``, in order
    (``is``); else ``None``. Compares without hashing a key: a weak key's ``__hash__`` is a
    Python call.

    The Python route reads off a copy of the dict, taken at once, so that an entry removed
    meanwhile (a dead weak key) cannot misalign keys and values; the C++ read runs no
    Python code while it reads.
    """
    mod = module()
    if mod is not None:
        return mod.values_if_keys(d, keys)  # type: ignore[no-any-return]
    if len(d) != len(keys):
        return None
    snap = d.copy()
    if len(snap) == len(keys) and all(map(is_, snap, keys)):
        return list(snap.values())
    return None


def why_unavailable() -> str:
    """Empty if :func:`module` is loaded; otherwise why not (or that it is building)."""
    if _state.get("mod") is not None:
        return ""
    return str(_state.get("why", "being built"))


def _reset() -> None:
    """Forget the loaded extension (tests: re-read the environment at the next use)."""
    with _lock:
        th = _state.get("thread")
        if th is not None:
            th.join()
        _state.clear()
