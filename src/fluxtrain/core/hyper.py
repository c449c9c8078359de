"""Hyperparameter handling: validation at construction, casting at use.

Optimisers.jl stores hyperparameters as given and converts them to the
parameter's element type ``T`` inside ``apply!`` (reference/optimisers.md
§1.2). We do the same for float32 and float64 (and their complex types):
:func:`cast` rounds a Python float to the nearest value representable in ``T``
and returns it as a Python float, so that torch receives a scalar it converts
to ``T`` exactly. Scalar sub-expressions that Julia evaluates in ``T``
(``1 - β1``, ``βt .* β``) are computed in float64 and rounded once with
:func:`cast`; for +, -, *, / and sqrt this equals the correctly rounded ``T``
result because float64 carries more than 2p+2 bits of every narrower float
format (the classic double-rounding theorem).

16-bit parameters (float16, bfloat16, complex32) are the exception
(``docs/numerics.md``): their scalars are rounded to float32, torch's "opmath"
type for them, as torch.optim's are (:func:`scalar_dtype`), not to the 16-bit
type as Julia would (in bfloat16, 0.999 is 1.0, and Adam's ``1 - β2`` is 0).
Every elementwise kernel then computes in float32 and stores its result in the
parameter's dtype. :func:`round_to` is the plain rounding to any dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
from numbers import Integral, Real
from typing import Any

import torch

from fluxtrain.core.schedules import Schedule
from fluxtrain.errors import DomainError

__all__ = [
    "cast",
    "round_to",
    "scalar_dtype",
    "eps_for",
    "real_dtype",
    "check_real",
    "check_tuple",
    "check_bool",
    "check_int",
    "check_nonneg_eta",
    "check_range",
    "Range",
    "NONNEG",
    "UNIT",
    "UNIT_OPEN",
    "ANY",
]

_COMPLEX_TO_REAL = {
    torch.complex32: torch.float16,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype hyperparameters are rounded to for parameters of ``dtype``."""
    return _COMPLEX_TO_REAL.get(dtype, dtype)


#: struct formats that round a Python float to these dtypes exactly as torch does (IEEE
#: round-to-nearest-even, subnormals kept); about 10x cheaper than a 0-d tensor, which
#: matters for values that change every step (Adam's ``beta_t`` powers)
_STRUCT_FORMATS = {torch.float32: "f", torch.float16: "e"}
_STRUCTS = {dt: struct.Struct(fmt) for dt, fmt in _STRUCT_FORMATS.items()}


@functools.lru_cache(maxsize=8192)
def _cast_cached(value: float, dtype: torch.dtype) -> float:
    fmt = _STRUCT_FORMATS.get(dtype)
    if fmt is not None and math.isfinite(value):
        try:
            out: float = struct.unpack(fmt, struct.pack(fmt, value))[0]
            return out
        except OverflowError:  # beyond the dtype's range: torch gives +-inf
            pass
    return float(torch.tensor(value, dtype=dtype).item())


#: the dtype a rule's scalars are rounded to, per parameter dtype: the real part type,
#: and float32 ("opmath") for the 16-bit types (docs/numerics.md)
_SCALAR_DTYPE = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.complex128: torch.float64,
    torch.complex64: torch.float32,
    torch.complex32: torch.float32,
}


def scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a rule's scalars are rounded to for parameters of ``dtype``.

    The real part type for 32- and 64-bit types (Optimisers.jl's ``T(eta)``);
    float32 for float16, bfloat16 and complex32 (torch's opmath type: their
    kernels compute in float32, see ``docs/numerics.md``).

    >>> import torch
    >>> scalar_dtype(torch.bfloat16), scalar_dtype(torch.complex128)
    (torch.float32, torch.float64)
    """
    return _SCALAR_DTYPE.get(dtype, dtype)


def cast(value: float, dtype: torch.dtype) -> float:
    """``value`` as the scalar of a rule's arithmetic on ``dtype`` tensors (a Python float).

    Rounded to :func:`scalar_dtype` of ``dtype``: ``dtype`` itself (its real part
    type) for 32- and 64-bit types, float32 for the 16-bit ones.

    >>> import torch
    >>> cast(0.1, torch.float32)
    0.10000000149011612
    >>> cast(0.1, torch.float64)
    0.1
    >>> cast(0.999, torch.bfloat16), round_to(0.999, torch.bfloat16)
    (0.9990000128746033, 1.0)
    """
    dtype = _SCALAR_DTYPE.get(dtype, dtype)
    if dtype is torch.float64:
        return float(value)
    value = float(value)
    if value == 0:  # exact in every dtype; and the cache would mix up 0.0 and -0.0
        return value
    st = _STRUCTS.get(dtype)
    if st is not None and math.isfinite(value):  # (uncached: βt changes every step)
        try:
            out: float = st.unpack(st.pack(value))[0]
            return out
        except OverflowError:  # beyond the dtype's range: torch's answer, cached
            pass
    return _cast_cached(value, dtype)


def round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (its real part type), as torch converts it.

    >>> import torch
    >>> round_to(0.999, torch.bfloat16), round_to(0.1, torch.float16)
    (1.0, 0.0999755859375)
    """
    rdtype = real_dtype(dtype)
    if rdtype is torch.float64:
        return float(value)
    value = float(value)
    if value == 0:
        return value
    return _cast_cached(value, rdtype)


def eps_for(dtype: torch.dtype, epsilon: float) -> float:
    """Optimisers.jl's ``_eps(T, e)``: epsilon as :func:`cast` gives it, floored for float16.

    For float16, ``0`` stays ``0`` and anything else becomes at least
    ``Float16(1e-7)`` (a subnormal, about 1.192e-7) so that the default 1e-8
    does not vanish when a kernel adds it to zero and stores the float16 sum.
    """
    if real_dtype(dtype) is torch.float16:
        if epsilon == 0:
            return 0.0
        return max(round_to(1e-7, torch.float16), cast(epsilon, dtype))
    return cast(epsilon, dtype)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a hyperparameter: ``lo..hi``, each end open or closed.

    An infinite end is allowed only when closed (``ANY`` holds ``±inf``, ``NONNEG``
    does not hold ``inf``). NaN is in no range.

    >>> str(NONNEG), str(UNIT_OPEN), 1.0 in UNIT_OPEN, math.inf in NONNEG, math.inf in ANY
    ('[0, inf)', '[0, 1)', False, False, True)
    """

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: object) -> bool:
        if not isinstance(v, float):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(v: float) -> str:
            return f"{v:g}"

        return (f"{'(' if self.lo_open else '['}{num(self.lo)}, "
                f"{num(self.hi)}{')' if self.hi_open else ']'}")


#: ``[0, inf)``: learning rates, epsilons, decays, clipping thresholds
NONNEG = Range(0.0, math.inf, hi_open=True)
#: ``[0, 1]``: momentum-like coefficients
UNIT = Range(0.0, 1.0)
#: ``[0, 1)``: Adam's betas (``1 - beta^t`` divides)
UNIT_OPEN = Range(0.0, 1.0, hi_open=True)
#: every real number, ``±inf`` included (``ClipNorm.p``)
ANY = Range(-math.inf, math.inf)


def check_range(name: str, rule: str, value: Any, allowed: Range) -> None:
    """Refuse a plain value of hyperparameter ``name`` outside ``allowed`` (ValueError).

    A schedule passes (a rule with schedules validates each value it takes).

    >>> check_range("beta[0]", "Adam", 1.5, UNIT_OPEN)
    Traceback (most recent call last):
    ...
    ValueError: Adam: beta[0]=1.5 is out of range; it must be in [0, 1)
    """
    if isinstance(value, Schedule) or value in allowed:
        return
    raise ValueError(f"{rule}: {name}={value!r} is out of range; it must be in {allowed}")


def check_real(name: str, rule: str, value: Any, allowed: Range | None = None) -> Any:
    """Validate a real hyperparameter and return it as a float.

    A :class:`~fluxtrain.core.schedules.Schedule` is returned unchanged (the rule
    evaluates it per step); a plain function is refused with a hint to wrap it.

    >>> from fluxtrain.core.schedules import Constant
    >>> check_real("eta", "Descent", 1), check_real("eta", "Descent", Constant(0.5))
    (1.0, Constant(value=0.5))
    """
    if isinstance(value, Schedule):
        return value
    if callable(value) and not isinstance(value, Real):
        raise TypeError(
            f"{rule}: {name}={value!r} is a function; a hyperparameter that varies with the "
            f"step must be a Schedule: wrap it, {name}=Schedule.from_function(f), or use a "
            "built-in from fluxtrain.optimisers (WarmupCosine, ExponentialDecay, ...)"
        )
    if isinstance(value, bool) or not isinstance(value, Real):
        if isinstance(value, complex):
            raise TypeError(
                f"{rule}: {name}={value!r} is complex; hyperparameters must be real numbers"
            )
        raise TypeError(
            f"{rule}: {name}={value!r} is not a number "
            f"(got {type(value).__name__}); pass a float such as {name}=0.001"
        )
    out = float(value)
    if math.isnan(out):
        where = f"a number in {allowed}" if allowed is not None else "a finite number"
        raise ValueError(f"{rule}: {name} is NaN; pass {where}")
    return out


def check_tuple(name: str, rule: str, value: Any, length: int,
                ranges: dict[str, Range] | None = None) -> tuple[float, ...]:
    """Validate a tuple hyperparameter (``beta``, ``ell``, ``gamma``); ``ranges`` by
    element label (``"beta[0]"``) only words the NaN error (see :func:`check_range`)."""
    if not isinstance(value, tuple):
        raise TypeError(
            f"{rule}: {name}={value!r} is not a tuple; pass a tuple of {length} numbers, "
            f"e.g. {name}=(0.9, 0.999)"
        )
    if len(value) != length:
        raise ValueError(
            f"{rule}: {name} must have {length} elements, got {len(value)}: {value!r}"
        )
    rs = ranges or {}
    return tuple(check_real(f"{name}[{i}]", rule, v, rs.get(f"{name}[{i}]"))
                 for i, v in enumerate(value))


def check_bool(name: str, rule: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{rule}: {name}={value!r} must be True or False")
    return value


def check_int(name: str, rule: str, value: Any) -> int:
    """Validate an integer hyperparameter (``AccumGrad.n``, ``ExpDecay.decay_step``)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"{rule}: {name}={value!r} must be an integer (got {type(value).__name__})"
        )
    return int(value)


def check_nonneg_eta(rule: str, eta: Any) -> None:
    """A negative learning rate is a :class:`~fluxtrain.errors.DomainError` (a ValueError)."""
    if not isinstance(eta, Schedule) and eta < 0:
        raise DomainError(
            f"{rule}: the learning rate cannot be negative (got eta={eta!r}); "
            f"eta must be in {NONNEG}"
        )
