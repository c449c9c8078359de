"""Data-parallel training over 2 gloo processes on 127.0.0.1 (issue 8, acceptance 1 and 2).

Both ranks run every scenario of dist_worker.py once (one launch for the whole
module, bounded by a timeout); the results are compared here (a) with each
other, bit for bit, and (b) with single-process training on the concatenated
global batches, computed in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import distcommon as C  # noqa: E402

import fluxtrain  # noqa: E402
from fluxtrain import distributed as D  # noqa: E402
from fluxtrain import optimisers as O  # noqa: E402

WORLD = 2
TIMEOUT_S = 80

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("FLUXTRAIN_TRACE", None)
    procs = []
    logs = []
    for r in range(WORLD):
        log = open(out / f"rank{r}.log", "w")  # noqa: SIM115
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.join(HERE, "dist_worker.py"), str(r), str(WORLD),
                 str(port), str(out / f"rank{r}.pt")],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        )
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the 2-process run did not finish in time:\n" + _logs(out))
    finally:
        for log in logs:
            log.close()
    if any(p.returncode != 0 for p in procs):
        pytest.fail(f"a rank failed (exit codes {[p.returncode for p in procs]}):\n" + _logs(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _logs(out) -> str:
    return "\n".join(
        f"--- rank {r}\n" + (out / f"rank{r}.log").read_text()[-3000:] for r in range(WORLD)
    )


def _ok(results, name):
    outs = []
    for r, res in enumerate(results):
        entry = res[name]
        if "error" in entry:
            pytest.fail(f"scenario {name} failed on rank {r}:\n{entry['error']}")
        outs.append(entry["ok"])
    return outs


def _assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        diff = (x - y).abs().max()
        assert torch.equal(x, y), f"parameter {i} differs between ranks: max diff {diff}"


def _assert_close_rel(got, want, rtol=1e-6):
    for i, (x, y) in enumerate(zip(got, want)):
        err = ((x - y).norm() / y.norm()).item()
        assert err <= rtol, f"parameter {i}: relative error {err:.3g} > {rtol}"


def _trained_moved(params):
    start = [p.detach() for p in fluxtrain.trainables(C.make_model())]
    assert any(not torch.equal(a, b) for a, b in zip(params, start)), "training changed nothing"


# ---------------------------------------------------------------------------- references
def reference_explicit():
    model = C.make_model()
    st = O.setup(O.Adam(C.ETA), model)
    for x, y in C.global_batches(WORLD):
        g = fluxtrain.gradient(C.loss, model, x, y)[0]
        fluxtrain.update_(st, model, g)
    return [p.detach().clone() for p in fluxtrain.trainables(model)]


def reference_torch_adam():
    """Independent truth: torch.optim.Adam (same formula as Optimisers.jl's Adam) on the
    global batches."""
    model = C.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=C.ETA, betas=(0.9, 0.999), eps=1e-8)
    for x, y in C.global_batches(WORLD):
        opt.zero_grad()
        C.loss(model, x, y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def reference_implicit():
    model = C.make_model()
    opt = fluxtrain.optimise.Adam(C.ETA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = fluxtrain.params(model)
        for x, y in C.global_batches(WORLD):
            gs = fluxtrain.gradient(lambda x=x, y=y: C.loss(model, x, y), ps)
            fluxtrain.update_(opt, ps, gs)
    return [p.detach().clone() for p in fluxtrain.trainables(model)]


def test_reference_agrees_with_torch_adam():
    """The single-process reference itself is checked against torch.optim.Adam."""
    _assert_close_rel(reference_explicit(), reference_torch_adam(), rtol=1e-5)


# ---------------------------------------------------------------------------- basics
def test_single_process_is_not_distributed():
    assert not D.is_distributed()
    assert D.is_rank0()
    assert D.world_size() == 1 and D.rank() == 0
    g = [torch.ones(2), None]
    D.average_gradients(g)
    assert g[0].tolist() == [1.0, 1.0]


def test_ranks_see_the_group(results):
    assert [r["is_distributed"] for r in results] == [True, True]
    assert [r["rank0"] for r in results] == [True, False]


def test_is_ddp_and_unwrap():
    lin = torch.nn.Linear(2, 1)
    assert not D.is_ddp(lin) and D.unwrap(lin) is lin


# ---------------------------------------------------------------------------- hand-written loops
@pytest.mark.parametrize("name,ref", [("hand_explicit", reference_explicit),
                                      ("hand_implicit", reference_implicit)])
def test_hand_loop_identical_ranks_and_matches_single_process(results, name, ref):
    a, b = _ok(results, name)
    _assert_bitwise_equal(a, b)
    _trained_moved(a)
    _assert_close_rel(a, ref())


def test_none_gradient_on_one_rank_counts_as_zero(results):
    r0, r1 = _ok(results, "none_pattern")
    assert r0["had_none"] is False and r1["had_none"] is True
    # single process on the two ranks' mean loss: d/da = (2a + 2)/2, d/db = 3/2
    a0 = torch.tensor([1.0, -2.0])
    want_a = a0 - 0.1 * (2 * a0 + 2.0) / 2
    want_b = torch.tensor([0.5, 3.0]) - 0.1 * 1.5
    for r in (r0, r1):
        torch.testing.assert_close(r["a"], want_a, rtol=0, atol=1e-7)
        torch.testing.assert_close(r["b"], want_b, rtol=0, atol=1e-7)
        assert r["error"] is not None and "None on some ranks" in r["error"]


def test_none_submodule_on_one_rank(results):
    r0, r1 = _ok(results, "none_module")
    assert r0["sub_none"] is False and r1["sub_none"] is True
    m = C.TwoHeads()
    g = fluxtrain.gradient(lambda m: (C.heads_loss(m, 0) + C.heads_loss(m, 1)) / 2, m)[0]
    st = O.setup(O.Descent(0.1), m)
    fluxtrain.update_(st, m, g)
    want = [p.detach() for p in fluxtrain.trainables(m)]
    for r in (r0, r1):
        _assert_bitwise_equal(r["explicit"], r0["explicit"])
        _assert_close_rel(r["explicit"], want)
        _assert_close_rel(r["implicit"], want)


def test_expanded_gradients_are_averaged_as_copies(results):
    for r in _ok(results, "expanded"):
        assert r["was_expanded"]
        for key in ("tree", "tree_nomodel", "grads", "list"):
            assert torch.equal(r[key], torch.full((3,), 1.5)), key
        assert "not contiguous" in r["tuple_error"]


def test_nonfinite_loss_on_one_rank_stops_all(results):
    r0, r1 = _ok(results, "nonfinite_loss")
    assert r1["error"] == "Loss is NaN on data item 3 (rank 1), stopping training"
    assert r0["error"] == ("Loss is not finite on data item 3 on rank(s) [1], stopping "
                           "training on every rank")
    for r in (r0, r1):  # the group is still usable afterwards
        assert torch.equal(r["after"], torch.full((2,), 0.5))


def test_buckets_and_values(results):
    r0, r1 = _ok(results, "buckets")
    # float32 and float64 groups: one bucket each with the default 25 MB cap, plus the flags
    assert r0["calls_default"] == r1["calls_default"] == 1 + 2
    # 4 tensors of 4000 bytes, cap 6000 bytes: 4 buckets (+ flags)
    assert r0["calls_small"] == 1 + 4
    for r in (r0, r1):
        xs = r["xs"]
        assert torch.equal(xs[0], torch.full((1000,), 1.5))
        assert torch.equal(xs[1], torch.full((10,), 1.0, dtype=torch.float64))
        assert torch.equal(xs[2], torch.full((3, 4), 0.5))
        assert torch.equal(xs[3], torch.full((5,), -0.5, dtype=torch.float64))
        for y in r["ys"]:
            assert torch.equal(y, torch.full((1000,), 1.5))


def test_ddp_backward_is_not_averaged_twice(results):
    r0, r1 = _ok(results, "ddp_backward")
    assert r0["fluxtrain_all_reduces"] == r1["fluxtrain_all_reduces"] == 0
    _assert_bitwise_equal(r0["params"], r1["params"])
    _assert_close_rel(r0["params"], reference_explicit())


def test_checkpoint_of_ddp_model_uses_inner_paths(results):
    for r in _ok(results, "ckpt_ddp"):
        assert r["paths"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert r["ddp_keys"] == ["module"] and r["equal"] and r["plain_equal"]


# ---------------------------------------------------------------------------- train_
def test_train_explicit(results):
    a, b = _ok(results, "train_explicit")
    _assert_bitwise_equal(a, b)
    _assert_close_rel(a, reference_explicit())


def test_train_implicit(results):
    a, b = _ok(results, "train_implicit")
    _assert_bitwise_equal(a, b)
    _assert_close_rel(a, reference_implicit())


def test_train_ddp_module(results):
    a, b = _ok(results, "train_ddp")
    _assert_bitwise_equal(a, b)
    _assert_close_rel(a, reference_explicit())


def test_progress_bar_from_rank0_only(results):
    r0, r1 = _ok(results, "rank0_only")
    assert r0["progress"] is True and r1["progress"] is False


def test_deprecation_warnings_from_rank0_only(results):
    r0, r1 = _ok(results, "rank0_only")
    assert r0["warned"] is True and r1["warned"] is False
