"""FM003: ``gradient(lambda: ..., ps)`` -> ``gradient(lambda m: ..., model)[0]``."""

from __future__ import annotations

from typing import Any

import libcst as cst

from fluxtrain_migrate.analysis import (
    grads_origin,
    grads_path,
    grads_uses_ok,
    implicit_gradient,
    model_accesses,
    pullback_of,
)
from fluxtrain_migrate.common import Rule, positional
from fluxtrain_migrate.transforms.losses import _names_in, _param_name, closure_def


class GradientRule(Rule):
    """Implicit ``gradient``/``withgradient`` over Params -> explicit over the model.

    ``gs = gradient(...)`` becomes the gradient tree (``[0]``); ``val, gs = withgradient(...)``
    becomes ``val, (gs,) = withgradient(...)``; ``gs[model.layer.weight]`` becomes
    ``gs.layer.weight``. Anything else is left with a marker.
    """

    RULE_ID = "FM003"
    NAME = "gradients"
    DESCRIPTION = "gradient(lambda: ..., ps) -> gradient(lambda m: ..., model)[0]"

    def prepare(self) -> None:
        st = self.stage
        self.convert: dict[int, tuple[cst.Name, str]] = {}  # call id -> (model, param)
        self.reads: dict[int, str] = {}
        self.index0: set[int] = set()
        self.unpack: dict[int, int] = {}  # Assign id -> index of grads element
        self.paths: dict[int, list[cst.CSTNode]] = {}
        self.def_param: dict[int, str] = {}  # nested def given to gradient -> its parameter
        self.pullback_to: dict[int, str] = {}  # ``loss, back = pullback`` Assign -> grads name
        self.drop: set[int] = set()  # ``g = back(1.0)`` lines
        calls: list[cst.Call] = []

        class _V(cst.CSTVisitor):
            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                calls.append(node)

        st.module.visit(_V())
        for c in calls:
            info = implicit_gradient(st, c)
            if info is None:
                continue
            if info.status == "part":
                self.mark(c, "FM102")
                continue
            if info.status != "ok" or info.model is None:
                self.mark(c, "FM103")
                continue
            model = info.model
            lam = positional(c)[0].value
            fn: cst.Lambda | cst.FunctionDef | None = None
            if isinstance(lam, cst.Name):
                fn = closure_def(st, lam)
            elif isinstance(lam, cst.Lambda) and not lam.params.params and lam.params.star_arg \
                    is cst.MaybeSentinel.DEFAULT and not lam.params.kwonly_params:
                fn = lam
            if fn is None:
                self.mark(c, "FM105")
                continue
            if model.value in self.ctx.blocked or (
                info.binding is not None and info.binding.value in self.ctx.blocked
            ):
                self.mark(c, "FM105")
                continue
            parent = st.parent_of(c)
            is_grad = st.call_to(c, "gradient")
            gs_name: cst.Name | None = None
            if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
                t = parent.targets[0].target
                if is_grad and isinstance(t, cst.Name):
                    gs_name = t
                    self.index0.add(id(c))
                elif st.call_to(c, "pullback"):
                    # ``loss, back = pullback(f, ps)`` ... ``g = back(1.0)``:
                    # ``loss, (g,) = withgradient(f, model)``, the ``back`` line dropped
                    found = self._pullback_grads(c, parent)
                    if found is None:
                        self.mark(c, "FM105", "pullback whose back() is not called once "
                                  "with a seed of one: write withgradient(f, model)")
                        continue
                    gs_name, back_stmt = found
                    self.pullback_to[id(parent)] = gs_name.value
                    self.drop.add(id(back_stmt))
                elif (not is_grad and isinstance(t, cst.Tuple) and len(t.elements) == 2
                      and isinstance(t.elements[1].value, cst.Name)):
                    gs_name = t.elements[1].value
                    self.unpack[id(parent)] = 1
                else:
                    self.mark(c, "FM105")
                    continue
                if grads_origin(st, gs_name) is None:
                    self.mark(c, "FM105", "gradient variable assigned more than once: "
                              "rewrite by hand with gradient(lambda m: ..., model)[0]")
                    continue
                ok, bad = grads_uses_ok(st, gs_name, model)
                stale = self._old_updates(gs_name)
                for u in stale:
                    self.mark(u, "FM108")
                ok = ok and not stale
                if not ok:
                    for b in bad:
                        self.mark(b, "FM106")
                    self.mark(c, "FM105")
                    continue
                for a in st.assignments(gs_name):
                    for ref in a.references:
                        sub = st.parent_of(ref.node)
                        if isinstance(sub, cst.Subscript) and isinstance(
                                sub.slice[0].slice, cst.Index):
                            path = grads_path(st, sub.slice[0].slice.value, model)
                            if path is not None:
                                self.paths[id(sub)] = path
            elif is_grad and isinstance(parent, cst.Arg) and st.call_to(st.parent_of(parent)
                                                                          or c, "update_"):
                self.index0.add(id(c))
            else:
                self.mark(c, "FM105")
                continue
            pname = _param_name(fn)
            reads = model_accesses(st, model)
            hits = [n for n in _names_in(fn.body) if id(n) in reads]
            if not hits:
                pname = "_"  # the body closes over the global model (the same object)
            for n in hits:
                self.reads[id(n)] = pname
            self.convert[id(c)] = (model, pname)
            if isinstance(fn, cst.FunctionDef):
                self.def_param[id(fn)] = pname

    def _pullback_grads(self, c: cst.Call, assign: cst.Assign
                        ) -> tuple[cst.Name, cst.SimpleStatementLine] | None:
        """For ``loss, back = pullback(f, ps)``: the name bound by ``g = back(1.0)`` and
        that line, if ``g`` can be bound at the pullback instead (nothing reads or binds it
        in between, and both lines are statements of one block)."""
        st = self.stage
        t = assign.targets[0].target
        if not (isinstance(t, cst.Tuple) and len(t.elements) == 2
                and isinstance(t.elements[1].value, cst.Name)):
            return None
        back = t.elements[1].value
        assigns = st.assignments(back)
        if len(assigns) != 1 or len(assigns[0].references) != 1:
            return None
        call = st.parent_of(next(iter(assigns[0].references)).node)
        stmt = st.parent_of(call) if isinstance(call, cst.Call) else None
        line = st.parent_of(stmt) if isinstance(stmt, cst.Assign) else None
        here = st.parent_of(assign)
        if not (isinstance(stmt, cst.Assign) and isinstance(line, cst.SimpleStatementLine)
                and len(line.body) == 1 and len(stmt.targets) == 1
                and isinstance(stmt.targets[0].target, cst.Name)
                and isinstance(here, cst.SimpleStatementLine) and len(here.body) == 1
                and st.parent_of(line) is st.parent_of(here)
                and pullback_of(st, stmt.value) is c):
            return None
        g = stmt.targets[0].target
        start, end = st.position(here)[0], st.position(line)[0]
        for a in st.assignments(g):
            for ref in a.references:
                if start <= st.position(ref.node)[0] <= end:
                    return None
            node = getattr(a, "node", None)
            if node is not None and node is not g and \
                    start <= st.position(node)[0] <= end:
                return None
        return g, line

    def _old_updates(self, gs: cst.Name) -> list[cst.CSTNode]:
        """``update_`` calls fed by ``gs`` whose optimiser was not turned into a state."""
        st = self.stage
        out: list[cst.CSTNode] = []
        for a in st.assignments(gs):
            for ref in a.references:
                arg = st.parent_of(ref.node)
                call = st.parent_of(arg) if arg is not None else None
                if isinstance(call, cst.Call) and st.call_to(call, "update_"):
                    opt = call.args[0].value
                    if isinstance(opt, cst.Name):
                        opt = st.binding_value(opt) or opt
                    if not st.is_setup(opt):
                        out.append(call)
        return out

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        new = self.reads.get(id(original_node))
        return updated_node.with_changes(value=new) if new else updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        plan = self.convert.get(id(original_node))
        if plan is None:
            return updated_node
        model, pname = plan
        args = list(updated_node.args)
        lam = args[0].value
        if isinstance(lam, cst.Lambda):
            lam = lam.with_changes(
                params=cst.Parameters(params=[cst.Param(cst.Name(pname))]),
                whitespace_after_lambda=cst.SimpleWhitespace(" "),
            )
            args[0] = args[0].with_changes(value=lam)
        args[1] = args[1].with_changes(value=cst.Name(model.value))
        new = updated_node.with_changes(args=args)
        self.change(original_node, "implicit gradient -> explicit gradient over the model")
        self.ctx.maybe_unused.add("params")
        if id(original_node) in self.index0:
            zero = cst.SubscriptElement(cst.Index(cst.Integer("0")))
            return cst.Subscript(value=new, slice=[zero])
        return new

    def leave_FunctionDef(self, original_node: cst.FunctionDef,
                          updated_node: cst.FunctionDef) -> Any:
        pname = self.def_param.get(id(original_node))
        if pname is None:
            return updated_node
        self.change(original_node, "gradient closure takes the model")
        return updated_node.with_changes(
            params=updated_node.params.with_changes(params=[cst.Param(cst.Name(pname))]))

    def leave_SimpleStatementLine(self, original_node: cst.SimpleStatementLine,
                                  updated_node: cst.SimpleStatementLine) -> Any:
        if id(original_node) in self.drop:
            self.change(original_node, "back(1.0) -> the gradient withgradient returned")
            return cst.RemoveFromParent()
        return updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> Any:
        grads = self.pullback_to.get(id(original_node))
        if grads is not None:
            t = updated_node.targets[0].target
            assert isinstance(t, cst.Tuple)
            els = list(t.elements)
            els[1] = els[1].with_changes(value=cst.Tuple(
                elements=[cst.Element(cst.Name(grads), comma=cst.Comma())],
                lpar=[cst.LeftParen()], rpar=[cst.RightParen()]))
            value = updated_node.value
            assert isinstance(value, cst.Call)
            func = self.stage.style.api("withgradient", self.ctx)
            return updated_node.with_changes(
                targets=[updated_node.targets[0].with_changes(target=t.with_changes(
                    elements=els))], value=value.with_changes(func=func))
        if id(original_node) not in self.unpack:
            return updated_node
        t = updated_node.targets[0].target
        assert isinstance(t, cst.Tuple)
        els = list(t.elements)
        g = els[1]
        els[1] = g.with_changes(value=cst.Tuple(
            elements=[cst.Element(g.value, comma=cst.Comma())],
            lpar=[cst.LeftParen()], rpar=[cst.RightParen()]))
        return updated_node.with_changes(
            targets=[updated_node.targets[0].with_changes(target=t.with_changes(elements=els))])

    def leave_Subscript(self, original_node: cst.Subscript,
                        updated_node: cst.Subscript) -> cst.BaseExpression:
        path = self.paths.get(id(original_node))
        if path is None:
            return updated_node
        expr: cst.BaseExpression = updated_node.value
        for step in path:
            if isinstance(step, cst.Name):
                expr = cst.Attribute(value=expr, attr=step)
            else:
                assert isinstance(step, cst.SubscriptElement)
                step = step.with_changes(comma=cst.MaybeSentinel.DEFAULT)
                expr = cst.Subscript(value=expr, slice=[step])
        self.change(original_node, "Grads lookup -> path in the gradient tree")
        return expr
