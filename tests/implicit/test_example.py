"""Issue 4 acceptance 5: the old-style example runs unchanged and prints its deprecation warnings."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "linear_regression.py"


def test_linear_regression_example_runs_and_warns():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FLUXTRAIN_TRACE")}
    r = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr
    err = r.stderr
    for construct in ("params(...)", "epochs(n)", "train_(loss, ps, data, opt)"):
        lines = [ln for ln in err.splitlines() if "FluxDeprecationWarning" in ln and construct in ln]
        assert lines, (construct, err)
        assert lines[0].startswith(str(EXAMPLE) + ":"), lines[0]  # points at the script's line
        assert "fluxtrain-migrate" in lines[0]
    assert "[ Info: Epoch 1" in err and "[ Info: Epoch 200" in err
    assert "loss(x_test, y_test) =" in r.stdout
    assert "weight = 4.0" in r.stdout
