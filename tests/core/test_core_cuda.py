"""The rules on a CUDA device: same code, results agree with the CPU.

Skipped without a GPU (tests/conftest.py). Bitwise agreement is only promised
on the CPU: CUDA's division by a scalar multiplies by the reciprocal and its
fused _foreach kernels may round differently, so these compare to float32
tolerance, and per-leaf vs batched on the device to a few ulps.
"""

from __future__ import annotations

import pytest
import torch
from coreutil import init_all, step_all, step_batched
from test_core_batched import RULES, _grads, _leaves

pytestmark = pytest.mark.cuda


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to(o, device) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_cuda_matches_cpu(rule):
    cpu = _leaves(0)
    dev = [x.to("cuda") for x in cpu]
    dev_b = [x.to("cuda") for x in cpu]
    s_cpu, s_dev, s_dev_b = init_all(rule, cpu), init_all(rule, dev), init_all(rule, dev_b)
    assert all(
        not isinstance(t, torch.Tensor) or t.is_cuda for s in s_dev for t in
        (s if isinstance(s, tuple) else (s,))
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        gs = _grads(cpu, gen)
        s_cpu = step_all(rule, s_cpu, cpu, gs)
        s_dev = step_all(rule, s_dev, dev, [g.to("cuda") for g in gs])
        s_dev_b = step_batched(rule, s_dev_b, dev_b, [g.to("cuda") for g in gs])
    for c, d, b in zip(cpu, dev, dev_b):
        tol = dict(rtol=1e-5, atol=1e-6) if c.dtype == torch.float32 else dict(rtol=1e-12,
                                                                                atol=1e-13)
        torch.testing.assert_close(d.cpu(), c, **tol)
        torch.testing.assert_close(b.cpu(), c, **tol)
