"""Acceptance 4 and 2: every old-style example migrates with no marker, the result has
no implicit-era call, compiles and runs; a second run over examples/ changes nothing."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fluxtrain_migrate.cli import main
from fluxtrain_migrate.engine import migrate_bytes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
IMPLICIT_CALLS = {"params", "Params", "Grads", "stop", "skip", "epochs"}


def _old_style() -> list[Path]:
    if not EXAMPLES.is_dir():
        return []
    out = []
    for p in sorted(EXAMPLES.glob("*.py")):
        if p.name.endswith("_explicit.py"):
            continue
        r = migrate_bytes(p.read_bytes(), str(p))
        if r.changed or r.markers:  # already-explicit scripts are not old-style
            out.append(p)
    return out


OLD = _old_style()


def _implicit_calls(tree: ast.AST) -> list[str]:
    """Names of implicit-era fluxtrain functions called (by attribute or from-import)."""
    imported: dict[str, str] = {}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("fluxtrain", "fluxtrain.optimise"):
            for a in node.names:
                imported[a.asname or a.name] = a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fluxtrain"):
                    modules.add(a.asname or a.name.split(".")[0])
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and imported.get(f.id) in IMPLICIT_CALLS:
                bad.append(f.id)
            elif (isinstance(f, ast.Attribute) and f.attr in IMPLICIT_CALLS
                  and isinstance(f.value, ast.Name) and f.value.id in modules):
                bad.append(f.attr)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) \
                    and f.value.attr == "optimise":
                bad.append(f.attr)
    return bad


@pytest.mark.skipif(not OLD, reason="examples/ has no old-style script")
@pytest.mark.parametrize("path", OLD, ids=lambda p: p.name)
def test_example_migrates_cleanly(path):
    r = migrate_bytes(path.read_bytes(), str(path))
    assert r.error is None, r.error
    assert r.markers == [], [f"{m.line}: {m.code} {m.message}" for m in r.markers]
    new = r.new_bytes.decode()
    compile(new, str(path), "exec")
    assert _implicit_calls(ast.parse(new)) == []
    again = migrate_bytes(r.new_bytes, str(path))
    assert again.new_bytes == r.new_bytes, "not idempotent"


@pytest.mark.slow
@pytest.mark.skipif(not OLD, reason="examples/ has no old-style script")
@pytest.mark.parametrize("path", OLD, ids=lambda p: p.name)
def test_migrated_example_runs(path, tmp_path):
    r = migrate_bytes(path.read_bytes(), str(path))
    assert r.error is None and not r.markers
    script = tmp_path / path.name
    script.write_bytes(r.new_bytes)
    for extra in EXAMPLES.iterdir():  # data files next to the examples
        if extra.is_file() and extra.suffix != ".py":
            shutil.copy(extra, tmp_path / extra.name)
    env = dict(os.environ, PYTHONWARNINGS="error::DeprecationWarning")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(not OLD, reason="examples/ has no old-style script")
def test_second_run_over_examples_changes_nothing(tmp_path):
    first = tmp_path / "first"
    second = tmp_path / "second"
    src = tmp_path / "src"
    src.mkdir()
    for p in OLD:
        shutil.copy(p, src / p.name)
    main([str(src), "--output-dir", str(first), "-q", "--no-progress"])
    assert main([str(first), "--output-dir", str(second), "-q", "--no-progress"]) == 0
    for p in first.rglob("*.py"):
        assert (second / p.relative_to(first)).read_bytes() == p.read_bytes()
