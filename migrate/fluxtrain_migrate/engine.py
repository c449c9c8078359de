"""Migrate one file: parse once, run the rules in order, check the result compiles."""

from __future__ import annotations

import difflib
import re
from typing import Any

import libcst as cst

from fluxtrain_migrate.common import Context, Stage, add_comments
from fluxtrain_migrate.report import (
    MARKER_PREFIX,
    MARKERS,
    Change,
    FileResult,
    Marker,
    marker_text,
)
from fluxtrain_migrate.transforms import DEPENDS, RULES

ALL_RULE_IDS: list[str] = [r.RULE_ID for r in RULES]
_MARKER_RE = re.compile(r"#\s*TODO\(fluxtrain-migrate (FM\d+)\):\s*(.*)")
_BOM = b"\xef\xbb\xbf"


def resolve_rules(select: list[str] | None, disable: list[str] | None) -> set[str]:
    """The enabled rule ids: ``select`` (default all) plus what they depend on, minus
    ``disable`` and everything that depends on a disabled rule."""
    unknown = [r for r in (select or []) + (disable or []) if r not in ALL_RULE_IDS]
    if unknown:
        raise ValueError(f"unknown rule id(s): {', '.join(unknown)} "
                         f"(known: {', '.join(ALL_RULE_IDS)})")
    enabled = set(select) if select else set(ALL_RULE_IDS)
    enabled.add("FM007")
    changed = True
    while changed:
        changed = False
        for rid in list(enabled):
            for dep in DEPENDS.get(rid, set()):
                if dep not in enabled:
                    enabled.add(dep)
                    changed = True
    off = set(disable or [])
    changed = True
    while changed:
        changed = False
        for rid, deps in DEPENDS.items():
            if rid not in off and deps & off:
                off.add(rid)
                changed = True
    return enabled - off


def uses_fluxtrain(data: bytes) -> bool:
    """Cheap pre-filter: a file that never spells ``fluxtrain`` is left alone."""
    return b"fluxtrain" in data


def imports_fluxtrain(module: cst.Module) -> bool:
    """Does the module import fluxtrain anywhere (``import fluxtrain...``/``from fluxtrain...``)?"""
    found = False

    class _V(cst.CSTVisitor):
        def visit_Import(self, node: cst.Import) -> None:
            nonlocal found
            for a in node.names:
                name = cst.Module([]).code_for_node(a.name)
                found = found or name == "fluxtrain" or name.startswith("fluxtrain.")

        def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
            nonlocal found
            if node.module is not None and not node.relative:
                name = cst.Module([]).code_for_node(node.module)
                found = found or name == "fluxtrain" or name.startswith("fluxtrain.")

    module.visit(_V())
    return found


def migrate_bytes(
    data: bytes, path: str = "<string>", rules: set[str] | None = None, force: bool = False
) -> FileResult:
    """Migrate the bytes of one file. Never raises for a bad input: see ``error``.

    A file that never spells ``fluxtrain`` is returned at once (unless ``force``, used by
    the tests to push it through the parser); one that does not import fluxtrain is
    parsed and returned unchanged.
    """
    result = FileResult(path=path, old_bytes=data, new_bytes=data)
    if not force and not uses_fluxtrain(data):
        return result
    bom = data.startswith(_BOM)
    body = data[len(_BOM):] if bom else data
    try:
        module = cst.parse_module(body)
    except cst.ParserSyntaxError as e:
        result.error = _syntax_error(body, path, e)
        return result
    except Exception as e:  # noqa: BLE001 - e.g. undecodable bytes
        result.error = f"{path}:1:1: cannot parse: {e}"
        return result
    try:
        uses = imports_fluxtrain(module)
    except RecursionError:
        result.error = f"{path}:1:1: cannot parse: too deeply nested for the codemod"
        return result
    if not uses:
        return result  # the original bytes, untouched
    if module.bytes != body:
        # libcst does not always reproduce a file exactly (e.g. ``except (A, B) :`` in
        # libcst 1.9); rather than touch untouched lines, leave the file alone
        line = _first_difference(body, module.bytes)
        result.error = (f"{path}:{line}:1: libcst cannot reproduce this line exactly; "
                        "file left unchanged (migrate it by hand)")
        return result
    enabled = rules if rules is not None else set(ALL_RULE_IDS)
    original = module
    excluded: set[str] = set()
    reasons: list[tuple[frozenset[str], str, str, str]] = []
    try:
        # all or nothing per data-flow group: a group that any rule could not convert is
        # left exactly as it was, and the rules run again without it, until none is blocked
        for _attempt in range(8):
            ctx = Context(path=path, excluded=set(excluded))
            result.changes.clear()
            module = _run_rules(original, enabled, ctx, path, result)
            new_keys = set().union(*(keys for keys, *_ in ctx.blocking)) - excluded
            reasons.extend(b for b in ctx.blocking if b not in reasons)
            if not new_keys:
                break
            excluded |= new_keys
        else:
            raise RuntimeError("the data-flow groups did not settle")
        if excluded:
            module = _mark_groups(module, excluded, reasons)
    except Exception as e:  # noqa: BLE001 - a rule crash is reported, the file left alone
        result.error = f"{path}:1:1: internal error in the codemod: {type(e).__name__}: {e}"
        result.changes.clear()
        return result
    new = module.bytes
    if bom:
        new = _BOM + new
    if new == data:
        result.changes.clear()
    else:
        try:
            compile(new, path, "exec", dont_inherit=True)
        except SyntaxError as e:
            result.error = (f"{path}:{e.lineno}:{e.offset}: the migrated code does not "
                            f"compile ({e.msg}); file left unchanged")
            result.changes.clear()
            return result
    result.new_bytes = new
    result.changed = new != data
    result.markers = find_markers(module.code, path)
    return result


def _run_rules(module: cst.Module, enabled: set[str], ctx: Context, path: str,
               result: FileResult) -> cst.Module:
    """Every enabled rule once, in order, each on a fresh stage of the previous result."""
    original_lines = module.code.splitlines()
    for rule_cls in RULES:
        if rule_cls.RULE_ID not in enabled:
            continue
        stage = Stage(module)
        before = len(ctx.changes)
        new_module = rule_cls(stage, ctx).run()
        _map_positions(ctx, before, original_lines, module.code.splitlines(), path, result)
        module = new_module
    return module


def _mark_groups(module: cst.Module, excluded: set[str],
                 reasons: list[tuple[frozenset[str], str, str, str]]) -> cst.Module:
    """One marker per group left alone, above the group's first statement."""
    stage = Stage(module)
    groups = stage.groups
    firsts: dict[int, list[str]] = {}
    for comp in groups.components():
        if not comp & excluded:
            continue
        protected = groups.protected_statements(comp)
        stmts = [n for n in groups.statements if id(n) in protected]
        if not stmts:
            continue
        first = min(stmts, key=stage.position)
        why = [r for r in reasons if r[0] & comp]
        firsts.setdefault(id(first), []).append(group_marker(comp, why))
    return module.visit(_Commenter(firsts))


_CAUSE_ORDER = ["FM110", "FM106", "FM105", "FM104", "FM109", "FM102", "FM103", "FM101",
                "FM111", "FM108", "FM107"]


def group_marker(comp: set[str], why: list[tuple[frozenset[str], str, str, str]]) -> str:
    """``# TODO(fluxtrain-migrate FMxxx): <names> left in the implicit style: <why>``."""
    names = sorted({k.split(":", 1)[1] for k in comp if k.startswith(":")}) or sorted(
        {k.split(":", 1)[1] for k in comp})
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    # the cause first: a specific reason, then the codes nearest the cause (a gradient
    # that cannot be converted blocks its optimiser too, not the other way round)
    why = sorted(why, key=lambda r: (
        r[2] == MARKERS.get(r[1]),
        -1 if r[1] == "FM107" and r[2] != MARKERS["FM107"]
        else _CAUSE_ORDER.index(r[1]) if r[1] in _CAUSE_ORDER
        else len(_CAUSE_ORDER)))
    mcode = why[0][1] if why else "FM111"
    seen: list[str] = []
    for _keys, _code, reason, where in why:
        text = f"`{where}`: {reason}" if where else reason
        if text not in seen:
            seen.append(text)
    detail = seen[0] if seen else MARKERS["FM111"]
    return marker_text(mcode, f"{shown} left in the implicit style, all together so that "
                       f"the script still runs: {detail}")


class _Commenter(cst.CSTTransformer):
    def __init__(self, texts: dict[int, list[str]]) -> None:
        super().__init__()
        self.texts = texts

    def on_leave(self, original_node: Any, updated_node: Any) -> Any:
        result = super().on_leave(original_node, updated_node)
        texts = self.texts.get(id(original_node))
        return add_comments(result, texts) if texts else result


def _first_difference(a: bytes, b: bytes) -> int:
    """1-based line of the first difference between two byte strings."""
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a[:n].count(b"\n") + 1


def _syntax_error(body: bytes, path: str, e: cst.ParserSyntaxError) -> str:
    """``path:line:col: syntax error: ...``, with CPython's position when it has one."""
    try:
        compile(body, path, "exec", dont_inherit=True)
    except SyntaxError as se:
        if se.lineno:
            return f"{path}:{se.lineno}:{se.offset or 1}: syntax error: {se.msg}"
    except Exception:  # noqa: BLE001 - fall back to libcst's position
        pass
    return f"{path}:{e.raw_line}:{e.raw_column + 1}: syntax error: {e.message}"


def find_markers(text: str, path: str) -> list[Marker]:
    """Every ``# TODO(fluxtrain-migrate FMxxx)`` comment with its position."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if MARKER_PREFIX not in line:
            continue
        m = _MARKER_RE.search(line)
        if m:
            out.append(Marker(path, i, m.start(), m.group(1), m.group(2).strip()))
    return out


def _map_positions(ctx: Context, start: int, original: list[str], stage: list[str],
                   path: str, result: FileResult) -> None:
    """Turn a rule's stage positions into positions in the input file."""
    if start == len(ctx.changes):
        return
    mapping: dict[int, int] = {}
    sm = difflib.SequenceMatcher(None, original, stage, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        for k in range(j1, j2):
            if tag == "equal" or (i2 - i1) == (j2 - j1):
                mapping[k + 1] = i1 + (k - j1) + 1
            else:
                mapping[k + 1] = min(i1 + (k - j1), max(i2 - 1, i1)) + 1
    for rule, line, col, msg in ctx.changes[start:]:
        result.changes.append(Change(path, mapping.get(line, line), col, rule, msg))
