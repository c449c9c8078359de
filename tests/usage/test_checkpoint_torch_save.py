"""Day one: save a checkpoint with ``torch.save``, load it with
``torch.load(path, weights_only=True)`` (torch's safe loader, the default since torch 2.6),
and resume.

``fluxtrain.checkpoint.state_dict`` / ``optimiser_state_dict`` turn optimiser state into
plain data (tensors, numbers, strings, lists, dicts) that the safe loader accepts. The
truth is the uninterrupted run: save after epoch 1, load into a fresh model and a fresh
state, train on, and the result equals the run that never stopped, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import fluxtrain
from fluxtrain import checkpoint
from fluxtrain.optimisers import (
    Adam,
    ClipGlobalNorm,
    Momentum,
    OptimiserChain,
    StepDecay,
    WarmupCosine,
)

from .usageutil import assert_same_params, loader, mlp, mse, regression, seeded

EPOCHS = 3


def data():
    X, Y = regression()
    return [tuple(b) for b in loader(X, Y)]   # tuples: the batch rule is test_dataloader's


RULES = {
    "Adam": lambda: Adam(1e-2),
    "chain+schedule": lambda: OptimiserChain(
        ClipGlobalNorm(1.0), Adam(WarmupCosine(0.0, 1e-2, warmup_steps=3, decay_steps=12))),
    "Momentum+StepDecay": lambda: Momentum(StepDecay(0.05, 0.5, 4), 0.9),
}


@pytest.mark.parametrize("name", list(RULES))
def test_explicit_resume_is_bit_identical(name, tmp_path):
    make_rule = RULES[name]
    # uninterrupted
    ref = seeded(mlp)
    st = fluxtrain.setup(make_rule(), ref)
    for _ in range(EPOCHS):
        fluxtrain.train_(mse, ref, data(), st)
    # interrupted after one epoch
    model = seeded(mlp)
    st = fluxtrain.setup(make_rule(), model)
    fluxtrain.train_(mse, model, data(), st)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(),
                "opt": checkpoint.state_dict(st, model)}, path)
    del model, st
    ck = torch.load(path, weights_only=True)
    fresh = seeded(mlp, seed=99)           # other weights, until loaded
    fresh.load_state_dict(ck["model"])
    st = checkpoint.load_state_dict(ck["opt"], fresh)
    for _ in range(EPOCHS - 1):
        fluxtrain.train_(mse, fresh, data(), st)
    assert_same_params(fresh, ref)


def test_adjusted_learning_rate_survives(tmp_path):
    model = seeded(mlp)
    st = fluxtrain.setup(Adam(1e-2), model)
    fluxtrain.train_(mse, model, data(), st)
    fluxtrain.adjust_(st, 3e-3)
    torch.save(checkpoint.state_dict(st, model), tmp_path / "opt.pt")
    st2 = checkpoint.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True), model)
    assert getattr(st2, "0").weight.rule.eta == 3e-3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_implicit_resume_is_bit_identical(tmp_path):
    def run(model, opt, epochs):
        ps = fluxtrain.params(model)
        for _ in range(epochs):
            fluxtrain.train_(lambda x, y: mse(model, x, y), ps, data(), opt)

    ref = seeded(mlp)
    run(ref, fluxtrain.optimise.Adam(1e-2), EPOCHS)
    model = seeded(mlp)
    opt = fluxtrain.optimise.Adam(1e-2)
    run(model, opt, 1)
    torch.save({"model": model.state_dict(),
                "opt": checkpoint.optimiser_state_dict(opt, model)}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    fresh = seeded(mlp, seed=99)
    fresh.load_state_dict(ck["model"])
    opt2 = checkpoint.load_optimiser_state_dict(None, ck["opt"], fresh)
    run(fresh, opt2, EPOCHS - 1)
    assert_same_params(fresh, ref)


def test_torch_optim_checkpoint_continues_in_fluxtrain(tmp_path):
    # a run started with torch.optim, saved the torch way, continued in fluxtrain
    # (fluxtrain.torch_optim.from_torch) equals torch.optim continuing (Adam: float32
    # tolerance, see docs/torch_optim.md "Accuracy")
    from fluxtrain.torch_optim import from_torch

    model = seeded(mlp)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, y in data():
        opt.zero_grad()
        mse(model, x, y).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "t.pt")
    ck = torch.load(tmp_path / "t.pt", weights_only=True)
    ours, theirs = seeded(mlp, 5), seeded(mlp, 5)
    ours.load_state_dict(ck["model"])
    theirs.load_state_dict(ck["model"])
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    topt.load_state_dict(ck["opt"])
    fopt = torch.optim.Adam(ours.parameters(), lr=1e-2)
    fopt.load_state_dict(ck["opt"])
    st = from_torch(fopt, ours)
    for _ in range(2):
        fluxtrain.train_(mse, ours, data(), st)
        for x, y in data():
            topt.zero_grad()
            mse(theirs, x, y).backward()
            topt.step()
    assert_same_params(ours, theirs, rtol=1e-5, atol=1e-6)
