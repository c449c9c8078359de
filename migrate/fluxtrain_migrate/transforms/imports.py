"""FM007: add the imports the new code uses, drop the implicit-era ones it no longer uses."""

from __future__ import annotations

import sys
from typing import Any

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, ImportItem

from fluxtrain_migrate.common import Rule, Stage, code

_FROM = ("fluxtrain", "fluxtrain.optimise")


class ImportsRule(Rule):
    """Runs last. Keeps the user's style: ``import fluxtrain as F`` stays; from-imports get
    the new names; ``from fluxtrain import *`` is kept (it provides ``setup``,
    ``optimisers`` ...)."""

    RULE_ID = "FM007"
    NAME = "imports"
    DESCRIPTION = "add/remove imports"

    def run(self) -> cst.Module:
        module = self.stage.module
        in_order = _in_order(module)
        before = _bound_by_imports(module)
        if self.ctx.drop_imports:
            self._drop_names = set(self.ctx.drop_imports)
            module = module.visit(self)
        if self.ctx.add_imports:
            items = [ImportItem(mod, obj) for mod, obj in self.ctx.add_imports]
            ctx = CodemodContext()
            module = AddImportsVisitor(ctx, items).transform_module(module)
        if self.ctx.maybe_unused:
            module = _remove_unused(module, self.ctx.maybe_unused)
        added = {obj or mod for mod, obj in self.ctx.add_imports} - before
        if added:
            module = _remove_unused(module, added, added=True)
        if in_order is not None:
            module = sort_imports(module, in_order)
        return module

    def leave_ImportFrom(self, original_node: cst.ImportFrom,
                         updated_node: cst.ImportFrom) -> Any:
        if updated_node.module is None or code(updated_node.module) not in _FROM:
            return updated_node
        if isinstance(updated_node.names, cst.ImportStar):
            return updated_node
        keep = [a for a in updated_node.names
                if a.asname is not None or code(a.name) not in self._drop_names]
        if len(keep) == len(updated_node.names):
            return updated_node
        if not keep:
            return cst.RemoveFromParent()
        keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated_node.with_changes(names=keep)


def _remove_unused(module: cst.Module, names: set[str], added: bool = False) -> cst.Module:
    """Remove imports of ``names`` that nothing reads: ``from fluxtrain import name [as
    alias]`` (and from ``fluxtrain.optimise``); with ``added``, also the imports this run
    added (``import math``, ``from fluxtrain.optimisers import Adam``) for rewrites that a
    blocked group did not make."""
    stage = Stage(module)
    scope = stage.scope_of(module)
    if scope is None:
        return module
    modules = (*_FROM, "fluxtrain.optimisers") if added else _FROM
    unused: set[int] = set()
    for a in scope.assignments:
        node = getattr(a, "node", None)
        if a.references:
            continue
        if isinstance(node, cst.ImportFrom) and not isinstance(node.names, cst.ImportStar):
            if node.module is None or code(node.module) not in modules:
                continue
            for alias in node.names:
                if code(alias.name) in names and (
                        code(alias.asname.name) if alias.asname else code(alias.name)) == a.name:
                    unused.add(id(alias))
        elif added and isinstance(node, cst.Import):
            for alias in node.names:
                if alias.asname is None and code(alias.name) == a.name and a.name in names:
                    unused.add(id(alias))

    class _T(cst.CSTTransformer):
        def _without_unused(self, original_node: Any, updated_node: Any) -> Any:
            keep = [new for old, new in zip(original_node.names, updated_node.names)
                    if id(old) not in unused]
            if len(keep) == len(original_node.names):
                return updated_node
            if not keep:
                return cst.RemoveFromParent()
            keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            return updated_node.with_changes(names=keep)

        def leave_Import(self, original_node: cst.Import, updated_node: cst.Import) -> Any:
            return self._without_unused(original_node, updated_node)

        def leave_ImportFrom(self, original_node: cst.ImportFrom,
                             updated_node: cst.ImportFrom) -> Any:
            if isinstance(original_node.names, cst.ImportStar) or isinstance(
                    updated_node.names, cst.ImportStar):
                return updated_node
            return self._without_unused(original_node, updated_node)

    return module.visit(_T())


# -- import order ---------------------------------------------------------------------------
# ruff's (isort's) default order: sections future, standard library, the rest, relative;
# in each, ``import x`` lines before ``from x import y`` lines, by module; the names of a
# from-import constants first, then classes, then the rest. A block already in that order
# is kept in it after the rewrite; any other block is left as the user wrote it.


def _top(stmt: cst.BaseSmallStatement) -> str:
    if isinstance(stmt, cst.ImportFrom):
        if stmt.relative:
            return "."
        return code(stmt.module).split(".")[0] if stmt.module is not None else ""
    assert isinstance(stmt, cst.Import)
    return code(stmt.names[0].name).split(".")[0]


def _statement_key(stmt: cst.BaseSmallStatement) -> tuple[int, str]:
    if isinstance(stmt, cst.ImportFrom):
        mod = "." * len(stmt.relative) + (code(stmt.module) if stmt.module is not None else "")
        return (1, mod.lower())
    assert isinstance(stmt, cst.Import)
    return (0, code(stmt.names[0].name).lower())


def _member_key(alias: cst.ImportAlias) -> tuple[int, str, str]:
    name = code(alias.name)
    rank = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return (rank, name.lower(), name)


def _block(module: cst.Module) -> tuple[int, int]:
    """[start, end) of the module's leading import statements (after a docstring)."""
    body = module.body
    start = 0
    first = body[0] if body else None
    if isinstance(first, cst.SimpleStatementLine) and isinstance(
            first.body[0], cst.Expr) and isinstance(first.body[0].value, cst.SimpleString):
        start = 1
    end = start
    while end < len(body):
        line = body[end]
        if not (isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1
                and isinstance(line.body[0], cst.Import | cst.ImportFrom)):
            break
        end += 1
    return start, end


def _in_order(module: cst.Module) -> dict[str, int] | None:
    """The section (blank-line separated group) of each top-level module in the leading
    import block, if the block is in ruff's default order (one name per ``import``, no
    comment inside it, each section sorted, each from-import's names sorted); else None.
    Sections are taken as the user (or their ruff configuration) made them: which
    modules are first-party is not the codemod's to guess."""
    start, end = _block(module)
    lines = [cst.ensure_type(module.body[i], cst.SimpleStatementLine) for i in range(start, end)]
    if not lines:
        return None
    sections: dict[str, int] = {}
    current: list[tuple[int, str]] = []
    index = 0
    for k, line in enumerate(lines):
        small = line.body[0]
        if isinstance(small, cst.Import) and len(small.names) != 1:
            return None
        if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
            if [code(a.name) for a in sorted(small.names, key=_member_key)] != [
                    code(a.name) for a in small.names]:
                return None
        if k and any(ln.comment is not None for ln in line.leading_lines):
            return None
        if k and any(ln.comment is None for ln in line.leading_lines):
            if current != sorted(current):
                return None
            current, index = [], index + 1
        current.append(_statement_key(small))
        if sections.setdefault(_top(small), index) != index:
            return None
    return sections if current == sorted(current) else None


def sort_imports(module: cst.Module, sections: dict[str, int]) -> cst.Module:
    """Put the leading import block, and each from-import's names, in ruff's order, in the
    sections ``_in_order`` found; a new standard-library import joins the section of the
    others (or opens one above the rest), a new fluxtrain import joins fluxtrain's."""
    start, end = _block(module)
    lines = [cst.ensure_type(module.body[i], cst.SimpleStatementLine) for i in range(start, end)]
    if not lines:
        return module
    head = lines[0].leading_lines
    stdlib = [v for k, v in sections.items() if k in sys.stdlib_module_names]
    future = sections.get("__future__")

    def section_of(small: cst.BaseSmallStatement) -> float:
        top = _top(small)
        if top in sections:
            return sections[top]
        if top in sys.stdlib_module_names:
            if stdlib:
                return min(stdlib)
            return (future + 0.5) if future is not None else -1
        if top == "fluxtrain" and "fluxtrain" in sections:
            return sections["fluxtrain"]
        return max(sections.values(), default=0) + 1

    items = []
    for line in lines:
        small = line.body[0]
        if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
            names = sorted(small.names, key=_member_key)
            if [id(a) for a in names] != [id(a) for a in small.names]:
                # each position keeps its comma (and so a one-name-per-line layout)
                commas = [a.comma for a in small.names]
                if isinstance(commas[-1], cst.MaybeSentinel) and len(commas) > 1:
                    commas[-1], commas[-2] = commas[-2], commas[-1]
                names = [a.with_changes(comma=c) for a, c in zip(names, commas)]
                if small.lpar is None:
                    names[-1] = names[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
                small = small.with_changes(names=names)
                line = line.with_changes(body=[small])
        items.append(((section_of(small), *_statement_key(small)), line))
    items.sort(key=lambda kv: kv[0])
    out: list[cst.SimpleStatementLine] = []
    for k, (key, line) in enumerate(items):
        if k == 0:
            lead = list(head)
        elif key[0] != items[k - 1][0][0]:
            lead = [cst.EmptyLine()]
        else:
            lead = []
        out.append(line.with_changes(leading_lines=lead))
    body = [*module.body[:start], *out, *module.body[end:]]
    return module.with_changes(body=body)

def _bound_by_imports(module: cst.Module) -> set[str]:
    """Names the module's imports bind (``import a.b`` binds ``a.b`` here)."""
    out: set[str] = set()

    class _V(cst.CSTVisitor):
        def visit_Import(inner, node: cst.Import) -> None:  # noqa: N805
            out.update(code(a.asname.name) if a.asname else code(a.name) for a in node.names)

        def visit_ImportFrom(inner, node: cst.ImportFrom) -> None:  # noqa: N805
            if not isinstance(node.names, cst.ImportStar):
                out.update(code(a.asname.name) if a.asname else code(a.name)
                           for a in node.names)

    module.visit(_V())
    return out
