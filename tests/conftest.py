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


@pytest.fixture(params=["python-reads", "tensormeta", "tensormeta-threaded"])
def tensor_reads(request, monkeypatch):
    """Run a test with the fused step's per-step checks read from Python, then with the
    C++ bulk reads (``fluxtrain.core.tensormeta``; skipped where it cannot be built), then
    with the C++ reads of lists of 4 tensors or more on several threads (by default only
    lists of 512 or more are; skipped where it is built without OpenMP)."""
    from fluxtrain.core import tensormeta

    if request.param == "python-reads":
        monkeypatch.setattr(tensormeta, "module", lambda wait=False: None)
        yield request.param
        return
    meta = tensormeta.module(wait=True)
    if meta is None:
        pytest.skip(f"tensormeta unavailable: {tensormeta.why_unavailable()}")
    if request.param == "tensormeta":
        yield request.param
        return
    was = meta.parallel_threshold()
    if was == 0:
        pytest.skip("tensormeta built without OpenMP: no reads on several threads")
    meta.parallel_threshold(4)
    try:
        yield request.param
    finally:
        meta.parallel_threshold(was)
