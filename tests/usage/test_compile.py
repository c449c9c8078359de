"""Day one: ``model = torch.compile(model)`` and then train it.

``torch.compile`` returns an ``OptimizedModule`` that holds the original module as
``_orig_mod`` (so the parameter paths become ``_orig_mod.0.weight``) and shares its
parameters. ``setup``/``train_`` take it like any module; the result is checked against
torch.optim training an eager twin.

The default test compiles with ``backend="aot_eager"`` (the whole dynamo + AOTAutograd
pipeline, without code generation): on the 2-core CPU test machine, the default inductor
backend spends about 35 s compiling C++, so that variant is marked slow. aot_eager runs the
same aten ops as eager mode, so the comparison is at Adam's float32 tolerance; inductor
fuses kernels and may reorder float32 sums, hence a looser tolerance there.
"""

from __future__ import annotations

import pytest
import torch

import fluxtrain
from fluxtrain.optimisers import Adam

from .usageutil import F32, assert_moved, loader, mlp, mse, params_of, regression, twins

# torch's own compile machinery calls a deprecated torch.jit helper
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script_method:DeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run(backend, tol):
    X, Y = regression()
    eager, theirs = twins(mlp)
    before = params_of(eager)
    model = torch.compile(eager, backend=backend)
    assert [n for n, _ in model.named_parameters()][0] == "_orig_mod.0.weight"
    opt_state = fluxtrain.setup(Adam(1e-2), model)
    data = [tuple(b) for b in loader(X, Y)]   # tuples: the batch rule is test_dataloader's
    for _ in range(2):
        fluxtrain.train_(mse, model, data, opt_state)
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    for _ in range(2):
        for x, y in data:
            opt.zero_grad()
            mse(theirs, x, y).backward()
            opt.step()
    assert_moved(eager, before)   # the compiled wrapper trained the original's parameters
    for (n, a), b in zip(eager.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), msg=lambda m, n=n: f"{n}: {m}", **tol)
    # the state tree follows the wrapper's paths: opt_state._orig_mod[0].weight
    assert getattr(opt_state._orig_mod, "0").weight.rule == Adam(1e-2)


def test_compiled_model_aot_eager():
    _run("aot_eager", F32)


@pytest.mark.slow
def test_compiled_model_inductor():
    _run("inductor", {"rtol": 1e-4, "atol": 1e-5})
