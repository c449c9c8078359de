"""compare on real fluxtrain training: an implicit script against hand-written migrations.

The OLD script trains with implicit ``train_`` and ``opt.eta *= 0.5``; NEW
scripts are explicit translations, one right and several planted mistakes.
The expected first differing step is worked out here independently of the
tracing (by running the two optimisers side by side in this process).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import fluxtrain
from fluxtrain import optimisers as O
from fluxtrain.seeding import seed_everything
from fluxtrain_migrate import compare

SETUP = """
import torch
import fluxtrain

x = torch.randn(32, 3)
y = torch.randn(32, 2)
data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
model = torch.nn.Linear(3, 2)
"""
N_BATCHES = 4
EPOCHS = 3

OLD = (
    SETUP
    + """
def loss(x, y):
    return torch.nn.functional.mse_loss(model(x), y)

ps = fluxtrain.params(model)
opt = fluxtrain.Adam(0.05)
for epoch in range(3):
    fluxtrain.train_(loss, ps, data, opt)
    opt.eta *= 0.5
"""
)

NEW = (
    SETUP
    + """
def loss(m, x, y):
    return torch.nn.functional.mse_loss({reads}(x), y)

opt_state = fluxtrain.setup(fluxtrain.optimisers.Adam(0.05{beta}), model)
eta = 0.05
for epoch in range(3):
    fluxtrain.train_(loss, model, data, opt_state)
    eta *= 0.5
    fluxtrain.adjust_(opt_state, {new_eta})
"""
)


def _new(tmp: Path, name: str, reads: str = "m", beta: str = "", new_eta: str = "eta") -> Path:
    p = tmp / name
    p.write_text(NEW.format(reads=reads, beta=beta, new_eta=new_eta))
    return p


@pytest.fixture
def old(tmp_path: Path) -> Path:
    p = tmp_path / "old.py"
    p.write_text(OLD)
    return p


def test_right_migration_is_identical(tmp_path: Path, old: Path) -> None:
    r = compare.compare_scripts(old, _new(tmp_path, "new.py"))
    assert r.exit_code == 0, compare.format_result(r, "old", "new")
    assert r.steps_compared == N_BATCHES * EPOCHS and r.n_params == 2
    assert r.old is not None and r.new is not None
    assert {rec["style"] for rec in r.old.records} == {"implicit"}
    assert {rec["style"] for rec in r.new.records} == {"explicit"}
    # both know the loss (train_ passes it down), and they agree
    assert [rec["loss"] for rec in r.old.records] == [rec["loss"] for rec in r.new.records]
    assert all(rec["loss"] is not None for rec in r.old.records)


def _first_differing_step(beta_a: tuple[float, float], beta_b: tuple[float, float]) -> int:
    """Independent truth: run explicit Adam with each beta in this process, compare bits."""
    seed_everything(0)
    ns: dict = {}
    exec(SETUP, ns)
    models = [ns["model"], copy.deepcopy(ns["model"])]
    states = [fluxtrain.setup(O.Adam(0.05, beta), m) for beta, m in zip((beta_a, beta_b), models)]
    step = 0
    eta = 0.05
    for _ in range(EPOCHS):
        for xb, yb in ns["data"]:
            step += 1
            for m, st in zip(models, states):
                g = fluxtrain.gradient(lambda m_: torch.nn.functional.mse_loss(m_(xb), yb), m)[0]
                fluxtrain.update_(st, m, g)
            if any(not torch.equal(p, q) for p, q in zip(*(m.parameters() for m in models))):
                return step
        eta *= 0.5
        for st in states:
            fluxtrain.adjust_(st, eta)
    raise AssertionError("the two betas never differ")


def test_adam_with_another_beta_is_caught_at_the_right_step(tmp_path: Path, old: Path) -> None:
    expected = _first_differing_step((0.9, 0.999), (0.8, 0.999))
    r = compare.compare_scripts(old, _new(tmp_path, "new.py", beta=", (0.8, 0.999)"))
    assert r.exit_code == compare.EXIT_DIVERGED
    assert r.step == expected
    assert r.diffs and all(d.max_abs is not None and d.max_abs > 0 for d in r.diffs)


def test_wrong_learning_rate_schedule_diverges_after_the_first_epoch(
    tmp_path: Path, old: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """adjust_(opt_state, 0.5) instead of the halved eta: epoch 1 is right, step 5 is not."""
    new = _new(tmp_path, "new.py", new_eta="0.5")
    assert compare.main([str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert f"DIVERGED at step {N_BATCHES + 1}:" in out
    assert f"steps 1..{N_BATCHES} are identical" in out
    assert "max abs diff" in out


def test_loss_reading_the_global_model_is_harmless_here(tmp_path: Path, old: Path) -> None:
    """fluxtrain's explicit gradient differentiates the model's own tensors, so a loss
    that still reads the global ``model`` instead of its argument trains identically;
    compare rightly reports no divergence (the migration is untidy, not wrong)."""
    r = compare.compare_scripts(old, _new(tmp_path, "new.py", reads="model"))
    assert r.exit_code == 0, r.message


PARTIAL_OLD = (
    SETUP.replace(
        "torch.nn.Linear(3, 2)",
        "torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))",
    )
    + """
def loss(x, y):
    return torch.nn.functional.mse_loss(model(x), y)

opt = fluxtrain.Descent(0.1)
fluxtrain.train_(loss, fluxtrain.params(model[0]), data, opt)
"""
)

PARTIAL_NEW = (
    SETUP.replace(
        "torch.nn.Linear(3, 2)",
        "torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))",
    )
    + """
def loss(m, x, y):
    return torch.nn.functional.mse_loss(m(x), y)

opt_state = fluxtrain.setup(fluxtrain.optimisers.Descent(0.1), model)
{freeze}
fluxtrain.train_(loss, model, data, opt_state)
"""
)


def test_partial_training_against_freeze(tmp_path: Path) -> None:
    old = tmp_path / "old.py"
    old.write_text(PARTIAL_OLD)
    good = tmp_path / "good.py"
    good.write_text(PARTIAL_NEW.format(freeze="fluxtrain.freeze_(opt_state[2])"))
    r = compare.compare_scripts(old, good)
    assert r.exit_code == 0, compare.format_result(r, "old", "good")
    assert r.steps_compared == N_BATCHES
    bad = tmp_path / "bad.py"
    bad.write_text(PARTIAL_NEW.format(freeze=""))
    r = compare.compare_scripts(old, bad)
    # Step 1 trains the first layer identically; the head moving (in NEW only) shows
    # from step 2, the first record after a change of it (the traces hold no step 0).
    assert r.exit_code == 1 and r.step == 2
    extra = [d for d in r.diffs if "trained in NEW only" in d.note]
    assert [d.shape for d in extra] == [[2, 4], [2]]  # the last layer's weight and bias
