"""Reading ``FLUXTRAIN_TRACE`` files and comparing fingerprints (the helpers of ``compare``).

A trace file (see :mod:`fluxtrain.trace`) holds one JSON line per optimisation
step (``{"step", "style", "loss", "params": [...]}``) and, when the script
exited normally with tracing on, one final line ``{"final": true, "tensors":
[...]}`` with the final values of the tensors the script holds in its globals
or that the tracer saw. :func:`read_trace` splits the two; the functions below
compare fingerprint lists (pairing them, measuring a difference), the final
records, and two scripts' stdout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Trace",
    "ParamDiff",
    "FinalComparison",
    "StdoutComparison",
    "read_trace",
    "param_equal",
    "param_diff",
    "align",
    "describe",
    "compare_final",
    "compare_stdout",
]

Entry = dict[str, Any]


@dataclass
class Trace:
    """The contents of one trace file."""

    steps: list[Entry] = field(default_factory=list)
    final: list[Entry] | None = None  # None: no final record (killed, crashed hard, old trace)


def read_trace(path: Path | str) -> Trace:
    """Read a trace file. A missing file is an empty trace.

    A malformed *last* line (a script killed while writing) is dropped; a
    malformed line elsewhere is an error (``ValueError``). When several final
    records are present (a script that ran twice on one path), the last wins.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Trace()
    lines = text.splitlines()
    out = Trace()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise ValueError(f"line {n} is not JSON ({e})") from None
        if isinstance(rec, dict) and rec.get("final") is True:
            tensors = rec.get("tensors")
            if not isinstance(tensors, list):
                raise ValueError(f"line {n} is a final record without a 'tensors' list")
            out.final = tensors
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("params"), list):
            raise ValueError(f"line {n} is not a fluxtrain trace record")
        out.steps.append(rec)
    return out


# --------------------------------------------------------------------------- one fingerprint


@dataclass
class ParamDiff:
    """How one parameter (or final tensor) differs between OLD and NEW."""

    label: str
    shape: list[int]
    dtype: str
    max_abs: float | None  # None when values were not recorded (too large)
    max_rel: float | None
    n_differ: int | None
    numel: int
    sum_old: float
    sum_new: float
    note: str = ""


def _values(entry: Entry) -> Any:
    from fluxtrain.trace import decode_values

    return decode_values(entry)


def within(a: float, b: float, tol: float) -> bool:
    """``a`` and ``b`` equal (NaN equals NaN), or within ``tol * (1 + |a|)``."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if tol <= 0:
        return False
    return abs(a - b) <= tol * (1 + abs(a))


def param_equal(o: Entry, n: Entry, tol: float) -> bool:
    """Whether two fingerprints are equal: bit for bit, or elementwise within ``tol``."""
    if o["sha256"] == n["sha256"]:
        return True
    if tol <= 0 or o["shape"] != n["shape"]:
        return False
    vo, vn = _values(o), _values(n)
    if vo is not None and vn is not None:
        import torch

        both_nan = torch.isnan(vo) & torch.isnan(vn)
        close = (vo - vn).abs() <= tol * (1 + vo.abs())
        return bool((close | both_nan | (vo == vn)).all())
    return within(float(o["sum"]), float(n["sum"]), tol * max(1.0, float(o["abssum"])))


def param_diff(o: Entry, n: Entry, label: str) -> ParamDiff:
    """Measure how NEW's fingerprint differs from OLD's (element by element when values are in)."""
    numel = math.prod(int(s) for s in o["shape"])
    shape_note = ""
    if o["shape"] != n["shape"] or o["dtype"] != n["dtype"]:
        shape_note = (
            f"OLD is {tuple(o['shape'])} {o['dtype']}, NEW is {tuple(n['shape'])} {n['dtype']}"
        )
    max_abs = max_rel = None
    n_differ = None
    vo, vn = _values(o), _values(n)
    if vo is not None and vn is not None and vo.shape == vn.shape:
        import torch

        nan_o, nan_n = torch.isnan(vo), torch.isnan(vn)
        same = (vo == vn) | (nan_o & nan_n)
        d = (vo - vn).abs()
        d = torch.where(same, torch.zeros_like(d), d)
        d = torch.where(nan_o ^ nan_n, torch.full_like(d, math.inf), d)
        scale = torch.maximum(vo.abs(), vn.abs())
        rel = torch.where(d == 0, torch.zeros_like(d), d / scale)
        rel = torch.where(torch.isnan(rel), torch.full_like(rel, math.inf), rel)
        max_abs = float(d.max()) if d.numel() else 0.0
        max_rel = float(rel.max()) if rel.numel() else 0.0
        n_differ = int((~same).sum())
        if n_differ == 0:  # same values, different bytes (e.g. -0.0 against 0.0)
            shape_note = (
                shape_note or "equal values, different bytes (signed zeros or NaN payloads)"
            )
    return ParamDiff(
        label=label,
        shape=list(o["shape"]),
        dtype=str(o["dtype"]),
        max_abs=max_abs,
        max_rel=max_rel,
        n_differ=n_differ,
        numel=numel,
        sum_old=float(o["sum"]),
        sum_new=float(n["sum"]),
        note=shape_note,
    )


# --------------------------------------------------------------------------- pairing lists


def _key(e: Entry) -> tuple[Any, ...]:
    return (tuple(e["shape"]), e["dtype"])


def _subsequence(
    short: Sequence[Entry], long: Sequence[Entry], same: Callable[[Entry, Entry], bool]
) -> list[int] | None:
    out: list[int] = []
    j = 0
    for e in short:
        while j < len(long) and not same(e, long[j]):
            j += 1
        if j == len(long):
            return None
        out.append(j)
        j += 1
    return out


Alignment = tuple[list[tuple[int, int]], list[int], list[int]]


def align(old: Sequence[Entry], new: Sequence[Entry]) -> Alignment | None:
    """Pair OLD's entries with NEW's: (pairs, only-in-OLD, only-in-NEW), or None.

    Lists of equal length pair in order. Otherwise the shorter list must be a
    subsequence of the longer one, matched by value (sha256) first, else by
    shape and dtype; the rest of the longer list is "in one list only".
    """
    if len(old) == len(new):
        return [(i, i) for i in range(len(old))], [], []
    swap = len(old) > len(new)
    short, long = (new, old) if swap else (old, new)
    idx = _subsequence(short, long, lambda a, b: a["sha256"] == b["sha256"])
    if idx is None:
        idx = _subsequence(short, long, lambda a, b: _key(a) == _key(b))
    if idx is None:
        return None
    taken = set(idx)
    extra = [j for j in range(len(long)) if j not in taken]
    if swap:
        return [(j, i) for i, j in enumerate(idx)], extra, []
    return [(i, j) for i, j in enumerate(idx)], [], extra


def describe(entries: Sequence[Entry]) -> str:
    """``3 parameter(s): (2, 3), (3,), ...`` for a message."""
    shapes = ", ".join(f"{tuple(p['shape'])}" for p in entries[:8])
    more = f", ... ({len(entries)} in all)" if len(entries) > 8 else ""
    return f"{len(entries)} parameter(s): {shapes}{more}"


# --------------------------------------------------------------------------- final values


@dataclass
class FinalComparison:
    """The final values of OLD's and NEW's tensors, paired and compared."""

    compared: int  # pairs compared
    diffs: list[ParamDiff] = field(default_factory=list)
    only_old: int = 0  # tensors of one side that found no partner (not compared)
    only_new: int = 0

    @property
    def identical(self) -> bool:
        return not self.diffs

    def summary(self) -> str:
        """``final values of 4 tensor(s) IDENTICAL``, or ``final values: 1 of 4 ... DIFFER``."""
        if self.compared == 0:
            text = "final values: no tensor to compare"
        elif self.diffs:
            text = f"final values: {len(self.diffs)} of {self.compared} tensor(s) DIFFER"
        else:
            text = f"final values of {self.compared} tensor(s) IDENTICAL"
        unpaired = self.only_old + self.only_new
        if unpaired:
            text += f" ({unpaired} in one script only, not compared)"
        return text


def _final_label(e: Entry, i: int) -> str:
    name = e.get("name")
    if name is not None:
        return str(name)
    return f"tensor #{e['id']}" if "id" in e else f"tensor #{i}"


def compare_final(old: Sequence[Entry], new: Sequence[Entry], tol: float) -> FinalComparison:
    """Pair the final records' tensors and compare them.

    Tensors held by a global pair by name (the path from the global, which a
    migration keeps). The rest (seen by the tracer, held by no global) are
    paired with :func:`align`; when they cannot be paired they are counted as
    "in one script only". Unpaired tensors are never a difference.
    """
    new_by_name = {str(e["name"]): e for e in new if e.get("name") is not None}
    old_names = {str(e["name"]) for e in old if e.get("name") is not None}
    pairs: list[tuple[Entry, Entry, str]] = []
    only_old = only_new = 0
    for e in old:
        name = e.get("name")
        if name is None:
            continue
        partner = new_by_name.get(str(name))
        if partner is None:
            only_old += 1
        else:
            pairs.append((e, partner, str(name)))
    only_new += sum(1 for e in new if e.get("name") is not None and e["name"] not in old_names)
    rest_old = [e for e in old if e.get("name") is None]
    rest_new = [e for e in new if e.get("name") is None]
    alignment = align(rest_old, rest_new)
    if alignment is None:
        only_old += len(rest_old)
        only_new += len(rest_new)
    else:
        matched, extra_old, extra_new = alignment
        pairs.extend((rest_old[i], rest_new[j], _final_label(rest_old[i], i)) for i, j in matched)
        only_old += len(extra_old)
        only_new += len(extra_new)
    diffs = [param_diff(o, n, label) for o, n, label in pairs if not param_equal(o, n, tol)]
    return FinalComparison(len(pairs), diffs, only_old, only_new)


# --------------------------------------------------------------------------- stdout


@dataclass
class StdoutComparison:
    """Whether two scripts printed the same thing, and where they first differ."""

    identical: bool
    line: int | None = None  # the first differing line (1-based)
    old_line: str | None = None  # None: OLD's output ended before that line
    new_line: str | None = None

    def summary(self) -> str:
        """``stdout IDENTICAL`` or ``stdout DIFFERS at line 3 (OLD '...', NEW '...')``."""
        if self.identical:
            return "stdout IDENTICAL"

        def show(s: str | None) -> str:
            if s is None:
                return "<end of output>"
            return repr(s if len(s) <= 60 else s[:57] + "...")

        return (
            f"stdout DIFFERS at line {self.line} "
            f"(OLD {show(self.old_line)}, NEW {show(self.new_line)})"
        )


def compare_stdout(old: str, new: str) -> StdoutComparison:
    """Compare two scripts' stdout line by line (line ends normalised)."""
    a, b = old.splitlines(), new.splitlines()
    if a == b:
        return StdoutComparison(True)
    for k, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return StdoutComparison(False, k, x, y)
    k = min(len(a), len(b)) + 1
    return StdoutComparison(
        False, k, a[k - 1] if len(a) >= k else None, b[k - 1] if len(b) >= k else None
    )
