"""FM007: add the imports the new code uses, drop the implicit-era ones it no longer uses."""

from __future__ import annotations

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
        if self.ctx.drop_imports:
            self._drop_names = set(self.ctx.drop_imports)
            module = module.visit(self)
        if self.ctx.add_imports:
            items = [ImportItem(mod, obj) for mod, obj in self.ctx.add_imports]
            ctx = CodemodContext()
            module = AddImportsVisitor(ctx, items).transform_module(module)
        if self.ctx.maybe_unused:
            module = _remove_unused(module, self.ctx.maybe_unused)
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


def _remove_unused(module: cst.Module, names: set[str]) -> cst.Module:
    """Remove ``from fluxtrain import name [as alias]`` aliases that nothing reads."""
    stage = Stage(module)
    scope = stage.scope_of(module)
    if scope is None:
        return module
    unused: set[int] = set()
    for a in scope.assignments:
        node = getattr(a, "node", None)
        if not isinstance(node, cst.ImportFrom) or isinstance(node.names, cst.ImportStar):
            continue
        if node.module is None or code(node.module) not in _FROM or a.references:
            continue
        for alias in node.names:
            if code(alias.name) in names and (
                code(alias.asname.name) if alias.asname else code(alias.name)) == a.name:
                unused.add(id(alias))

    class _T(cst.CSTTransformer):
        def leave_ImportFrom(self, original_node: cst.ImportFrom,
                             updated_node: cst.ImportFrom) -> Any:
            if isinstance(original_node.names, cst.ImportStar) or isinstance(
                    updated_node.names, cst.ImportStar):
                return updated_node
            keep = [new for old, new in zip(original_node.names, updated_node.names)
                    if id(old) not in unused]
            if len(keep) == len(original_node.names):
                return updated_node
            if not keep:
                return cst.RemoveFromParent()
            keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            return updated_node.with_changes(names=keep)

    return module.visit(_T())
