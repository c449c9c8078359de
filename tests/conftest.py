import pytest
import torch

from fluxtrain.errors import reset_deprecation_sites


@pytest.fixture(autouse=True)
def _fresh_deprecation_sites():
    """Each test sees every deprecation warning afresh (they warn once per call site)."""
    reset_deprecation_sites()
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
