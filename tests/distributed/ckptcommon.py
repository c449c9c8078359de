"""Training set-ups for the checkpoint/resume tests (shared by the test and its fresh process).

Each scenario trains a small MLP on fixed batches; within the first 30 steps
it changes things a checkpoint must carry (a learning rate, a frozen leaf), so
a resumed run only matches the uninterrupted one if those survive.
"""

from __future__ import annotations

import warnings

import torch

import fluxtrain
from fluxtrain import checkpoint as CK
from fluxtrain import optimisers as O

TOTAL = 60
HALF = 30
SCENARIOS = ("adam", "chain_accum", "old_adam", "old_chain")


def make_model(seed: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)) for _ in range(TOTAL)]


def loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def start(name: str, model: torch.nn.Module):
    """The optimiser state of scenario ``name`` for a fresh run."""
    if name == "adam":
        return fluxtrain.setup(O.Adam(0.01), model)
    if name == "chain_accum":
        # AccumGrad(4): 30 steps leave it mid-accumulation (counter 3 of 4)
        rule = O.OptimiserChain(O.AccumGrad(4), O.ClipGrad(0.5), O.Momentum(0.05, 0.8))
        return fluxtrain.setup(rule, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "old_adam":
            return fluxtrain.params(model), fluxtrain.optimise.Adam(0.01)
        if name == "old_chain":
            opt = fluxtrain.optimise.Optimiser(
                fluxtrain.optimise.ClipValue(0.5),
                fluxtrain.optimise.ExpDecay(1.0, 0.5, 7, 1e-4),
                fluxtrain.optimise.Descent(0.05),
            )
            return fluxtrain.params(model), opt
    raise ValueError(name)


def _events(name: str, state, step: int) -> None:
    """Changes made during the first half, at the start of global step ``step``."""
    if name == "adam" and step == 10:
        O.adjust_(state, 0.004)
    if name == "chain_accum" and step == 5:
        O.freeze_(state[2].bias)
    if name == "chain_accum" and step == 13:
        O.adjust_(state, 0.03)
    if name == "old_adam" and step == 10:
        state[1].eta = 0.004
    if name == "old_chain" and step == 12:
        state[1][2].eta = 0.02


def train(name: str, model, state, lo: int, hi: int) -> None:
    """Global steps lo..hi-1 with train_ (events split the passes)."""
    data = batches()
    cuts = sorted({lo, hi, *[s for s in (5, 10, 12, 13) if lo < s < hi]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in zip(cuts, cuts[1:]):
            _events(name, state, a)
            if name in ("adam", "chain_accum"):
                fluxtrain.train_(loss, model, data[a:b], state)
            else:
                ps, opt = state
                fluxtrain.train_(lambda x, y: loss(model, x, y), ps, data[a:b], opt)


def save(name: str, model, state) -> dict:
    if name in ("adam", "chain_accum"):
        opt = CK.state_dict(state, model)
    elif name == "old_adam":
        opt = CK.optimiser_state_dict(state[1], model)  # keyed by the model's paths
    else:
        opt = CK.optimiser_state_dict(state[1], state[0])  # keyed by Params positions
    return {"model": model.state_dict(), "opt": opt}


def load(name: str, ck: dict, model):
    model.load_state_dict(ck["model"])
    if name in ("adam", "chain_accum"):
        return CK.load_state_dict(ck["opt"], model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = fluxtrain.params(model)
    if name == "old_adam":
        return ps, CK.load_optimiser_state_dict(None, ck["opt"], model)
    return ps, CK.load_optimiser_state_dict(None, ck["opt"], ps)


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]
