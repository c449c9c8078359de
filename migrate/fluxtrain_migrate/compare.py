"""``fluxtrain-migrate compare OLD.py NEW.py [-- ARGS...]``: run two scripts side by side.

Both scripts run in subprocesses (``sys.executable``, working directory the
script's own folder, the same ARGS) with the same seed-relevant environment:

* ``PYTHONHASHSEED`` and ``FLUXTRAIN_SEED`` set to the seed (``--seed``, default 0):
  ``import fluxtrain`` then seeds ``random``, numpy and torch (see
  :mod:`fluxtrain.seeding`), so initial weights, shuffles and dropout masks agree;
* ``FLUXTRAIN_TRACE`` pointing at a fresh temporary file for each, with
  ``FLUXTRAIN_TRACE_VALUES=1`` so that parameter values are at hand to measure a
  difference (and ``FLUXTRAIN_TRACE_MAX_STEPS`` with ``--max-steps``).

Every optimisation step either script takes through fluxtrain's ``train_`` or
``update_`` appends one record to its trace (see :mod:`fluxtrain.trace`): the
loss where known and a fingerprint of the parameters *of that step* after it.
At exit each script also writes a final record: the final values of the
tensors its globals hold (and of those the tracer saw). Three things are
compared, and the verdict names each with its result: the steps (the k-th
record of OLD against the k-th of NEW, over that step's parameters), the final
values (paired by name), and stdout (line by line).

Verdicts and exit status:

* ``0`` identical: same number of steps and every parameter equal at every step
  (bit for bit with the default ``--tolerance 0``; otherwise every element
  within ``tol * (1 + |old|)``), losses equal where both scripts know them, and
  the final values equal; or, when neither script took a step (it trains by
  hand, ``w -= lr * g``), the final values and stdout equal (``no optimisation
  steps traced; stdout IDENTICAL; final values of 4 tensor(s) IDENTICAL``);
* ``1`` diverged: the first differing step, which parameters differ and by how
  much (maximum absolute and relative difference, number of differing elements),
  or that one script took fewer steps than the other (none at all included),
  or final values that differ after identical steps; without steps, differing
  final values or stdout;
* ``2`` could not run: a script failed (non-zero exit status or timeout: its
  stderr tail is shown), or there is nothing to compare (no step on either
  side, no tensor to pair and no output; or a stepless side that left no tensor).

stdout decides only when no step was traced: with steps it is reported, since
a clock-throttled callback prints at different steps in two runs of one script.

**Callbacks and wall-clock throttling.** A trace records only what training did
to the parameters (and the loss), never when it happened or what a callback
printed. ``throttle(cb, 10)`` decides *from the clock* which steps run ``cb``,
so the two runs may print their logs at different steps; as long as the
callback only observes (prints, logs, evaluates in ``no_grad``), the traces are
unaffected and no false divergence shows. A callback that *changes* training
under a wall-clock throttle (calls ``stop()``, changes the learning rate) makes
even two runs of the same script differ: such a script is non-deterministic by
nature, and ``compare`` says so rather than blame the migration when
``--check-determinism`` is given (it runs OLD twice first). Write such callbacks
against a step count instead of the clock.

The set of traced parameters may change from step to step (two models trained
in turn, a growing ``Params``, a rebuilt model, ``update_(opt, p, g)`` per
parameter): each step is compared over its own lists. Lists of different
lengths (e.g. ``params(model[0])`` in OLD, the whole model with the rest frozen
in NEW) are aligned in order, by value, else by shape and dtype; the pairing is
decided the first time a pair of lists (by tensor id) appears and reused when
it comes back. A parameter present in one trace only must keep the same value
from one of its records to the next (it is frozen), else the traces diverge.
Its value before the first step is not in the trace, so a parameter wrongly
trained by one script only shows from its second record (with the note that it
may have moved at its first already); a one-step run cannot show it at all.

compare has no batch logic: the scripts iterate their data themselves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fluxtrain_migrate.traces import (
    Alignment,
    FinalComparison,
    ParamDiff,
    StdoutComparison,
    align,
    compare_final,
    compare_stdout,
    describe,
    param_diff,
    param_equal,
    read_trace,
    within,
)

__all__ = [
    "EXIT_IDENTICAL",
    "EXIT_DIVERGED",
    "EXIT_FAILED",
    "RunResult",
    "ParamDiff",
    "CompareResult",
    "run_traced",
    "load_trace",
    "compare_traces",
    "compare_runs",
    "compare_scripts",
    "format_result",
    "verify_pairs",
    "main",
]

EXIT_IDENTICAL = 0
EXIT_DIVERGED = 1
EXIT_FAILED = 2

DEFAULT_TIMEOUT = 600.0
DEFAULT_SEED = 0
STDERR_TAIL_LINES = 25


# --------------------------------------------------------------------------- running


@dataclass
class RunResult:
    """One traced run of a script."""

    script: Path
    returncode: int | None  # None: killed after the timeout
    seconds: float
    stdout: str
    stderr: str
    records: list[dict[str, Any]] = field(default_factory=list)
    trace_error: str | None = None
    final: list[dict[str, Any]] | None = None  # the final record's tensors, if written

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.trace_error is None

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])

    def failure(self) -> str | None:
        """Why this run cannot be compared, or None if it can."""
        if self.timed_out:
            return f"{self.script} did not finish within the timeout ({self.seconds:.0f} s)"
        if self.returncode != 0:
            return f"{self.script} failed with exit status {self.returncode}"
        if self.trace_error is not None:
            return f"{self.script}: unreadable trace: {self.trace_error}"
        return None


def _seed_env(seed: int) -> dict[str, str]:
    return {
        "PYTHONHASHSEED": str(seed),
        "FLUXTRAIN_SEED": str(seed),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
    }


def _start(
    script: Path, args: Sequence[str], trace_path: Path, env_extra: dict[str, str], out_dir: Path
) -> tuple[subprocess.Popen[bytes], TextIO, TextIO]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("FLUXTRAIN_TRACE"):
            del env[name]
    env.update(env_extra)
    env["FLUXTRAIN_TRACE"] = str(trace_path)
    stdout = open(out_dir / (trace_path.stem + ".out"), "w+", encoding="utf-8", errors="replace")
    stderr = open(out_dir / (trace_path.stem + ".err"), "w+", encoding="utf-8", errors="replace")
    kwargs: dict[str, Any] = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True  # so a timeout kills the script's children too
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=str(script.parent),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        **kwargs,
    )
    return proc, stdout, stderr


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _finish(
    script: Path,
    proc: subprocess.Popen[bytes],
    stdout: TextIO,
    stderr: TextIO,
    trace_path: Path,
    started: float,
    deadline: float,
) -> RunResult:
    returncode: int | None
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        returncode = None
    seconds = time.monotonic() - started
    outs = []
    for f in (stdout, stderr):
        f.flush()
        f.seek(0)
        outs.append(f.read())
        f.close()
    result = RunResult(script, returncode, seconds, outs[0], outs[1])
    try:
        contents = read_trace(trace_path)
        result.records, result.final = contents.steps, contents.final
    except ValueError as e:
        result.trace_error = str(e)
    return result


def run_traced(
    scripts: Sequence[Path],
    args: Sequence[str] = (),
    *,
    seed: int = DEFAULT_SEED,
    timeout: float = DEFAULT_TIMEOUT,
    max_steps: int | None = None,
    values: bool = True,
) -> list[RunResult]:
    """Run each script (concurrently) with tracing on and the seed environment.

    Each script runs as ``python SCRIPT ARGS`` in its own folder; each gets at
    most ``timeout`` seconds. Returns one :class:`RunResult` per script, in order.
    """
    env_extra = _seed_env(seed)
    if values:
        env_extra["FLUXTRAIN_TRACE_VALUES"] = "1"
    if max_steps is not None:
        env_extra["FLUXTRAIN_TRACE_MAX_STEPS"] = str(max_steps)
    tmp = Path(tempfile.mkdtemp(prefix="fluxtrain-compare-"))
    try:
        started = time.monotonic()
        running = []
        for i, script in enumerate(scripts):
            trace_path = tmp / f"run{i}.jsonl"
            proc, out, err = _start(Path(script).resolve(), args, trace_path, env_extra, tmp)
            running.append((Path(script), proc, out, err, trace_path))
        deadline = started + timeout
        return [
            _finish(script, proc, out, err, trace_path, started, deadline)
            for script, proc, out, err, trace_path in running
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trace(path: Path) -> list[dict[str, Any]]:
    """The step records of a trace file (JSON lines); see :func:`traces.read_trace`.

    A missing file is an empty trace. A malformed *last* line (a script killed
    while writing) is dropped; a malformed line elsewhere is an error
    (``ValueError``). The final record (final tensor values) is not a step and
    is left out; :func:`traces.read_trace` returns it.
    """
    return read_trace(path).steps


# --------------------------------------------------------------------------- comparing


@dataclass
class CompareResult:
    """The verdict of comparing two traces (or two scripts)."""

    exit_code: int
    message: str
    steps_compared: int = 0
    step: int | None = None  # the first differing step (1-based), if diverged
    diffs: list[ParamDiff] = field(default_factory=list)
    n_params: int = 0
    loss_old: float | None = None
    loss_new: float | None = None
    old: RunResult | None = None
    new: RunResult | None = None
    final: FinalComparison | None = None  # final values, when both scripts wrote them
    stdout: StdoutComparison | None = None  # set by compare_runs

    @property
    def verdict(self) -> str:
        return {EXIT_IDENTICAL: "identical", EXIT_DIVERGED: "diverged"}.get(
            self.exit_code, "could not run"
        )


def _label(entry: dict[str, Any], index: int) -> str:
    name = entry.get("name")
    return str(name) if name is not None else f"#{index}"


# A parameter's identity across the steps of one trace: its tracer id, or (for
# traces without ids) its position, shape and dtype in the step's list.
_Pid = tuple[Any, ...]


def _pid(entry: dict[str, Any], index: int) -> _Pid:
    if "id" in entry:
        return ("id", entry["id"])
    return ("pos", index, tuple(entry["shape"]), entry["dtype"])


def _signature(params: list[dict[str, Any]]) -> tuple[Any, ...]:
    return tuple(_pid(e, i) for i, e in enumerate(params))


def compare_traces(
    old: list[dict[str, Any]],
    new: list[dict[str, Any]],
    *,
    tolerance: float = 0.0,
    max_steps: int | None = None,
) -> CompareResult:
    """Compare two traces step by step; see the module docstring for the verdicts.

    Each step is compared over the parameters *of that step*: the k-th record
    of OLD against the k-th of NEW, their parameter lists paired by
    :func:`traces.align`. The pairing is decided the first time a given pair of
    parameter lists (by tracer id) appears and reused whenever it comes back,
    so a script that trains two models in turn, grows its ``Params`` or
    rebuilds its model compares step by step like any other.
    """
    if max_steps is not None:
        old, new = old[:max_steps], new[:max_steps]
    if not old or not new:
        which = "OLD" if not old else "NEW"
        return CompareResult(EXIT_FAILED, f"{which} recorded no optimisation step")
    alignments: dict[tuple[Any, ...], Alignment] = {}
    last: tuple[dict[_Pid, tuple[int, dict[str, Any]]], ...] = ({}, {})
    extras_seen: set[tuple[str, _Pid]] = set()
    sizes: set[int] = set()
    signatures: set[tuple[Any, ...]] = set()
    n_params = 0
    for k, (ro, rn) in enumerate(zip(old, new), 1):
        po, pn = ro["params"], rn["params"]
        sig = (_signature(po), _signature(pn))
        signatures.add(sig)
        alignment = alignments.get(sig)
        if alignment is None:
            alignment = align(po, pn)
            if alignment is None:
                return CompareResult(
                    EXIT_DIVERGED,
                    f"at step {k}: the scripts train different parameters: OLD has "
                    f"{describe(po)}; NEW has {describe(pn)}",
                    steps_compared=k - 1,
                    step=k,
                    n_params=n_params,
                )
            alignments[sig] = alignment
        pairs, only_old, only_new = alignment
        n_step = len(pairs) + len(only_old) + len(only_new)
        sizes.add(n_step)
        n_params = max(n_params, n_step)
        diffs = [
            param_diff(po[i], pn[j], _label(po[i], i))
            for i, j in pairs
            if not param_equal(po[i], pn[j], tolerance)
        ]
        for side, params, extra, seen in (
            ("OLD", po, only_old, last[0]),
            ("NEW", pn, only_new, last[1]),
        ):
            for i in extra:
                extras_seen.add((side, _pid(params[i], i)))
                before = seen.get(_pid(params[i], i))
                if before is None or params[i]["sha256"] == before[1]["sha256"]:
                    continue  # first seen here: its value before this step is not in the trace
                other = "NEW" if side == "OLD" else "OLD"
                d = param_diff(before[1], params[i], _label(params[i], i))
                d.note = (
                    f"trained in {side} only ({other} does not train it): this is its "
                    f"change since step {before[0]} (a trace starts after the first step, "
                    "so it may have moved at step 1 already)"
                )
                diffs.append(d)
        for params, seen in ((po, last[0]), (pn, last[1])):
            for i, e in enumerate(params):
                seen[_pid(e, i)] = (k, e)
        lo, ln = ro.get("loss"), rn.get("loss")
        loss_differs = lo is not None and ln is not None and not within(lo, ln, tolerance)
        if diffs or loss_differs:
            what = []
            if diffs:
                what.append(f"{len(diffs)} of {n_step} parameter(s) differ")
            if loss_differs:
                what.append(f"the loss differs (OLD {lo!r}, NEW {ln!r})")
            return CompareResult(
                EXIT_DIVERGED,
                f"at step {k}: " + "; ".join(what),
                steps_compared=k - 1,
                step=k,
                diffs=diffs,
                n_params=n_params,
                loss_old=lo,
                loss_new=ln,
            )
    common = min(len(old), len(new))
    if len(old) != len(new):
        return CompareResult(
            EXIT_DIVERGED,
            f"at step {common + 1}: OLD took {len(old)} step(s), NEW took "
            f"{len(new)}; the first {common} are identical",
            steps_compared=common,
            step=common + 1,
            n_params=n_params,
        )
    how = "bit for bit" if tolerance <= 0 else f"within tolerance {tolerance:g}"
    if len(signatures) == 1:
        counted = f"{n_params} parameter(s)"
    else:
        span = f"{min(sizes)} to {max(sizes)}" if len(sizes) > 1 else f"{n_params}"
        counted = f"{span} parameter(s) per step (the traced set changes during the run)"
    frozen = ""
    if extras_seen:
        frozen = f" ({len(extras_seen)} parameter(s) in one trace only, never changed)"
    limited = f" (first {max_steps} compared)" if max_steps is not None else ""
    return CompareResult(
        EXIT_IDENTICAL,
        f"{common} step(s){limited}, {counted}, {how}{frozen}",
        steps_compared=common,
        n_params=n_params,
    )


def _no_steps(run: RunResult) -> str:
    return f"{run.script} took no optimisation step through fluxtrain's train_ or update_"


def compare_runs(
    run_old: RunResult,
    run_new: RunResult,
    *,
    tolerance: float = 0.0,
    max_steps: int | None = None,
) -> CompareResult:
    """The verdict on two finished runs: their steps, final values and stdout.

    * A run that failed (exit status, timeout, unreadable trace): exit 2.
    * Both took steps: the steps decide (:func:`compare_traces`); then the
      final values (unless ``max_steps`` cut the traces) must agree too, else
      the scripts diverged after their last step. stdout is reported, and
      does not change the verdict (a clock-throttled callback prints at
      different steps).
    * Neither took a step (training by hand, ``w -= lr * g``): what can still
      be compared decides: the final values of the tensors and stdout; exit 0
      when both agree, 1 when either differs, 2 when there is nothing at all
      (no tensor could be paired and neither script printed anything).
    * One took steps, the other none: diverged (exit 1), with the final
      values and stdout reported; exit 2 if the stepless one left no tensor.
    """
    failures = [(side, r) for side, r in (("OLD", run_old), ("NEW", run_new)) if r.failure()]
    if failures:
        message = "; ".join(f"{side}: {r.failure()}" for side, r in failures)
        return CompareResult(EXIT_FAILED, message, old=run_old, new=run_new)
    out = compare_stdout(run_old.stdout, run_new.stdout)
    final: FinalComparison | None = None
    if max_steps is None and run_old.final is not None and run_new.final is not None:
        final = compare_final(run_old.final, run_new.final, tolerance)
    if run_old.records and run_new.records:
        result = compare_traces(
            run_old.records, run_new.records, tolerance=tolerance, max_steps=max_steps
        )
        if result.exit_code == EXIT_IDENTICAL and final is not None and not final.identical:
            result = CompareResult(
                EXIT_DIVERGED,
                f"after the last step ({result.steps_compared}): {final.summary()}",
                steps_compared=result.steps_compared,
                diffs=final.diffs,
                n_params=result.n_params,
            )
        elif result.exit_code == EXIT_IDENTICAL:
            extra = [out.summary()] if final is None else [final.summary(), out.summary()]
            result.message = "; ".join([result.message, *extra])
    else:
        compared = [out.summary()] if final is None else [out.summary(), final.summary()]
        n_final = 0 if final is None else final.compared
        if not run_old.records and not run_new.records:
            head = "no optimisation steps traced"
            printed = bool(run_old.stdout.strip() or run_new.stdout.strip())
            if n_final == 0 and not printed:
                code = EXIT_FAILED
                head = (
                    "nothing to compare: neither script took an optimisation step through "
                    "fluxtrain's train_ or update_, printed anything, or left a tensor that "
                    "could be paired"
                )
            elif out.identical and (final is None or final.identical):
                code = EXIT_IDENTICAL
            else:
                code = EXIT_DIVERGED
        else:
            stepless, other = (run_new, run_old) if run_old.records else (run_old, run_new)
            which = "NEW" if stepless is run_new else "OLD"
            if not stepless.final:
                code = EXIT_FAILED
                head = (
                    f"{which}: {stepless.script} never trained: it ran to completion but "
                    "took no optimisation step through fluxtrain's train_ or update_, and "
                    "left no tensor to compare"
                )
            else:
                code = EXIT_DIVERGED
                head = (
                    f"{'OLD' if which == 'NEW' else 'NEW'} took {len(other.records)} traced "
                    f"step(s), {which} none ({_no_steps(stepless)}): the steps cannot be "
                    "compared"
                )
        result = CompareResult(
            code,
            "; ".join([head, *compared]),
            diffs=[] if final is None else final.diffs,
        )
    result.old, result.new = run_old, run_new
    result.final, result.stdout = final, out
    return result


def compare_scripts(
    old: Path | str,
    new: Path | str,
    args: Sequence[str] = (),
    *,
    tolerance: float = 0.0,
    max_steps: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = DEFAULT_SEED,
    values: bool = True,
) -> CompareResult:
    """Run OLD and NEW side by side with tracing and compare their traces."""
    old_p, new_p = Path(old), Path(new)
    for p in (old_p, new_p):
        if not p.is_file():
            return CompareResult(EXIT_FAILED, f"{p}: no such file")
    run_old, run_new = run_traced(
        [old_p, new_p], args, seed=seed, timeout=timeout, max_steps=max_steps, values=values
    )
    return compare_runs(run_old, run_new, tolerance=tolerance, max_steps=max_steps)


def check_determinism(
    script: Path | str,
    args: Sequence[str] = (),
    *,
    max_steps: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = DEFAULT_SEED,
) -> CompareResult:
    """Run one script twice and compare the traces (is it deterministic at all?)."""
    p = Path(script)
    a, b = run_traced([p, p], args, seed=seed, timeout=timeout, max_steps=max_steps)
    return compare_runs(a, b, max_steps=max_steps)


# --------------------------------------------------------------------------- reporting


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def format_result(result: CompareResult, old: Path | str, new: Path | str) -> str:
    """A human-readable report of a comparison."""
    lines = [f"compare {old}  vs  {new}"]
    for side, run in (("OLD", result.old), ("NEW", result.new)):
        if run is None:
            continue
        status = "timed out" if run.timed_out else f"exit {run.returncode}"
        styles = sorted({str(r.get("style")) for r in run.records})
        final = "no final record" if run.final is None else f"{len(run.final)} final tensor(s)"
        lines.append(
            f"  {side}: {len(run.records)} step(s) recorded ({', '.join(styles) or 'none'}), "
            f"{final}, {status}, {run.seconds:.1f} s"
        )
    if result.exit_code == EXIT_FAILED:
        lines.append(f"NOT RUNNABLE: {result.message}")
        for side, run in (("OLD", result.old), ("NEW", result.new)):
            if run is not None and run.failure() and run.stderr.strip():
                lines.append(f"--- {side} stderr (last {STDERR_TAIL_LINES} lines) ---")
                lines.append(run.stderr_tail())
        return "\n".join(lines)
    if result.exit_code == EXIT_IDENTICAL:
        lines.append(f"IDENTICAL: {result.message}")
        return "\n".join(lines)
    sep = " " if result.message.startswith(("at step", "after the last step")) else ": "
    lines.append(f"DIVERGED{sep}{result.message}")
    if result.step is not None and result.step > 1:
        lines.append(f"  steps 1..{result.step - 1} are identical")
    if result.loss_old is not None or result.loss_new is not None:
        lines.append(
            f"  loss at step {result.step}: OLD {result.loss_old!r}, NEW {result.loss_new!r}"
        )
    if result.diffs:
        header = (
            "param",
            "shape",
            "dtype",
            "max abs diff",
            "max rel diff",
            "differing",
            "sum OLD",
            "sum NEW",
        )
        rows = [
            (
                d.label,
                "x".join(str(s) for s in d.shape) or "()",
                d.dtype,
                _fmt(d.max_abs),
                _fmt(d.max_rel),
                "-" if d.n_differ is None else f"{d.n_differ}/{d.numel}",
                f"{d.sum_old:.9g}",
                f"{d.sum_new:.9g}",
            )
            for d in result.diffs
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for d in result.diffs:
            if d.note:
                lines.append(f"  {d.label}: {d.note}")
    return "\n".join(lines)


def verify_pairs(
    pairs: Iterable[tuple[Path, Path]],
    *,
    args: Sequence[str] = (),
    tolerance: float = 0.0,
    max_steps: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = DEFAULT_SEED,
    stream: TextIO | None = None,
    details: bool = True,
) -> int:
    """Compare each (original, migrated) pair and print a summary table.

    One row per script: ``trace-equal (N steps)``, ``diverged at step K`` or
    ``not runnable``; with ``details`` the full report of every pair that is
    not trace-equal follows the table. Returns the worst exit status
    (0 all trace-equal, 1 some diverged, 2 some could not run).
    """
    out = stream if stream is not None else sys.stdout
    rows: list[tuple[str, str]] = []
    reports: list[str] = []
    worst = EXIT_IDENTICAL
    for old, new in pairs:
        r = compare_scripts(
            old, new, args, tolerance=tolerance, max_steps=max_steps, timeout=timeout, seed=seed
        )
        if r.exit_code == EXIT_IDENTICAL and r.steps_compared == 0:
            n_final = 0 if r.final is None else r.final.compared
            verdict = f"no traced steps; stdout and final values of {n_final} tensor(s) equal"
        elif r.exit_code == EXIT_IDENTICAL:
            verdict = f"trace-equal ({r.steps_compared} steps)"
            if r.new is not None and any(rec.get("style") == "implicit" for rec in r.new.records):
                verdict += ", but the new script still trains in the implicit style"
        elif r.exit_code == EXIT_DIVERGED and r.step is not None:
            verdict = f"diverged at step {r.step}"
        elif r.exit_code == EXIT_DIVERGED:
            verdict = "diverged" + (" after the last step" if r.steps_compared else "")
        else:
            verdict = "not runnable"
        rows.append((str(old), verdict))
        if r.exit_code != EXIT_IDENTICAL:
            reports.append(format_result(r, old, new))
        worst = max(worst, r.exit_code)
    width = max([len("script"), *(len(s) for s, _ in rows)])
    print(f"{'script'.ljust(width)}  verdict", file=out)
    for script, verdict in rows:
        print(f"{script.ljust(width)}  {verdict}", file=out)
    if details and reports:
        print(file=out)
        print("\n\n".join(reports), file=out)
    return worst


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fluxtrain-migrate compare",
        description=(
            "Run OLD.py and NEW.py side by side with the same seed and tracing on, and "
            "report the first optimisation step where their parameters differ. "
            "Arguments after -- are passed to both scripts. "
            "Exit status: 0 identical, 1 diverged, 2 could not run."
        ),
    )
    p.add_argument("old", type=Path, metavar="OLD.py")
    p.add_argument("new", type=Path, metavar="NEW.py")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="0 (default): bit for bit; else elements may differ by tol*(1+|old|)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="compare only the first N steps")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds each script may run (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="FLUXTRAIN_SEED and PYTHONHASHSEED"
    )
    p.add_argument(
        "--check-determinism",
        action="store_true",
        help="first run OLD twice: if it differs from itself, say so (exit 2)",
    )
    p.add_argument(
        "--show-output", action="store_true", help="print both scripts' stdout and stderr"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fluxtrain-migrate compare OLD.py NEW.py [options] [-- ARGS...]``: the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        argv = argv[1:]
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 for a usage error, 0 for --help
        return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    if ns.max_steps is not None and ns.max_steps < 1:
        parser.print_usage(sys.stderr)
        print("compare: --max-steps must be at least 1", file=sys.stderr)
        return EXIT_FAILED
    if ns.tolerance < 0 or ns.timeout <= 0:
        print("compare: --tolerance must be >= 0 and --timeout > 0", file=sys.stderr)
        return EXIT_FAILED
    if ns.check_determinism:
        det = check_determinism(
            ns.old, script_args, max_steps=ns.max_steps, timeout=ns.timeout, seed=ns.seed
        )
        if det.exit_code != EXIT_IDENTICAL:
            print(f"NOT RUNNABLE: {ns.old} is not deterministic: two runs of it differ")
            print(format_result(det, ns.old, ns.old))
            return EXIT_FAILED
    result = compare_scripts(
        ns.old,
        ns.new,
        script_args,
        tolerance=ns.tolerance,
        max_steps=ns.max_steps,
        timeout=ns.timeout,
        seed=ns.seed,
    )
    if ns.show_output:
        for side, run in (("OLD", result.old), ("NEW", result.new)):
            if run is not None:
                print(f"--- {side} {run.script} stdout ---\n{run.stdout.rstrip()}")
                print(f"--- {side} {run.script} stderr ---\n{run.stderr.rstrip()}")
    print(format_result(result, ns.old, ns.new))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
