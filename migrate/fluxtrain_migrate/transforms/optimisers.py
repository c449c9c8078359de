"""FM004: old optimisers -> ``opt_state = setup(NewRule(...), model)``; ``update_`` and
``opt.eta = v`` (-> ``adjust_``) follow."""

from __future__ import annotations

from typing import Any, cast

import libcst as cst

from fluxtrain_migrate.analysis import (
    explicit_pieces,
    grads_origin,
    grads_uses_ok,
    implicit_gradient,
    params_info,
)
from fluxtrain_migrate.common import (
    Rule,
    code,
    fix_commas,
    free_name,
    keyword,
    positional,
    root_name,
    taken_names,
)
from fluxtrain_migrate.names import OLD_OPTIMISERS, TRANSLATE

_OLD = OLD_OPTIMISERS | {"OptimiserChain", "ClipGrad"}
_SIMPLE_FIELDS = {"eta", "rho", "beta", "epsilon", "gamma", "decay"}
_FIELD_MAP = {"wd": "lambda_", "thresh": None}


class _Untranslatable(Exception):
    pass


class OptimiserRule(Rule):
    """Translate old optimiser constructions and the implicit ``update_``/field writes."""

    RULE_ID = "FM004"
    NAME = "optimisers"
    DESCRIPTION = "old optimiser -> setup(new rule, model); update_; opt.eta = v -> adjust_"

    def old_name(self, node: cst.CSTNode) -> str | None:
        if not isinstance(node, cst.Call):
            return None
        f = self.stage.fq(node.func)
        if f is None or not f.startswith("fluxtrain.") or "." in f[10:]:
            return None
        name = f[10:]
        return name if name in _OLD else None

    # -- analysis -------------------------------------------------------------------
    def prepare(self) -> None:
        st = self.stage
        self.replace: dict[int, cst.BaseExpression] = {}  # construction call id -> new expr
        self.rename: dict[int, str] = {}  # Name id -> new name
        self.adjust: dict[int, tuple[str, str, str | None]] = {}  # Assign id -> (state, field)
        self.update_args: dict[int, cst.Name] = {}  # update_ call id -> model
        self.constructions: list[cst.Call] = []
        self.before: dict[int, list[str]] = {}  # statement id -> lines to put before it
        self.after: dict[int, tuple[int, ...]] = {}  # statement id -> children to freeze
        self.freeze_state: dict[int, str] = {}
        self.eta_names: dict[int, str] = {}  # opt.eta Attribute id -> variable
        self.eta_aug: dict[int, tuple[str, str]] = {}  # AugAssign id -> (variable, state)
        self.eta_assign: dict[int, str] = {}  # opt.eta = v Assign id -> variable
        self.converted_ids: set[int] = set()
        taken = taken_names(st.module)
        calls: list[cst.Call] = []

        class _V(cst.CSTVisitor):
            def visit_Call(inner, node: cst.Call) -> None:  # noqa: N805
                calls.append(node)

        st.module.visit(_V())
        # outermost constructions
        for c in calls:
            if self.old_name(c) is None:
                continue
            parent = st.parent_of(st.parent_of(c) or c)
            if isinstance(parent, cst.Call) and self.old_name(parent) is not None:
                continue
            self.constructions.append(c)
        self.emitted: list[tuple[cst.Call, str]] = []
        self.insert_after: dict[int, list[str]] = {}
        opaque = self._plan_opaque(calls, taken)
        for c in self.constructions:
            if not any(id(a) in opaque for a in st.ancestors(c)):
                self.plan(c, taken)
        for c in calls:
            if st.call_to(c, "update_") and id(c) not in self.update_args:
                pos = positional(c)
                if len(pos) == 3 and params_info(st, pos[1].value).status != "none":
                    self.mark(c, "FM108", self._why_not(pos[0].value))
                elif len(pos) == 3 and self.old_name(pos[0].value) is None:
                    f = pos[0].value
                    if isinstance(f, cst.Name) and id(f) not in self.rename:
                        if self._is_old_binding(f):
                            self.mark(c, "FM108")

    def _plan_opaque(self, calls: list[cst.Call], taken: set[str]) -> set[int]:
        """An optimiser variable built in several steps, or by code the codemod cannot read
        (``opt = ADAM(eta)`` then ``if lam > 0: opt = Optimiser(WeightDecay(lam), opt)``;
        ``opt = args.opt(eta)``): its assignments stay, and ``opt_state = setup(opt,
        model)`` follows the last one (``setup`` translates an old optimiser, with a
        deprecation warning naming the new rule). Returns the ids of the statements kept."""
        st = self.stage
        seen: set[int] = set()
        kept: set[int] = set()
        for c in calls:
            pos = positional(c)
            if st.call_to(c, "update_") and len(pos) == 3:
                opt = pos[0].value
            elif st.call_to(c, "train_") and len(pos) == 4:
                opt = pos[3].value
            else:
                continue
            if not isinstance(opt, cst.Name) or st.fq(opt) is not None:
                continue
            assigns = st.assignments(opt)
            key = id(assigns[0]) if assigns else 0
            if not assigns or key in seen:
                continue
            seen.add(key)
            value = st.binding_value(opt)
            if value is not None and self.old_name(value) is not None:
                continue  # one plain construction: plan() translates it
            plan = self._opaque(opt, assigns)
            if plan is None:
                continue
            anchor, stmts, uses, model = plan
            state = "opt_state" if "opt_state" not in taken else free_name(
                st, f"{opt.value}_state", taken)
            taken.add(state)
            setup = code(st.style.api("setup", self.ctx))
            self.insert_after.setdefault(id(anchor), []).append(
                f"{state} = {setup}({opt.value}, {model.value})")
            for node, call in uses:
                self.rename[id(node)] = state
                if st.call_to(call, "update_"):
                    self.update_args[id(call)] = model
            kept |= stmts
        return kept

    def _opaque(self, opt: cst.Name, assigns: list[Any]) -> tuple[
            cst.CSTNode, set[int], list[tuple[cst.Name, cst.Call]], cst.Name] | None:
        st = self.stage
        stmts: list[cst.CSTNode] = []
        for a in assigns:
            node = getattr(a, "node", None)
            target = st.parent_of(node) if isinstance(node, cst.Name) else None
            stmt = st.parent_of(target) if isinstance(target, cst.AssignTarget) else None
            if not isinstance(stmt, cst.Assign):
                return None
            stmts.append(stmt)
        uses: list[tuple[cst.Name, cst.Call]] = []
        models: set[str] = set()
        model: cst.Name | None = None
        for a in assigns:
            for ref in a.references:
                node = ref.node
                if any(st.position(s)[0] <= st.position(node)[0] <= self._end(s)
                       for s in stmts):
                    continue  # ``opt = Optimiser(WeightDecay(lam), opt)``
                arg = st.parent_of(node)
                call = st.parent_of(arg) if arg is not None else None
                if not (isinstance(arg, cst.Arg) and isinstance(call, cst.Call)):
                    return None
                pos = positional(call)
                if st.call_to(call, "update_") and pos and pos[0] is arg:
                    m, ok = self._update_model(call)
                    if m is None or not ok or self.last_frozen:
                        return None
                elif st.call_to(call, "train_") and len(pos) == 4 and pos[3] is arg:
                    info = params_info(st, pos[1].value)
                    if info.status != "ok" or info.model is None or info.frozen:
                        return None
                    m = info.model
                else:
                    return None
                models.add(m.value)
                model = model or m
                uses.append((cast(cst.Name, node), call))
        if len(models) != 1 or model is None or not uses:
            return None
        # the statement after which the state is made: the last assignment's, widened to
        # the block every use is in; every assignment before its end, every use after it
        anchor: cst.CSTNode | None = max(
            (st.statement_of(s) or s for s in stmts), key=lambda n: st.position(n))
        first_use = min(st.position(n)[0] for n, _c in uses)
        while anchor is not None:
            block = st.parent_of(anchor)
            if all(id(block) in {id(b) for b in st.ancestors(n)} for n, _c in uses):
                break
            anchor = st.statement_of(block) if block is not None else None
        if anchor is None or self._end(anchor) >= first_use:
            return None
        if not self._defined_before(model, self._end(anchor)):
            return None
        return anchor, {id(s) for s in stmts}, uses, model

    def _end(self, node: cst.CSTNode) -> int:
        p = self.stage.pos.get(node)
        return p.end.line if p is not None else 0

    def on_leave(self, original_node: Any, updated_node: Any) -> Any:
        result = super().on_leave(original_node, updated_node)
        lines = self.insert_after.get(id(original_node))
        if not lines or self.stage.is_protected(original_node):
            return result
        new = [cst.parse_statement(t) for t in lines]
        self.change(original_node, "opt_state = setup(opt, model) after the optimiser is built")
        if isinstance(result, cst.FlattenSentinel):
            return cst.FlattenSentinel([*result.nodes, *new])
        return cst.FlattenSentinel([result, *new])

    def _why_not(self, opt: cst.BaseExpression) -> str | None:
        """A specific reason for an ``update_`` whose optimiser is not converted."""
        if isinstance(opt, cst.Name):
            assigns = self.stage.assignments(opt)
            if any(isinstance(getattr(a, "node", None), cst.Param) for a in assigns):
                return (f"the optimiser {opt.value} is a parameter of this function: make "
                        "opt_state = setup(rule, model) where the optimiser is built and "
                        "pass opt_state in")
        return None

    def _is_old_binding(self, name: cst.Name) -> bool:
        value = self.stage.binding_value(name)
        return value is not None and self.old_name(value) is not None

    def _update_model(self, call: cst.Call) -> tuple[cst.Name | None, bool]:
        """(model, ok) for ``update_(opt, ps, gs)``; ``self.last_frozen`` gets the parts
        to freeze."""
        self.last_frozen: tuple[int, ...] = ()
        st = self.stage
        pos = positional(call)
        if len(pos) != 3 or len(call.args) != 3:
            return None, False
        info = params_info(st, pos[1].value)
        if info.status != "ok" or info.model is None:
            return None, False
        self.last_frozen = info.frozen
        gs = pos[2].value
        if isinstance(gs, cst.Call):
            ok = implicit_gradient(st, gs) is not None
            return info.model, ok
        if not isinstance(gs, cst.Name):
            return None, False
        origin = grads_origin(st, gs)
        if origin is None:
            return None, False
        ginfo = implicit_gradient(st, origin[1])
        if ginfo is None or ginfo.status != "ok" or ginfo.model is None:
            return None, False
        if ginfo.model.value != info.model.value:
            return None, False
        ok, _ = grads_uses_ok(st, gs, info.model)
        return info.model, ok

    def plan(self, c: cst.Call, taken: set[str]) -> None:
        st = self.stage
        parent_arg = st.parent_of(c)
        owner = st.parent_of(parent_arg) if parent_arg is not None else None
        # inline: update_(Adam(), ps, gs) / train_(loss, ps, data, Adam())
        if isinstance(parent_arg, cst.Arg) and isinstance(owner, cst.Call):
            pos = positional(owner)
            model = None
            if st.call_to(owner, "update_") and pos and pos[0] is parent_arg:
                model, ok = self._update_model(owner)
                if model is not None and ok and not self.last_frozen:
                    self.update_args[id(owner)] = model
                else:
                    model = None
            elif st.call_to(owner, "train_") and len(pos) >= 4 and pos[3] is parent_arg:
                info = params_info(st, pos[1].value)
                model = info.model if info.status == "ok" and not info.frozen else None
            if model is None:
                self.mark(c, "FM107")
                return
            self._emit(c, model)
            return
        if not (isinstance(parent_arg, cst.Assign) and len(parent_arg.targets) == 1
                and isinstance(parent_arg.targets[0].target, cst.Name)):
            self.mark(c, "FM107")
            return
        target = parent_arg.targets[0].target
        assigns = st.assignments(target)
        if any(st.is_setup(st.parent_of(st.parent_of(r.node) or r.node) or r.node)
               for a in assigns for r in a.references):
            return  # already given to setup (the explicit style; a second run)
        refs: list[Any] = list(assigns[0].references) if len(assigns) == 1 else []
        if len(assigns) != 1:
            mine = self._sequential_refs(parent_arg, assigns)
            if mine is None:
                self.mark(c, "FM107", "old optimiser variable assigned more than once: use "
                          "one opt_state = setup(rule, model) and adjust_")
                return
            refs = mine
        models: set[str] = set()
        frozen: set[tuple[int, ...]] = set()
        eta_reads: list[cst.Attribute] = []
        eta_augs: list[cst.AugAssign] = []
        model_node: cst.Name | None = None
        bad: list[cst.CSTNode] = []
        renames: list[cst.Name] = [target]
        adjusts: list[tuple[cst.Assign, str, cst.BaseExpression]] = []
        updates: list[tuple[cst.Call, cst.Name]] = []
        root = self.old_name(c) or ""
        for ref in refs:
            node = ref.node
            p = st.parent_of(node)
            q = st.parent_of(p) if p is not None else None
            if isinstance(p, cst.Arg) and isinstance(q, cst.Call):
                pos = positional(q)
                if st.call_to(q, "update_") and pos and pos[0] is p:
                    m, ok = self._update_model(q)
                    if m is not None and ok:
                        frozen.add(self.last_frozen)
                        models.add(m.value)
                        model_node = model_node or m
                        renames.append(node)
                        updates.append((q, m))
                        continue
                if st.call_to(q, "train_") and len(pos) >= 4 and pos[3] is p:
                    info = params_info(st, pos[1].value)
                    if info.status == "ok" and info.model is not None:
                        frozen.add(info.frozen)
                        models.add(info.model.value)
                        model_node = model_node or info.model
                        renames.append(node)
                        continue
            if isinstance(p, cst.Attribute) and p.value is node and isinstance(q, cst.AssignTarget):
                stmt = st.parent_of(q)
                fld = self._field(root, p.attr.value)
                if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and fld is not None:
                    adjusts.append((stmt, fld, stmt.value))
                    continue
            if (isinstance(p, cst.Attribute) and p.value is node and p.attr.value == "eta"
                    and root in _ETA_DEFAULT and st.scope_of(node) is st.scope_of(target)):
                if isinstance(q, cst.AugAssign) and q.target is p:
                    eta_augs.append(q)
                    continue
                if not isinstance(q, (cst.AssignTarget, cst.AugAssign)):
                    eta_reads.append(p)
                    continue
            bad.append(node)
        eta_init = _eta_init(c, root) if (eta_reads or eta_augs) else None
        if (eta_reads or eta_augs) and eta_init is None:
            bad.extend(eta_reads)
            bad.extend(eta_augs)
        if len(frozen) > 1:
            self.mark(c, "FM102", "this optimiser trains different parts of the model at "
                      "different places: one setup per part, with freeze_")
            self.ctx.blocked.add(target.value)
            return
        if bad or len(models) != 1 or model_node is None:
            for b in bad:
                self.mark(b, "FM107")
            self.mark(c, "FM107")
            self.ctx.blocked.add(target.value)
            return
        # the model must exist where the optimiser is built (``ps = params(a, b)`` bound
        # later: its pieces, if they exist by then)
        line = st.position(c)[0]
        setup_model: cst.BaseExpression = cst.Name(model_node.value)
        if not self._defined_before(model_node, line):
            info = params_info(st, model_node)
            value = st.binding_value(model_node)
            pieces = explicit_pieces(st, value) if isinstance(value, cst.Call) else None
            roots = [root_name(p) for p in pieces or []]
            if info.explicit is None or not pieces or not all(
                    r is not None and self._defined_before(r, line) for r in roots):
                self.mark(c, "FM107", "the model is defined after the optimiser: move "
                          "opt_state = setup(rule, model) after the model")
                self.ctx.blocked.add(target.value)
                return
            setup_model = cst.parse_expression(info.explicit)
        try:
            self._translate(c)
        except _Untranslatable as e:
            self.mark(c, "FM107", str(e))
            self.ctx.blocked.add(target.value)
            return
        new = "opt_state" if "opt_state" not in taken else target.value
        if new != target.value:
            taken.add(new)
        for n in renames:
            self.rename[id(n)] = new
        eta_var = None
        if eta_init is not None:
            used = taken_names(st.module) | taken
            eta_var = next((n for n in ("eta", "lr", "learning_rate") if n not in used),
                           None) or free_name(st, "eta", taken)
            taken.add(eta_var)
            self.before[id(parent_arg)] = [f"{eta_var} = {eta_init}"]
            for r in eta_reads:
                self.eta_names[id(r)] = eta_var
            for aug in eta_augs:
                self.eta_aug[id(aug)] = (eta_var, new)
        (fz,) = frozen or {()}
        if fz:
            self.after[id(parent_arg)] = fz
            self.freeze_state[id(parent_arg)] = new
        for stmt, fld, _v in adjusts:
            self.adjust[id(stmt)] = (new, fld, root)
            if fld == "eta" and eta_var is not None:
                self.eta_assign[id(stmt)] = eta_var
        for q, m in updates:
            self.update_args[id(q)] = m
        self._emit(c, model_node, setup_model)

    def _sequential_refs(self, assign: cst.Assign, assigns: list[Any]) -> list[Any] | None:
        """The name reused for one optimiser after another (``opt = Momentum()`` ... later
        ``opt = Optimiser(...)``), every assignment a statement of one block, none inside a
        loop: the references that see ``assign`` (those after it, before the next one)."""
        st = self.stage
        lines = []
        for a in assigns:
            node = getattr(a, "node", None)
            target = st.parent_of(node) if isinstance(node, cst.Name) else None
            stmt = st.parent_of(target) if isinstance(target, cst.AssignTarget) else None
            line = st.parent_of(stmt) if isinstance(stmt, cst.Assign) else None
            if not isinstance(line, cst.SimpleStatementLine):
                return None
            lines.append((stmt, line))
        blocks = {id(st.parent_of(line)) for _s, line in lines}
        if len(blocks) != 1 or any(isinstance(a, cst.For | cst.While)
                                   for a in st.ancestors(lines[0][1])):
            return None
        ends = sorted((self._end(line), id(stmt)) for stmt, line in lines)
        mine = []
        for ref in assigns[0].references:
            at = st.position(ref.node)[0]
            owner = None
            for end, sid in ends:
                if end < at:
                    owner = sid
            if owner == id(assign):
                mine.append(ref)
        return mine

    def _defined_before(self, name: cst.Name, line: int) -> bool:
        assigns = self.stage.assignments(name)
        return bool(assigns) and all(
            getattr(a, "node", None) is not None and self.stage.position(a.node)[0] <= line
            for a in assigns)

    def _field(self, root: str, fld: str) -> str | None:
        new_root, kw = TRANSLATE.get(root, ("", {}))
        if new_root in ("", "OptimiserChain") or root in ("AdamW", "ADAMW", "AdaBelief"):
            return None
        if fld in kw:
            return kw[fld]
        return fld if fld in _SIMPLE_FIELDS else None

    def _emit(self, c: cst.Call, model: cst.Name,
              setup_model: cst.BaseExpression | None = None) -> None:
        try:
            rule = self._translate(c)
        except _Untranslatable as e:
            self.mark(c, "FM107", str(e))
            return
        arg = setup_model if setup_model is not None else cst.Name(model.value)
        setup = cst.Call(
            func=self.stage.style.api("setup", self.ctx),
            args=fix_commas([cst.Arg(rule), cst.Arg(arg)]),
        )
        self.replace[id(c)] = setup
        self.change(c, f"{code(c.func)}(...) -> setup({code(rule.func)}(...), {code(arg)})")

    def _translate(self, c: cst.Call) -> cst.Call:
        old = self.old_name(c)
        if old is None or old == "AbstractOptimiser" or old not in TRANSLATE:
            raise _Untranslatable("cannot translate this optimiser; build the new rule by hand")
        new, kwmap = TRANSLATE[old]
        if any(a.star for a in c.args):
            raise _Untranslatable("*args in an optimiser: translate by hand")
        args: list[cst.Arg] = []
        if new == "OptimiserChain":
            for a in c.args:
                if a.keyword is not None:
                    raise _Untranslatable("keyword in Optimiser(...): translate by hand")
                if self.old_name(a.value) is None:
                    raise _Untranslatable(
                        "Optimiser member is not an old optimiser built here: translate by hand"
                    )
                args.append(a.with_changes(value=self._translate(a.value)))  # type: ignore[arg-type]
        else:
            base = TRANSLATE.get(old, (old, {}))[0]
            for i, a in enumerate(c.args):
                kw = a.keyword.value if a.keyword is not None else None
                if kw is not None:
                    a = a.with_changes(keyword=cst.Name(kwmap.get(kw, kw)))
                if base == "AdaBelief" and (kw == "epsilon" or (kw is None and i == 2)):
                    a = a.with_changes(value=_square(a.value))
                if base == "AdamW" and kw is None and i == 2:
                    a = a.with_changes(
                        keyword=cst.Name("lambda_"),
                        equal=cst.AssignEqual(
                            whitespace_before=cst.SimpleWhitespace(""),
                            whitespace_after=cst.SimpleWhitespace(""),
                        ),
                    )
                args.append(a)
            if base == "AdamW" and keyword(c, "couple") is None:
                args.append(cst.Arg(
                    cst.Name("False"), keyword=cst.Name("couple"),
                    equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                          whitespace_after=cst.SimpleWhitespace("")),
                ))
            if base == "WeightDecay" and not args:
                args.append(cst.Arg(cst.Float("0.0")))
        self.emitted.append((c, new))
        return c.with_changes(func=self._rule_name(new, old), args=fix_commas(args))

    def _rule_name(self, new: str, old: str) -> cst.BaseExpression:
        st = self.stage
        self.ctx.maybe_unused.add(old)  # removed below only if nothing reads it any more
        if st.style.kind != "from":
            return st.style.rule(new, self.ctx)
        # bare name only if nothing else (still) binds it
        bare_ok = new not in self._module_bound() or new in self._droppable()
        if bare_ok and new in self._droppable():
            self.ctx.drop_imports.add(new)
        if old != new:
            self.ctx.maybe_unused.add(old)
        return st.style.rule(new, self.ctx, bare_ok=bare_ok)

    def _module_bound(self) -> set[str]:
        if not hasattr(self, "_bound"):
            scope = self.stage.scope_of(self.stage.module)
            self._bound: set[str] = set()
            if scope is not None:
                for a in scope.assignments:
                    self._bound.add(a.name)
            self._bound |= taken_names(self.stage.module)
        return self._bound

    def _droppable(self) -> set[str]:
        """Old names imported plainly from fluxtrain whose every use is a construction."""
        if hasattr(self, "_drop"):
            return self._drop
        st = self.stage
        self._drop: set[str] = set()
        scope = st.scope_of(st.module)
        if scope is None:
            return self._drop
        constructed = {id(c.func) for c in self._all_constructions()}
        for a in scope.assignments:
            node = getattr(a, "node", None)
            if not isinstance(node, cst.ImportFrom) or isinstance(node.names, cst.ImportStar):
                continue
            if node.module is None or code(node.module) not in ("fluxtrain", "fluxtrain.optimise"):
                continue
            for alias in node.names:
                if alias.asname is None and code(alias.name) == a.name and a.name in _OLD:
                    if all(id(r.node) in constructed for r in a.references):
                        self._drop.add(a.name)
        return self._drop

    def _all_constructions(self) -> list[cst.Call]:
        out: list[cst.Call] = []

        def walk(c: cst.Call) -> None:
            out.append(c)
            for a in c.args:
                if isinstance(a.value, cst.Call) and self.old_name(a.value) is not None:
                    walk(a.value)

        for c in self.constructions:
            if id(c) in self.replace or True:
                walk(c)
        return out

    # -- rewrite --------------------------------------------------------------------
    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if id(original_node) in self.replace:
            return self.replace[id(original_node)]
        if id(original_node) in self.update_args:
            model = self.update_args[id(original_node)]
            args = list(updated_node.args)
            args[1] = args[1].with_changes(value=cst.Name(model.value))
            self.change(original_node, "update_(opt, ps, gs) -> update_(opt_state, model, gs)")
            func = updated_node.func
            if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Attribute) \
                    and func.value.attr.value == "optimise":
                # the explicit update_ through the public namespace, not the deprecated one
                func = func.with_changes(value=func.value.value)
            return updated_node.with_changes(func=func, args=args)
        return updated_node

    def leave_Attribute(self, original_node: cst.Attribute,
                        updated_node: cst.Attribute) -> cst.BaseExpression:
        var = self.eta_names.get(id(original_node))
        if var is None:
            return updated_node
        self.change(original_node, f"opt.eta -> {var}")
        return cst.Name(var)

    def leave_SimpleStatementLine(self, original_node: cst.SimpleStatementLine,
                                  updated_node: cst.SimpleStatementLine) -> Any:
        small = original_node.body[0] if len(original_node.body) == 1 else None
        if small is None:
            return updated_node
        sid = id(small)
        if sid in self.eta_aug:
            var, state = self.eta_aug[sid]
            aug = updated_node.body[0]
            assert isinstance(aug, cst.AugAssign)
            first = updated_node.with_changes(body=[aug.with_changes(target=cst.Name(var))])
            call = cst.Call(func=self.stage.style.api("adjust_", self.ctx),
                            args=fix_commas([cst.Arg(cst.Name(state)), cst.Arg(cst.Name(var))]))
            second = cst.SimpleStatementLine(body=[cst.Expr(call)])
            self.change(original_node, f"opt.eta op= v -> {var} op= v; adjust_(opt_state, {var})")
            return cst.FlattenSentinel([first, second])
        if sid in self.eta_assign:
            var = self.eta_assign[sid]
            assign = original_node.body[0]
            assert isinstance(assign, cst.Assign)
            first = cst.SimpleStatementLine(
                body=[cst.Assign(targets=[cst.AssignTarget(cst.Name(var))], value=assign.value)],
                leading_lines=updated_node.leading_lines)
            expr = updated_node.body[0]
            assert isinstance(expr, cst.Expr) and isinstance(expr.value, cst.Call)
            args = list(expr.value.args)
            args[-1] = args[-1].with_changes(value=cst.Name(var))
            second = updated_node.with_changes(
                body=[expr.with_changes(value=expr.value.with_changes(args=args))],
                leading_lines=[])
            return cst.FlattenSentinel([first, second])
        out: list[cst.BaseStatement] = [updated_node]
        if sid in self.before:
            lines: list[cst.BaseStatement] = [cst.parse_statement(t) for t in self.before[sid]]
            lines[0] = lines[0].with_changes(leading_lines=updated_node.leading_lines)
            out = [*lines, updated_node.with_changes(leading_lines=[])]
        if sid in self.after:
            state = self.freeze_state[sid]
            freeze = code(self.stage.style.api("freeze_", self.ctx))
            for j in self.after[sid]:
                out.append(cst.parse_statement(f"{freeze}({state}[{j}])"))
            self.change(original_node, "training part of the model -> setup on the whole "
                        "model and freeze_ of the other parts")
        return cst.FlattenSentinel(out) if len(out) > 1 else updated_node

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        new = self.rename.get(id(original_node))
        return updated_node.with_changes(value=new) if new else updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> Any:
        plan = self.adjust.get(id(original_node))
        if plan is None:
            return updated_node
        state, fld, _root = plan
        args = [cst.Arg(cst.Name(state))]
        if fld == "eta":
            args.append(cst.Arg(updated_node.value))
        else:
            args.append(cst.Arg(updated_node.value, keyword=cst.Name(fld), equal=cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""),
                whitespace_after=cst.SimpleWhitespace(""))))
        self.change(original_node, f"opt.{fld} = v -> adjust_(opt_state, ...)")
        call = cst.Call(func=self.stage.style.api("adjust_", self.ctx), args=fix_commas(args))
        return cst.Expr(call)


#: Old optimisers whose first positional argument is ``eta``, with its old default.
_ETA_DEFAULT: dict[str, str] = {
    "Descent": "0.1", "Momentum": "0.01", "Nesterov": "0.001", "RMSProp": "0.001",
    "Adam": "0.001", "RAdam": "0.001", "AdaMax": "0.001", "OAdam": "0.001",
    "AdaGrad": "0.1", "AMSGrad": "0.001", "NAdam": "0.001", "AdaBelief": "0.001",
    "ADAM": "0.001", "NADAM": "0.001", "RADAM": "0.001", "OADAM": "0.001", "ADAGrad": "0.1",
}


def _eta_init(c: cst.Call, root: str) -> str | None:
    """The initial learning rate as source text, if it is a plain number."""
    pos = positional(c)
    kw = keyword(c, "eta")
    expr = kw.value if kw is not None else (pos[0].value if pos else None)
    if expr is None:
        return _ETA_DEFAULT.get(root)
    if isinstance(expr, (cst.Integer, cst.Float)):
        return expr.value
    if (isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus)
            and isinstance(expr.expression, (cst.Integer, cst.Float))):
        return code(expr)
    return None


def _square(v: cst.BaseExpression) -> cst.BaseExpression:
    if not isinstance(v, (cst.Name, cst.Integer, cst.Float, cst.Attribute)):
        v = v.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.BinaryOperation(left=v, operator=cst.Power(
        whitespace_before=cst.SimpleWhitespace(" "), whitespace_after=cst.SimpleWhitespace(" ")),
        right=cst.Integer("2"))


__all__ = ["OptimiserRule", "free_name"]
