"""fluxtrain-migrate compare on small scripts that write their trace by hand.

These tests need only ``fluxtrain.trace`` (not the training APIs): each script
takes its "optimisation steps" itself and records them with ``record_step``,
exactly as ``train_``/``update_`` do, so the expected verdicts are known.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
import torch
from fluxtrain_migrate import compare

from fluxtrain import trace

# A step: w <- w - lr * w (lr may change at a given step), b <- b + 0.5.
_TEMPLATE = """
import sys
import torch
import fluxtrain
from fluxtrain import trace

STYLE = {style!r}
w = torch.randn(3, 4)
b = torch.zeros(4)
for k in range(1, {steps} + 1):
    lr = 0.1 if k < {change_at} else {lr_after}
    w -= lr * w
    b += 0.5
    {extra}
    if trace.active():
        trace.record_step(STYLE, [w, b], float((w * w).sum()))
print("trained", {steps}, "steps")
"""


def _script(
    tmp: Path,
    name: str,
    style: str = "implicit",
    steps: int = 6,
    change_at: int = 10**9,
    lr_after: float = 0.1,
    extra: str = "pass",
) -> Path:
    p = tmp / name
    p.write_text(
        _TEMPLATE.format(
            style=style, steps=steps, change_at=change_at, lr_after=lr_after, extra=extra
        )
    )
    return p


def _trace(
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    style: str = "implicit",
    steps: int = 6,
    change_at: int = 10**9,
    lr_after: float = 0.1,
    nudge_at: int | None = None,
    train_b: bool = True,
) -> list[dict]:
    """The same training as _TEMPLATE, traced in this process (no subprocess: fast)."""
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    monkeypatch.setenv(trace.VALUES_ENV, "1")
    trace.reset()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g)
    b = torch.zeros(4)
    for k in range(1, steps + 1):
        lr = 0.1 if k < change_at else lr_after
        w -= lr * w
        if train_b:
            b += 0.5
        if k == nudge_at:
            w[1, 2] = torch.nextafter(w[1, 2], torch.tensor(1e9))
        trace.record_step(style, [w, b], float((w * w).sum()))
    monkeypatch.delenv(trace.TRACE_ENV)
    return compare.load_trace(path)


def test_identical_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _script(tmp_path, "old.py", "implicit")
    new = _script(tmp_path, "new.py", "explicit")
    assert compare.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "IDENTICAL" in out and "6 step(s)" in out and "bit for bit" in out


def test_same_seed_means_same_initial_weights(tmp_path: Path) -> None:
    """Without the seed hook the two torch.randn calls would differ: this proves it is on."""
    old = _script(tmp_path, "old.py")
    r = compare.compare_scripts(old, old)
    assert r.exit_code == 0
    assert r.old is not None and r.new is not None
    assert r.old.records[0]["params"][0]["sha256"] == r.new.records[0]["params"][0]["sha256"]
    (r2,) = compare.run_traced([old], seed=1)
    assert r2.records[0]["params"][0]["sha256"] != r.old.records[0]["params"][0]["sha256"]


def test_one_ulp_divergence_at_the_right_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _trace(tmp_path / "old.jsonl", monkeypatch)
    new = _trace(tmp_path / "new.jsonl", monkeypatch, style="explicit", nudge_at=4)
    r = compare.compare_traces(old, new)
    assert r.exit_code == compare.EXIT_DIVERGED
    assert r.step == 4 and r.steps_compared == 3
    (d,) = r.diffs
    assert d.label == "#0" and d.shape == [3, 4] and d.dtype == "float32"
    assert d.n_differ == 1
    w4 = trace.decode_values(old[3]["params"][0])
    assert w4 is not None
    ulp = float(torch.nextafter(w4[1, 2].float(), torch.tensor(1e9)) - w4[1, 2].float())
    assert d.max_abs == ulp
    assert d.max_rel == pytest.approx(ulp / abs(float(w4[1, 2])), rel=1e-6)


def test_divergence_measures_the_difference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _trace(tmp_path / "old.jsonl", monkeypatch)
    new = _trace(tmp_path / "new.jsonl", monkeypatch, change_at=3, lr_after=0.2)
    r = compare.compare_traces(old, new)
    assert r.exit_code == 1 and r.step == 3
    assert r.message == "at step 3: 1 of 2 parameter(s) differ; the loss differs" + (
        f" (OLD {r.loss_old!r}, NEW {r.loss_new!r})"
    )
    (d,) = r.diffs
    # independent truth: recompute step 3 of both from the recorded step-2 weights
    w2 = trace.decode_values(old[1]["params"][0])
    assert w2 is not None
    w_old = (w2.float() - 0.1 * w2.float()).double()
    w_new = (w2.float() - 0.2 * w2.float()).double()
    assert d.max_abs == pytest.approx(float((w_old - w_new).abs().max()), rel=1e-12)
    rel = ((w_old - w_new).abs() / torch.maximum(w_old.abs(), w_new.abs())).max()
    assert d.max_rel == pytest.approx(float(rel), rel=1e-12)
    assert d.n_differ == 12 and d.numel == 12
    assert d.sum_old == pytest.approx(float(w_old.sum()), rel=1e-12)
    text = compare.format_result(r, "old.py", "new.py")
    assert "DIVERGED at step 3" in text and "steps 1..2 are identical" in text
    assert "12/12" in text


def test_without_values_the_sums_still_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _trace(tmp_path / "old.jsonl", monkeypatch)
    new = _trace(tmp_path / "new.jsonl", monkeypatch, change_at=3, lr_after=0.2)
    for rec in old + new:
        for e in rec["params"]:
            del e["values"]
    r = compare.compare_traces(old, new)
    assert r.exit_code == 1 and r.step == 3
    (d,) = r.diffs
    assert d.max_abs is None and d.sum_old != d.sum_new
    assert "-" in compare.format_result(r, "o", "n")


def test_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _trace(tmp_path / "old.jsonl", monkeypatch)
    new = _trace(tmp_path / "new.jsonl", monkeypatch, change_at=3, lr_after=0.1 + 1e-6)
    assert compare.compare_traces(old, new).exit_code == 1
    assert compare.compare_traces(old, new, tolerance=1e-4).exit_code == 0
    assert compare.compare_traces(old, new, tolerance=1e-9).exit_code == 1


def test_max_steps_limits_the_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _trace(tmp_path / "old.jsonl", monkeypatch)
    new = _trace(tmp_path / "new.jsonl", monkeypatch, change_at=5, lr_after=0.3)
    assert compare.compare_traces(old, new, max_steps=4).exit_code == 0
    r = compare.compare_traces(old, new, max_steps=5)
    assert r.exit_code == 1 and r.step == 5


def test_different_number_of_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _trace(tmp_path / "old.jsonl", monkeypatch, steps=6)
    new = _trace(tmp_path / "new.jsonl", monkeypatch, steps=4)
    r = compare.compare_traces(old, new)
    assert r.exit_code == 1 and r.step == 5
    assert "OLD took 6 step(s), NEW took 4" in r.message
    assert compare.compare_traces(old, []).exit_code == 2


def test_script_arguments_are_passed(tmp_path: Path) -> None:
    """Both scripts need an argument (else they crash): identical means both got it."""
    extra = "b += float(sys.argv[1])"
    old = _script(tmp_path, "old.py", extra=extra)
    new = _script(tmp_path, "new.py", "explicit", extra=extra)
    r = compare.compare_scripts(old, new, ["0.25"])
    assert r.exit_code == 0, r.message
    assert r.old is not None and r.old.records[0]["params"][1]["sum"] == 4 * (0.5 + 0.25)


def test_crash_is_exit_2_with_stderr_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _script(tmp_path, "old.py")
    new = _script(tmp_path, "new.py", extra="if k == 3: raise RuntimeError('boom at step 3')")
    assert compare.main([str(old), str(new)]) == 2
    out = capsys.readouterr().out
    assert "NOT RUNNABLE" in out and "failed with exit status 1" in out
    assert "RuntimeError: boom at step 3" in out


def test_never_trains_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _script(tmp_path, "old.py")
    new = tmp_path / "new.py"
    new.write_text("import fluxtrain\nprint('nothing to do')\n")
    assert compare.main([str(old), str(new)]) == 2
    assert "never trained" in capsys.readouterr().out


def test_timeout_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _script(tmp_path, "old.py")
    new = tmp_path / "new.py"
    new.write_text("import time\ntime.sleep(60)\n")
    assert compare.main([str(old), str(new), "--timeout", "3"]) == 2
    assert "did not finish within the timeout" in capsys.readouterr().out


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    old = _script(tmp_path, "old.py")
    assert compare.main([str(old), str(tmp_path / "nope.py")]) == 2
    assert compare.main([str(old)]) == 2  # usage error
    assert compare.main([str(old), str(old), "--max-steps", "0"]) == 2


def test_scripts_run_in_their_own_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "lr.txt").write_text("0.1" if d == "a" else "0.2")
    extra = "lr2 = float(open('lr.txt').read()); b -= lr2"
    old = _script(tmp_path / "a", "s.py", extra=extra)
    new = _script(tmp_path / "b", "s.py", extra=extra)
    assert compare.compare_scripts(old, new).exit_code == 1


def test_partial_training_is_aligned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OLD trains only w (one parameter); NEW records w and a frozen b."""
    old = _trace(tmp_path / "old.jsonl", monkeypatch, train_b=False)
    for rec in old:
        del rec["params"][1]
    new = _trace(tmp_path / "new.jsonl", monkeypatch, train_b=False)
    r = compare.compare_traces(old, new)
    assert r.exit_code == 0, r.message
    assert "in one trace only" in r.message
    bad = _trace(tmp_path / "bad.jsonl", monkeypatch, train_b=True)
    r = compare.compare_traces(old, bad)
    assert r.exit_code == 1 and r.step == 2
    assert "trained in NEW only" in r.diffs[0].note
    r = compare.compare_traces(bad, old)  # the other way round
    assert r.exit_code == 1 and r.step == 2 and "trained in OLD only" in r.diffs[0].note
    other = _trace(tmp_path / "other.jsonl", monkeypatch)
    for rec in other:  # as if NEW's w had another shape
        rec["params"][0]["shape"] = [4, 3]
        rec["params"][0]["sha256"] = "0" * 64
    r = compare.compare_traces(old, [{**rec, "params": rec["params"][:1]} for rec in other])
    assert r.exit_code == 1 and r.step == 1
    assert "OLD is (3, 4) float32, NEW is (4, 3) float32" in r.diffs[0].note
    r = compare.compare_traces(old, other)
    assert r.exit_code == 1 and "different parameters" in r.message


def test_verify_pairs_table(tmp_path: Path) -> None:
    good_old = _script(tmp_path, "good.py")
    good_new = _script(tmp_path, "good_new.py", "explicit")
    bad_new = _script(tmp_path, "bad_new.py", change_at=2, lr_after=0.5)
    crash = tmp_path / "crash.py"
    crash.write_text("raise SystemExit(3)\n")
    out = io.StringIO()
    code = compare.verify_pairs(
        [(good_old, good_new), (good_old, bad_new), (crash, crash)], stream=out
    )
    assert code == 2
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].split() == ["script", "verdict"]
    assert lines[1].startswith(str(good_old)) and lines[1].endswith("trace-equal (6 steps)")
    out = io.StringIO()
    assert compare.verify_pairs([(good_old, good_old)], stream=out) == 0
    assert "trace-equal (6 steps), but the new script still trains in the implicit style" in (
        out.getvalue()
    )
    assert lines[2].endswith("diverged at step 2")
    assert lines[3].startswith(str(crash)) and lines[3].endswith("not runnable")
    assert "exit status 3" in text and "DIVERGED at step 2" in text


def test_load_trace_drops_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        textwrap.dedent(
            """\
            {"step": 1, "style": "implicit", "loss": null, "params": []}
            {"step": 2, "style": "impl"""
        )
    )
    assert [r["step"] for r in compare.load_trace(p)] == [1]
    p.write_text('{"step": 1\n{"step": 2, "params": []}\n')
    with pytest.raises(ValueError, match="line 1"):
        compare.load_trace(p)
    assert compare.load_trace(tmp_path / "missing.jsonl") == []


def test_check_determinism_blames_the_old_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script that differs from itself (here: fresh OS entropy) is not a migration bug."""
    nondet = _script(tmp_path, "old.py", extra="b += int.from_bytes(os.urandom(1), 'little')")
    nondet.write_text("import os\n" + nondet.read_text())
    assert compare.main([str(nondet), str(nondet), "--check-determinism"]) == 2
    out = capsys.readouterr().out
    assert "is not deterministic" in out and "DIVERGED" in out
