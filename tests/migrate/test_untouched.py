"""Acceptance 5: a file that does not use fluxtrain comes back byte-identical.

The byte-identity is checked with the cheap text pre-filter switched off
(``force=True``), so these files really go through the parser and the
import check, over a sample of the standard library (all of it in the slow
run) and over hypothesis-generated source."""

from __future__ import annotations

import sysconfig
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from fluxtrain_migrate.engine import migrate_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[Path]:
    files = []
    for p in sorted(STDLIB.rglob("*.py")):
        rel = p.relative_to(STDLIB).parts
        if rel[0] in ("site-packages", "dist-packages") or "test" in rel[0:1]:
            continue
        files.append(p)
    return files


def _check(path: Path) -> str | None:
    """None if ``path`` comes back byte-identical (or is not valid for this parser)."""
    data = path.read_bytes()
    r = migrate_bytes(data, str(path), force=True)
    if r.error is not None:
        # files this Python's grammar or libcst cannot read are reported, never touched
        return None if "syntax error" in r.error or "cannot parse" in r.error else r.error
    if r.new_bytes != data or r.changed or r.changes:
        return f"{path}: changed"
    return None


def test_inexact_libcst_round_trip_is_a_reported_failure_not_a_change():
    src = b"import fluxtrain\ntry:\n    pass\nexcept (OSError, ValueError) :\n    pass\n"
    r = migrate_bytes(src, "rt.py")
    if r.error is None:  # a libcst release that fixed the round trip
        assert r.new_bytes == src
    else:
        assert r.error.startswith("rt.py:4:1: libcst cannot reproduce")
        assert r.new_bytes == src and not r.changed
    plain = src.replace(b"import fluxtrain\n", b"import os\n")
    r = migrate_bytes(plain, "rt.py", force=True)
    assert r.error is None and r.new_bytes == plain


FAST_SAMPLE = ["os.py", "argparse.py", "dataclasses.py", "json/decoder.py",
               "email/message.py", "asyncio/tasks.py", "collections/__init__.py", "webbrowser.py"]


@pytest.mark.parametrize("name", FAST_SAMPLE)
def test_stdlib_sample_is_byte_identical(name):
    path = STDLIB / name
    assert path.exists()
    assert _check(path) is None


@pytest.mark.slow
def test_whole_stdlib_is_byte_identical():
    files = _stdlib_files()
    assert len(files) > 500
    with ProcessPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(_check, files, chunksize=16) if p is not None]
    assert problems == []


def test_mentions_but_does_not_import_fluxtrain():
    src = b'# fluxtrain is great\r\nx = "fluxtrain.params(model)"\r\nparams = 1\r\n'
    r = migrate_bytes(src, "m.py")
    assert r.new_bytes == src and not r.changed and r.error is None


def test_shadowing_import_of_other_module_is_untouched():
    src = b"from mylib import params, train_\nps = params(model)\ntrain_(loss, ps, data, opt)\n"
    assert migrate_bytes(src, "m.py", force=True).new_bytes == src


IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s not in {"if", "in", "is", "or", "as", "def", "for", "and", "not", "del",
                        "try", "else", "elif", "with", "from", "pass", "class", "while",
                        "yield", "break", "raise", "async", "await", "lambda", "return",
                        "import", "global", "assert", "except", "finally", "continue",
                        "nonlocal", "match", "case", "type", "_"})
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


@st.composite
def _statement(draw: st.DrawFn) -> str:
    a, b = draw(IDENT), draw(IDENT)
    s = draw(TEXT).replace("\\", "\\\\").replace('"', '\\"')
    kind = draw(st.integers(0, 7))
    ws = draw(st.sampled_from([" ", "  ", "\t"]))
    comment = draw(st.sampled_from(["", "  # fluxtrain", f"  # {s}", "#x"]))
    line = [
        f"{a} ={ws}{b}({a}, {ws}\"{s}\")",
        f"import {a} as {b}",
        f"from {a} import ({b},\n    {a})",
        f"def {a}({b}={ws}1):\n    return {b} * 2",
        f"class {a}:\n    {b}: int = 3",
        f"for {a} in range({len(s)}):\n    {b} = {a}  # fluxtrain.params({a})",
        f"{a} = lambda {b}: [{b} for {b} in \"{s}\"]",
        f"if {a}:\n\n    pass\nelse:\n    {b} = f\"{{{a}}}\"",
    ][kind]
    return line + comment


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_statement(), min_size=1, max_size=8),
       st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans())
def test_generated_source_is_byte_identical(stmts, newline, bom, trailing_newline):
    text = newline.join(stmts).replace("\n", newline) if newline == "\n" else \
        "\n".join(stmts).replace("\n", "\r\n")
    if trailing_newline:
        text += newline
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    try:
        compile(data, "<gen>", "exec")
    except SyntaxError:
        return
    r = migrate_bytes(data, "gen.py", force=True)
    assert r.error is None
    assert r.new_bytes == data
