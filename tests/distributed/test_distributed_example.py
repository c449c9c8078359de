"""The distributed example runs under torchrun with 2 CPU processes (gloo), ranks kept equal.

Marked slow (about 10-25 s: torchrun plus two fresh interpreters); the
2-process behaviour itself is covered quickly by test_distributed.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [ROOT / "examples" / "distributed_mlp.py",
              ROOT / "examples" / "distributed" / "distributed_mlp.py"]


def _example() -> Path:
    for p in CANDIDATES:
        if p.exists():
            return p
    pytest.fail(f"the distributed example is missing (looked for {CANDIDATES})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_example_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(_example()),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FLUXTRAIN_TRACE", None)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "world size 2" in out
    assert "parameters identical on all ranks: True" in out
    assert out.count("epoch 4:") == 1  # printed by rank 0 only
    assert (tmp_path / "distributed_mlp.pt").exists()
