"""Implicit train_ with callbacks, stop/skip, NaN stop, epochs, throttle (reference §4, A15, A16, A21)."""

import logging
import warnings

import pytest
import torch

import fluxtrain
from fluxtrain import optimise as old
from fluxtrain.implicit import callbacks


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
        yield


F64 = torch.float64


# ---------------------------------------------------------------------------- train_
def test_train_splats_tuples_and_updates_in_order():
    w = torch.zeros(1, dtype=F64)
    seen = []

    def loss(*args):
        seen.append(args)
        return (w * sum(a for a in args)).sum()

    fluxtrain.train_(loss, fluxtrain.params(w), [(1.0, 2.0), 3.0], old.Descent(0.1), progress=False)
    assert seen == [(1.0, 2.0), (3.0,)]
    assert w.tolist() == pytest.approx([-0.6])


def test_train_A15e_non_tuple_item_is_passed_whole():
    r = torch.rand(3, 3, dtype=F64)
    r0 = r.clone()
    fluxtrain.train_(
        lambda x: (x * x).sum(), fluxtrain.params(r), (r,), old.Descent(), progress=False
    )
    assert torch.allclose(r, 0.8 * r0)


def test_nan_stops_before_update_A16():
    m = torch.nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.zero_()
    calls = []

    def loss(i):
        calls.append(i)
        return (float("nan") if i == 51 else 1.0) * m(torch.tensor([1.0])).sum()

    with pytest.raises(
        fluxtrain.DomainError, match=r"Loss is NaN on data item 51, stopping training"
    ):
        fluxtrain.train_(loss, fluxtrain.params(m), range(1, 101), old.Descent(0.1), progress=False)
    assert len(calls) == 51
    assert m.weight.item() == pytest.approx(-5.0, abs=1e-5)


def test_cb_single_and_list_called_after_update():
    w = torch.zeros(1, dtype=F64)
    log = []
    fluxtrain.train_(
        lambda: w.sum(),
        fluxtrain.params(w),
        [(), ()],
        old.Descent(1.0),
        cb=[lambda: log.append(("a", w.item())), lambda: log.append(("b", w.item()))],
        progress=False,
    )
    assert log == [("a", -1.0), ("b", -1.0), ("a", -2.0), ("b", -2.0)]
    n = []
    fluxtrain.train_(
        lambda: w.sum(),
        fluxtrain.params(w),
        [(), ()],
        old.Descent(1.0),
        cb=lambda: n.append(1),
        progress=False,
    )
    assert n == [1, 1]
    with pytest.raises(TypeError, match="cb"):
        fluxtrain.train_(
            lambda: w.sum(), fluxtrain.params(w), [()], old.Descent(), cb=3, progress=False
        )


def test_skip_in_loss_A15a_b():
    i = 0

    def loss():
        nonlocal i
        fluxtrain.skip()
        i += 1

    fluxtrain.train_(loss, fluxtrain.Params([]), [()] * 10, old.Descent(), progress=False)
    assert i == 0

    i = 0
    w = torch.zeros(1, dtype=F64)

    def loss2():
        nonlocal i
        if i == 8:
            fluxtrain.skip()
        i += 1
        return w.sum()

    fluxtrain.train_(loss2, fluxtrain.params(w), [()] * 10, old.Descent(1.0), progress=False)
    assert i == 8
    assert w.item() == -8.0  # skipped items did not update


def test_stop_in_callback_on_accuracy_condition():
    """Seed: cb = function () accuracy() > 0.9 && Flux.stop() end."""
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).float()
    model = torch.nn.Linear(2, 1)

    def loss(xb, yb):
        return torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(1), yb)

    def accuracy():
        with torch.no_grad():
            return ((model(x).squeeze(1) > 0).float() == y).float().mean().item()

    steps = []

    def cb():
        steps.append(1)
        if accuracy() > 0.9:
            fluxtrain.stop()

    fluxtrain.train_(
        loss, fluxtrain.params(model), [(x, y)] * 1000, old.Adam(0.1), cb=cb, progress=False
    )
    assert accuracy() > 0.9
    assert len(steps) < 1000


def test_stop_in_loss_aborts_before_update():
    w = torch.zeros(1, dtype=F64)

    def loss(i):
        if i == 3:
            fluxtrain.stop()
        return w.sum()

    fluxtrain.train_(loss, fluxtrain.params(w), range(10), old.Descent(1.0), progress=False)
    assert w.item() == -3.0


def test_stop_outside_train_propagates():
    with pytest.raises(callbacks.StopException):
        fluxtrain.stop()
    with pytest.raises(callbacks.SkipException):
        fluxtrain.skip()


def test_train_with_throttled_callback_A15c(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(callbacks, "_now", lambda: clock[0])
    monkeypatch.setattr(callbacks, "_schedule", lambda delay, fn: None)
    i = 0

    def loss():
        nonlocal i
        clock[0] += 0.1  # each item takes 0.1 s
        i += 1
        return torch.tensor(1.0)

    fluxtrain.train_(
        loss,
        fluxtrain.Params([]),
        [()] * 100,
        old.Descent(),
        cb=fluxtrain.throttle(lambda: i > 3 and fluxtrain.stop(), 1),
        progress=False,
    )
    assert 3 < i < 50


def test_progress_bar_runs():
    w = torch.zeros(1, dtype=F64)
    fluxtrain.train_(lambda: w.sum(), fluxtrain.params(w), [()] * 3, old.Descent(), progress=True)
    assert w.item() == pytest.approx(-0.3)


# ---------------------------------------------------------------------------- epochs
def test_epochs_logs_epoch_lines(capsys):
    out = []
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a plain script: nothing configured
    try:
        for e in fluxtrain.epochs(2):
            out.append(e)
    finally:
        root.handlers[:] = saved
    assert out == [1, 2]
    err = capsys.readouterr().err
    assert "[ Info: Epoch 1\n[ Info: Epoch 2\n" in err


def test_epochs_goes_to_configured_logging(caplog):
    with caplog.at_level(logging.INFO, logger="fluxtrain.epochs"):
        assert list(fluxtrain.epochs(3)) == [1, 2, 3]
    assert [r.getMessage() for r in caplog.records] == ["Epoch 1", "Epoch 2", "Epoch 3"]
    with pytest.raises(TypeError, match="whole number"):
        fluxtrain.epochs(2.5)


# ---------------------------------------------------------------------------- throttle
class FakeClock:
    def __init__(self, monkeypatch):
        self.t = 0.0
        self.timers = []
        monkeypatch.setattr(callbacks, "_now", lambda: self.t)
        monkeypatch.setattr(
            callbacks, "_schedule", lambda delay, fn: self.timers.append((self.t + delay, fn))
        )

    def sleep(self, dt):
        """Advance time, firing due timers as the timer thread would."""
        end = self.t + dt
        while True:
            due = sorted((when, fn) for when, fn in self.timers if when <= end)
            if not due:
                break
            when, fn = due[0]
            self.timers.remove((when, fn))
            self.t = max(self.t, when)
            fn()
        self.t = end


def test_throttle_doc_example_prints_twice(monkeypatch):
    clock = FakeClock(monkeypatch)
    printed = []
    a = fluxtrain.throttle(lambda: printed.append("Flux"), 2)
    for _ in range(4):
        a()
        clock.sleep(1)
    assert printed == ["Flux", "Flux"]


def test_throttle_default_three_quick_calls(monkeypatch):
    clock = FakeClock(monkeypatch)
    n = []
    f = fluxtrain.throttle(lambda: n.append(1), 1)
    f(), f(), f()
    clock.sleep(1.01)
    assert len(n) == 1


def test_throttle_leading(monkeypatch):
    clock = FakeClock(monkeypatch)
    n = []
    f = fluxtrain.throttle(lambda: n.append(1) or len(n), 1, leading=True, trailing=False)
    assert f() == 1
    assert f() == 1 and len(n) == 1
    clock.sleep(1.01)
    assert f() == 2


def test_throttle_trailing_only(monkeypatch):
    clock = FakeClock(monkeypatch)
    n = []
    f = fluxtrain.throttle(lambda: n.append(1), 1, leading=False, trailing=True)
    f(), f()
    assert len(n) == 0
    clock.sleep(1.01)
    assert len(n) == 1


def test_throttle_leading_and_trailing_records_arguments(monkeypatch):
    clock = FakeClock(monkeypatch)
    seen = []
    f = fluxtrain.throttle(lambda x: seen.append(x) or x, 1, leading=True, trailing=True)
    assert f(1) == 1 and seen == [1]
    f(2), f(3)
    assert seen == [1]
    clock.sleep(1.01)
    assert seen == [1, 3]
    assert f(4) == 3  # still cooling down after the trailing call: remembered, returns last result
    clock.sleep(1.01)
    assert seen == [1, 3, 4]


def test_throttle_leading_false_deferred_call_does_not_set_result(monkeypatch):
    clock = FakeClock(monkeypatch)
    f = fluxtrain.throttle(lambda: 42, 1, leading=False, trailing=False)
    assert f() is None
    clock.sleep(1.01)
    assert f() is None


def test_throttle_real_timer_is_daemon():
    import threading
    import time

    hits = []
    f = fluxtrain.throttle(lambda: hits.append(1), 0.05, leading=False, trailing=True)
    f()
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    assert timers and all(t.daemon for t in timers)
    deadline = time.monotonic() + 2
    while not hits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hits == [1]
