"""The FLUXTRAIN_SEED hook: importing fluxtrain seeds random, numpy and torch."""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from fluxtrain import seeding

# Draw after `import fluxtrain`, then seed by hand with 7 and draw again.
_DRAW = (
    "import fluxtrain, random, numpy, torch\n"
    "def draw():\n"
    "    return (random.random(), numpy.random.rand(), torch.rand(1).item())\n"
    "a = draw()\n"
    "random.seed(7); numpy.random.seed(7); torch.manual_seed(7)\n"
    "print(a == draw(), a)\n"
)


def _draw(seed: str) -> tuple[str, str]:
    env = dict(os.environ)
    env[seeding.SEED_ENV] = seed
    out = subprocess.run(
        [sys.executable, "-c", _DRAW],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split(" ", 1)
    return out[0], out[1]


def test_import_seeds_everything_when_the_variable_is_set() -> None:
    same_as_by_hand, draw7 = _draw("7")
    assert same_as_by_hand == "True"
    same_as_by_hand, draw8 = _draw("8")
    assert same_as_by_hand == "False" and draw8 != draw7


def test_unset_means_no_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(seeding.SEED_ENV, raising=False)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    importlib.reload(seeding)  # runs the import-time hook again
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


def test_seed_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(seeding.SEED_ENV, raising=False)
    assert seeding.seed_everything() is None
    monkeypatch.setenv(seeding.SEED_ENV, "12")
    assert seeding.seed_everything() == 12
    a = (random.random(), float(np.random.rand()), torch.rand(1).item())
    assert seeding.seed_everything(12) == 12
    assert a == (random.random(), float(np.random.rand()), torch.rand(1).item())
    monkeypatch.setenv(seeding.SEED_ENV, "twelve")
    with pytest.raises(ValueError, match="FLUXTRAIN_SEED"):
        seeding.seed_everything()
