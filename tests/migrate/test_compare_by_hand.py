"""compare on scripts that train without fluxtrain's step functions (issue 20, item 5).

``W -= 0.1 * gs[W]`` after an implicit ``gradient`` writes no step record.
compare then says what it could still compare: the two scripts' stdout and
the final values of the tensors (the trace's final record, written at exit),
and names the result of each. Every comparison runs two real subprocesses
through the CLI entry point.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fluxtrain_migrate import compare

# Flux's "Model-Building Basics" page: a gradient, then the update by hand.
_BY_HAND = """
import torch
from fluxtrain import gradient, params

W = torch.rand(2, 5)
b = torch.rand(2)
x, y = torch.rand(5), torch.rand(2)

def loss(x, y):
    return ((y - (W @ x + b)) ** 2).sum()

print(round(float(loss(x, y)), 4))
for _ in range(3):
    gs = gradient(lambda: loss(x, y), params(W, b))
    W -= {lr} * gs[W]
    b -= 0.1 * gs[b]
print({message!r})
"""

# The same training through update_ (traced steps).
_WITH_STEPS = """
import torch
from fluxtrain import gradient, params
from fluxtrain.optimise import Descent, update_

W = torch.rand(2, 5)
b = torch.rand(2)
x, y = torch.rand(5), torch.rand(2)

def loss(x, y):
    return ((y - (W @ x + b)) ** 2).sum()

print(round(float(loss(x, y)), 4))
ps = params(W, b)
for _ in range(3):
    update_(Descent(0.1), ps, gradient(lambda: loss(x, y), ps))
{after}
print('done')
"""


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _cli(old: Path, new: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = compare.main([str(old), str(new)])
    return code, capsys.readouterr().out


def test_by_hand_against_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _write(tmp_path, "basics.py", _BY_HAND.format(lr=0.1, message="done"))
    code, out = _cli(script, script, capsys)
    assert code == 0, out
    # globals W, b, x, y (gs is a Grads: fluxtrain's own object, not entered)
    assert (
        "IDENTICAL: no optimisation steps traced; stdout IDENTICAL; "
        "final values of 4 tensor(s) IDENTICAL"
    ) in out


def test_by_hand_other_learning_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _write(tmp_path, "old.py", _BY_HAND.format(lr=0.1, message="done"))
    new = _write(tmp_path, "new.py", _BY_HAND.format(lr=0.2, message="done"))
    code, out = _cli(old, new, capsys)
    assert code == 1, out
    assert (
        "DIVERGED: no optimisation steps traced; stdout IDENTICAL; "
        "final values: 2 of 4 tensor(s) DIFFER"
    ) in out
    r = compare.compare_scripts(old, new)
    # W steps by another rate; b's gradients follow W from the second step on
    assert [d.label for d in r.diffs] == ["W", "b"]
    assert r.diffs[0].shape == [2, 5] and r.diffs[0].n_differ == 10


def test_by_hand_other_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _write(tmp_path, "old.py", _BY_HAND.format(lr=0.1, message="done"))
    new = _write(tmp_path, "new.py", _BY_HAND.format(lr=0.1, message="finished"))
    code, out = _cli(old, new, capsys)
    assert code == 1, out
    assert "stdout DIFFERS at line 2 (OLD 'done', NEW 'finished')" in out
    assert "final values of 4 tensor(s) IDENTICAL" in out


def test_steps_against_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One script trains through update_, the other by hand, to the same values."""
    old = _write(tmp_path, "old.py", _WITH_STEPS.format(after="del ps"))
    new = _write(tmp_path, "new.py", _BY_HAND.format(lr=0.1, message="done"))
    code, out = _cli(old, new, capsys)
    assert code == 1, out
    assert "OLD took 3 traced step(s), NEW none" in out
    assert "stdout IDENTICAL; final values of 4 tensor(s) IDENTICAL" in out
    code, out = _cli(new, old, capsys)
    assert code == 1 and "NEW took 3 traced step(s), OLD none" in out, out


def test_a_change_after_the_last_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Identical steps, then one script changes a tensor by hand: the final record shows it."""
    old = _write(tmp_path, "old.py", _WITH_STEPS.format(after="pass"))
    new = _write(tmp_path, "new.py", _WITH_STEPS.format(after="b += 1"))
    code, out = _cli(old, new, capsys)
    assert code == 1, out
    assert "DIVERGED after the last step (3): final values: 1 of 4 tensor(s) DIFFER" in out
    code, out = _cli(old, old, capsys)
    assert code == 0, out
    assert "3 step(s), 2 parameter(s), bit for bit; final values of 4 tensor(s) IDENTICAL" in out


def test_only_stdout_to_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A script whose tensors are all local to a function: stdout is all that is left."""
    text = (
        "import torch\nfrom fluxtrain import gradient, params\n"
        "def main():\n"
        "    w = torch.rand(3)\n"
        "    gs = gradient(lambda: (w * w).sum(), params(w))\n"
        "    print([round(v, 4) for v in gs[w].tolist()]{extra})\n"
        "main()\n"
    )
    script = _write(tmp_path, "local.py", text.format(extra=""))
    code, out = _cli(script, script, capsys)
    assert code == 0, out
    assert (
        "IDENTICAL: no optimisation steps traced; stdout IDENTICAL; "
        "final values: no tensor to compare"
    ) in out
    other = _write(tmp_path, "other.py", text.format(extra=", 'x'"))
    code, out = _cli(script, other, capsys)
    assert code == 1 and "DIVERGED: no optimisation steps traced; stdout DIFFERS at line 1" in out


def test_nothing_to_compare_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _write(tmp_path, "noop.py", "import fluxtrain\nn = 3\n")
    code, out = _cli(script, script, capsys)
    assert code == 2, out
    assert "NOT RUNNABLE: nothing to compare: neither script took an optimisation step" in out


def test_max_steps_leaves_the_final_values_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --max-steps the scripts may differ later: final values are not compared."""
    old = _write(tmp_path, "old.py", _WITH_STEPS.format(after="pass"))
    new = _write(tmp_path, "new.py", _WITH_STEPS.format(after="b += 1"))
    code = compare.main([str(old), str(new), "--max-steps", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "final values" not in out.split("IDENTICAL:", 1)[1]


def test_verify_table_rows(tmp_path: Path) -> None:
    """--verify's table says what was compared for these scripts too."""
    import io

    by_hand = _write(tmp_path, "basics.py", _BY_HAND.format(lr=0.1, message="done"))
    steps = _write(tmp_path, "steps.py", _WITH_STEPS.format(after="pass"))
    changed = _write(tmp_path, "changed.py", _WITH_STEPS.format(after="b += 1"))
    out = io.StringIO()
    code = compare.verify_pairs([(by_hand, by_hand), (steps, changed)], stream=out, details=False)
    assert code == compare.EXIT_DIVERGED
    rows = out.getvalue().splitlines()
    assert rows[1].startswith(str(by_hand))
    assert rows[1].endswith("no traced steps; stdout and final values of 4 tensor(s) equal")
    assert rows[2].startswith(str(steps)) and rows[2].endswith("diverged after the last step")
