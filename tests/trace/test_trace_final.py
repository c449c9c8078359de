"""Tensor ids in step records, and the final record written at exit (issue 20, item 5)."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fluxtrain_migrate.traces import read_trace

from fluxtrain import trace


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (trace.TRACE_ENV, trace.VALUES_ENV, trace.VALUES_MAX_ENV, trace.MAX_STEPS_ENV):
        monkeypatch.delenv(name, raising=False)
    trace.reset()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ids_follow_tensors_across_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    a, b, c = torch.ones(2), torch.zeros(3), torch.ones(1)
    trace.record_step("implicit", [a, b], None)
    trace.record_step("implicit", [b], None)
    trace.record_step("implicit", [c, a], None)
    ids = [[e["id"] for e in rec["params"]] for rec in _lines(path)]
    assert ids == [[0, 1], [1], [2, 0]]


def test_a_dead_tensors_id_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    for _ in range(3):  # each new tensor may land at the address of the dead one
        trace.record_step("explicit", [torch.ones(4)], None)
        gc.collect()
    ids = [rec["params"][0]["id"] for rec in _lines(path)]
    assert ids == [0, 1, 2]


def test_record_final_names_what_globals_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dataclasses.dataclass
    class Pair:
        first: torch.Tensor
        second: np.ndarray

    import fluxtrain

    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    w = torch.randn(4)
    namespace = {
        "model": model,
        "w": w,
        "alias": w,  # the same tensor once, under its first name
        "data": [(torch.ones(2), torch.tensor([1, 2]))],  # the int tensor is left out
        "cfg": {"scale": np.full(3, 0.5)},
        "pair": Pair(torch.zeros(1), np.zeros(2, dtype=np.float32)),
        "ps": fluxtrain.Params([w]),  # fluxtrain's own objects are not entered
        "n": 3,
        "__doc__": "skipped",
    }
    trace.record_final(namespace)
    (rec,) = _lines(path)
    assert rec["final"] is True and "params" not in rec
    names = [e.get("name") for e in rec["tensors"]]
    assert names == [
        "model.0.weight",
        "model.0.bias",
        "model.1.weight",
        "model.1.bias",
        "model.1.running_mean",
        "model.1.running_var",
        "w",
        "data[0][0]",
        "cfg['scale']",
        "pair.first",
        "pair.second",
    ]
    assert rec["tensors"][6] == {**trace.fingerprint(w), "name": "w"}


def test_record_final_adds_seen_tensors_no_global_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    held = torch.full((2,), 3.0)
    kept = torch.full((3,), 7.0)
    trace.record_step("implicit", [held, torch.ones(5)], None)  # the ones(5) dies at once
    trace.watch([kept])  # keep=True: the tracer holds it
    trace.watch(torch.tensor([1, 2]))  # not floating: ignored
    trace.record_final({"held": held})
    final = _lines(path)[-1]["tensors"]
    assert [(e.get("name"), e.get("id"), e["shape"]) for e in final] == [
        ("held", 0, [2]),
        (None, 2, [3]),
    ]
    del kept
    gc.collect()
    trace.record_final({})
    assert [e["sum"] for e in _lines(path)[-1]["tensors"]] == [6.0, 21.0]  # held, kept


def test_watch_is_a_no_op_when_tracing_is_off(tmp_path: Path) -> None:
    trace.watch([torch.ones(2)])
    assert trace._seen == {}
    trace.record_final({"w": torch.ones(2)})  # off: nothing written anywhere
    assert list(tmp_path.iterdir()) == []


_SCRIPT = """
import torch
import fluxtrain
from fluxtrain import gradient, params

W = torch.ones(2, 3)
gs = gradient(lambda: (W * W).sum(), params(W))
W -= 0.25 * gs[W]
"""


def test_the_final_record_is_written_at_exit(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(_SCRIPT)
    path = tmp_path / "t.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXTRAIN_TRACE")}
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=300)
    assert not path.exists()  # tracing off: no file
    env[trace.TRACE_ENV] = str(path)
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=300)
    contents = read_trace(path)
    assert contents.steps == []  # no train_/update_: no step record
    assert contents.final is not None
    (w,) = contents.final
    assert w["name"] == "W" and w["sum"] == 6 * (1 - 0.25 * 2)


def test_read_trace_keeps_steps_and_final_apart(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        '{"step": 1, "style": "implicit", "loss": null, "params": []}\n'
        '{"final": true, "tensors": [{"name": "w", "shape": [], "dtype": "float32",'
        ' "sha256": "x", "sum": 1.0, "abssum": 1.0}]}\n'
    )
    t = read_trace(p)
    assert [r["step"] for r in t.steps] == [1]
    assert t.final is not None and t.final[0]["name"] == "w"
    p.write_text('{"final": true}\n{"step": 1, "params": []}\n')
    with pytest.raises(ValueError, match="line 1 is a final record"):
        read_trace(p)


def test_record_final_with_awkward_globals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tensor keys are not spelled out; a sparse tensor or a meta tensor is left out."""
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    key = torch.zeros(1000)
    namespace = {
        "velocity": {key: torch.ones(2)},
        "sparse": torch.eye(3).to_sparse(),
        "meta": torch.empty(2, device="meta"),
        "w": torch.ones(1),
    }
    trace.record_final(namespace)
    names = [e["name"] for e in _lines(path)[-1]["tensors"]]
    assert names == ["velocity[<Tensor #0>]", "w"]


def test_no_final_record_from_a_nonzero_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun each rank exits on its own, after its process group is gone."""
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    monkeypatch.setenv("RANK", "1")
    trace.record_final({"w": torch.ones(2)})
    assert not path.exists()
    monkeypatch.setenv("RANK", "0")
    trace.record_final({"w": torch.ones(2)})
    assert [e["name"] for e in _lines(path)[-1]["tensors"]] == ["w"]
