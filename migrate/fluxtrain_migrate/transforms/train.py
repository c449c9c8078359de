"""FM005: implicit ``train_`` -> explicit ``train_``, or an explicit loop when it has ``cb=``."""

from __future__ import annotations

from typing import Any

import libcst as cst

from fluxtrain_migrate.analysis import params_info
from fluxtrain_migrate.common import Rule, code, free_name, positional

#: the loop ``train_`` ran (implicit and explicit alike): one step per item of ``data``,
#: the loss checked before the update, the callbacks after it
_LOOP = '''\
for {target} in {data}:
{unpack}    {val}, {grads} = {withgradient}(lambda {m}: {call}, {model})
    if not math.isfinite({val}):
        raise {DomainError}(f"Loss is {{{val}}}, stopping training")
    {update_}({opt}, {model}, {grads}[0])
'''

#: an item whose arity is unknown: splatted when a tuple or list, else passed whole
_SPLAT = "    {args} = {d} if isinstance({d}, (tuple, list)) else ({d},)\n"


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
            loss_ok = (isinstance(loss, cst.Name) and (
                loss.value in self.ctx.rewritten_losses or loss.value in self.ctx.closure_losses)
            ) or (isinstance(loss, cst.Lambda) and "<lambda>" in self.ctx.rewritten_losses)
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
                e = _signal_statement(st, c)
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
            if _signal_statement(st, call) is None:
                return None
        for call, kind in found:
            e = _signal_statement(st, call)
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
        scope = st.scope_of(c)

        def fresh(*candidates: str) -> str:
            # a name nothing visible from the loop binds (builtins included), else a
            # numbered one that nothing in the module spells
            for n in candidates:
                if n not in taken and (scope is None or n not in scope) and n.isidentifier():
                    taken.add(n)
                    return n
            n = free_name(st, candidates[0], taken)
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
                name = fresh("cb", "callback")
                pre.append(f"{name} = {code(one)}")
                calls.append((f"{name}()", stops, skips))
        batch = self._loss_params(loss)
        closure = isinstance(loss, cst.Name) and loss.value in self.ctx.closure_losses
        if batch is not None and len(batch) >= 2:
            # an item the old train_ could splat into this loss is a tuple or list of
            # exactly these many elements, which ``for x, y in data`` unpacks the same way
            names = [fresh(n, f"{n}_batch") for n in batch]
            target, unpack, args = ", ".join(names), "", ", ".join(names)
        else:
            d, splat = fresh("batch", "item"), fresh("args", "batch_args")
            target, unpack = d, _SPLAT.format(args=splat, d=d)
            args = f"*{splat}"
        # the lambda's parameter shadows nothing its body reads: the loss and the batch
        m = "m" if "m" not in {loss_name, *target.split(", "), args.lstrip("*")} else fresh("m")
        loss_call = f"{loss_name}({args})" if closure else f"{loss_name}({m}, {args})"
        body = _LOOP.format(
            target=target, unpack=unpack, data=code(data), call=loss_call, model=model.value,
            opt=opt_name, m="_" if closure else m, val=fresh("val", "loss_val"),
            grads=fresh("grads", "grads_batch"),
            withgradient=code(st.style.api("withgradient", ctx)),
            DomainError=code(st.style.api("DomainError", ctx)),
            update_=code(st.style.api("update_", ctx)),
        )
        sig = None
        for k, (call, stops, skips) in enumerate(calls):
            last = k == len(calls) - 1
            if not stops and (not skips or last):
                body += f"    {call}\n"
                continue
            if sig is None:
                sig = fresh("signal", "cb_signal")
            body += f"    {sig} = {call}\n"
            if stops:
                body += f"    if {sig} == \"stop\":\n        break\n"
            if skips and not last:
                body += f"    if {sig} == \"skip\":\n        continue\n"
        ctx.need_import("math", None)
        ctx.maybe_unused |= {"stop", "skip", "params", "train_"}
        src = "\n".join(pre) + ("\n" if pre else "") + body
        stmts: list[cst.BaseStatement] = list(cst.parse_module(src).body)
        self.change(c, "train_ with callbacks -> explicit loop")
        return stmts

    def _loss_params(self, loss: cst.BaseExpression) -> list[str] | None:
        """The data parameters of a train_ loss (the model's, if it has one, left out):
        plain positional names only, else None (defaults, ``*args``, unknown function)."""
        fn: cst.CSTNode | None = loss
        rewritten = True
        if isinstance(loss, cst.Name):
            assigns = self.stage.assignments(loss)
            if len(assigns) != 1:
                return None
            node = getattr(assigns[0], "node", None)
            if isinstance(node, cst.Name):
                fn = self.stage.binding_value(node)
            else:
                fn = node
            rewritten = loss.value not in self.ctx.closure_losses
        if not isinstance(fn, cst.FunctionDef | cst.Lambda):
            return None
        ps = fn.params
        if (ps.posonly_params or ps.kwonly_params or ps.star_arg is not cst.MaybeSentinel.DEFAULT
                or ps.star_kwarg is not None or any(p.default is not None for p in ps.params)):
            return None
        names = [p.name.value for p in ps.params]
        return names[1:] if rewritten else names

    def _closure_wrapper(self, loss: cst.Name) -> cst.Lambda:
        """``lambda _, x, y: loss(x, y)`` for a loss that keeps reading the global model."""
        batch = self._loss_params(loss)
        if batch is None:
            star = free_name(self.stage, "batch")
            return cst.ensure_type(cst.parse_expression(
                f"lambda _, *{star}: {loss.value}(*{star})"), cst.Lambda)
        args = ", ".join(batch)
        return cst.ensure_type(cst.parse_expression(
            f"lambda _{', ' if args else ''}{args}: {loss.value}({args})"), cst.Lambda)

    # -- rewrite --------------------------------------------------------------------
    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        model = self.simple.get(id(original_node))
        if model is None:
            return updated_node
        args = list(updated_node.args)
        args[1] = args[1].with_changes(value=cst.Name(model.value))
        loss = original_node.args[0].value
        if isinstance(loss, cst.Name) and loss.value in self.ctx.closure_losses:
            args[0] = args[0].with_changes(value=self._closure_wrapper(loss))
        self.change(original_node, "train_(loss, ps, ...) -> train_(loss, model, ...)")
        self.ctx.maybe_unused.add("params")
        return updated_node.with_changes(args=args)

    def leave_Expr(self, original_node: cst.Expr, updated_node: cst.Expr) -> Any:
        kind = self.signal_calls.get(id(original_node))
        if kind is None or isinstance(original_node.value, cst.BooleanOperation):
            return updated_node
        self.change(original_node, f"{kind}() in a callback -> return \"{kind}\"")
        return cst.Return(value=cst.SimpleString(f'"{kind}"'))

    def _signal_if(self, line: cst.SimpleStatementLine) -> cst.If | None:
        """``cond and stop()`` (Flux's ``cond && Flux.stop()``) -> ``if cond: return "stop"``."""
        small = line.body[0] if len(line.body) == 1 else None
        if not isinstance(small, cst.Expr) or id(small) not in self.signal_calls:
            return None
        op = small.value
        if not isinstance(op, cst.BooleanOperation):
            return None
        kind = self.signal_calls[id(small)]
        self.change(small, f"cond and {kind}() -> if cond: return \"{kind}\"")
        ret = cst.SimpleStatementLine([cst.Return(value=cst.SimpleString(f'"{kind}"'))])
        return cst.If(test=op.left, body=cst.IndentedBlock([ret]),
                      leading_lines=line.leading_lines)

    def leave_SimpleStatementLine(self, original_node: cst.SimpleStatementLine,
                                  updated_node: cst.SimpleStatementLine) -> Any:
        loop = self.loops.get(id(original_node))
        if loop is None:
            cond = self._signal_if(original_node)
            return updated_node if cond is None else cond
        lead = list(updated_node.leading_lines)
        comment = updated_node.trailing_whitespace.comment
        if comment is not None:
            lead.append(cst.EmptyLine(indent=True, comment=comment))
        first = loop[0].with_changes(leading_lines=lead)
        return cst.FlattenSentinel([first, *loop[1:]])


def _signal_statement(st: Any, call: cst.Call) -> cst.Expr | None:
    """The statement of a callback's ``stop()``/``skip()`` that can become a ``return``:
    ``stop()`` alone, or ``cond and stop()``."""
    e = st.parent_of(call)
    if isinstance(e, cst.BooleanOperation) and isinstance(e.operator, cst.And) \
            and e.right is call:
        e = st.parent_of(e)
        return e if isinstance(e, cst.Expr) and isinstance(
            st.parent_of(e), cst.SimpleStatementLine) and len(st.parent_of(e).body) == 1 else None
    return e if isinstance(e, cst.Expr) else None
