"""The native kernel's square root gives torch.sqrt's bits (fluxtrain.core.native).

torch's CPU ``sqrt`` is MKL VML's, which is not always the IEEE root; the kernel
reproduces it either by MKL's own algorithm written out (``MKL_RSQRT`` in
``_native/fused.c``, chosen where it matches on this CPU) or by calling MKL. The
truth here is ``torch.sqrt`` itself, compared through integer views (NaN bits too:
a square root has one operand, so its NaN is determined).
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
import torch
from test_core_native import Route, check_equal, needs_cc, run_py, values

from fluxtrain.core import native
from fluxtrain.core import rules as R


@pytest.fixture
def lib() -> Any:
    lib = native.library()
    if lib is None:
        pytest.skip(f"native kernel unavailable: {native.why_unavailable()}")
    return lib


def kernel_sqrt(lib: Any, x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    lib.fluxtrain_sqrt(int(x.dtype is torch.float64), x.numel(), x.data_ptr(), out.data_ptr())
    return out


def bit_patterns(lo: int, hi: int) -> torch.Tensor:
    """float32 values with the signed 32-bit patterns lo..hi-1."""
    return torch.arange(lo, hi, dtype=torch.int32).view(torch.float32)


def specials() -> torch.Tensor:
    """Both zeros, the edges of the range MKL's formula covers, subnormals, FLT_MAX's
    neighbours, infinities, NaNs with payloads of both signs, negative values."""
    edges = [0, 1, 0x007FFFFF, 0x00800000, 0x00800001, 0x7F7FEFFF, 0x7F7FF000, 0x7F7FF001,
             0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x3F800000]
    pos = torch.tensor(edges, dtype=torch.int64)
    neg = pos | (1 << 31)
    return torch.cat([pos, neg]).to(torch.int32).view(torch.float32)


@needs_cc
@pytest.mark.parametrize("n", list(range(0, 41)) + [255, 256, 257, 4095, 4097])
def test_every_length_and_special(lib: Any, n: int) -> None:
    """Vector bodies, tails and block edges: lengths 0..40 and around the block sizes."""
    g = torch.Generator().manual_seed(n)
    sp = specials()
    x = torch.randint(-(1 << 31), 1 << 31, (n,), generator=g, dtype=torch.int64)
    x = x.to(torch.int32).view(torch.float32).clone()
    if n:
        x[torch.randint(0, n, (max(1, n // 3),), generator=g)] = sp[torch.randint(
            0, sp.numel(), (max(1, n // 3),), generator=g)]
    assert torch.equal(kernel_sqrt(lib, x).view(torch.int32), torch.sqrt(x).view(torch.int32))


@needs_cc
def test_sampled_bit_patterns_float32(lib: Any) -> None:
    """4M uniformly drawn bit patterns, then every pattern around the range edges."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-(1 << 31), 1 << 31, (1 << 22,), generator=g, dtype=torch.int64)
    x = x.to(torch.int32).view(torch.float32)
    assert torch.equal(kernel_sqrt(lib, x).view(torch.int32), torch.sqrt(x).view(torch.int32))
    for lo in (0, 0x007F0000, 0x7F7F0000, 0x7FBF0000, -(1 << 31), -8454144):
        x = bit_patterns(lo, lo + (1 << 17))
        assert torch.equal(kernel_sqrt(lib, x).view(torch.int32),
                           torch.sqrt(x).view(torch.int32)), hex(lo)


@needs_cc
def test_sampled_float64(lib: Any) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-(1 << 62), 1 << 62, (1 << 20,), generator=g, dtype=torch.int64) * 2
    x = x.view(torch.float64)
    assert torch.equal(kernel_sqrt(lib, x).view(torch.int64), torch.sqrt(x).view(torch.int64))


@needs_cc
@pytest.mark.slow
def test_every_non_negative_float32(lib: Any) -> None:
    """All 2**31 float32 inputs with the sign bit clear (zeros, subnormals, every normal,
    infinity, NaNs), in chunks of 2**24: where MKL's formula and its edges are. A negative
    input has one of three fixed answers (-0, the quieted NaN, +qNaN); those are drawn in
    the default tests above. About 30 s on the 2-core host."""
    chunk = 1 << 24
    for k, lo in enumerate(range(0, 1 << 31, chunk)):
        x = bit_patterns(lo, lo + chunk)
        n = chunk - k % 8  # the tail loop too
        got = kernel_sqrt(lib, x[:n]).view(torch.int32)
        assert torch.equal(got, torch.sqrt(x[:n]).view(torch.int32)), hex(lo)


FTZ_CHECK = """
import sys, torch
from fluxtrain.core import native, plan
from fluxtrain.core import rules as R
assert native.available(), native.why_unavailable()
if not torch.set_flush_denormal(True):
    print("unsupported"); sys.exit(0)
size = int(sys.argv[1])
g = torch.Generator().manual_seed(5)
def values(seed):
    gg = torch.Generator().manual_seed(seed)
    return torch.randn(size, generator=gg) * 10.0 ** torch.randint(-6, 4, (size,), generator=gg)
rule = R.Adam(0.01, (0.5, 0.7), 1e-38)
x0 = values(1) * 1e-30
xa, xn = x0.clone(), x0.clone()
sa, sn = rule.init(xa), rule.init(xn)
for k in range(3):
    dx = values(50 + k) * 1e-20
    # the truth on this thread alone: torch's pool threads keep whatever mode they
    # were started with, so torch's own parallel result would depend on their age
    torch.set_num_threads(1)
    sa, step = rule.apply(sa, xa, dx)
    with torch.no_grad():
        xa.sub_(step)
    torch.set_num_threads(4)  # the kernel's own threads take this thread's mode
    [p] = plan.prepare(rule, [sn], [xn], [dx])
    [sn] = p.run()
    for a, b in ((xa, xn), (sa.m, sn.m), (sa.v, sn.v)):
        assert torch.equal(a.isnan(), b.isnan())
        keep = ~a.isnan()
        assert torch.equal(a[keep].view(torch.int32), b[keep].view(torch.int32)), k
print("ok")
"""


@needs_cc
@pytest.mark.parametrize("size", [1001, 700_001])
def test_adam_under_flush_denormal(size: int) -> None:
    """With torch.set_flush_denormal(True) torch's arithmetic flushes subnormals but
    MKL's sqrt does not (it sets its own mode); the kernel must do the same, on its
    worker threads too (700k elements: several threads' shares). In a child process:
    torch's worker threads keep the mode they were started with, which would leak
    into later tests."""
    if not native.available():
        pytest.skip(native.why_unavailable())
    res = run_py(FTZ_CHECK.replace("sys.argv[1]", repr(str(size))), {})
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip()
    if out == "unsupported":
        pytest.skip("this CPU cannot flush denormals")
    assert out == "ok", res.stdout + res.stderr


class _Perturbed:
    """The real library, except that the inline MKL algorithm, once installed, gets
    one element wrong: what a CPU whose rsqrt differs from this one's would show."""

    def __init__(self, lib: Any) -> None:
        self._lib, self.rsqrt = lib, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def fluxtrain_set_sqrt(self, f32: Any, f64: Any, mode: int, sl: Any, rsqrt: int) -> None:
        self.rsqrt = rsqrt
        self._lib.fluxtrain_set_sqrt(f32, f64, mode, sl, rsqrt)

    def fluxtrain_sqrt(self, f64: int, n: int, src: int, dst: int) -> None:
        self._lib.fluxtrain_sqrt(f64, n, src, dst)
        if self.rsqrt and not f64 and n > 100:
            ctypes.c_int32.from_address(dst + 4 * 100).value ^= 1


@needs_cc
def test_choice_moves_on_when_the_inline_algorithm_differs(lib: Any) -> None:
    if not lib.fluxtrain_has_mkl_rsqrt() or native._torch_vml()[0] is None:
        pytest.skip("needs the inline MKL algorithm and torch's MKL")
    fake = _Perturbed(lib)
    try:
        got = native._choose_sqrt(fake)
        assert got == ("MKL VML vmsSqrt", native._state["sqrt"][1])
        assert fake.rsqrt == 0
        x = torch.rand(5000) * 3
        assert torch.equal(kernel_sqrt(lib, x).view(torch.int32), x.sqrt().view(torch.int32))
    finally:
        native._choose_sqrt(lib)  # put back what this CPU chose


@needs_cc
@pytest.mark.parametrize("n", [20_011, 700_001])
def test_adam_kernel_on_every_kind_of_quotient(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adam's one-pass kernel takes the square root of v/(1-βt2) in registers: second
    moments drawn from every float32 bit pattern (so quotients that are zero, subnormal,
    normal, near FLT_MAX, infinite, NaN and negative) give the rule core's bits."""
    if not native.available():
        pytest.skip(native.why_unavailable())
    torch.set_num_threads(4)
    try:
        g = torch.Generator().manual_seed(n)
        v = torch.randint(-(1 << 31), 1 << 31, (n,), generator=g, dtype=torch.int64)
        v = v.to(torch.int32).view(torch.float32).clone()
        v[:: 7] = v[:: 7].abs()  # more positive values: the regular case too
        v[:: 11] = 0.0
        sp = specials()
        v[: sp.numel()] = sp
        rule = R.Adam(0.01)
        xs = [values(n, torch.float32, 1, wild=False)]
        routes = [Route(rule, xs, how) for how in ("apply", "native")]
        m = values(n, torch.float32, 2, wild=False)
        for r in routes:
            r.states[0] = R.AdamState(m.clone(), v.clone(), r.states[0].beta_t)
        for k in range(2):
            grads = [values(n, torch.float32, 30 + k)]
            grads[0][::2] = 0.0  # there v/(1-βt2) is exactly v*β2/(1-βt2): every class
            for r in routes:
                r.step(grads, [0], monkeypatch)
            check_equal(routes)
    finally:
        torch.set_num_threads(1)
