"""Run, migrate and compare every corpus script; print the tally table (issue 20, item 6).

    .venv/bin/python scripts/corpus_tally.py             # the markdown table and the totals
    .venv/bin/python scripts/corpus_tally.py --details   # + each failure's reason / traceback tail
    .venv/bin/python scripts/corpus_tally.py tests/corpus/zoo_iris.py ...   # only these

For each ``tests/corpus/*.py`` script (names starting with ``test_`` or ``_`` and
``conftest.py`` are not scripts) it costs exactly two runs:

1. the original, once, with ``FLUXTRAIN_SEED``/``FLUXTRAIN_TRACE`` set as
   ``fluxtrain-migrate compare`` sets them (:func:`fluxtrain_migrate.compare.run_traced`),
   stdout and trace captured;
2. ``migrate_bytes`` on it; the migrated copy written to a temporary folder (with the
   original folder's data files) and run the same way, unless the migration changed
   nothing (then the original run stands for both);

then the two runs are compared through compare's library API
(:func:`fluxtrain_migrate.compare.compare_runs`: steps, final values), stdout is
compared line by line (deprecation-warning lines ignored: they go to stderr
anyway), and both files are checked with ``ruff check --select F,I`` under the
project's configuration, the migrated one as if it stood where the original does
(``--stdin-filename``, so first-party detection is the same for both).

The same module is what ``tests/migrate/test_corpus.py`` and
``tests/migrate/test_migration_property.py`` use (they share one cache of
outcomes per pytest session, so a script runs once for both).
Environment: ``FLUXTRAIN_CORPUS_TIMEOUT`` (seconds per run, default 300).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
FIXTURES = ROOT / "tests" / "migrate" / "fixtures"
EXAMPLES = ROOT / "examples"
RUFF_SELECT = "F,I"
TIMEOUT = float(os.environ.get("FLUXTRAIN_CORPUS_TIMEOUT", "300"))

try:
    import fluxtrain_migrate  # noqa: F401
except ImportError:  # not installed: use the checkout's sources
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "migrate")]

from fluxtrain_migrate import compare  # noqa: E402
from fluxtrain_migrate.engine import migrate_bytes  # noqa: E402
from fluxtrain_migrate.report import FileResult  # noqa: E402

# ------------------------------------------------------------------------- the scripts


def corpus_scripts() -> list[Path]:
    """Every corpus script (found now): ``tests/corpus/*.py`` but tests and conftest."""
    return sorted(
        p
        for p in CORPUS.glob("*.py")
        if not p.name.startswith(("test_", "_")) and p.name != "conftest.py"
    )


def example_scripts() -> list[Path]:
    """``examples/*.py`` and ``examples/explicit/*.py`` (the distributed one needs torchrun)."""
    return sorted([*EXAMPLES.glob("*.py"), *EXAMPLES.glob("explicit/*.py")])


def fixture_scripts() -> list[Path]:
    """Every fixture's ``*.before.py`` (runnable or not: most are snippets)."""
    return sorted(FIXTURES.glob("*/*.before.py"))


def source_of(path: Path) -> str:
    """The ``# Source:`` header line of a corpus script, without the commit ("" if none)."""
    for line in path.read_text(encoding="utf-8").splitlines()[:15]:
        m = re.match(r"#\s*Source:\s*(.*)", line)
        if m:
            return re.sub(r"\s*@\s*[0-9a-f]{7,40}\b.*$", "", m.group(1)).strip()
    return ""


# ------------------------------------------------------------------------- one script

_WARNING_LINE = re.compile(r"(^\S.*:\d+: \w*Warning: )|FluxDeprecationWarning")
_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+\b")


def strip_warnings(text: str) -> list[str]:
    """stdout's lines without warnings (``file:line: XWarning: ...``) and trailing blanks,
    object addresses (``<X at 0x7f...>``, which differ from run to run) blanked."""
    lines = [_ADDRESS.sub("at 0x...", ln.rstrip())
             for ln in text.splitlines() if not _WARNING_LINE.search(ln)]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def stdout_warnings(text: str) -> list[str]:
    """Warning lines printed to stdout (there should be none: warnings go to stderr)."""
    return [ln for ln in text.splitlines() if _WARNING_LINE.search(ln)]


def run_one(script: Path, *, timeout: float = TIMEOUT) -> compare.RunResult:
    """One traced run, as ``fluxtrain-migrate compare`` runs each side."""
    return compare.run_traced([script], timeout=timeout)[0]


def run_source(data: bytes, like: Path, *, timeout: float = TIMEOUT) -> compare.RunResult:
    """Run ``data`` as a script named like ``like``, in a temporary folder holding copies
    of the data files (not ``.py``) of ``like``'s folder."""
    tmp = Path(tempfile.mkdtemp(prefix="fluxtrain-corpus-"))
    try:
        for extra in like.parent.iterdir():
            if extra.is_file() and extra.suffix not in (".py", ".pyc"):
                shutil.copy(extra, tmp / extra.name)
        script = tmp / like.name
        script.write_bytes(data)
        return run_one(script, timeout=timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ruff(data: bytes, like: Path) -> str | None:
    """``ruff check --select F,I`` of ``data`` as if it were the file ``like`` (so the
    project's configuration and first-party detection apply): None when clean, else
    ruff's report. Raises if ruff is not installed."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        raise FileNotFoundError("ruff is not installed (pip install ruff)")
    try:
        rel = like.resolve().relative_to(ROOT)
    except ValueError:
        rel = Path(like.name)
    proc = subprocess.run(
        [exe, "check", "--select", RUFF_SELECT, "--no-cache", "--config",
         str(ROOT / "pyproject.toml"), "--output-format", "concise",
         "--stdin-filename", str(rel), "-"],
        input=data, cwd=ROOT, capture_output=True, timeout=120,
    )
    if proc.returncode == 0:
        return None
    report = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
    return report or f"exit {proc.returncode}"


def marker_problems(result: FileResult) -> list[str]:
    """What breaks "one marker per group, at its first statement": markers stacked on
    one statement (adjacent lines), and a name that appears in two groups' markers."""
    problems = []
    ms = sorted(result.markers, key=lambda m: m.line)
    for a, b in zip(ms, ms[1:]):
        if b.line - a.line <= 1:
            problems.append(f"markers stacked at lines {a.line} and {b.line}")
    owner: dict[str, int] = {}
    for m in ms:
        head = m.message.split(" left in the implicit style", 1)
        if len(head) != 2:
            problems.append(f"line {m.line}: not a group marker: {m.message[:100]}")
            continue
        for name in (n.strip() for n in head[0].split(",")):
            if name and name != "...":
                if name in owner and owner[name] != m.line:
                    problems.append(f"{name!r} is in the markers at lines {owner[name]} "
                                    f"and {m.line}")
                owner.setdefault(name, m.line)
    return problems


@dataclass
class Outcome:
    """Everything the checks and the tally need about one script."""

    script: Path
    migration: FileResult
    original: compare.RunResult
    migrated: compare.RunResult | None = None  # None: not run (migration failed, or original)
    verdict: compare.CompareResult | None = None
    seconds: float = 0.0
    rerun: compare.RunResult | None = None  # a second run of the original, if one was needed
    _ruff: dict[str, str | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.script.name

    @property
    def runs_unchanged(self) -> bool:
        return self.original.ok

    @property
    def migration_ok(self) -> bool:
        return self.migration.error is None and self.migration.new_bytes is not None

    @property
    def markers(self) -> list[str]:
        return [m.code for m in self.migration.markers]

    @property
    def migrated_runs(self) -> bool | None:
        """None when it was not run (the migration failed, or the original does not run)."""
        return None if self.migrated is None else self.migrated.ok

    @property
    def broken(self) -> bool:
        """Ran unchanged, and the migrated script does not run."""
        return self.runs_unchanged and self.migrated is not None and not self.migrated.ok

    @property
    def identical(self) -> bool:
        return self.verdict is not None and self.verdict.exit_code == compare.EXIT_IDENTICAL

    @property
    def stdout_same(self) -> bool | None:
        if self.migrated is None or not (self.original.ok and self.migrated.ok):
            return None
        return strip_warnings(self.original.stdout) == strip_warnings(self.migrated.stdout)

    def stdout_stable(self) -> bool:
        """Does the original print the same in a second run? Asked only when the migrated
        script prints differently: a wall-clock ``throttle`` prints at different steps in
        two runs of one script, and then stdout cannot judge the migration (the trace
        still does). Costs one more run of the original, once."""
        if self.rerun is None:
            self.rerun = run_one(self.script)
        return self.rerun.ok and strip_warnings(self.rerun.stdout) == strip_warnings(
            self.original.stdout)

    def stdout_text(self) -> str:
        """The tally's "stdout same" cell."""
        same = self.stdout_same
        if same is None:
            return "-"
        if same:
            return "yes"
        return "**no**" if self.stdout_stable() else "n/a (differs between two runs of " \
            "the original: wall-clock throttle)"

    def stdout_diff(self, context: int = 3) -> str:
        import difflib

        assert self.migrated is not None
        return "\n".join(difflib.unified_diff(
            strip_warnings(self.original.stdout), strip_warnings(self.migrated.stdout),
            "original", "migrated", n=context, lineterm=""))

    def ruff_original(self) -> str | None:
        if "original" not in self._ruff:
            self._ruff["original"] = ruff(self.script.read_bytes(), self.script)
        return self._ruff["original"]

    def ruff_migrated(self) -> str | None:
        if "migrated" not in self._ruff:
            data = self.migration.new_bytes or self.script.read_bytes()
            self._ruff["migrated"] = ruff(data, self.script)
        return self._ruff["migrated"]

    def verdict_text(self) -> str:
        v = self.verdict
        if v is None:
            return "-"
        if v.exit_code == compare.EXIT_IDENTICAL:
            if v.steps_compared:
                return f"IDENTICAL ({v.steps_compared} steps)"
            return "IDENTICAL (no steps: stdout, final values)"
        if v.exit_code == compare.EXIT_DIVERGED:
            return f"DIVERGED at step {v.step}" if v.step else "DIVERGED"
        return "NOT RUNNABLE"

    def failure_report(self, tail: int = 15) -> str:
        """Why this script is not clean, with the traceback tail of a failed run."""
        out = []
        if not self.original.ok:
            out.append(f"original does not run: {self.original.failure()}\n"
                       f"{self.original.stderr_tail(tail)}")
        if self.migration.error:
            out.append(f"migration error: {self.migration.error}")
        for m in self.migration.markers:
            out.append(f"marker line {m.line} {m.code}: {m.message}")
        if self.broken and self.migrated is not None:
            out.append(f"migrated script does not run: {self.migrated.failure()}\n"
                       f"{self.migrated.stderr_tail(tail)}")
        elif self.verdict is not None and not self.identical and self.original.ok:
            out.append(compare.format_result(self.verdict, "original", "migrated"))
        if self.stdout_same is False:
            why = "" if self.stdout_stable() else (
                " (and so does a second run of the original: not held against the migration)")
            out.append(f"stdout differs{why}:\n" + self.stdout_diff())
        return "\n".join(out)


_CACHE: dict[Path, Outcome] = {}


def evaluate(script: Path, *, timeout: float = TIMEOUT, migrate_broken: bool = True) -> Outcome:
    """Run, migrate, run migrated, compare (cached per process).

    With ``migrate_broken=False`` a script that does not run unchanged (a fixture that
    is a snippet) is not migrated either."""
    script = Path(script).resolve()
    if script in _CACHE:
        return _CACHE[script]
    started = time.monotonic()
    data = script.read_bytes()
    original = run_one(script, timeout=timeout)
    if original.ok or migrate_broken:
        migration = migrate_bytes(data, str(script))
    else:
        migration = FileResult(str(script), error="not migrated: it does not run unchanged")
    outcome = Outcome(script, migration, original)
    if outcome.migration_ok and original.ok:  # a script that does not run: nothing to compare
        assert migration.new_bytes is not None
        if migration.new_bytes == data:
            outcome.migrated = original  # nothing changed: the same run stands for both
        else:
            outcome.migrated = run_source(migration.new_bytes, script, timeout=timeout)
        outcome.verdict = compare.compare_runs(original, outcome.migrated)
    outcome.seconds = time.monotonic() - started
    _CACHE[script] = outcome
    return outcome


# ------------------------------------------------------------------------- the tally


def _yes(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "**no**")


def tally(outcomes: list[Outcome], *, ruff_check: bool = True) -> str:
    """The markdown table and the totals."""
    rows = ["| script | source | runs unchanged | markers | migrated runs | compare | "
            "stdout same | ruff F,I clean |",
            "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        codes = sorted(set(o.markers))
        markers = "0" if not o.markers else f"{len(o.markers)} ({', '.join(codes)})"
        if o.migration.error:
            markers = "migration error"
        clean = "-"
        if ruff_check:
            orig, new = o.ruff_original(), o.ruff_migrated()
            clean = _yes(new is None) + ("" if orig is None else " (original is not)")
        rows.append(
            f"| `{o.name}` | {source_of(o.script) or '-'} | {_yes(o.runs_unchanged)} | "
            f"{markers} | {_yes(o.migrated_runs)} | {o.verdict_text()} | "
            f"{o.stdout_text()} | {clean} |"
        )
    n = len(outcomes)
    ran = sum(o.runs_unchanged for o in outcomes)
    good = sum(o.migration_ok and not o.markers and o.identical for o in outcomes)
    broken = [o.name for o in outcomes if o.broken]
    with_markers = sum(bool(o.markers) for o in outcomes)
    pct = 100.0 * good / n if n else 0.0
    rows += [
        "",
        f"**{n} scripts**; {ran} of {n} run unchanged; **{good} of {n} ({pct:.0f} %) migrate "
        f"with no marker and compare IDENTICAL**; {with_markers} keep a marker; "
        f"**{len(broken)} broken by migration**"
        + (f" ({', '.join(f'`{b}`' for b in broken)})" if broken else "")
        + ".",
    ]
    return "\n".join(rows)


def details(outcomes: list[Outcome], *, ruff_check: bool = True) -> str:
    """Why each script that is not clean is not: markers, failures with their
    traceback tails, compare reports, stdout diffs, ruff reports."""
    out = []
    for o in outcomes:
        ruff_report = o.ruff_migrated() if ruff_check and o.migration_ok else None
        clean = (o.runs_unchanged and o.migration_ok and not o.markers and o.identical
                 and (o.stdout_same is not False or not o.stdout_stable())
                 and ruff_report is None)
        if clean:
            continue
        out.append(f"\n### {o.name}\n\n```\n{o.failure_report()}")
        if ruff_report is not None:
            out.append(f"ruff (migrated):\n{ruff_report}")
        out.append("```")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scripts", nargs="*", type=Path, help="default: every tests/corpus script")
    p.add_argument("--details", action="store_true",
                   help="after the table, why each script is not clean (traceback tails)")
    p.add_argument("--no-ruff", action="store_true", help="skip the ruff column")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per run")
    ns = p.parse_args(argv)
    scripts = ns.scripts or corpus_scripts()
    outcomes = []
    for i, s in enumerate(scripts, 1):
        o = evaluate(s, timeout=ns.timeout)
        print(f"[{i}/{len(scripts)}] {o.name}: {o.verdict_text()}, "
              f"{len(o.markers)} marker(s), {o.seconds:.0f} s", file=sys.stderr, flush=True)
        outcomes.append(o)
    print(tally(outcomes, ruff_check=not ns.no_ruff))
    if ns.details:
        print(details(outcomes, ruff_check=not ns.no_ruff))
    return 0


if __name__ == "__main__":
    sys.exit(main())
