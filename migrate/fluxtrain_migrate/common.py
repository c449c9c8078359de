"""Shared machinery: per-stage metadata, name resolution, emission style, rule base."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import libcst as cst
from libcst._metadata_dependent import LazyValue
from libcst.metadata import (
    MetadataWrapper,
    ParentNodeProvider,
    PositionProvider,
    QualifiedNameProvider,
    Scope,
    ScopeProvider,
)

from fluxtrain_migrate.groups import Groups
from fluxtrain_migrate.names import FLUXTRAIN_ALL, OPTIMISE_ALL
from fluxtrain_migrate.report import MARKERS, marker_text

STATEMENTS = (cst.SimpleStatementLine, cst.BaseCompoundStatement)


@dataclass
class Context:
    """State shared by the rules of one file (facts travel by name between stages)."""

    path: str
    changes: list[tuple[str, int, int, str]] = field(default_factory=list)
    add_imports: list[tuple[str, str | None]] = field(default_factory=list)
    drop_imports: set[str] = field(default_factory=set)
    maybe_unused: set[str] = field(default_factory=set)
    rewritten_losses: set[str] = field(default_factory=set)
    #: train_ losses that keep reading the global model (train_ gets a wrapper lambda)
    closure_losses: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    #: groups left alone (``groups.Groups`` keys); statements touching them are not changed
    excluded: set[str] = field(default_factory=set)
    #: markers raised in a group: (the group's keys, code, reason, the statement's text)
    blocking: list[tuple[frozenset[str], str, str, str]] = field(default_factory=list)

    def need_import(self, module: str, obj: str | None) -> None:
        """Ask the import rule to add ``from module import obj`` (or ``import module``)."""
        if (module, obj) not in self.add_imports:
            self.add_imports.append((module, obj))


def code(node: cst.CSTNode) -> str:
    """Source text of a node."""
    return cst.Module([]).code_for_node(node)


class Stage:
    """One parsed tree with its metadata, resolved once and used by one rule."""

    def __init__(self, module: cst.Module) -> None:
        self.module = module
        wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        self.scope: Any = wrapper.resolve(ScopeProvider)
        self.qn: Any = wrapper.resolve(QualifiedNameProvider)
        self.parent: Any = wrapper.resolve(ParentNodeProvider)
        self.pos: Any = wrapper.resolve(PositionProvider)
        self.star: set[str] = set()
        for stmt in module.body:
            if isinstance(stmt, cst.SimpleStatementLine):
                for s in stmt.body:
                    if isinstance(s, cst.ImportFrom) and isinstance(s.names, cst.ImportStar):
                        mod = code(s.module) if s.module is not None else ""
                        if mod == "fluxtrain":
                            self.star |= FLUXTRAIN_ALL
                        elif mod == "fluxtrain.optimise":
                            self.star |= OPTIMISE_ALL
        self.style = Emitter.for_module(module)
        self._groups: Groups | None = None
        self.protected: dict[int, set[str]] = {}

    @property
    def groups(self) -> Groups:
        """The data-flow groups of this tree (computed on first use)."""
        if self._groups is None:
            self._groups = Groups(self)
        return self._groups

    def protect(self, excluded: set[str]) -> None:
        """Leave every statement of the groups holding ``excluded``'s keys as it is."""
        self.protected = self.groups.protected_statements(excluded) if excluded else {}

    def is_protected(self, node: cst.CSTNode) -> bool:
        """Is ``node`` inside a statement that must not change?"""
        if not self.protected:
            return False
        if id(node) in self.protected:
            return True
        return any(id(a) in self.protected for a in self.ancestors(node))

    # -- metadata helpers ---------------------------------------------------------
    def qnames(self, node: cst.CSTNode) -> set[str]:
        v = self.qn.get(node)
        if isinstance(v, LazyValue):
            v = v()
        return {q.name for q in v} if v else set()

    def scope_of(self, node: cst.CSTNode) -> Scope | None:
        v = self.scope.get(node)
        return v if isinstance(v, Scope) else None

    def parent_of(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self.parent.get(node)

    def position(self, node: cst.CSTNode) -> tuple[int, int]:
        p = self.pos.get(node)
        return (p.start.line, p.start.column) if p is not None else (0, 0)

    def statement_of(self, node: cst.CSTNode) -> cst.CSTNode | None:
        """The innermost statement containing ``node``."""
        cur: cst.CSTNode | None = node
        while cur is not None and not isinstance(cur, STATEMENTS):
            cur = self.parent_of(cur)
        return cur

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        cur = self.parent_of(node)
        while cur is not None:
            yield cur
            cur = self.parent_of(cur)

    # -- fluxtrain names ----------------------------------------------------------
    def fq(self, node: cst.CSTNode) -> str | None:
        """Canonical fluxtrain name of a Name/Attribute (``fluxtrain.params``), or None.

        ``fluxtrain.optimise.X`` becomes ``fluxtrain.X``; ``fluxtrain.optimisers.X`` is kept.
        Star-imported names count only if nothing in scope binds them.
        """
        if not isinstance(node, (cst.Name, cst.Attribute)):
            return None
        names = self.qnames(node)
        if not names and isinstance(node, cst.Name) and node.value in self.star:
            scope = self.scope_of(node)
            if scope is not None and not scope[node.value]:
                return "fluxtrain." + node.value
            return None
        if len(names) != 1:
            return None
        (q,) = names
        if q.startswith("fluxtrain.optimise."):
            rest = q[len("fluxtrain.optimise."):]
            return "fluxtrain." + rest if rest in OPTIMISE_ALL else None
        if q.startswith("fluxtrain.optimisers."):
            return q
        if q.startswith("fluxtrain."):
            rest = q[len("fluxtrain."):]
            return q if rest in FLUXTRAIN_ALL else None
        return None

    def call_to(self, node: cst.CSTNode, *names: str) -> bool:
        """Is ``node`` a call of one of fluxtrain's ``names`` (short names)?"""
        if not isinstance(node, cst.Call):
            return False
        f = self.fq(node.func)
        return f is not None and f.startswith("fluxtrain.") and f[10:] in names

    def is_setup(self, node: cst.CSTNode) -> bool:
        """A call of fluxtrain's ``setup``, including one an earlier rule emitted before
        its import was added (a bare ``setup`` that nothing in scope binds)."""
        if not isinstance(node, cst.Call):
            return False
        if self.call_to(node, "setup"):
            return True
        f = node.func
        if isinstance(f, cst.Name) and f.value == "setup" and self.style.kind == "from":
            return not self.assignments(f)
        return False

    def is_state(self, opt: cst.BaseExpression) -> bool:
        """``opt`` is an optimiser state from ``setup`` (inline, or a name bound once to one):
        the optimiser of a ``train_`` that the codemod converts to the explicit style."""
        if isinstance(opt, cst.Name):
            v = self.binding_value(opt)
            return v is not None and self.is_setup(v)
        return self.is_setup(opt)

    def binding_value(self, name: cst.Name) -> cst.BaseExpression | None:
        """The value of the single ``name = value`` binding ``name`` refers to, else None."""
        scope = self.scope_of(name)
        if scope is None:
            return None
        assigns = list(scope[name.value])
        if len(assigns) != 1:
            return None
        target = getattr(assigns[0], "node", None)
        if not isinstance(target, cst.Name):
            return None
        parent = self.parent_of(target)
        if isinstance(parent, cst.AssignTarget):
            stmt = self.parent_of(parent)
            if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
                return stmt.value
        return None

    def assignments(self, name: cst.Name) -> list[Any]:
        scope = self.scope_of(name)
        return list(scope[name.value]) if scope is not None else []


class Emitter:
    """Spell emitted names in the user's import style.

    ``module``: ``import fluxtrain as F`` -> ``F.setup``, ``F.optimisers.Adam``;
    ``from``: ``from fluxtrain import ...`` -> ``setup`` (import added);
    ``star``: ``from fluxtrain import *`` -> ``setup``, ``optimisers.Adam`` (no import added).
    """

    def __init__(self, kind: str, prefix: str = "fluxtrain") -> None:
        self.kind = kind
        self.prefix = prefix

    @classmethod
    def for_module(cls, module: cst.Module) -> Emitter:
        has_from = has_star = False
        for stmt in module.body:
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for s in stmt.body:
                if isinstance(s, cst.Import):
                    for a in s.names:
                        if code(a.name) == "fluxtrain":
                            alias = a.asname.name if a.asname else None
                            return cls("module", code(alias) if alias else "fluxtrain")
                elif isinstance(s, cst.ImportFrom) and s.module is not None:
                    if code(s.module) in ("fluxtrain", "fluxtrain.optimise"):
                        if isinstance(s.names, cst.ImportStar):
                            has_star = True
                        else:
                            has_from = True
        if has_from:
            return cls("from")
        if has_star:
            return cls("star")
        return cls("module", "fluxtrain")

    def api(self, name: str, ctx: Context) -> cst.BaseExpression:
        """An explicit-API function/class of top-level ``fluxtrain``."""
        if self.kind == "module":
            if self.prefix == "fluxtrain":
                ctx.need_import("fluxtrain", None)
            return cst.parse_expression(f"{self.prefix}.{name}")
        if self.kind == "from":
            ctx.need_import("fluxtrain", name)
        return cst.Name(name)

    def rule(self, name: str, ctx: Context, bare_ok: bool = True) -> cst.BaseExpression:
        """A new-style rule of ``fluxtrain.optimisers``."""
        if self.kind == "module":
            if self.prefix == "fluxtrain":
                ctx.need_import("fluxtrain", None)
            return cst.parse_expression(f"{self.prefix}.optimisers.{name}")
        if self.kind == "from" and bare_ok:
            ctx.need_import("fluxtrain.optimisers", name)
            return cst.Name(name)
        if self.kind == "from":
            ctx.need_import("fluxtrain", "optimisers")
        return cst.parse_expression(f"optimisers.{name}")


class Rule(cst.CSTTransformer):
    """Base of every rewrite: one transformer per rule id, run over one Stage."""

    RULE_ID = "FM000"
    NAME = "base"
    DESCRIPTION = ""

    def __init__(self, stage: Stage, ctx: Context) -> None:
        super().__init__()
        self.stage = stage
        self.ctx = ctx
        self._pending: dict[int, list[str]] = {}

    def run(self) -> cst.Module:
        """Apply this rule to the stage's tree (groups in ``ctx.excluded`` untouched)."""
        self.stage.protect(self.ctx.excluded)
        self.prepare()
        return self.stage.module.visit(self)

    def prepare(self) -> None:
        """Analysis before the rewrite (override)."""

    def change(self, node: cst.CSTNode, message: str) -> None:
        if self.stage.is_protected(node):
            return
        line, col = self.stage.position(node)
        self.ctx.changes.append((self.RULE_ID, line, col, message))

    def mark(self, node: cst.CSTNode, mcode: str, detail: str | None = None) -> None:
        """Block the group of the statement holding ``node`` (the engine then leaves that
        whole group alone, under one marker); a statement outside every group gets
        ``# TODO(fluxtrain-migrate FMxxx)`` above it."""
        stmt = self.stage.statement_of(node)
        if stmt is None or self.stage.is_protected(stmt):
            return
        groups = self.stage.groups
        keys = groups.statement_keys(stmt)
        if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
            own = groups.key_of_def(stmt)
            if own is not None and own in groups.entities:
                keys.add(own)
        if keys:
            reason = detail or MARKERS[mcode]
            bare = stmt.with_changes(leading_lines=[]) if hasattr(stmt, "leading_lines") else stmt
            text = code(bare).strip()
            first = text.splitlines()[0] if text else ""
            self.ctx.blocking.append(
                (frozenset(groups.component(keys)), mcode, reason, first))
            return
        text = marker_text(mcode, detail)
        lst = self._pending.setdefault(id(stmt), [])
        if text not in lst:
            lst.append(text)

    def on_visit(self, node: cst.CSTNode) -> bool:
        if id(node) in self.stage.protected:
            return False
        return super().on_visit(node)

    def on_leave(self, original_node: Any, updated_node: Any) -> Any:
        if id(original_node) in self.stage.protected:
            return original_node
        result = super().on_leave(original_node, updated_node)
        texts = self._pending.get(id(original_node))
        if texts and isinstance(result, STATEMENTS):
            result = add_comments(result, texts)
        return result


def add_comments(stmt: Any, texts: list[str]) -> Any:
    """Add comment lines above a statement, skipping ones already there."""
    existing = {ln.comment.value for ln in stmt.leading_lines if ln.comment is not None}
    new = [
        cst.EmptyLine(indent=True, comment=cst.Comment(t)) for t in texts if t not in existing
    ]
    if not new:
        return stmt
    return stmt.with_changes(leading_lines=[*stmt.leading_lines, *new])


def free_name(stage: Stage, base: str, taken: set[str] | None = None) -> str:
    """A name not bound or used anywhere in the module (``base``, ``base_1``...)."""
    used = taken_names(stage.module) | (taken or set())
    if base not in used:
        return base
    i = 1
    while f"{base}_{i}" in used:
        i += 1
    return f"{base}_{i}"


def taken_names(module: cst.Module) -> set[str]:
    """Every identifier spelled in the module."""
    names: set[str] = set()

    class _V(cst.CSTVisitor):
        def visit_Name(self, node: cst.Name) -> None:
            names.add(node.value)

        def visit_Attribute(self, node: cst.Attribute) -> bool:
            node.value.visit(self)  # ``x.attr``: ``attr`` binds nothing
            return False

    module.visit(_V())
    return names


def root_name(expr: cst.BaseExpression) -> cst.Name | None:
    """``model`` for ``model``, ``model.enc``, ``model[0].w``; else None."""
    while isinstance(expr, (cst.Attribute, cst.Subscript)):
        expr = expr.value
    return expr if isinstance(expr, cst.Name) else None


def positional(call: cst.Call) -> list[cst.Arg]:
    return [a for a in call.args if a.keyword is None and not a.star]


def keyword(call: cst.Call, name: str) -> cst.Arg | None:
    for a in call.args:
        if a.keyword is not None and a.keyword.value == name:
            return a
    return None


def fix_commas(args: list[cst.Arg]) -> list[cst.Arg]:
    """Commas between arguments, none after the last."""
    out = []
    for i, a in enumerate(args):
        if i < len(args) - 1:
            if a.comma is cst.MaybeSentinel.DEFAULT or a.comma is None:
                a = a.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        else:
            a = a.with_changes(comma=cst.MaybeSentinel.DEFAULT)
        out.append(a)
    return out
