"""The native single-pass step kernel: build, cache and load (see docs/speed.md).

``_native/fused.c`` performs a whole Descent, Momentum or Adam step in one pass
over memory, with exactly the operations of the rule core in the same order
(so the same bits). It is compiled at the *first fused step* (never at import)
with the system C compiler, ``$CC`` or ``cc``, using flags that forbid FMA
contraction and reassociation, into a per-user cache directory
(``$FLUXTRAIN_CACHE_DIR`` or ``~/.cache/fluxtrain/native``) under a name keyed
by the source, the flags and the compiler's version, and loaded with
:mod:`ctypes` (which releases the GIL during calls).

If there is no compiler, compilation or loading fails, the built library fails
its self-check, or ``FLUXTRAIN_NATIVE=0`` is set, :func:`available` is False
and the callers keep the ``torch._foreach`` path: nothing is raised and nothing
is warned (one debug log line; :func:`why_unavailable` says why).

>>> from fluxtrain.core import native
>>> isinstance(native.available(), bool)
True
>>> native.available() or isinstance(native.why_unavailable(), str)
True
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["available", "why_unavailable", "describe", "library", "cache_dir", "FLAGS", "ABI"]

log = logging.getLogger(__name__)

#: compiler flags: -ffp-contract=off (no FMA contraction) and no -ffast-math keep
#: every operation a separate IEEE operation; -fno-math-errno lets sqrt vectorise
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno",
         "-shared", "-fPIC", "-pthread", "-fopenmp")
#: -fopenmp: the kernel's threads are then torch's own OpenMP workers (the process's
#: libgomp, which torch loaded); the builds tried, in order, if the compiler rejects a flag
_VARIANTS = (FLAGS, tuple(f for f in FLAGS if f != "-fopenmp"),
             tuple(f for f in FLAGS if f != "-march=native"),
             tuple(f for f in FLAGS if f not in ("-march=native", "-fopenmp")))
#: must match FLUXTRAIN_ABI in fused.c
ABI = 4
#: MKL VML mode torch passes to vmsSqrt/vmdSqrt: VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE
_VML_MODE = 0x2 | 0x140000 | 0x100
_SOURCE = Path(__file__).with_name("_native") / "fused.c"
_COMPILE_TIMEOUT_S = 60

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "lib" (ctypes.CDLL or None), "why" (str)


def cache_dir() -> Path:
    """Where built libraries are kept: ``$FLUXTRAIN_CACHE_DIR`` or ``~/.cache/fluxtrain/native``."""
    env = os.environ.get("FLUXTRAIN_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "fluxtrain" / "native"


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC") or "cc"
    parts = shlex.split(cc)
    if not parts or shutil.which(parts[0]) is None:
        return None
    return parts


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), part of the cache key: a library built with
    ``-march=native`` on one CPU must never be loaded on another (a home directory shared
    between machines), where an unsupported instruction would kill the process."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(cc: list[str]) -> str:
    try:
        out = subprocess.run(cc + ["--version"], capture_output=True, text=True,
                             timeout=_COMPILE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run {cc[0]!r} --version: {exc}") from exc
    return out.stdout + out.stderr


def _compile(cc: list[str], flags: tuple[str, ...], src: Path, target: Path,
             after: tuple[str, ...] = (), timeout: float = _COMPILE_TIMEOUT_S) -> str | None:
    """Compile to a temporary name next to ``target``, then rename (atomic). Error or None.

    ``after``: arguments after the source (libraries to link).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        res = subprocess.run(cc + list(flags) + ["-o", tmp, str(src)] + list(after),
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            return (res.stderr or res.stdout).strip()[-2000:] or f"exit {res.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    i64, dbl, vp = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    lib.fluxtrain_abi.restype = ctypes.c_int
    lib.fluxtrain_abi.argtypes = []
    f = lib.fluxtrain_step
    f.restype = None
    f.argtypes = [ctypes.c_int, ctypes.c_int, i64, vp, vp, vp, vp, vp, vp, vp, i64,
                  dbl, dbl, dbl, dbl, dbl, dbl, ctypes.c_int, i64]
    lib.fluxtrain_set_sqrt.restype = None
    lib.fluxtrain_set_sqrt.argtypes = [vp, vp, i64, vp, ctypes.c_int]
    lib.fluxtrain_has_mkl_rsqrt.restype = ctypes.c_int
    lib.fluxtrain_has_mkl_rsqrt.argtypes = []
    lib.fluxtrain_sqrt.restype = None
    lib.fluxtrain_sqrt.argtypes = [ctypes.c_int, i64, vp, vp]


def _torch_vml() -> tuple[int | None, int | None, int | None]:
    """Addresses of MKL's ``vmsSqrt``, ``vmdSqrt`` and ``MKL_Set_Num_Threads_Local``
    in torch's own library, where it exports them (builds with MKL)."""
    import torch

    libdir = Path(torch.__file__).parent / "lib"
    cands: list[str | None] = [None] + [str(p) for p in sorted(libdir.glob("libtorch_cpu.*"))]
    for name in cands:
        try:
            h = ctypes.CDLL(name)
            fs, fd = h.vmsSqrt, h.vmdSqrt
        except (OSError, AttributeError):
            continue
        try:
            sl: int | None = ctypes.cast(h.MKL_Set_Num_Threads_Local, ctypes.c_void_p).value
        except AttributeError:
            sl = None
        return (ctypes.cast(fs, ctypes.c_void_p).value, ctypes.cast(fd, ctypes.c_void_p).value,
                sl)
    return None, None, None


def _sqrt_probe(dt: Any) -> Any:
    """Inputs that tell square roots apart: every binade of ``dt``, subnormals, specials."""
    import torch

    g = torch.Generator().manual_seed(1234)
    lo, hi = (-149, 128) if dt is torch.float32 else (-1074, 1024)
    n = 1 << 16
    mant = 1 + torch.rand(n, generator=g, dtype=torch.float64)
    exps = torch.randint(lo, hi, (n,), generator=g).to(torch.float64)
    big = (mant * torch.exp2(exps.clamp(max=hi - 1))).to(dt)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, -1.0, 1.0, 2.0, 4.0],
                           dtype=dt)
    return torch.cat([special, big, torch.rand(n, generator=g, dtype=dt) * 3])


def _choose_sqrt(lib: ctypes.CDLL) -> tuple[str, str] | str:
    """Install the sqrt per dtype that reproduces ``torch.sqrt``; names, or an error.

    Candidates, fastest first: the IEEE sqrt inline; for float32, MKL's own
    rsqrt-based algorithm written out in the kernel (``fused.c``; what MKL's SSE
    path computes, the path it takes on AMD CPUs); MKL's ``vmsSqrt``/``vmdSqrt``
    called per block. The first that gives torch's bits on every probe input wins.
    """
    import torch

    vml = _torch_vml()
    names = []
    chosen: list[tuple[int | None, bool]] = []
    for k, dt in enumerate((torch.float32, torch.float64)):
        probe = _sqrt_probe(dt)
        want = probe.sqrt()
        itype = torch.int32 if dt is torch.float32 else torch.int64
        cands: list[tuple[str, int | None, bool]] = [("IEEE sqrt (inline)", None, False)]
        if k == 0 and lib.fluxtrain_has_mkl_rsqrt():
            cands.append(("MKL VML's rsqrt algorithm (inline)", None, True))
        if vml[k] is not None:
            cands.append(("MKL VML " + ("vmsSqrt" if k == 0 else "vmdSqrt"), vml[k], False))
        found = None
        for name, ptr, rsqrt in cands:
            trial = list(chosen) + [(ptr, rsqrt)] + [(None, False)] * (1 - k)
            lib.fluxtrain_set_sqrt(trial[0][0], trial[1][0], _VML_MODE, vml[2],
                                   int(trial[0][1]))
            out = torch.empty_like(probe)
            lib.fluxtrain_sqrt(k, probe.numel(), probe.data_ptr(), out.data_ptr())
            if torch.equal(out.view(itype), want.view(itype)):
                found = (name, (ptr, rsqrt))
                break
        if found is None:
            lib.fluxtrain_set_sqrt(None, None, 0, None, 0)
            return f"no square root found that reproduces torch.sqrt for {dt}"
        names.append(found[0])
        chosen.append(found[1])
    lib.fluxtrain_set_sqrt(chosen[0][0], chosen[1][0], _VML_MODE, vml[2], int(chosen[0][1]))
    return names[0], names[1]


def _selfcheck(lib: ctypes.CDLL) -> str | None:
    """Run every kernel on a few values against the torch operations; error or None."""
    import torch

    vals = [0.0, 1.0, -2.5, 3e-39, 1e30, -7.25e-3, 0.1, 123.456, 5e-5, -1e-20, 2.0, 9.0,
            1.5e-4, -0.3, 42.0, 1e-7, 0.7]
    for dt, f64 in ((torch.float32, False), (torch.float64, True)):
        g = torch.tensor(vals, dtype=dt)
        x = torch.linspace(-1, 1, len(vals), dtype=dt)
        m = torch.tensor(vals[::-1], dtype=dt) * 0.01
        v = torch.tensor(vals, dtype=dt).abs() * 0.5
        sc = [float(torch.tensor(c, dtype=dt)) for c in (0.01, 0.9, 0.999, 0.1, 0.001, 1e-8,
                                                          0.19, 0.002)]
        eta, b1, b2, c1, c2, eps, d1, d2 = sc
        for rule in (0, 1, 2):
            xs, ms, vs = x.clone(), m.clone(), v.clone()
            xr, mr, vr = x.clone(), m.clone(), v.clone()
            with torch.no_grad():
                if rule == 0:
                    xr.sub_(g * eta)
                elif rule == 1:
                    mr.mul_(b1).add_(g * eta)
                    xr.sub_(mr)
                else:
                    mr.mul_(b1).add_(g * c1)
                    vr.mul_(b2).add_(g * g * c2)
                    s = mr / d1
                    q = (vr / d2).sqrt_().add_(eps)
                    xr.sub_(s.div_(q).mul_(eta))
            ptr = (ctypes.c_int64 * 1)
            offs = (ctypes.c_int64 * 2)(0, len(vals))
            dd1, dd2 = (ctypes.c_double * 1)(d1), (ctypes.c_double * 1)(d2)
            lib.fluxtrain_step(rule, int(f64), 1, ptr(xs.data_ptr()), ptr(g.data_ptr()),
                               ptr(ms.data_ptr()), ptr(vs.data_ptr()), offs, dd1, dd2, 0,
                               eta, b1, b2, c1, c2, eps, 1, 1)
            for a, b in ((xs, xr), (ms, mr), (vs, vr)):
                if not torch.equal(a, b):
                    return f"self-check failed (rule {rule}, {dt}): results differ from torch"
    return None


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("FLUXTRAIN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by FLUXTRAIN_NATIVE=0"
    if not _SOURCE.is_file():
        return None, f"kernel source {_SOURCE} is missing"
    cc = _compiler()
    if cc is None:
        return None, f"no C compiler found ({os.environ.get('CC') or 'cc'!r}; set CC)"
    try:
        src = _SOURCE.read_bytes()
        version = _version(cc)
    except (OSError, RuntimeError) as exc:
        return None, str(exc)
    errors = []
    for flags in _VARIANTS:
        key = hashlib.sha256(
            b"\0".join([src, " ".join(cc).encode(), " ".join(flags).encode(), version.encode(),
                        platform.machine().encode(), _cpu_features().encode(),
                        str(ABI).encode()])
        ).hexdigest()[:24]
        target = cache_dir() / f"fused-{key}.so"
        for attempt in (0, 1):  # a cached file that does not load is rebuilt once
            if attempt or not target.is_file():
                err = _compile(cc, flags, _SOURCE, target)
                if err is not None:
                    errors.append(f"{' '.join(cc)} {' '.join(flags)}: {err}")
                    break
            try:
                lib = ctypes.CDLL(str(target))
                _declare(lib)
                if lib.fluxtrain_abi() != ABI:
                    raise OSError("ABI mismatch")
            except (OSError, AttributeError) as exc:
                errors.append(f"{target}: {exc}")
                continue
            sq = _choose_sqrt(lib)
            if isinstance(sq, str):
                errors.append(sq)
                break
            why = _selfcheck(lib)
            if why is None:
                _state["sqrt"] = sq
                _state["threads"] = ("OpenMP (the process's, shared with torch)"
                                     if "-fopenmp" in flags else "POSIX threads")
                return lib, ""
            errors.append(why)
            break
    return None, "; ".join(errors) or "unknown failure"


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; ``None`` if unavailable."""
    if "why" not in _state:
        with _lock:
            if "why" not in _state:
                lib, why = _load()
                _state["lib"] = lib
                _state["why"] = why
                if lib is None:
                    log.debug("fluxtrain native kernels unavailable: %s", why)
    return _state["lib"]  # type: ignore[no-any-return]


def describe() -> str:
    """One line: whether the kernel is in use and which square root it reproduces.

    >>> from fluxtrain.core import native
    >>> isinstance(native.describe(), str)
    True
    """
    if library() is None:
        return f"native kernel unavailable: {why_unavailable()}"
    f32, f64 = _state["sqrt"]
    return (f"native kernel in use; sqrt: float32 {f32}, float64 {f64}; "
            f"threads: {_state['threads']}")


def available() -> bool:
    """Whether the native kernel can be used (builds and checks it on the first call)."""
    return library() is not None


def why_unavailable() -> str:
    """Empty if :func:`available`; otherwise why not (no compiler, build error, disabled...)."""
    library()
    return str(_state["why"])


def _reset() -> None:
    """Forget the loaded library (tests: re-read the environment at the next use)."""
    with _lock:
        _state.clear()
