"""Issue 20, item 2: a migration never breaks a script that worked.

Property: every fixture (``tests/migrate/fixtures/*/*.before.py`` that runs unchanged;
most fixtures are snippets that do not, and are skipped, detected at test time), every
example (``examples/*.py``, ``examples/explicit/*.py``) and every corpus script
(``tests/corpus/*.py``), run before and after ``migrate_bytes``, markers or not, exits
0 both times, leaves the same trace (compare's verdict on the two runs: IDENTICAL; for
a runnable fixture that trains nothing, no step and no tensor on either side is the same
trace too) and prints the same stdout (warning lines aside, object addresses blanked).
A script whose stdout differs between two runs of the original (a wall-clock
``throttle``: ``examples/autoencoder_epochs.py``) is skipped after its trace check:
its stdout cannot judge the migration.

The runs are shared with ``test_corpus.py`` (``scripts/corpus_tally.py``'s cache): a
corpus script runs twice in a session that collects both. Slow:
``pytest tests/migrate/test_migration_property.py -m slow``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tally():
    mod = sys.modules.get("corpus_tally")
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            "corpus_tally", ROOT / "scripts" / "corpus_tally.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["corpus_tally"] = mod
        spec.loader.exec_module(mod)
    return mod


tally = _load_tally()
FIXTURES = tally.fixture_scripts()
EXAMPLES = tally.example_scripts()
CORPUS = tally.corpus_scripts()
ALL = [*FIXTURES, *EXAMPLES, *CORPUS]


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_sources_are_found():
    assert len(FIXTURES) >= 20
    assert len([p for p in EXAMPLES if p.parent.name == "examples"]) >= 8
    assert len(CORPUS) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("script", ALL, ids=_id)
def test_migration_keeps_stdout_and_trace(script: Path) -> None:
    is_fixture = script in FIXTURES
    o = tally.evaluate(script, migrate_broken=not is_fixture)
    if not o.runs_unchanged:
        if is_fixture:
            pytest.skip("a snippet: does not run unchanged")
        pytest.fail(f"does not run unchanged: {o.original.failure()}\n"
                    f"{o.original.stderr_tail()}")
    assert o.migration.error is None, o.migration.error
    assert o.migrated is not None
    assert o.migrated.ok, (
        f"BROKEN BY MIGRATION: {o.migrated.failure()}\n{o.migrated.stderr_tail()}\n"
        + "\n".join(f"marker line {m.line} {m.code}: {m.message}" for m in o.migration.markers))
    v = o.verdict
    assert v is not None
    if v.exit_code == tally.compare.EXIT_FAILED:
        # both ran: only "nothing to compare" is left; no step on either side is one trace
        assert not o.original.records and not o.migrated.records, v.message
        assert not o.original.final and not o.migrated.final, v.message
    else:
        assert o.identical, tally.compare.format_result(v, "before", "after")
    if not o.stdout_same and not o.stdout_stable():
        pytest.skip("same trace; stdout differs between two runs of the original "
                    "(wall-clock throttle), so it cannot judge the migration")
    assert o.stdout_same, o.stdout_diff()
