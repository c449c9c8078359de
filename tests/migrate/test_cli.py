"""Acceptance 5 (partly) and 6: the command line, its modes and every exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fluxtrain_migrate import cli
from fluxtrain_migrate.cli import (
    EXIT_CHANGES,
    EXIT_FAILED,
    EXIT_MARKERS,
    EXIT_USAGE,
    EXIT_VERIFY,
    main,
)

FIXTURES = Path(__file__).parent / "fixtures"

CLEAN = (FIXTURES / "params/basic.before.py").read_bytes().replace(
    b"print(sum(p.numel() for p in ps), len(ps))\n", b""
)
CLEAN_AFTER = (FIXTURES / "params/basic.after.py").read_bytes().replace(
    b"print(sum(p.numel() for p in fluxtrain.trainables(model)), "
    b"len(fluxtrain.trainables(model)))\n", b""
)
MARKED = (FIXTURES / "params/other_use.before.py").read_bytes()
PLAIN = b"import os\nprint(os.sep)\n"
BROKEN = b"import fluxtrain\ndef f(:\n    pass\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_bytes(CLEAN)
    (root / "pkg" / "plain.py").write_bytes(PLAIN)
    (root / "notes.txt").write_text("not python")
    return root


def test_clean_after_fixture_is_the_migration_of_clean():
    from fluxtrain_migrate.engine import migrate_bytes

    assert migrate_bytes(CLEAN).new_bytes == CLEAN_AFTER


def test_default_run_writes_nothing_and_summarises(tree, capsys):
    assert main([str(tree)]) == EXIT_CHANGES
    assert (tree / "train.py").read_bytes() == CLEAN
    err = capsys.readouterr().err
    assert "2 file(s) checked, 1 would change, 0 marker(s) left, 0 failed" in err


def test_nothing_to_do_exits_0(tree, capsys):
    assert main([str(tree / "pkg")]) == 0
    assert "1 file(s) checked, 0 would change" in capsys.readouterr().err


def test_diff(tree, capsys):
    assert main([str(tree / "train.py"), "--diff"]) == EXIT_CHANGES
    out = capsys.readouterr().out
    assert out.startswith(f"--- a/{tree / 'train.py'}\n+++ b/{tree / 'train.py'}\n")
    assert "-ps = fluxtrain.params(model)  # implicit Params\n" in out
    assert "+opt_state = fluxtrain.setup(fluxtrain.optimisers.Descent(0.1), model)\n" in out
    assert (tree / "train.py").read_bytes() == CLEAN


def test_check_never_writes(tree):
    assert main([str(tree), "--check"]) == EXIT_CHANGES
    assert (tree / "train.py").read_bytes() == CLEAN
    (tree / "train.py").write_bytes(CLEAN_AFTER)
    assert main([str(tree), "--check"]) == 0


def test_write_in_place(tree):
    plain_before = (tree / "pkg" / "plain.py").stat().st_mtime_ns
    assert main([str(tree), "--write"]) == EXIT_CHANGES
    assert (tree / "train.py").read_bytes() == CLEAN_AFTER
    assert (tree / "pkg" / "plain.py").stat().st_mtime_ns == plain_before
    assert not list(tree.rglob("*.tmp"))
    assert main([str(tree), "--write"]) == 0  # second run: nothing left to do


def test_output_dir(tree, tmp_path):
    out = tmp_path / "out"
    assert main([str(tree), "--output-dir", str(out)]) == EXIT_CHANGES
    assert (out / "train.py").read_bytes() == CLEAN_AFTER
    assert (out / "pkg" / "plain.py").read_bytes() == PLAIN
    assert (tree / "train.py").read_bytes() == CLEAN


def test_output_dir_refuses_overlap_and_non_empty(tree, tmp_path, capsys):
    assert main([str(tree), "--output-dir", str(tree / "sub")]) == EXIT_USAGE
    assert "overlaps" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert main([str(tree), "--output-dir", str(full)]) == EXIT_USAGE


def test_report_text(tree, tmp_path):
    (tree / "marked.py").write_bytes(MARKED)
    rep = tmp_path / "report.txt"
    assert main([str(tree), "--report", str(rep)]) == EXIT_CHANGES | EXIT_MARKERS
    lines = rep.read_text().splitlines()
    assert f"{tree / 'train.py'}:6:1: FM001 ps = params(model) removed (uses now take the model)" \
        in lines
    # one marker for the whole group, above its first statement (the model)
    assert any(line.startswith(f"{tree / 'marked.py'}:4:1: FM101 TODO gs, loss, model")
               for line in lines)


def test_report_json(tree, tmp_path):
    (tree / "marked.py").write_bytes(MARKED)
    rep = tmp_path / "report.json"
    main([str(tree), "--report", str(rep), "--format", "json"])
    data = json.loads(rep.read_text())
    assert data["summary"] == {"files": 3, "changed": 2, "markers": 1, "failed": 0}
    files = {Path(f["path"]).name: f for f in data["files"]}
    assert files["marked.py"]["markers"][0]["code"] == "FM101"
    assert files["marked.py"]["markers"][0]["line"] == 4
    rules = {c["rule"] for c in files["train.py"]["changes"]}
    assert rules == {"FM001", "FM002", "FM003", "FM004"}
    assert files["plain.py"]["changed"] is False


def test_jobs_2_gives_the_same_result(tree, tmp_path):
    for i in range(4):
        (tree / f"copy{i}.py").write_bytes(CLEAN)
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    assert main([str(tree), "--output-dir", str(out1)]) == EXIT_CHANGES
    assert main([str(tree), "-j", "2", "--output-dir", str(out2)]) == EXIT_CHANGES
    for f in out1.rglob("*.py"):
        assert (out2 / f.relative_to(out1)).read_bytes() == f.read_bytes()
    assert (out2 / "copy3.py").read_bytes() == CLEAN_AFTER


def test_syntax_error_is_reported_and_others_migrate(tree, capsys):
    (tree / "broken.py").write_bytes(BROKEN)
    status = main([str(tree), "--write"])
    assert status == EXIT_CHANGES | EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{tree / 'broken.py'}:2:7: syntax error" in err
    assert (tree / "broken.py").read_bytes() == BROKEN
    assert (tree / "train.py").read_bytes() == CLEAN_AFTER


def test_markers_exit_code_and_listing(tree, capsys):
    (tree / "marked.py").write_bytes(MARKED)
    assert main([str(tree / "marked.py")]) == EXIT_CHANGES | EXIT_MARKERS
    out = capsys.readouterr().out
    assert f"{tree / 'marked.py'}:4:1: FM101 gs, loss, model, opt, ps, ... left in the implicit " \
        "style" in out


def test_all_bits_together(tree):
    (tree / "marked.py").write_bytes(MARKED)
    (tree / "broken.py").write_bytes(BROKEN)
    assert main([str(tree)]) == EXIT_CHANGES | EXIT_MARKERS | EXIT_FAILED


def test_usage_errors(tree, capsys):
    assert main([str(tree / "missing.py")]) == EXIT_USAGE
    assert main([str(tree), "--select", "FM999"]) == EXIT_USAGE
    assert "unknown rule id(s): FM999" in capsys.readouterr().err
    assert main([str(tree), "-j", "0"]) == EXIT_USAGE
    assert main([str(tree), "--write", "--check"]) == EXIT_USAGE
    assert main([]) == EXIT_USAGE


def test_select_and_disable(tree):
    (tree / "ep.py").write_bytes((FIXTURES / "epochs/basic.before.py").read_bytes())
    assert main([str(tree / "ep.py"), "--disable", "FM006"]) == 0
    assert main([str(tree / "train.py"), "--select", "FM006"]) == 0
    assert main([str(tree / "ep.py"), "--select", "FM006", "--write"]) == EXIT_CHANGES
    assert (tree / "ep.py").read_bytes() == (FIXTURES / "epochs/basic.after.py").read_bytes()


def test_disabling_a_rule_disables_its_dependents():
    from fluxtrain_migrate.engine import resolve_rules

    assert resolve_rules(None, ["FM002"]) == {"FM001", "FM006", "FM007"} | (
        {"FM004"} - {"FM004"})
    assert resolve_rules(["FM003"], None) == {"FM002", "FM003", "FM004", "FM007"}


def test_verify_without_compare_module(tree, capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "fluxtrain_migrate.compare":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    status = main([str(tree), "--write", "--verify"])
    assert status == EXIT_CHANGES | EXIT_VERIFY
    assert "--verify needs fluxtrain_migrate.compare" in capsys.readouterr().err
    assert main(["compare", "a.py", "b.py"]) == EXIT_USAGE


def test_verify_calls_verify_pairs(tree, tmp_path, monkeypatch):
    import types

    seen = []
    fake = types.SimpleNamespace(verify_pairs=lambda pairs: seen.extend(pairs) or 1)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    out = tmp_path / "out"
    assert main([str(tree), "--output-dir", str(out), "--verify"]) == EXIT_CHANGES | EXIT_VERIFY
    assert (tree / "train.py", out / "train.py") in seen
    assert main([str(tree), "--verify"]) == EXIT_USAGE


def test_compare_subcommand_delegates(monkeypatch):
    import types

    calls = []
    fake = types.SimpleNamespace(main=lambda argv: calls.append(argv) or 3)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    assert main(["compare", "old.py", "new.py"]) == 3
    assert calls == [["old.py", "new.py"]]


def test_list_rules(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for rid in ("FM001", "FM002", "FM003", "FM004", "FM005", "FM006", "FM007", "FM101"):
        assert rid in out


def test_python_dash_m(tree):
    proc = subprocess.run([sys.executable, "-m", "fluxtrain_migrate", str(tree), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CHANGES, proc.stderr
    assert "1 would change" in proc.stderr
