"""FM001: ``ps = params(model)`` removed once nothing uses it; iteration -> ``trainables``."""

from __future__ import annotations

from typing import Any

import libcst as cst
from libcst.metadata import BuiltinAssignment

from fluxtrain_migrate.analysis import params_info
from fluxtrain_migrate.common import Rule, add_comments, code

_ITER_FUNCS = {"len", "list", "tuple"}


class ParamsRule(Rule):
    """The last data-flow rule: earlier rules replaced ``ps`` by the model where it was
    passed to ``gradient``/``update_``/``train_``. Here ``for p in ps`` (and ``len(ps)``,
    ``list(ps)``, comprehensions) become ``trainables(model)``; any other use gets FM101;
    an unused ``ps = params(model)`` is removed (its comments move to the next line)."""

    RULE_ID = "FM001"
    NAME = "params"
    DESCRIPTION = "ps = params(model): uses become the model, the binding is removed"

    def prepare(self) -> None:
        st = self.stage
        self.to_trainables: dict[int, str] = {}  # node id (Name or params Call) -> model
        self.remove: set[int] = set()
        self._removed: set[int] = set()
        assigns: list[cst.Assign] = []
        calls: list[cst.Call] = []

        class _V(cst.CSTVisitor):
            def visit_Assign(inner, node: cst.Assign) -> None:  # noqa: N805
                if st.call_to(node.value, "params", "Params"):
                    assigns.append(node)

            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                if st.call_to(node, "params"):
                    calls.append(node)

        st.module.visit(_V())
        self.rebind: dict[int, str] = {}  # Assign id -> the explicit model's expression
        explicit_calls: set[int] = set()
        for a in assigns:
            t = a.targets[0].target if len(a.targets) == 1 else None
            if isinstance(t, cst.Name) and params_info(st, t).explicit is not None:
                explicit_calls.add(id(a.value))
        self._mark_manual(explicit_calls)
        bound_calls = {id(a.value) for a in assigns}
        for a in assigns:
            t = a.targets[0].target if len(a.targets) == 1 else None
            if not isinstance(t, cst.Name):
                self.mark(a, "FM103")
                continue
            info = params_info(st, t)
            if info.status == "part":
                self.mark(a, "FM102")
                continue
            if info.status != "ok" or info.model is None:
                self.mark(a, "FM103")
                continue
            if info.explicit is not None:
                # ``ps = params(w, b)``: ``ps`` stays, as the explicit model ``(w, b)``
                self.rebind[id(a)] = info.explicit
                for asg in st.assignments(t):
                    for ref in asg.references:
                        if self._iter_position(ref.node):
                            self.to_trainables[id(ref.node)] = t.value
                        elif not self._model_position(ref.node):
                            self.mark(ref.node, "FM101")
                continue
            left = 0
            if info.frozen:
                left = sum(len(x.references) for x in st.assignments(t))
                for asg in st.assignments(t):
                    for ref in asg.references:
                        self.mark(ref.node, "FM101")
            for asg in st.assignments(t) if not info.frozen else []:
                for ref in asg.references:
                    if self._iter_position(ref.node):
                        self.to_trainables[id(ref.node)] = info.model.value
                    else:
                        self.mark(ref.node, "FM101")
                        left += 1
            stmt = st.parent_of(a)
            if left == 0 and isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
                self.remove.add(id(stmt))
        for c in calls:
            if id(c) in bound_calls:
                continue
            info = params_info(st, c)
            if (info.status == "ok" and info.model is not None and not info.frozen
                    and self._iter_position(c)):
                self.to_trainables[id(c)] = info.model.value
            else:
                self.mark(c, "FM101" if info.status == "ok" else "FM102")

    def _model_position(self, node: cst.CSTNode) -> bool:
        """Is ``node`` (an explicit model's name) where the explicit API takes a model:
        ``setup``/``gradient``/``withgradient``/``update_``/``train_``'s model argument?"""
        st = self.stage
        arg = st.parent_of(node)
        call = st.parent_of(arg) if arg is not None else None
        if not (isinstance(arg, cst.Arg) and isinstance(call, cst.Call)):
            return False
        if st.is_setup(call) or st.call_to(call, "gradient", "withgradient", "update_",
                                           "train_", "setup", "trainables"):
            return True
        f = call.func
        return isinstance(f, cst.Name | cst.Attribute) and code(f).split(".")[-1] in (
            "gradient", "withgradient", "update_", "train_", "setup", "trainables")

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> Any:
        text = self.rebind.get(id(original_node))
        if text is None:
            return updated_node
        self.change(original_node, "ps = params(a, b) -> ps = (a, b), the explicit model")
        self.ctx.maybe_unused |= {"params", "Params"}
        return updated_node.with_changes(value=cst.parse_expression(text))

    def _mark_manual(self, explicit_calls: set[int]) -> None:
        """FM110 on every use of ``Params``, ``Grads``, ``AbstractOptimiser`` (except a
        ``ps = Params([...])`` that becomes an explicit model)."""
        st = self.stage
        manual = {"fluxtrain.Params", "fluxtrain.Grads", "fluxtrain.AbstractOptimiser",
                  "fluxtrain.loadparams_", "fluxtrain.pullback"}
        hits: list[cst.CSTNode] = []

        class _M(cst.CSTVisitor):
            def visit_Import(inner, node: cst.Import) -> bool:  # noqa: N805
                return False

            def visit_ImportFrom(inner, node: cst.ImportFrom) -> bool:  # noqa: N805
                return False

            def visit_Attribute(inner, node: cst.Attribute) -> bool:  # noqa: N805
                if st.fq(node) in manual:
                    hits.append(node)
                    return False
                return True

            def visit_Call(inner, node: cst.Call) -> bool:  # noqa: N805
                if id(node) in explicit_calls:
                    for a in node.args:
                        a.visit(inner)
                    return False
                return True

            def visit_Name(inner, node: cst.Name) -> None:  # noqa: N805
                if st.fq(node) in manual:
                    hits.append(node)

        st.module.visit(_M())
        for h in hits:
            self.mark(h, "FM105" if code(h).endswith("pullback") else "FM110")

    def _iter_position(self, node: cst.CSTNode) -> bool:
        st = self.stage
        p = st.parent_of(node)
        if isinstance(p, (cst.For, cst.CompFor)) and p.iter is node:
            return True
        if isinstance(p, cst.Arg):
            q = st.parent_of(p)
            return (isinstance(q, cst.Call) and isinstance(q.func, cst.Name)
                    and q.func.value in _ITER_FUNCS and len(q.args) == 1
                    and st.fq(q.func) is None
                    and all(isinstance(a, BuiltinAssignment) for a in st.assignments(q.func)))
        return False

    def _trainables(self, model: str) -> cst.Call:
        self.ctx.maybe_unused.add("params")
        return cst.Call(func=self.stage.style.api("trainables", self.ctx),
                        args=[cst.Arg(cst.Name(model))])

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> Any:
        model = self.to_trainables.get(id(original_node))
        if model is None:
            return updated_node
        self.change(original_node, "iterating Params -> trainables(model)")
        return self._trainables(model)

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> Any:
        model = self.to_trainables.get(id(original_node))
        if model is None:
            return updated_node
        self.change(original_node, "params(model) -> trainables(model)")
        return self._trainables(model)

    def leave_SimpleStatementLine(self, original_node: cst.SimpleStatementLine,
                                  updated_node: cst.SimpleStatementLine) -> Any:
        if id(original_node) not in self.remove:
            return updated_node
        self.change(original_node, "ps = params(model) removed (uses now take the model)")
        self.ctx.maybe_unused.add("params")
        gone = cst.SimpleStatementLine(body=[cst.Pass()], leading_lines=updated_node.leading_lines)
        comment = updated_node.trailing_whitespace.comment
        if comment is not None:
            gone = add_comments(gone, [comment.value])
        self._removed.add(id(gone))
        return gone

    def _drop(self, body: list[Any]) -> tuple[list[Any], list[cst.EmptyLine]]:
        """Drop removed statements, moving their comment lines to the next statement."""
        out: list[Any] = []
        carry: list[cst.EmptyLine] = []
        for stmt in body:
            if id(stmt) in self._removed:
                carry.extend(stmt.leading_lines)
                continue
            if carry:
                stmt = stmt.with_changes(leading_lines=[*carry, *stmt.leading_lines])
                carry = []
            out.append(stmt)
        return out, carry

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        new, carry = self._drop(list(updated_node.body))
        return updated_node.with_changes(body=new, footer=[*carry, *updated_node.footer])

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock,
                            updated_node: cst.IndentedBlock) -> cst.IndentedBlock:
        new, carry = self._drop(list(updated_node.body))
        if not new or carry:
            new.append(cst.SimpleStatementLine(body=[cst.Pass()], leading_lines=carry))
        return updated_node.with_changes(body=new)
