"""The README's tour and docs/pytorch.md are run here, so they cannot go stale.

README: every ``python`` block of "A short tour" (up to "Migrating"), in order, in one
namespace (later blocks use the tour's model and data). docs/pytorch.md: its first two
blocks (imports and model; the DataLoader) are a prelude; each block runs after them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run(code: str, ns: dict, where: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(compile(code, where, "exec"), ns)  # noqa: S102


def test_readme_tour_runs():
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A short tour"):text.index("### Migrating")]
    blocks = python_blocks(tour)
    assert len(blocks) >= 3
    assert "DataLoader(TensorDataset(" in blocks[0]   # acceptance: the tour trains on one
    torch.manual_seed(0)
    ns: dict = {}
    for i, code in enumerate(blocks):
        run(code, ns, f"README.md tour block {i}")
    assert isinstance(ns["data"], torch.utils.data.DataLoader)


PYTORCH_MD_TEXT = (ROOT / "docs" / "pytorch.md").read_text()
PYTORCH_MD = python_blocks(PYTORCH_MD_TEXT)


def _heading(i: int) -> str:
    """The heading above block i, as a test id."""
    at = 0
    for _ in range(i + 1):
        at = PYTORCH_MD_TEXT.index("```python\n", at) + 1
    head = re.findall(r"^#+ (.*)$", PYTORCH_MD_TEXT[:at], flags=re.M)[-1]
    return re.sub(r"[^A-Za-z0-9]+", "-", head).strip("-")


@pytest.mark.parametrize("i", [pytest.param(i, id=f"{i}-{_heading(i)}")
                               for i in range(2, len(PYTORCH_MD))])
def test_pytorch_md_block_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for j in (0, 1):
        run(PYTORCH_MD[j], ns, f"docs/pytorch.md block {j}")
    if "torch.compile" in PYTORCH_MD[i]:
        torch._dynamo.reset()
    run(PYTORCH_MD[i], ns, f"docs/pytorch.md block {i}")


def test_pytorch_md_states_the_three_rules():
    text = (ROOT / "docs" / "pytorch.md").read_text()
    for phrase in ["tuple or a list", "passed whole", "Mapping", "float32", "opmath",
                   "parameter's dtype", "requires_grad=False", "plain tensor"]:
        assert phrase in text, phrase
