"""FM005: implicit ``train_`` -> explicit ``train_``, or an explicit loop when it has ``cb=``."""

from __future__ import annotations

from typing import Any

import libcst as cst

from fluxtrain_migrate.analysis import params_info
from fluxtrain_migrate.common import Rule, code, free_name, positional

_LOOP = '''\
for {i}, {d} in enumerate({data}, 1):
    {args} = {d} if isinstance({d}, tuple) else ({d},)
    {val}, {grads} = {withgradient}(lambda {m}: {loss}({m}, *{args}), {model})
    if not math.isfinite({val}):
        raise {DomainError}(f"Loss is {{{val}}} on data item {{{i}}}, stopping training")
    {update_}({opt}, {model}, {grads}[0])
'''


class TrainRule(Rule):
    """``train_(loss, ps, data, opt)`` -> ``train_(loss, model, data, opt_state)``.

    With callbacks, the loop ``train_`` ran is written out: ``withgradient``, the
    non-finite-loss check, ``update_``, then each callback; a callback (a ``def``) that
    called ``stop()``/``skip()`` returns ``"stop"``/``"skip"`` instead and the loop
    ``break``s/``continue``s.
    """

    RULE_ID = "FM005"
    NAME = "train"
    DESCRIPTION = "implicit train_ -> explicit train_ or loop"

    def prepare(self) -> None:
        st = self.stage
        self.simple: dict[int, cst.Name] = {}  # call id -> model
        self.loops: dict[int, list[cst.BaseStatement]] = {}  # statement id -> statements
        self.signal_calls: dict[int, str] = {}  # stop()/skip() Expr statement id -> signal
        calls: list[cst.Call] = []

        class _V(cst.CSTVisitor):
            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                calls.append(node)

        st.module.visit(_V())
        for c in calls:
            if not st.call_to(c, "train_"):
                continue
            pos = positional(c)
            if len(pos) < 2:
                continue
            info = params_info(st, pos[1].value)
            if info.status == "none":
                continue
            if info.status == "part":
                self.mark(c, "FM102")
                continue
            if info.status != "ok" or info.model is None:
                self.mark(c, "FM103")
                continue
            if len(pos) != 4 or any(a.star for a in c.args):
                self.mark(c, "FM111")
                continue
            model = info.model
            loss, opt = pos[0].value, pos[3].value
            loss_ok = (isinstance(loss, cst.Name) and loss.value in self.ctx.rewritten_losses) or (
                isinstance(loss, cst.Lambda) and "<lambda>" in self.ctx.rewritten_losses)
            if not loss_ok or model.value in self.ctx.blocked:
                self.mark(c, "FM111", "the loss of this train_ could not be rewritten to take "
                          "the model: rewrite by hand")
                continue
            if not self.stage.is_state(opt):
                self.mark(c, "FM111", "the optimiser of this train_ could not be translated: "
                          "use opt_state = setup(rule, model)")
                continue
            others = [a for a in c.args if a.keyword is not None]
            if not others:
                self.simple[id(c)] = model
                continue
            if len(others) != 1 or others[0].keyword is None or others[0].keyword.value != "cb":
                self.mark(c, "FM111")
                continue
            stmt = st.parent_of(c)
            line = st.parent_of(stmt) if stmt is not None else None
            if not (isinstance(stmt, cst.Expr) and isinstance(line, cst.SimpleStatementLine)
                    and len(line.body) == 1):
                self.mark(c, "FM111")
                continue
            loop = self._loop(c, loss, model, opt, pos[2].value, others[0].value)
            if loop is not None:
                self.loops[id(line)] = loop
        # stop()/skip() left anywhere else
        for c in calls:
            if st.call_to(c, "stop", "skip"):
                e = st.parent_of(c)
                if e is None or id(e) not in self.signal_calls:
                    self.mark(c, "FM109")

    def _callback(self, expr: cst.BaseExpression) -> tuple[bool, bool] | None:
        """(stops, skips) for a callback; rewrites its stop()/skip(); None if unconvertible."""
        st = self.stage
        fn: cst.CSTNode | None = None
        if isinstance(expr, cst.Call) and st.call_to(expr, "throttle"):
            pos = positional(expr)
            if len(expr.args) != 2 or len(pos) != 2:
                return self._has_signal(expr)
            expr = pos[0].value
        if isinstance(expr, cst.Name):
            assigns = st.assignments(expr)
            if len(assigns) == 1 and isinstance(getattr(assigns[0], "node", None), cst.FunctionDef):
                fn = assigns[0].node
                if len(assigns[0].references) != 1:
                    r = self._has_signal(fn)
                    return r if r == (False, False) else None
        if fn is None:
            return self._has_signal(expr)
        assert isinstance(fn, cst.FunctionDef)
        stops = skips = False
        found: list[tuple[cst.Call, str]] = []
        bad = False

        class _F(cst.CSTVisitor):
            def visit_FunctionDef(inner, node: cst.FunctionDef) -> bool:  # noqa: N805
                return node is fn

            def visit_Lambda(inner, node: cst.Lambda) -> bool:  # noqa: N805
                return False

            def visit_Return(inner, node: cst.Return) -> None:  # noqa: N805
                nonlocal bad
                if node.value is not None:
                    bad = True

            def visit_Try(inner, node: cst.Try) -> None:  # noqa: N805
                nonlocal bad
                bad = True

            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                if st.call_to(node, "stop"):
                    found.append((node, "stop"))
                elif st.call_to(node, "skip"):
                    found.append((node, "skip"))

        fn.visit(_F())
        if bad and found:
            return None
        for call, _kind in found:
            e = st.parent_of(call)
            if not isinstance(e, cst.Expr):
                return None
        for call, kind in found:
            e = st.parent_of(call)
            assert e is not None
            self.signal_calls[id(e)] = kind
            stops |= kind == "stop"
            skips |= kind == "skip"
        return stops, skips

    def _has_signal(self, node: cst.CSTNode) -> tuple[bool, bool] | None:
        st = self.stage
        hit: list[cst.Call] = []

        class _S(cst.CSTVisitor):
            def visit_Call(inner, c: cst.Call) -> None:  # noqa: N805
                if st.call_to(c, "stop", "skip"):
                    hit.append(c)

        node.visit(_S())
        return None if hit else (False, False)

    def _loop(self, c: cst.Call, loss: cst.BaseExpression, model: cst.Name,
              opt: cst.BaseExpression, data: cst.BaseExpression,
              cb: cst.BaseExpression) -> list[cst.BaseStatement] | None:
        st, ctx = self.stage, self.ctx
        taken: set[str] = set()

        def fresh(base: str) -> str:
            n = free_name(st, base, taken)
            taken.add(n)
            return n

        items = list(cb.elements) if isinstance(cb, cst.List) else None
        cbs = [e.value for e in items] if items is not None else [cb]
        plans = []
        for one in cbs:
            r = self._callback(one)
            if r is None:
                self.mark(c, "FM109")
                return None
            plans.append((one, r))
        pre: list[str] = []
        loss_name = code(loss)
        if isinstance(loss, cst.Lambda):
            loss_name = fresh("loss_fn")
            pre.append(f"{loss_name} = {code(loss)}")
        opt_name = code(opt)
        if not isinstance(opt, cst.Name):
            opt_name = fresh("opt_state")
            pre.append(f"{opt_name} = {code(opt)}")
        calls: list[tuple[str, bool, bool]] = []
        for one, (stops, skips) in plans:
            if isinstance(one, cst.Name):
                calls.append((f"{one.value}()", stops, skips))
            else:
                name = fresh("cb")
                pre.append(f"{name} = {code(one)}")
                calls.append((f"{name}()", stops, skips))
        names = {k: fresh(k) for k in ("i", "d", "args", "val", "grads")}
        m = "m" if "m" not in taken else fresh("m")
        body = _LOOP.format(
            data=code(data), loss=loss_name, model=model.value, opt=opt_name, m=m,
            withgradient=code(st.style.api("withgradient", ctx)),
            DomainError=code(st.style.api("DomainError", ctx)),
            update_=code(st.style.api("update_", ctx)),
            **names,
        )
        sig = None
        for k, (call, stops, skips) in enumerate(calls):
            last = k == len(calls) - 1
            if not stops and (not skips or last):
                body += f"    {call}\n"
                continue
            if sig is None:
                sig = fresh("signal")
            body += f"    {sig} = {call}\n"
            if stops:
                body += f"    if {sig} == \"stop\":\n        break\n"
            if skips and not last:
                body += f"    if {sig} == \"skip\":\n        continue\n"
        ctx.need_import("math", None)
        ctx.maybe_unused |= {"stop", "skip", "params"}
        src = "\n".join(pre) + ("\n" if pre else "") + body
        stmts: list[cst.BaseStatement] = list(cst.parse_module(src).body)
        self.change(c, "train_ with callbacks -> explicit loop")
        return stmts

    # -- rewrite --------------------------------------------------------------------
    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        model = self.simple.get(id(original_node))
        if model is None:
            return updated_node
        args = list(updated_node.args)
        args[1] = args[1].with_changes(value=cst.Name(model.value))
        self.change(original_node, "train_(loss, ps, ...) -> train_(loss, model, ...)")
        self.ctx.maybe_unused.add("params")
        return updated_node.with_changes(args=args)

    def leave_Expr(self, original_node: cst.Expr, updated_node: cst.Expr) -> Any:
        kind = self.signal_calls.get(id(original_node))
        if kind is None:
            return updated_node
        self.change(original_node, f"{kind}() in a callback -> return \"{kind}\"")
        return cst.Return(value=cst.SimpleString(f'"{kind}"'))

    def leave_SimpleStatementLine(self, original_node: cst.SimpleStatementLine,
                                  updated_node: cst.SimpleStatementLine) -> Any:
        loop = self.loops.get(id(original_node))
        if loop is None:
            return updated_node
        lead = list(updated_node.leading_lines)
        comment = updated_node.trailing_whitespace.comment
        if comment is not None:
            lead.append(cst.EmptyLine(indent=True, comment=comment))
        first = loop[0].with_changes(leading_lines=lead)
        return cst.FlattenSentinel([first, *loop[1:]])
