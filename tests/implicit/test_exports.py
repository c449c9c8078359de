"""`import fluxtrain` exports what DESIGN.md's Public API lists, with the Flux 0.13 aliasing."""

import json

import pytest
import torch

import fluxtrain
from fluxtrain import optimise, optimisers


def test_top_level_names():
    names = """optimise optimisers setup train_ update_ gradient withgradient params Params Grads
    throttle stop skip epochs adjust adjust_ freeze_ thaw_ trainables Leaf DomainError
    FluxDeprecationWarning OptimiserChain ClipGrad""".split()
    old = """AbstractOptimiser Descent Momentum Nesterov RMSProp Adam RAdam AdaMax OAdam AdaGrad
    AdaDelta AMSGrad NAdam AdamW AdaBelief InvDecay ExpDecay WeightDecay ClipValue ClipNorm
    Optimiser ADAM NADAM ADAMW RADAM OADAM ADAGrad ADADelta""".split()
    for n in names + old:
        assert hasattr(fluxtrain, n), n
        assert n in fluxtrain.__all__, n
    for n in old:
        assert getattr(fluxtrain, n) is getattr(optimise, n), n
        assert n in optimise.__all__
    assert fluxtrain.OptimiserChain is optimise.Optimiser
    assert fluxtrain.ClipGrad is optimise.ClipValue
    assert fluxtrain.Adam is not optimisers.Adam
    assert issubclass(fluxtrain.FluxDeprecationWarning, DeprecationWarning)


def test_optimise_module_functions_are_the_dispatching_ones():
    assert optimise.update_ is fluxtrain.update_
    assert optimise.train_ is fluxtrain.train_
    assert optimise.stop is fluxtrain.stop and optimise.skip is fluxtrain.skip


def test_new_names_work_with_implicit_params():
    """As in Flux 0.13, fluxtrain.OptimiserChain/ClipGrad are the old types: usable implicitly."""
    w = torch.tensor([3.0], dtype=torch.float64)
    ps = fluxtrain.Params([w])
    opt = fluxtrain.OptimiserChain(fluxtrain.ClipGrad(1.0), fluxtrain.Descent(0.5))
    gs = fluxtrain.implicit.gradient.gradient_implicit(lambda: (w * w).sum(), ps)
    fluxtrain.implicit.train.update_implicit(opt, ps, gs)
    assert w.tolist() == [2.5]


def test_implicit_update_records_one_trace_line_per_step(tmp_path, monkeypatch):
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FLUXTRAIN_TRACE", str(path))
    w = torch.zeros(2, dtype=torch.float64)
    ps = fluxtrain.Params([w])
    fluxtrain.implicit.train.train_implicit(
        lambda x: (w * x).sum(), ps, [1.0, 2.0, 3.0], fluxtrain.Descent(0.1), progress=False
    )
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert len(lines) == 3
    assert all(r["style"] == "implicit" for r in lines)
    assert [r["loss"] for r in lines] == pytest.approx([0.0, -0.4, -1.8])  # w: 0, -0.1, -0.3
    assert len(lines[0]["params"]) == 1
