"""FM002: loss functions that read a global model get the model as first parameter."""

from __future__ import annotations

from typing import Any

import libcst as cst

from fluxtrain_migrate.analysis import implicit_gradient, model_accesses, params_info
from fluxtrain_migrate.common import Rule, code, positional, taken_names

_Fn = cst.FunctionDef | cst.Lambda


class LossRule(Rule):
    """``def loss(x, y): return f(model(x), y)`` -> ``def loss(m, x, y): return f(m(x), y)``.

    Functions reached from implicit gradients (and implicit ``train_``'s loss) that read
    the model, directly or through other functions, are rewritten; every call site passes
    the model (``m`` inside rewritten functions, the model's own name elsewhere).
    """

    RULE_ID = "FM002"
    NAME = "losses"
    DESCRIPTION = "loss(x, y) reading a global model -> loss(m, x, y)"

    def prepare(self) -> None:
        st = self.stage
        self.fn_param: dict[int, str] = {}  # function node id -> param name
        self.fn_model: dict[int, str] = {}  # function node id -> model name
        self.model_reads: dict[int, str] = {}  # Name id -> replacement param
        self.call_args: dict[int, str] = {}  # Call id -> first argument to insert
        self._nodes: dict[int, _Fn] = {}  # function node id -> node
        fns: list[tuple[str, _Fn, cst.Name]] = []  # (name, function node, binding name)
        by_binding: dict[int, _Fn] = {}  # id(the binding's scope node) -> function
        sites: list[tuple[cst.CSTNode, cst.Name, bool]] = []  # (fn-ish, model, always)
        calls: list[cst.Call] = []

        class _V(cst.CSTVisitor):
            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                calls.append(node)

            def visit_FunctionDef(inner, node: cst.FunctionDef) -> None:  # noqa: N805
                fns.append((node.name.value, node, node.name))
                by_binding[id(node)] = node

            def visit_Assign(inner, node: cst.Assign) -> None:  # noqa: N805
                if (len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name)
                        and isinstance(node.value, cst.Lambda)):
                    tgt = node.targets[0].target
                    fns.append((tgt.value, node.value, tgt))
                    by_binding[id(tgt)] = node.value

        st.module.visit(_V())
        for c in calls:
            info = implicit_gradient(st, c)
            if info is not None and info.status == "ok" and info.model is not None:
                lam = positional(c)[0].value
                if isinstance(lam, cst.Lambda) and not lam.params.params:
                    sites.append((lam.body, info.model, False))
                elif isinstance(lam, cst.Name):
                    fn = closure_def(st, lam)  # a do-block written as a nested def
                    if fn is not None:
                        sites.append((fn.body, info.model, False))
            elif converts_train(st, c):
                pos = positional(c)
                if len(pos) >= 4:
                    info = params_info(st, pos[1].value)
                    if info.status == "ok" and info.model is not None:
                        sites.append((pos[0].value, info.model, True))
        if not sites:
            return

        # a called Name resolves, by scope, to the one function it binds (two functions
        # may share a name in different scopes)
        def target(name: cst.Name) -> _Fn | None:
            if st.fq(name) is not None:
                return None
            assigns = st.assignments(name)
            if len(assigns) != 1:
                return None
            return by_binding.get(id(getattr(assigns[0], "node", None)))

        def callees(node: cst.CSTNode) -> list[tuple[cst.Call, _Fn]]:
            out: list[tuple[cst.Call, _Fn]] = []

            class _C(cst.CSTVisitor):
                def visit_Call(inner, call: cst.Call) -> None:  # noqa: N805
                    if isinstance(call.func, cst.Name):
                        t = target(call.func)
                        if t is not None:
                            out.append((call, t))

            node.visit(_C())
            return out

        closure: set[str] = set()  # models whose functions keep reading the global
        train_losses: dict[str, list[cst.CSTNode]] = {}  # model -> train_ losses
        for start, model, always in sites:
            reads = model_accesses(st, model)

            def reads_model(fn: _Fn, seen: set[int], reads: set[int] = reads) -> bool:
                if id(fn) in seen:
                    return False
                seen.add(id(fn))
                found = []

                class _R(cst.CSTVisitor):
                    def visit_Name(inner, nm: cst.Name) -> None:  # noqa: N805
                        if id(nm) in reads:  # noqa: B023 - used immediately
                            found.append(nm)

                fn.visit(_R())
                if found:
                    return True
                return any(reads_model(t, seen) for _c, t in callees(fn))

            todo: list[_Fn] = []
            if always:
                train_losses.setdefault(model.value, []).append(start)
                if isinstance(start, cst.Name):
                    t = target(start)
                    if t is None or not reads_model(t, set()):
                        # never a model parameter that the loss would then ignore
                        closure.add(model.value)
                        continue
                    todo.append(t)
                elif isinstance(start, cst.Lambda):
                    if not reads_model(start, set()):
                        closure.add(model.value)
                    todo.append(start)
                else:
                    closure.add(model.value)
                    continue
            else:
                todo.extend(t for _c, t in callees(start) if reads_model(t, set()))
            while todo:
                one: _Fn = todo.pop()
                if id(one) in self.fn_param:
                    if self.fn_model[id(one)] != model.value:
                        # one function used with two models: both keep the global form
                        closure |= {model.value, self.fn_model[id(one)]}
                    continue
                self.fn_param[id(one)] = _param_name(one)
                self.fn_model[id(one)] = model.value
                self._nodes[id(one)] = one
                for n in _names_in(one):
                    if id(n) in reads:
                        self.model_reads[id(n)] = self.fn_param[id(one)]
                todo.extend(t for _c, t in callees(one) if reads_model(t, set()))
        # every reference of a rewritten function must be a call or a train_ loss; a
        # function passed around as a value keeps its signature, and so does every other
        # function of its model (the explicit code then closes over the global model,
        # which is the same object: ``gradient(lambda _: loss(x, y), model)``)
        by_id = {id(fn): (name, binding) for name, fn, binding in fns}
        pending: list[tuple[cst.Call, int]] = []  # (call, id of the function it calls)
        losses_of: dict[str, set[str]] = {}
        for fid in list(self.fn_param):
            if fid not in by_id:
                continue
            name, binding = by_id[fid]
            model_name = self.fn_model[fid]
            for a in st.assignments(binding):
                for ref in a.references:
                    node = ref.node
                    p = st.parent_of(node)
                    if isinstance(p, cst.Call) and p.func is node:
                        pending.append((p, fid))
                        continue
                    q = st.parent_of(p) if p is not None else None
                    if (isinstance(p, cst.Arg) and isinstance(q, cst.Call)
                            and converts_train(st, q) and positional(q)[:1] == [p]):
                        losses_of.setdefault(model_name, set()).add(name)
                        continue
                    closure.add(model_name)
        for fid in [f for f, mdl in self.fn_model.items() if mdl in closure]:
            del self.fn_param[fid]
            for n in _names_in(self._nodes[fid]):
                self.model_reads.pop(id(n), None)
        for mdl in closure:
            for loss in train_losses.get(mdl, []):
                if isinstance(loss, cst.Lambda):
                    self.fn_param[id(loss)] = "_"  # train_ passes the model first
                    self.ctx.rewritten_losses.add("<lambda>")
                elif isinstance(loss, cst.Name):
                    self.ctx.closure_losses.add(loss.value)
        for call, fid in pending:
            if fid in self.fn_param:
                self.call_args[id(call)] = self._arg_for(call, self.fn_model[fid])
        for mdl, names in losses_of.items():
            if mdl not in closure:
                self.ctx.rewritten_losses |= names
        if any(fid not in by_id for fid in self.fn_param):
            self.ctx.rewritten_losses.add("<lambda>")  # an inline lambda given to train_

    def _arg_for(self, call: cst.Call, model: str) -> str:
        for anc in self.stage.ancestors(call):
            if id(anc) in self.fn_param:
                return self.fn_param[id(anc)]
        return model

    # -- rewrite --------------------------------------------------------------------
    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        new = self.model_reads.get(id(original_node))
        return updated_node.with_changes(value=new) if new else updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        arg = self.call_args.get(id(original_node))
        if arg is None:
            return updated_node
        new = cst.Arg(cst.Name(arg))
        args = list(updated_node.args)
        if args:
            new = new.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        self.change(original_node, f"{code(original_node.func)}(...) now takes the model first")
        return updated_node.with_changes(args=[new, *args])

    def _with_param(self, original: Any, updated: Any) -> Any:
        name = self.fn_param.get(id(original))
        if name is None:
            return updated
        params = updated.params
        new = cst.Param(cst.Name(name))
        if (params.params or params.star_arg is not cst.MaybeSentinel.DEFAULT
                or params.kwonly_params):
            new = new.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        if isinstance(updated, cst.Lambda) and not params.params and not params.kwonly_params \
                and params.star_arg is cst.MaybeSentinel.DEFAULT:
            self.change(original, "loss lambda takes the model")
            return updated.with_changes(params=params.with_changes(params=[new]),
                                        whitespace_after_lambda=cst.SimpleWhitespace(" "))
        if params.posonly_params:
            plist = list(params.posonly_params)
            return updated.with_changes(params=params.with_changes(posonly_params=[new, *plist]))
        self.change(original, "loss function takes the model as first parameter")
        return updated.with_changes(params=params.with_changes(params=[new, *params.params]))

    def leave_FunctionDef(self, original_node: cst.FunctionDef,
                          updated_node: cst.FunctionDef) -> Any:
        return self._with_param(original_node, updated_node)

    def leave_Lambda(self, original_node: cst.Lambda, updated_node: cst.Lambda) -> Any:
        return self._with_param(original_node, updated_node)


def closure_def(st: Any, name: cst.Name) -> cst.FunctionDef | None:
    """``def f(): ...`` (no parameters) that ``name`` alone refers to: Julia's
    ``gradient(ps) do ... end`` written as a nested def, given to ``gradient(f, ps)``."""
    if st.fq(name) is not None:
        return None
    assigns = st.assignments(name)
    if len(assigns) != 1 or len(assigns[0].references) != 1:
        return None
    fn = getattr(assigns[0], "node", None)
    if not isinstance(fn, cst.FunctionDef) or fn.decorators or fn.asynchronous:
        return None
    ps = fn.params
    if ps.params or ps.posonly_params or ps.kwonly_params or ps.star_kwarg is not None \
            or ps.star_arg is not cst.MaybeSentinel.DEFAULT:
        return None
    return fn


def converts_train(st: Any, call: cst.Call) -> bool:
    """A ``train_(loss, ps, data, opt)`` whose optimiser is a ``setup`` state, so FM005 makes
    it explicit (and it will call ``loss(model, ...)``). One that stays implicit (an
    optimiser that could not be translated) still calls ``loss(x, y)``: its loss must keep
    its signature, also when the codemod runs again over its own marked output."""
    if not st.call_to(call, "train_"):
        return False
    pos = positional(call)
    return len(pos) == 4 and not any(a.star for a in call.args) and st.is_state(pos[3].value)


def _names_in(fn: cst.CSTNode) -> list[cst.Name]:
    out: list[cst.Name] = []

    class _N(cst.CSTVisitor):
        def visit_Name(inner, n: cst.Name) -> None:  # noqa: N805
            out.append(n)

    fn.visit(_N())
    return out


def _param_name(fn: cst.CSTNode) -> str:
    used = {n.value for n in _names_in(fn)}
    for cand in ("m", "model_", "m_"):
        if cand not in used:
            return cand
    i = 1
    while f"m{i}" in used:
        i += 1
    return f"m{i}"


__all__ = ["LossRule", "taken_names"]
