"""``hyper.cast`` rounds like torch's own conversion, on every path it takes.

float32/float16 values are rounded with ``struct`` (fast path, taken for values that
change every step such as Adam's ``beta_t``); the truth is torch's conversion of a
0-d tensor, computed here independently.
"""

from __future__ import annotations

import math
import random
import struct

import pytest
import torch

from fluxtrain.core import hyper


def torch_round(v: float, dt: torch.dtype) -> float:
    return float(torch.tensor(v, dtype=torch.float64).to(dt).item())


def _values(dt: torch.dtype) -> list[float]:
    fi = torch.finfo(dt)
    rng = random.Random(7)
    vals = [0.0, -0.0, 1.0, -1.0, 0.1, 0.9, 0.999, 1e-8, 1 - 1e-8, 0.81, 0.998001,
            fi.max, -fi.max, fi.tiny, fi.tiny / 3, fi.smallest_normal / 1024, fi.eps,
            fi.max * (1 + fi.eps / 4), fi.max * (1 + fi.eps), 1e300, -1e300, 5e-324,
            math.inf, -math.inf]
    # exact ties between two neighbours of dt: round half to even
    for base in (1.0, 3.0, 1e-3, 1e4):
        t = torch.tensor(base, dtype=dt)
        nxt = torch.nextafter(t, torch.tensor(math.inf, dtype=dt))
        vals.append((float(t) + float(nxt)) / 2)
    vals += [rng.uniform(-10, 10) for _ in range(500)]
    vals += [math.ldexp(rng.random(), rng.randint(-160, 130)) for _ in range(500)]
    b = 0.9
    for _ in range(300):  # the beta_t powers of a long Adam run
        b = hyper.cast(b * 0.9, dt)
        vals.append(b)
    return vals


@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cast_matches_torch_conversion(dt: torch.dtype) -> None:
    # cast gives the scalar of a rule's arithmetic: the dtype itself for 32/64-bit types,
    # float32 for the 16-bit ones (docs/numerics.md); round_to rounds to the dtype itself
    scalar = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
    for v in _values(dt):
        got = hyper.cast(v, dt)
        want = torch_round(v, scalar)
        assert struct.pack("d", got) == struct.pack("d", want), (v, got, want)
        got = hyper.round_to(v, dt)
        want = torch_round(v, dt)
        assert struct.pack("d", got) == struct.pack("d", want), (v, got, want)


def test_scalar_dtype_is_opmath_for_16_bit_types() -> None:
    assert hyper.scalar_dtype(torch.float16) is torch.float32
    assert hyper.scalar_dtype(torch.bfloat16) is torch.float32
    assert hyper.scalar_dtype(torch.complex32) is torch.float32
    assert hyper.scalar_dtype(torch.complex64) is torch.float32
    assert hyper.scalar_dtype(torch.float64) is torch.float64
    # the case: in bfloat16, 0.999 is 1.0; its float32 scalar is not
    assert hyper.round_to(0.999, torch.bfloat16) == 1.0
    assert hyper.cast(0.999, torch.bfloat16) == torch_round(0.999, torch.float32) < 1.0


def test_cast_nan_stays_nan() -> None:
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        assert math.isnan(hyper.cast(math.nan, dt))
        assert math.isnan(hyper.round_to(math.nan, dt))
