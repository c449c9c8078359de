"""Data-flow groups: the unit a migration changes all of, or nothing of.

A group is a model, the ``params`` of it, the optimisers and losses used with it, the
gradients taken of it and every statement that ties them (DESIGN.md, "Migration
invariant"). The codemod finds the groups of one parsed tree here:

* an *entity* is a binding (a name in one function's or the module's scope) that takes part
  in training: the target of an assignment whose value calls fluxtrain, a name read inside
  the arguments of ``params``/``gradient``/``withgradient``/``train_``/``update_``, and,
  to a fixed point, a function that reads an entity and a name assigned from one;
* every statement joins the entities it reads or binds (a ``def`` joins its name with the
  entities of its whole body; a compound statement whose header reads an entity joins it
  with everything in its body, since its body cannot change apart from its header).

Keys are ``"scope:name"`` with the scope spelled by the enclosing ``def``/``class`` names,
so that a key found in one stage of the pipeline still names the same binding in the next
(the rules never rename a function, and a group that is left alone keeps its names).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import libcst as cst
from libcst.metadata import BuiltinAssignment, ClassScope, FunctionScope, GlobalScope

#: fluxtrain calls whose arguments tie the names they read into one group
_TYING_CALLS = ("params", "Params", "gradient", "withgradient", "train_", "update_")


class Groups:
    """The data-flow groups of one stage (see the module docstring)."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self._parent: dict[str, str] = {}
        self.entities: set[str] = set()
        self._scope_keys: dict[int, str] = {}
        #: every statement of the tree, outer before inner, in source order
        self.statements: list[cst.CSTNode] = _statements(stage.module)
        self._find_entities(self.statements)
        for stmt in self.statements:
            keys = self.statement_keys(stmt)
            if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
                own = self.key_of_def(stmt)
                if own is not None:
                    keys.add(own)
            self._union(keys)

    # -- keys -------------------------------------------------------------------------
    def _scope_name(self, scope: Any) -> str | None:
        """``f.g`` for a scope nested in ``def f``/``def g``, ``""`` for the module; None
        for a lambda or comprehension scope (whose bindings never form an entity)."""
        if scope is None:
            return None
        cached = self._scope_keys.get(id(scope))
        if cached is not None:
            return cached
        if isinstance(scope, GlobalScope):
            name: str | None = ""
        elif isinstance(scope, FunctionScope | ClassScope):
            node = getattr(scope, "node", None)
            parent = self._scope_name(getattr(scope, "parent", None))
            if not isinstance(node, cst.FunctionDef | cst.ClassDef) or parent is None:
                return None
            name = f"{parent}.{node.name.value}" if parent else node.name.value
        else:
            return None
        if name is not None:
            self._scope_keys[id(scope)] = name
        return name

    def key_of_assignment(self, assignment: Any) -> str | None:
        if isinstance(assignment, BuiltinAssignment):
            return None
        scope = self._scope_name(getattr(assignment, "scope", None))
        return None if scope is None else f"{scope}:{assignment.name}"

    def keys_of_name(self, name: cst.Name) -> set[str]:
        """The keys of the bindings a Name reads or writes."""
        out: set[str] = set()
        for a in self.stage.assignments(name):
            k = self.key_of_assignment(a)
            if k is not None:
                out.add(k)
        return out

    def key_of_def(self, node: cst.FunctionDef | cst.ClassDef) -> str | None:
        keys = self.keys_of_name(node.name)
        return next(iter(sorted(keys))) if keys else None

    def names_in(self, node: cst.CSTNode, header_only: bool = False) -> list[cst.Name]:
        """Every Name in ``node`` (its header only for a compound statement), attributes'
        field names excluded."""
        out: list[cst.Name] = []

        class _V(cst.CSTVisitor):
            def visit_Name(inner, n: cst.Name) -> None:  # noqa: N805
                out.append(n)

            def visit_Attribute(inner, n: cst.Attribute) -> bool:  # noqa: N805
                n.value.visit(inner)
                return False

        for part in _header(node) if header_only else [node]:
            part.visit(_V())
        return out

    def statement_keys(self, stmt: cst.CSTNode) -> set[str]:
        """The entity keys a statement reads or binds (a def: its body's; a compound
        statement: its header's, or its whole body's when the header has one)."""
        if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
            names = self.names_in(stmt)
        elif isinstance(stmt, cst.BaseCompoundStatement):
            names = self.names_in(stmt, header_only=True)
            if not self._entity_keys(names):
                return set()
            names = self.names_in(stmt)
        else:
            names = self.names_in(stmt)
        return self._entity_keys(names)

    def _entity_keys(self, names: Iterable[cst.Name]) -> set[str]:
        out: set[str] = set()
        for n in names:
            out |= self.keys_of_name(n) & self.entities
        return out

    # -- entities -----------------------------------------------------------------------
    def _find_entities(self, statements: list[cst.CSTNode]) -> None:
        st = self.stage
        seeds: set[str] = set()
        calls: list[cst.Call] = []

        class _C(cst.CSTVisitor):
            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                calls.append(node)

        st.module.visit(_C())
        for c in calls:
            f = st.fq(c.func)
            if f is None:
                continue
            if st.call_to(c, *_TYING_CALLS):
                for a in c.args:
                    for n in self.names_in(a.value):
                        seeds |= self.keys_of_name(n)
            for t in _assign_target_of(st, c):
                for n in self.names_in(t):
                    seeds |= self.keys_of_name(n)
        # subclasses of fluxtrain's AbstractOptimiser
        for stmt in statements:
            if isinstance(stmt, cst.ClassDef) and any(
                    st.fq(b.value) == "fluxtrain.AbstractOptimiser" for b in stmt.bases):
                k = self.key_of_def(stmt)
                if k is not None:
                    seeds.add(k)
        self.entities = seeds
        changed = True
        while changed:
            changed = False
            for stmt in statements:
                if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
                    own = self.key_of_def(stmt)
                    if own is not None and own not in self.entities and \
                            self._entity_keys(self.names_in(stmt)):
                        self.entities.add(own)
                        changed = True
                elif isinstance(stmt, cst.SimpleStatementLine):
                    for small in stmt.body:
                        targets, value = _targets_and_value(small)
                        if value is None or not self._entity_keys(self.names_in(value)):
                            continue
                        for t in targets:
                            for n in self.names_in(t):
                                new = self.keys_of_name(n) - self.entities
                                if new:
                                    self.entities |= new
                                    changed = True

    # -- union-find ---------------------------------------------------------------------
    def _find(self, k: str) -> str:
        root = k
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while self._parent.get(k, k) != root:
            self._parent[k], k = root, self._parent[k]
        return root

    def _union(self, keys: set[str]) -> None:
        items = sorted(keys)
        for k in items:
            self._parent.setdefault(k, k)
        for k in items[1:]:
            a, b = self._find(items[0]), self._find(k)
            if a != b:
                self._parent[b] = a

    def component(self, keys: Iterable[str]) -> set[str]:
        """Every entity key in the groups of ``keys``."""
        roots = {self._find(k) for k in keys if k in self.entities}
        return {k for k in self.entities if self._find(k) in roots}

    def components(self) -> list[set[str]]:
        by_root: dict[str, set[str]] = {}
        for k in self.entities:
            by_root.setdefault(self._find(k), set()).add(k)
        return list(by_root.values())

    # -- protection -----------------------------------------------------------------------
    def protected_statements(self, excluded: set[str]) -> dict[int, set[str]]:
        """Statements (by id) that touch a group holding one of ``excluded``'s keys: they
        are left exactly as they were. Maps each to the keys it touches."""
        keys = self.component(excluded)
        out: dict[int, set[str]] = {}
        if not keys:
            return out
        for stmt in self.statements:
            touched = self.statement_keys(stmt)
            if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
                own = self.key_of_def(stmt)
                if own is not None:
                    touched.add(own)
            hit = touched & keys
            if hit:
                out[id(stmt)] = hit
        return out


def _statements(module: cst.Module) -> list[cst.CSTNode]:
    found: list[cst.CSTNode] = []

    class _S(cst.CSTVisitor):
        def visit_SimpleStatementLine(inner, node: cst.SimpleStatementLine) -> bool:  # noqa: N805
            found.append(node)
            return True

        def on_visit(inner, node: cst.CSTNode) -> bool:  # noqa: N805
            if isinstance(node, cst.BaseCompoundStatement):
                found.append(node)
            return super().on_visit(node)

    module.visit(_S())
    return found


def _header(stmt: cst.CSTNode) -> list[cst.CSTNode]:
    """The parts of a compound statement outside its body (what it tests or binds)."""
    if isinstance(stmt, cst.For):
        return [stmt.target, stmt.iter]
    if isinstance(stmt, cst.If | cst.While):
        return [stmt.test]
    if isinstance(stmt, cst.With):
        return list(stmt.items)
    return []


def _targets_and_value(
    small: cst.CSTNode,
) -> tuple[list[cst.CSTNode], cst.BaseExpression | None]:
    if isinstance(small, cst.Assign):
        return [t.target for t in small.targets], small.value
    if isinstance(small, cst.AnnAssign | cst.AugAssign):
        return [small.target], small.value
    return [], None


def _assign_target_of(st: Any, call: cst.Call) -> list[cst.CSTNode]:
    """The targets of the assignment whose value holds ``call`` (anywhere in it)."""
    cur: Any = call
    while cur is not None and not isinstance(cur, cst.BaseSmallStatement):
        if isinstance(cur, cst.Lambda | cst.BaseStatement):
            return []
        cur = st.parent_of(cur)
    targets, _ = _targets_and_value(cur) if cur is not None else ([], None)
    return targets
