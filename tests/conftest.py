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


@pytest.fixture(params=["python-reads", "tensormeta"])
def tensor_reads(request, monkeypatch):
    """Run a test with the fused step's per-step checks read from Python, then with the
    C++ bulk reads (``fluxtrain.core.tensormeta``; skipped where it cannot be built)."""
    from fluxtrain.core import tensormeta

    if request.param == "tensormeta":
        if tensormeta.module(wait=True) is None:
            pytest.skip(f"tensormeta unavailable: {tensormeta.why_unavailable()}")
    else:
        monkeypatch.setattr(tensormeta, "module", lambda wait=False: None)
    return request.param
