import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# make tests/explicit/explicitutil.py importable as `explicitutil`
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """These tests use tiny tensors: one intra-op thread avoids OpenMP contention
    (on a loaded 2-core machine the 200-step MLP test took 40 s with 2 threads, 0.6 s with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
