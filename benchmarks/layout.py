"""How the memory layout of many small leaves changes the native Adam kernel's time.

Run ``.venv/bin/python benchmarks/layout.py`` (``--quick`` for a smoke run). It calls
the kernel (``fluxtrain.core.native``) directly, with no per-step checks, on 2,000
leaves of 4,096 float32 elements laid out four ways, and prints each layout's median
ms per step and its ratio to the flat layout, paired within rounds (the host is shared):

* **flat**: one buffer per stream (parameters, gradients, m, v), the leaves views of it,
  as ``fluxtrain.flatten_`` lays them out;
* **separate, dense**: one tensor per leaf, allocated stream by stream, so that each
  stream's tensors lie next to each other (a few hundred bytes of allocator header apart);
* **separate, m beside v**: as dense, but each m allocated beside its v, as ``setup``
  allocates an Adam state (parameters and gradients dense, as a model's constructor and
  autograd's first backward lay them out);
* **separate, with holes**: one tensor per leaf, each gradient allocated beside a
  temporary of its size and each m beside its v (as ``setup`` allocates an Adam state),
  so that every stream but the parameters' has a hole of its own size after each leaf.

``benchmarks/bench.py``'s 2,000 x 4,096 case has the "m beside v" layout (its gradients had
holes until they were scaled in place); see docs/speed.md for what the difference means for
the default path and ``flatten_``.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from collections.abc import Callable

import torch

from fluxtrain.core import native, plan
from fluxtrain.core import rules as R

LEAVES, SIZE = 2000, 4096
Streams = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def flat() -> Streams:
    bufs = [torch.randn(LEAVES * SIZE), torch.randn(LEAVES * SIZE) * 1e-2,
            torch.zeros(LEAVES * SIZE), torch.zeros(LEAVES * SIZE)]
    x, g, m, v = (list(b.split(SIZE)) for b in bufs)
    return x, g, m, v


def separate_dense() -> Streams:
    x = [torch.randn(SIZE) for _ in range(LEAVES)]
    g = [torch.randn(SIZE) for _ in range(LEAVES)]
    m = [torch.zeros(SIZE) for _ in range(LEAVES)]
    v = [torch.zeros(SIZE) for _ in range(LEAVES)]
    return x, g, m, v


def m_beside_v() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Adam states allocated leaf by leaf, each m then its v, as ``setup`` allocates them."""
    m, v = [], []
    for _ in range(LEAVES):
        m.append(torch.zeros(SIZE))
        v.append(torch.zeros(SIZE))
    return m, v


def states_side_by_side() -> Streams:
    x = [torch.randn(SIZE) for _ in range(LEAVES)]
    g = [torch.randn(SIZE) for _ in range(LEAVES)]
    return (x, g, *m_beside_v())


def separate_with_holes(keep: list[torch.Tensor]) -> Streams:
    x = [torch.randn(SIZE) for _ in range(LEAVES)]
    g = []
    for _ in range(LEAVES):
        keep.append(torch.empty(SIZE))  # a neighbour of the gradient's size, kept alive
        g.append(torch.randn(SIZE))
    return (x, g, *m_beside_v())


def kernel_step(streams: Streams) -> Callable[[], None]:
    """One Adam step of the native kernel over the leaves, with their addresses cached."""
    lib = native.library()
    assert lib is not None
    x, g, m, v = streams

    def addresses(ts: list[torch.Tensor]) -> ctypes.Array[ctypes.c_int64]:
        return (ctypes.c_int64 * len(ts))(*[t.data_ptr() for t in ts])

    xa, ga, ma, va = addresses(x), addresses(g), addresses(m), addresses(v)
    offs = (ctypes.c_int64 * (LEAVES + 1))(*[k * SIZE for k in range(LEAVES + 1)])
    d1, d2 = (ctypes.c_double * 1)(0.1), (ctypes.c_double * 1)(0.001)
    nthreads = torch.get_num_threads()

    def run(_keep: Streams = streams) -> None:
        lib.fluxtrain_step(plan._RULE_CODE[R.Adam], 0, LEAVES, xa, ga, ma, va, offs, d1, d2,
                           0, 1e-3, 0.9, 0.999, 0.1, 0.001, 1e-8, nthreads,
                           plan.NATIVE_MIN_PER_THREAD[R.Adam])

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few rounds only")
    args = ap.parse_args(argv)
    if not native.available():
        print(f"native kernel not available: {native.why_unavailable()}")
        return 1
    keep: list[torch.Tensor] = []
    rows = {"flat": kernel_step(flat()),
            "separate, dense": kernel_step(separate_dense()),
            "separate, m beside v": kernel_step(states_side_by_side()),
            "separate, with holes": kernel_step(separate_with_holes(keep))}
    rounds = 5 if args.quick else 60
    times: dict[str, list[float]] = {name: [] for name in rows}
    for fn in rows.values():
        fn()
    for r in range(rounds):
        for name, fn in (rows.items() if r % 2 == 0 else reversed(rows.items())):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    print(f"native Adam kernel, {LEAVES} x {SIZE} float32, {torch.get_num_threads()} threads,"
          f" {rounds} rounds\n")
    print("| layout | ms | vs flat |\n|---|---|---|")
    for name in rows:
        ratio = statistics.median(a / b for a, b in zip(times[name], times["flat"]))
        print(f"| {name} | {statistics.median(times[name]):.3f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
