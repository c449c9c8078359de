"""Old ExpDecay/InvDecay scripts: the codemod's translation trains bit for bit the same.

An implicit-style script chaining Adam with ExpDecay and InvDecay with Descent is
migrated with the command line tool and both versions are run by ``compare``
(same seed, tracing on, tolerance 0), as users would check it (issue 10,
acceptance 4).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fluxtrain_migrate import compare

OLD = '''\
import torch

import fluxtrain

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
x = torch.randn(64, 3)
y = x.sum(dim=1, keepdim=True)
data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]


def loss(x, y):
    return torch.nn.functional.mse_loss(model(x), y)


ps = fluxtrain.params(model)
opt = fluxtrain.Optimiser(fluxtrain.Adam(0.01), fluxtrain.ExpDecay(1.0, 0.5, 5, 1e-3))
opt2 = fluxtrain.Optimiser(fluxtrain.InvDecay(0.1), fluxtrain.Descent(0.05))
for epoch in range(3):
    fluxtrain.train_(loss, ps, data, opt)
    fluxtrain.train_(loss, ps, data, opt2)
print("loss", loss(x, y).item())
'''


def test_expdecay_invdecay_script_migrates_and_trains_identically(tmp_path: Path) -> None:
    old = tmp_path / "decays.py"
    old.write_text(OLD)
    out = tmp_path / "explicit"
    proc = subprocess.run(
        [sys.executable, "-m", "fluxtrain_migrate", str(old), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    (new,) = list(out.rglob("decays.py"))
    text = new.read_text()
    assert "fluxtrain.optimisers.ExpDecay(1.0, 0.5, 5, 1e-3)" in text
    assert "fluxtrain.optimisers.InvDecay(0.1)" in text
    assert "params(" not in text and "TODO(fluxtrain-migrate" not in text
    r = compare.compare_scripts(old, new, tolerance=0.0, timeout=300)
    report = compare.format_result(r, old, new)
    assert r.exit_code == compare.EXIT_IDENTICAL, report
    assert r.steps_compared == 48, report  # 3 epochs x 2 optimisers x 8 batches
