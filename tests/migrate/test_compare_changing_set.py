"""compare when the set of traced parameters changes during a run (issue 20, item 5).

Each step's trace record holds the parameters *of that step*: a GAN writes
the discriminator's, then the generator's; a growing ``Params`` writes more
entries later; a rebuilt model writes new tensors. ``compare X.py X.py`` must
say IDENTICAL for all of them (it said "the number of parameters changed"
before, since it paired the parameters once, at step 1), and a real change in
one of them must still show at the step where it happens.

Every script here trains through fluxtrain's real ``update_``/``train_`` and
is compared through the CLI entry point (two subprocesses per comparison).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fluxtrain_migrate import compare

# Two models trained in turn (the GAN pattern): D (4 parameters), then G (2).
# Step 2k-1 is D's, step 2k is G's. G's learning rate becomes G_LR_LATE at
# round CHANGE (1-based), so its first changed step is 2 * CHANGE.
_GAN = """
import torch
from fluxtrain import gradient, params
from fluxtrain.optimise import Adam, update_

CHANGE, G_LR_LATE = {change}, {g_lr_late}
g = torch.nn.Linear(3, 2)
d = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
opt_g, opt_d = Adam(0.01), Adam(0.01)
x = torch.randn(8, 3)
for k in range(1, 5):
    pd = params(d)
    gs = gradient(lambda: d(g(x)).mean(), pd)
    update_(opt_d, pd, gs)
    if k == CHANGE:
        opt_g.eta = G_LR_LATE
    pg = params(g)
    gs = gradient(lambda: -d(g(x)).mean(), pg)
    update_(opt_g, pg, gs)
    print(k, float(d(g(x)).mean()))
"""

# The same in the explicit style, with train_ and one state tree per model.
_GAN_EXPLICIT = """
import torch
import fluxtrain
from fluxtrain.optimisers import Adam

g = torch.nn.Linear(3, 2)
d = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
st_g, st_d = fluxtrain.setup(Adam(0.01), g), fluxtrain.setup(Adam(0.01), d)
x = torch.randn(8, 3)
for k in range(3):
    fluxtrain.train_(lambda m, xb: m(g(xb)).mean(), d, [(x,)], st_d)
    fluxtrain.train_(lambda m, xb: -d(m(xb)).mean(), g, [(x,), (x,)], st_g)
print(float(d(g(x)).mean()))
"""

# A Params that grows: w alone for two steps, then w and b, then w, b and c.
_GROWING = """
import torch
from fluxtrain import gradient, params
from fluxtrain.optimise import Descent, Momentum, update_

w, b, c = torch.randn(3, 2), torch.randn(2), torch.randn(2, 2)
x = torch.randn(5, 3)
opt = Momentum(0.05)
ps = params(w)
for k in range(1, 7):
    if k == 3:
        ps = params(w, b)
    if k == 5:
        ps.push(c)
    gs = gradient(lambda: ((x @ w + b) @ c).square().mean(), ps)
    update_(opt, ps, gs)
print(float(w.sum()), float(b.sum()), float(c.sum()))
"""

# A model rebuilt mid-run (new tensors, new state), explicit style.
_REBUILT = """
import torch
import fluxtrain
from fluxtrain.optimisers import Descent

x, y = torch.randn(6, 3), torch.randn(6, 1)
loss = lambda m, xb, yb: (m(xb) - yb).square().mean()
for attempt in range({attempts}):
    model = torch.nn.Linear(3, 1) if attempt == 0 else torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    state = fluxtrain.setup(Descent({lr}), model)
    for _ in range(3):
        fluxtrain.train_(loss, model, [(x, y)], state)
    print(attempt, float(loss(model, x, y)))
"""


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _cli(old: Path, new: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = compare.main([str(old), str(new)])
    return code, capsys.readouterr().out


def test_two_models_in_turn_are_identical_to_themselves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gan = _write(tmp_path, "gan.py", _GAN.format(change=99, g_lr_late=0.01))
    code, out = _cli(gan, gan, capsys)
    assert code == 0, out
    assert "IDENTICAL: 8 step(s), 2 to 4 parameter(s) per step" in out
    assert "the traced set changes during the run" in out and "stdout IDENTICAL" in out


def test_two_models_in_turn_a_change_shows_at_its_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """G's learning rate changes in round 3 of NEW: step 6 (G's third step) differs."""
    old = _write(tmp_path, "old.py", _GAN.format(change=99, g_lr_late=0.01))
    new = _write(tmp_path, "new.py", _GAN.format(change=3, g_lr_late=0.02))
    code, out = _cli(old, new, capsys)
    assert code == 1, out
    assert "DIVERGED at step 6: 2 of 2 parameter(s) differ" in out
    assert "steps 1..5 are identical" in out


def test_two_models_explicit_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gan = _write(tmp_path, "gan.py", _GAN_EXPLICIT)
    code, out = _cli(gan, gan, capsys)
    assert code == 0, out
    assert "IDENTICAL: 9 step(s), 2 to 4 parameter(s) per step" in out


def test_growing_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _write(tmp_path, "grow.py", _GROWING)
    code, out = _cli(script, script, capsys)
    assert code == 0, out
    assert "IDENTICAL: 6 step(s), 1 to 3 parameter(s) per step" in out
    r = compare.compare_scripts(script, script)
    assert r.old is not None
    assert [len(rec["params"]) for rec in r.old.records] == [1, 1, 2, 2, 3, 3]
    # the same tensor keeps its id: w is the first tensor the tracer saw
    assert [rec["params"][0]["id"] for rec in r.old.records] == [0] * 6


def test_rebuilt_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _write(tmp_path, "rebuilt.py", _REBUILT.format(attempts=2, lr=0.1))
    code, out = _cli(script, script, capsys)
    assert code == 0, out
    assert "IDENTICAL: 6 step(s), 2 to 4 parameter(s) per step" in out
    other = _write(tmp_path, "other.py", _REBUILT.format(attempts=2, lr=0.2))
    code, out = _cli(script, other, capsys)
    assert code == 1 and "DIVERGED at step 1:" in out, out
    shorter = _write(tmp_path, "shorter.py", _REBUILT.format(attempts=1, lr=0.1))
    code, out = _cli(script, shorter, capsys)
    assert code == 1 and "OLD took 6 step(s), NEW took 3; the first 3 are identical" in out, out


def test_per_step_pairing_from_hand_made_records() -> None:
    """No subprocess: the pairing is per step, and a frozen extra is followed by its id."""

    def entry(i: int, sha: str, shape: tuple[int, ...] = (2,)) -> dict:
        return {"id": i, "shape": list(shape), "dtype": "float32", "sha256": sha,
                "sum": 0.0, "abssum": 0.0}

    def rec(*params: dict) -> dict:
        return {"step": 0, "style": "implicit", "loss": None, "params": list(params)}

    # OLD trains a (id 0) then b (id 1) in turn; NEW does the same, and also
    # records a frozen c (id 2) with b.
    old = [rec(entry(0, "a1")), rec(entry(1, "b1")), rec(entry(0, "a2")), rec(entry(1, "b2"))]
    new = [
        rec(entry(0, "a1")),
        rec(entry(1, "b1"), entry(2, "c")),
        rec(entry(0, "a2")),
        rec(entry(1, "b2"), entry(2, "c")),
    ]
    r = compare.compare_traces(old, new)
    assert r.exit_code == 0, r.message
    assert "1 to 2 parameter(s) per step" in r.message and "1 parameter(s) in one trace only" in (
        r.message
    )
    # c moves at step 4 in NEW only: it is compared with its own last record (step 2)
    new[3]["params"][1] = entry(2, "c-moved")
    r = compare.compare_traces(old, new)
    assert r.exit_code == 1 and r.step == 4
    assert "trained in NEW only" in r.diffs[0].note and "since step 2" in r.diffs[0].note
