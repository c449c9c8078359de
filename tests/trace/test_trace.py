"""The FLUXTRAIN_TRACE record format, its sensitivity, and off-by-default."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fluxtrain import trace


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (trace.TRACE_ENV, trace.VALUES_ENV, trace.VALUES_MAX_ENV, trace.MAX_STEPS_ENV):
        monkeypatch.delenv(name, raising=False)
    trace.reset()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_off_by_default_writes_nothing(tmp_path: Path) -> None:
    assert not trace.active()
    before = set(tmp_path.iterdir())
    trace.record_step("explicit", [torch.ones(3)], 1.0)
    assert set(tmp_path.iterdir()) == before


def test_active_follows_the_environment_at_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not trace.active()
    monkeypatch.setenv(trace.TRACE_ENV, str(tmp_path / "t.jsonl"))
    assert trace.active()
    monkeypatch.setenv(trace.TRACE_ENV, "")
    assert not trace.active()
    monkeypatch.delenv(trace.TRACE_ENV)
    assert not trace.active()


def test_record_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    w = torch.tensor([[1.0, -2.0], [3.0, 4.5]])
    b = torch.tensor([0.25], dtype=torch.float64)
    trace.record_step("implicit", [w, b], torch.tensor(0.5))
    trace.record_step("explicit", [w, b], None)
    first, second = _lines(path)
    assert first["step"] == 1 and second["step"] == 2
    assert first["style"] == "implicit" and second["style"] == "explicit"
    assert first["loss"] == 0.5 and second["loss"] is None
    pw, pb = first["params"]
    assert pw["shape"] == [2, 2] and pw["dtype"] == "float32"
    assert pb["shape"] == [1] and pb["dtype"] == "float64"
    assert pw["sum"] == 6.5 and pw["abssum"] == 10.5
    assert pb["sum"] == 0.25
    assert "values" not in pw
    # independent truth: the hash covers the raw little-endian bytes numpy sees
    h = hashlib.sha256()
    h.update(b"torch.float32")
    h.update(repr((2, 2)).encode())
    h.update(w.numpy().astype("<f4").tobytes())
    assert pw["sha256"] == h.hexdigest()


def test_counter_is_per_path_and_one_based(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(a))
    trace.record_step("explicit", [torch.zeros(1)], None)
    trace.record_step("explicit", [torch.zeros(1)], None)
    monkeypatch.setenv(trace.TRACE_ENV, str(b))
    trace.record_step("explicit", [torch.zeros(1)], None)
    assert [r["step"] for r in _lines(a)] == [1, 2]
    assert [r["step"] for r in _lines(b)] == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_one_ulp_changes_the_fingerprint(dtype: torch.dtype) -> None:
    x = torch.linspace(-3, 3, 17, dtype=dtype)
    if dtype in (torch.float32, torch.float64):
        y = x.clone()
        y[5] = torch.nextafter(x[5], torch.tensor(10.0, dtype=dtype))
    else:  # half types have no nextafter: step the stored bits by one
        bits = x.view(torch.int16).clone()
        bits[5] += 1
        y = bits.view(dtype)
    assert (y != x).sum() == 1
    assert not torch.equal(x, y)
    fx, fy = trace.fingerprint(x), trace.fingerprint(y)
    assert fx["sha256"] != fy["sha256"]
    assert trace.fingerprint(x.clone())["sha256"] == fx["sha256"]


def test_shape_and_dtype_are_part_of_the_hash() -> None:
    x = torch.arange(6.0)
    assert trace.fingerprint(x)["sha256"] != trace.fingerprint(x.reshape(2, 3))["sha256"]
    assert (
        trace.fingerprint(torch.zeros(2, dtype=torch.float32))["sha256"]
        != (trace.fingerprint(torch.zeros(1, dtype=torch.float64))["sha256"])
    )


def test_sums_are_float64(tmp_path: Path) -> None:
    x = torch.full((1000,), 0.1, dtype=torch.float32)
    f = trace.fingerprint(x)
    assert f["sum"] == pytest.approx(1000 * float(np.float32(0.1)), rel=1e-15)


def test_values_mode_roundtrips_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    monkeypatch.setenv(trace.VALUES_ENV, "1")
    ps = [
        torch.randn(3, 4),
        torch.randn(5, dtype=torch.float64),
        torch.randn(2, 2).to(torch.bfloat16),
        torch.randn(2, 3).t(),  # not contiguous
    ]
    trace.record_step("explicit", ps, 1.5)
    (rec,) = _lines(path)
    for p, e in zip(ps, rec["params"]):
        back = trace.decode_values(e)
        assert back is not None and back.dtype == torch.float64
        assert torch.equal(back, p.double())


def test_values_mode_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    monkeypatch.setenv(trace.VALUES_ENV, "1")
    monkeypatch.setenv(trace.VALUES_MAX_ENV, "10")
    trace.record_step("explicit", [torch.zeros(10), torch.zeros(11)], None)
    small, big = _lines(path)[0]["params"]
    assert len(base64.b64decode(small["values"])) == 40
    assert "values" not in big and trace.decode_values(big) is None


def test_max_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    monkeypatch.setenv(trace.MAX_STEPS_ENV, "2")
    for _ in range(5):
        trace.record_step("implicit", [torch.zeros(1)], None)
    assert [r["step"] for r in _lines(path)] == [1, 2]


def test_numpy_leaves_and_named_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    a = np.arange(4.0)
    trace.record_step("explicit", {"w": a, "b": torch.ones(1)}, 2)
    (rec,) = _lines(path)
    assert [p["name"] for p in rec["params"]] == ["w", "b"]
    assert rec["params"][0]["sha256"] == trace.fingerprint(torch.from_numpy(a))["sha256"]
    assert rec["params"][0]["dtype"] == "float64" and rec["loss"] == 2.0


def test_nan_parameters_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    trace.record_step("explicit", [torch.tensor([math.nan, 1.0])], math.inf)
    (rec,) = _lines(path)
    assert math.isnan(rec["params"][0]["sum"]) and rec["loss"] == math.inf


def test_bad_style_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trace.TRACE_ENV, str(tmp_path / "t.jsonl"))
    with pytest.raises(ValueError, match="style"):
        trace.record_step("both", [], None)


def test_environment_set_for_a_subprocess(tmp_path: Path) -> None:
    """A child process that sets nothing itself traces because its parent set the variable."""
    path = tmp_path / "child.jsonl"
    code = (
        "import torch\nfrom fluxtrain import trace\n"
        "assert trace.active()\n"
        "trace.record_step('implicit', [torch.ones(2)], 0.0)\n"
    )
    env = {**os.environ, trace.TRACE_ENV: str(path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert _lines(path)[0]["step"] == 1
