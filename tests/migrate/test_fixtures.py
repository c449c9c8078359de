"""Acceptance 1 and 2: every rule's before/after fixtures, CRLF/BOM variants, idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest
from fluxtrain_migrate.engine import migrate_bytes
from fluxtrain_migrate.transforms import RULES

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_pairs() -> list[tuple[Path, Path]]:
    """(before, after) for every fixture."""
    out = []
    for before in sorted(FIXTURES.glob("*/*.before.py")):
        after = before.with_name(before.name.replace(".before.py", ".after.py"))
        out.append((before, after))
    return out


def crlf(data: bytes) -> bytes:
    """The same text with CRLF line ends."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

PAIRS = fixture_pairs()
IDS = [f"{b.parent.name}/{b.name[:-len('.before.py')]}" for b, _ in PAIRS]


@pytest.mark.parametrize(("before", "after"), PAIRS, ids=IDS)
def test_fixture(before, after):
    result = migrate_bytes(before.read_bytes(), str(before))
    assert result.error is None
    assert result.new_bytes.decode() == after.read_text()


@pytest.mark.parametrize(("before", "after"), PAIRS, ids=IDS)
def test_fixture_idempotent(before, after):
    again = migrate_bytes(after.read_bytes(), str(after))
    assert again.error is None
    assert again.new_bytes == after.read_bytes()
    assert again.changes == []


@pytest.mark.parametrize(("before", "after"), PAIRS, ids=IDS)
def test_fixture_crlf(before, after):
    result = migrate_bytes(crlf(before.read_bytes()), str(before))
    assert result.error is None
    assert result.new_bytes == crlf(after.read_bytes())


def test_bom_is_kept():
    before, after = FIXTURES / "params/basic.before.py", FIXTURES / "params/basic.after.py"
    bom = b"\xef\xbb\xbf"
    result = migrate_bytes(bom + before.read_bytes(), "bom.py")
    assert result.new_bytes == bom + after.read_bytes()


def test_latin1_coding_cookie_kept():
    src = ("# -*- coding: latin-1 -*-\n# café\n" + (FIXTURES / "epochs/basic.before.py")
           .read_text()).encode("latin-1")
    result = migrate_bytes(src, "latin.py")
    assert result.error is None
    text = result.new_bytes.decode("latin-1")
    assert "# café" in text and "range(1, n + 1)" in text


def test_every_rule_has_fixtures():
    dirs = {p.parent.name for p, _ in PAIRS}
    for rule in RULES:
        assert rule.NAME in dirs, f"no fixtures for {rule.RULE_ID} ({rule.NAME})"


def test_fixtures_cover_required_cases():
    """Aliases, from-import aliases, star imports, shadowing, comments next to changes."""
    text = {b.name: b.read_text() for b, _ in PAIRS}
    joined = "\n".join(text.values())
    assert "import fluxtrain as F" in joined
    assert "from fluxtrain import params as P" in joined
    assert "from fluxtrain import *" in joined
    assert "def params(" in text["shadowed.before.py"]
    assert "# implicit Params" in text["basic.before.py"]


def test_shadowed_names_are_left_alone():
    before = FIXTURES / "params/shadowed.before.py"
    result = migrate_bytes(before.read_bytes(), str(before))
    assert result.new_bytes == before.read_bytes() and not result.changed


def test_comment_of_removed_params_line_is_kept():
    after = (FIXTURES / "params/basic.after.py").read_text()
    assert "# collect the trainable parameters\n# implicit Params\n" in after


def test_changes_are_reported_at_input_positions():
    before = FIXTURES / "params/basic.before.py"
    result = migrate_bytes(before.read_bytes(), str(before))
    lines = before.read_text().splitlines()
    by_rule: dict = {}
    for c in result.changes:
        by_rule.setdefault(c.rule, c)
    assert lines[by_rule["FM001"].line - 1].startswith("ps = fluxtrain.params(model)")
    assert lines[by_rule["FM004"].line - 1].startswith("opt = fluxtrain.Descent")
    assert lines[by_rule["FM003"].line - 1].startswith("gs = fluxtrain.gradient")


def test_markers_are_reported_with_output_positions():
    before = FIXTURES / "params/other_use.before.py"
    result = migrate_bytes(before.read_bytes(), str(before))
    out = result.new_bytes.decode().splitlines()
    assert [m.code for m in result.markers] == ["FM101"]
    m = result.markers[0]
    assert out[m.line - 1].startswith("# TODO(fluxtrain-migrate FM101)")
    # the group's one marker sits above its first statement and names what blocked it
    assert out[m.line] == "model = torch.nn.Linear(2, 1)"
    assert "`save_all(ps)`: implicit Params used here" in out[m.line - 1]
