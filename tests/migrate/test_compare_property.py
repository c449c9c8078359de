"""Property: ``compare X.py X.py`` is IDENTICAL for every example and corpus script.

Issue 20, item 5 (and DESIGN.md, "Migration invariant"). The scripts are
found at test time: ``examples/*.py``, ``examples/explicit/*.py`` and
``tests/corpus/*.py``. Each comparison runs the script twice through the CLI
entry point (two subprocesses), which takes 10-40 s per script on a small
machine, so the whole property is marked slow; one small script runs in the
default (fast) test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fluxtrain_migrate import compare

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    [
        *ROOT.glob("examples/*.py"),
        *ROOT.glob("examples/explicit/*.py"),
        *ROOT.glob("tests/corpus/*.py"),
    ]
)
FAST = ROOT / "examples" / "linear_regression.py"


def _check(script: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = compare.main([str(script), str(script), "--timeout", "300"])
    out = capsys.readouterr().out
    assert code == compare.EXIT_IDENTICAL, out
    verdict = out.split("IDENTICAL:", 1)[1]
    # the verdict names what it compared: the traced steps, or (no steps) stdout
    assert " step(s)" in verdict or "stdout IDENTICAL" in verdict, out


def test_there_are_scripts_to_check() -> None:
    assert FAST in SCRIPTS
    assert len([p for p in SCRIPTS if p.parent.name == "examples"]) >= 8


def test_compare_x_x_fast(capsys: pytest.CaptureFixture[str]) -> None:
    _check(FAST, capsys)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script", [p for p in SCRIPTS if p != FAST], ids=lambda p: str(p.relative_to(ROOT))
)
def test_compare_x_x_is_identical(script: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check(script, capsys)
