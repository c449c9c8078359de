"""The FLUXTRAIN_SEED hook: importing fluxtrain seeds random, numpy and torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fluxtrain import seeding

_DRAW = (
    "import fluxtrain, random, numpy, torch\n"
    "print(random.random(), numpy.random.rand(), torch.rand(1).item())\n"
)


def _draw(seed: str | None) -> str:
    env = dict(os.environ)
    env.pop(seeding.SEED_ENV, None)
    if seed is not None:
        env[seeding.SEED_ENV] = seed
    out = subprocess.run(
        [sys.executable, "-c", _DRAW],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


def test_import_seeds_everything_when_the_variable_is_set() -> None:
    a, b, c = _draw("7"), _draw("7"), _draw("8")
    assert a == b
    assert a != c


def test_same_numbers_as_seeding_by_hand() -> None:
    code = (
        "import random, numpy, torch\n"
        "random.seed(7); numpy.random.seed(7); torch.manual_seed(7)\n"
        "print(random.random(), numpy.random.rand(), torch.rand(1).item())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert _draw("7") == out


def test_unset_means_unseeded() -> None:
    assert _draw(None) != _draw(None)


def test_seed_everything_without_a_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(seeding.SEED_ENV, raising=False)
    assert seeding.seed_everything() is None
    monkeypatch.setenv(seeding.SEED_ENV, "12")
    assert seeding.seed_everything() == 12
    monkeypatch.setenv(seeding.SEED_ENV, "twelve")
    with pytest.raises(ValueError, match="FLUXTRAIN_SEED"):
        seeding.seed_everything()
