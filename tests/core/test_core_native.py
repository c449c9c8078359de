"""The native single-pass kernel (fluxtrain.core.native) gives exactly the rule core's bits.

Three routes are compared bit for bit (NaN payloads included, via integer views):
the rule's own ``apply`` per leaf followed by ``x.sub_(step)`` (the core), the
fused plan with the native kernel, and the fused plan with the native kernel
switched off (the ``torch._foreach`` runs). Also: the build cache and its
fallbacks (no compiler, corrupted cache, concurrent builds, FLUXTRAIN_NATIVE=0).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fluxtrain.core import native, plan
from fluxtrain.core import rules as R

HAVE_CC = shutil.which(os.environ.get("CC") or "cc") is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler (cc or $CC) on PATH")
ROOT = Path(__file__).resolve().parents[2]

RULES = {
    "Descent": lambda: R.Descent(0.3),
    "Momentum": lambda: R.Momentum(0.1, 0.9),
    "Adam": lambda: R.Adam(0.01),
    "Adam-odd": lambda: R.Adam(0.1, (0.5, 0.7), 1e-3),
}
INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def values(n: int, dt: torch.dtype, seed: int, wild: bool = True) -> torch.Tensor:
    """Gradients with zeros, subnormals, huge and negative values, NaN and Inf."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
        -6, 4, (n,), generator=g).to(torch.float64)
    t = t.to(dt)
    if wild and n:
        tiny = torch.finfo(dt).tiny
        special = torch.tensor([0.0, -0.0, tiny / 3, -tiny / 7, 1e30 if dt is torch.float32
                                else 1e300, -1e30, float("nan"), float("inf"), -float("inf"),
                                -5.5], dtype=dt)
        idx = torch.randint(0, n, (max(1, n // 50),), generator=g)
        t[idx] = special[torch.arange(idx.numel()) % special.numel()]
    return t


SHAPES: dict[str, list[tuple[int, ...]]] = {
    "empty+one": [(0,), (1,)],
    "odd": [(3,), (7, 3), (13,), (31, 5), (1001,)],
    "many": [(1 + (7 * i) % 37,) for i in range(2000)],
    "big": [(700_001,)],  # split over threads
}


def state_bits(rule: Any, s: Any) -> list[torch.Tensor]:
    if isinstance(rule, R.Descent):
        return []
    if isinstance(rule, R.Momentum):
        return [s]
    return [s.m, s.v]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal, except the sign/payload of a NaN made from two NaN operands.

    IEEE 754 leaves open which operand's NaN an operation on two NaNs returns,
    and torch's own kernels differ in this (its vector loop computes ``x - s`` as
    ``fma(s, -1, x)``, its scalar tail as ``x + (-1*s)``): NaN positions must
    agree, and every other element must have the same bits.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.reshape(-1), b.reshape(-1)
    na, nb = a.isnan(), b.isnan()
    if not torch.equal(na, nb):
        return False
    keep = ~na
    return torch.equal(a[keep].view(INT[a.dtype]), b[keep].view(INT[b.dtype]))


class Route:
    """One copy of parameters and states, stepped by one route."""

    def __init__(self, rule: Any, xs: list[torch.Tensor], how: str) -> None:
        self.rule, self.how = rule, how
        self.xs = [x.clone() for x in xs]
        self.states = [rule.init(x) for x in self.xs]

    def step(self, grads: list[torch.Tensor], which: list[int], mp: pytest.MonkeyPatch) -> None:
        xs = [self.xs[i] for i in which]
        sts = [self.states[i] for i in which]
        gs = [grads[i] for i in which]
        if self.how == "apply":
            # the truth on this thread alone: torch's pool threads keep the floating-point
            # mode they were started with (flush-to-zero, if a thread was started while a
            # test had it on), so torch's own parallel result on subnormals depends on
            # which threads exist; the kernel's shares all take the calling thread's mode
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for k, i in enumerate(which):
                    new, step = self.rule.apply(sts[k], xs[k], gs[k])
                    with torch.no_grad():
                        xs[k].sub_(step)
                    self.states[i] = new
            finally:
                torch.set_num_threads(threads)
            return
        with mp.context() as m:
            if self.how == "foreach":
                m.setattr(native, "available", lambda: False)
            pend = plan.prepare(self.rule, sts, xs, gs)
            assert pend is not None
            for p in pend:
                for k, s in zip(p.idx, p.run()):
                    self.states[which[k]] = s


def check_equal(routes: list[Route]) -> None:
    ref = routes[0]
    for r in routes[1:]:
        for i, (a, b) in enumerate(zip(ref.xs, r.xs)):
            assert same(a, b), f"{r.how}: parameter {i} differs from {ref.how}"
        for i, (sa, sb) in enumerate(zip(ref.states, r.states)):
            for a, b in zip(state_bits(ref.rule, sa), state_bits(r.rule, sb)):
                assert same(a, b), f"{r.how}: state of leaf {i} differs from {ref.how}"
            if isinstance(sa, R.AdamState):
                assert sa.beta_t == sb.beta_t


@pytest.fixture
def native_used(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the groups the native kernel took (so that no test passes vacuously)."""
    if not native.available():
        pytest.skip(f"native kernel unavailable: {native.why_unavailable()}")
    hits: list[int] = []
    orig = plan._native

    def spy(*a: Any) -> Any:
        p = orig(*a)
        if p is not None:
            hits.append(1)
        return p

    monkeypatch.setattr(plan, "_native", spy)
    return hits


@needs_cc
@pytest.mark.parametrize("shapes", list(SHAPES))
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", list(RULES))
def test_native_equals_apply_and_foreach(rule: str, dt: torch.dtype, shapes: str,
                                         native_used: list[int],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(4 if shapes == "big" else 1)  # 700k elements: 4 threads' shares
    xs = [values(int(torch.Size(s).numel()), dt, 7 + i, wild=False).reshape(s)
          for i, s in enumerate(SHAPES[shapes])]
    routes = [Route(RULES[rule](), xs, how) for how in ("apply", "native", "foreach")]
    n = len(xs)
    for k in range(4):
        # step 1 leaves every other leaf out: Adam's beta_t then differ across leaves
        which = list(range(0, n, 2)) if k == 1 and n > 1 else list(range(n))
        grads = [values(x.numel(), dt, 100 * k + i, wild=k != 3).reshape(x.shape)
                 for i, x in enumerate(xs)]
        for r in routes:
            r.step(grads, which, monkeypatch)
        check_equal(routes)
    assert len(native_used) == 4


@needs_cc
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_tree_api_freeze_thaw(dt: torch.dtype, native_used: list[int],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fluxtrain import optimisers as O

    def train(use_native: bool) -> Any:
        torch.manual_seed(0)
        model = {"a": torch.randn(5, 3, dtype=dt), "b": torch.randn(300_000, dtype=dt),
                 "c": [torch.randn(7, dtype=dt)]}
        st = O.setup(O.Adam(0.01), model)
        with monkeypatch.context() as m:
            if not use_native:
                m.setattr(native, "available", lambda: False)
            for k in range(5):
                if k == 1:
                    O.freeze_(st["a"])
                if k == 3:
                    O.thaw_(st["a"])  # a's beta_t now lag the others'
                g = {"a": values(15, dt, k).reshape(5, 3), "b": values(300_000, dt, 10 + k),
                     "c": [values(7, dt, 20 + k)]}
                O.update_(st, model, g)
        return model

    a, b = train(True), train(False)
    assert native_used
    for x, y in ((a["a"], b["a"]), (a["b"], b["b"]), (a["c"][0], b["c"][0])):
        assert same(x, y)


@needs_cc
def test_ineligible_inputs_take_the_foreach_path(native_used: list[int],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rule = R.Adam(0.01)
    torch.manual_seed(3)
    x = torch.randn(6, 4)
    g_t = torch.randn(4, 6).t()  # not contiguous
    routes = [Route(rule, [x], how) for how in ("apply", "native")]
    for r in routes:
        r.step([g_t], [0], monkeypatch)
    check_equal(routes)
    assert not native_used  # the native kernel refused it; the foreach runs did it
    # a gradient that overlaps its parameter in memory
    buf = torch.randn(11)
    xo, go = buf[:10], buf[1:]
    st = [rule.init(xo)]
    ws = plan._Workspace()
    assert plan._native(R.Adam, rule, ws, st, [xo], [go]) is None
    # then contiguous again (the states were moved into flat buffers meanwhile)
    g = torch.randn(6, 4)
    for r in routes:
        r.step([g], [0], monkeypatch)
    check_equal(routes)
    assert native_used


def run_py(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=timeout)


PROBE = """
import torch
from fluxtrain.core import native
from fluxtrain import optimisers as O
print(native.available()); print(native.why_unavailable())
m = [torch.ones(5)]
st = O.setup(O.Adam(0.1), m)
O.update_(st, m, [torch.ones(5)])
print(m[0].tolist())
"""


def kernel_files(cache: Path) -> list[Path]:
    """The step kernel's files in a cache directory (the C++ metadata reads, which a probe's
    fused steps may start building there too, keep their own ``tensormeta-*`` files)."""
    return [f for f in cache.iterdir() if f.name.startswith("fused-")]


def test_no_compiler_falls_back(tmp_path: Path) -> None:
    res = run_py(PROBE, {"CC": str(tmp_path / "no-such-cc"), "FLUXTRAIN_CACHE_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    avail, why, x = res.stdout.splitlines()
    assert avail == "False" and "compiler" in why
    assert x == str([0.8999999761581421] * 5)  # 1 - 0.1 (first Adam step ~ eta*sign)
    assert not kernel_files(tmp_path)
    assert res.stderr == ""  # silent: no warning


def test_disabled_by_env(tmp_path: Path) -> None:
    res = run_py(PROBE, {"FLUXTRAIN_NATIVE": "0", "FLUXTRAIN_CACHE_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:2] == ["False", "disabled by FLUXTRAIN_NATIVE=0"]


def test_not_built_at_import(tmp_path: Path) -> None:
    res = run_py("import fluxtrain, fluxtrain.optimisers\nfrom fluxtrain.core import native\n"
                 "print(native._state)", {"FLUXTRAIN_CACHE_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "{}" and not list(tmp_path.iterdir())


@needs_cc
def test_concurrent_builds(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FLUXTRAIN_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.splitlines()[0] == "True", out
    files = [f.name for f in kernel_files(tmp_path)]
    assert len(files) == 1 and files[0].endswith(".so"), files  # no temporaries left


@needs_cc
def test_corrupted_cache_is_rebuilt(tmp_path: Path) -> None:
    env = {"FLUXTRAIN_CACHE_DIR": str(tmp_path)}
    assert run_py(PROBE, env).stdout.splitlines()[0] == "True"
    [so] = kernel_files(tmp_path)
    so.write_bytes(b"not a shared library")
    res = run_py(PROBE, env)
    assert res.stdout.splitlines()[0] == "True", res.stdout + res.stderr
    assert so.read_bytes()[:4] == b"\x7fELF"
    # corrupted and no compiler to rebuild it: falls back, still trains
    so.write_bytes(b"garbage")
    res = run_py(PROBE, {**env, "CC": str(tmp_path / "missing")})
    assert res.returncode == 0, res.stderr
    avail, _why, x = res.stdout.splitlines()
    assert avail == "False" and x == str([0.8999999761581421] * 5)


@needs_cc
def test_describe_and_build_time(tmp_path: Path) -> None:
    res = run_py("import time, torch\nfrom fluxtrain.core import native\n"
                 "t = time.perf_counter(); ok = native.available()\n"
                 "print(ok, time.perf_counter() - t); print(native.describe())",
                 {"FLUXTRAIN_CACHE_DIR": str(tmp_path)})
    line, desc = res.stdout.splitlines()
    ok, secs = line.split()
    assert ok == "True" and "sqrt" in desc
    assert float(secs) < 10  # about 1 s: compile, load and self-check (loose: shared host)


@needs_cc
def test_compiler_without_openmp_falls_back_to_posix_threads(tmp_path: Path) -> None:
    """A compiler that rejects -fopenmp: the kernel is built with POSIX threads and
    gives the same bits (a step over 700k elements on 4 threads, against apply)."""
    cc = tmp_path / "cc-no-openmp"
    real = shutil.which(os.environ.get("CC") or "cc")
    cc.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -fopenmp ] && "
                  "{ echo 'unsupported -fopenmp' >&2; exit 1; }; done\n"
                  f"exec {real} \"$@\"\n")
    cc.chmod(0o755)
    code = (
        "import torch\nfrom fluxtrain.core import native, plan\n"
        "from fluxtrain.core import rules as R\n"
        "torch.set_num_threads(4)\nprint(native.describe())\n"
        "rule = R.Adam(0.01)\nx = torch.randn(700_001)\ng = torch.randn(700_001)\n"
        "s = rule.init(x)\nxr = x.clone()\nsr, step = rule.apply(rule.init(xr), xr, g)\n"
        "xr.sub_(step)\n[p] = plan.prepare(rule, [s], [x], [g])\n[s] = p.run()\n"
        "print(torch.equal(x, xr) and torch.equal(s.v, sr.v))\n"
    )
    res = run_py(code, {"CC": str(cc), "FLUXTRAIN_CACHE_DIR": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    desc, same_bits = res.stdout.splitlines()
    assert desc.startswith("native kernel in use") and "POSIX threads" in desc, desc
    assert same_bits == "True"
