"""Data flow shared by the rules: which model a Params holds, where gradients go."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from fluxtrain_migrate.common import Stage, code, positional


@dataclass
class ParamsInfo:
    """What a Params expression holds.

    status: ``ok`` (the whole of one model, ``model`` set), ``part`` (part of a model or
    several models), ``ambiguous`` (cannot tell), ``none`` (not implicit Params).
    """

    status: str
    model: cst.Name | None = None
    binding: cst.Name | None = None
    #: children of the model to freeze when only one part of it is trained
    #: (``params(model[k])`` of a ``Sequential(...)`` built in the script)
    frozen: tuple[int, ...] = ()
    #: ``ps = params(w, b)``, ``params(model.net)``, ``Params([w, b])``: the explicit model
    #: is ``ps`` itself, rebound to this expression (a tuple of the pieces, or the one piece)
    explicit: str | None = None


def params_info(stage: Stage, expr: cst.BaseExpression) -> ParamsInfo:
    """Resolve ``ps`` or ``params(model)`` to the model it holds."""
    call: cst.BaseExpression | None = expr
    binding = None
    if isinstance(expr, cst.Name):
        if stage.fq(expr) is not None:
            return ParamsInfo("none")
        assigns = stage.assignments(expr)
        value = stage.binding_value(expr)
        if value is None or not stage.call_to(value, "params", "Params"):
            for a in assigns:
                node = getattr(a, "node", None)
                parent = stage.parent_of(node) if node is not None else None
                stmt = stage.parent_of(parent) if parent is not None else None
                if isinstance(stmt, cst.Assign) and stage.call_to(stmt.value, "params", "Params"):
                    return ParamsInfo("ambiguous")
            return ParamsInfo("none")
        call = value
        binding = expr
    if not isinstance(call, cst.Call) or not stage.call_to(call, "params", "Params"):
        return ParamsInfo("none")
    args = call.args
    pieces = explicit_pieces(stage, call)
    if pieces is not None and len(pieces) == 1 and isinstance(pieces[0], cst.Name) \
            and stage.call_to(call, "params"):
        arg = pieces[0]
    elif pieces is not None and len(pieces) == 1 and sequential_part(stage, pieces[0]):
        part = sequential_part(stage, pieces[0])
        assert part is not None
        return ParamsInfo("ok", model=part[0], binding=binding, frozen=part[1])
    elif pieces is None or binding is None:
        if any(a.star for a in args):
            return ParamsInfo("ambiguous", binding=binding)
        return ParamsInfo("part", binding=binding)
    else:
        # the pieces themselves become the explicit model, under the params' own name
        if len(stage.assignments(binding)) != 1:
            return ParamsInfo("ambiguous", binding=binding)
        if stage.call_to(call, "Params") and not isinstance(args[0].value, cst.List | cst.Tuple):
            text = f"tuple({code(args[0].value)})"
        elif len(pieces) == 1 and stage.call_to(call, "params"):
            text = code(pieces[0])
        else:
            inner = ", ".join(code(p) for p in pieces)
            text = f"({inner},)" if len(pieces) == 1 else f"({inner})"
        return ParamsInfo("ok", model=binding, binding=binding, explicit=text)
    # every assignment of the model must come before the params call
    line = stage.position(call)[0]
    for a in stage.assignments(arg):
        node = getattr(a, "node", None)
        if node is None or stage.position(node)[0] >= line:
            return ParamsInfo("ambiguous", binding=binding)
    if not stage.assignments(arg):
        return ParamsInfo("ambiguous", binding=binding)
    return ParamsInfo("ok", model=arg, binding=binding)


def explicit_pieces(stage: Stage, call: cst.Call) -> list[cst.BaseExpression] | None:
    """What ``params(a, b)`` or ``Params([a, b])`` collects, if plain: positional arguments
    without ``*`` (``Params(xs)`` of a list variable: ``[xs]``); else None."""
    args = call.args
    if any(a.keyword is not None or a.star for a in args):
        return None
    if stage.call_to(call, "Params"):
        if len(args) != 1:
            return None
        v = args[0].value
        if isinstance(v, cst.List | cst.Tuple):
            if any(isinstance(e, cst.StarredElement) for e in v.elements):
                return None
            return [e.value for e in v.elements]
        return [v] if isinstance(v, cst.Name | cst.Attribute) else None
    return [a.value for a in args]


def explicit_of(stage: Stage, model: cst.Name) -> list[str] | None:
    """For a model that is a ``ps = params(a, b)`` binding: the pieces' source texts."""
    value = stage.binding_value(model)
    if not isinstance(value, cst.Call) or not stage.call_to(value, "params", "Params"):
        return None
    info = params_info(stage, model)
    if info.explicit is None:
        return None
    pieces = explicit_pieces(stage, value)
    return [code(p) for p in pieces] if pieces is not None else None


def explicit_is_tuple(stage: Stage, model: cst.Name) -> bool:
    info = params_info(stage, model)
    return info.explicit is not None and info.explicit.startswith(("(", "tuple("))


def sequential_part(
    stage: Stage, expr: cst.BaseExpression
) -> tuple[cst.Name, tuple[int, ...]] | None:
    """``model[k]`` where ``model = ...Sequential(a, b, c)`` (bound once, plain positional
    children): the model and the indices of the other children, else None."""
    if not (isinstance(expr, cst.Subscript) and isinstance(expr.value, cst.Name)
            and len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index)):
        return None
    idx = expr.slice[0].slice.value
    if not isinstance(idx, cst.Integer):
        return None
    model = expr.value
    value = stage.binding_value(model)
    if not isinstance(value, cst.Call) or not code(value.func).endswith("Sequential"):
        return None
    if any(a.keyword is not None or a.star for a in value.args):
        return None
    n = len(value.args)
    k = int(idx.value, 0)
    if not 0 <= k < n:
        return None
    return model, tuple(j for j in range(n) if j != k)


def implicit_gradient(stage: Stage, call: cst.Call) -> ParamsInfo | None:
    """``gradient(lambda: ..., ps)`` / ``withgradient(...)`` / ``pullback(...)``: the
    ParamsInfo, else None."""
    if not stage.call_to(call, "gradient", "withgradient", "pullback"):
        return None
    pos = positional(call)
    if len(pos) != 2 or len(call.args) != 2:
        return None
    info = params_info(stage, pos[1].value)
    if info.status == "none":
        return None
    return info


def model_accesses(stage: Stage, model: cst.Name) -> set[int]:
    """ids of every Name node that reads ``model``'s binding(s)."""
    out: set[int] = set()
    for a in stage.assignments(model):
        for ref in a.references:
            out.add(id(ref.node))
    return out


def grads_origin(stage: Stage, name: cst.Name) -> tuple[str, cst.Call] | None:
    """Where the gradient ``name`` comes from: ("gradient"|"withgradient", call), else None."""
    assigns = stage.assignments(name)
    if len(assigns) != 1:
        return None
    node = getattr(assigns[0], "node", None)
    if not isinstance(node, cst.Name):
        return None
    parent = stage.parent_of(node)
    if isinstance(parent, cst.AssignTarget):
        stmt = stage.parent_of(parent)
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
            if isinstance(stmt.value, cst.Call) and stage.call_to(stmt.value, "gradient"):
                return ("gradient", stmt.value)
            pb = pullback_of(stage, stmt.value)
            if pb is not None:
                return ("pullback", pb)
        return None
    if isinstance(parent, cst.Element):
        tup = stage.parent_of(parent)
        target = stage.parent_of(tup) if tup is not None else None
        stmt = stage.parent_of(target) if target is not None else None
        if (
            isinstance(tup, cst.Tuple)
            and len(tup.elements) == 2
            and tup.elements[1] is parent
            and isinstance(target, cst.AssignTarget)
            and isinstance(stmt, cst.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.value, cst.Call)
            and stage.call_to(stmt.value, "withgradient")
        ):
            return ("withgradient", stmt.value)
    return None


_UNIT_SEEDS = {"1", "1.0", "1.", "torch.tensor(1.0)", "torch.tensor(1)", "torch.tensor(1.)"}


def pullback_of(stage: Stage, value: cst.BaseExpression) -> cst.Call | None:
    """For ``back(1.0)`` where ``loss, back = pullback(f, ps)`` and that call is the only
    use of ``back`` (seed one, or ``ones_like`` of the loss): the ``pullback`` call."""
    if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Name)
            and len(value.args) == 1 and value.args[0].keyword is None
            and not value.args[0].star):
        return None
    back = value.func
    assigns = stage.assignments(back)
    if len(assigns) != 1 or len(assigns[0].references) != 1:
        return None
    node = getattr(assigns[0], "node", None)
    element = stage.parent_of(node) if isinstance(node, cst.Name) else None
    tup = stage.parent_of(element) if isinstance(element, cst.Element) else None
    target = stage.parent_of(tup) if isinstance(tup, cst.Tuple) else None
    stmt = stage.parent_of(target) if isinstance(target, cst.AssignTarget) else None
    if not (isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(tup, cst.Tuple)
            and len(tup.elements) == 2 and tup.elements[1] is element
            and isinstance(stmt.value, cst.Call) and stage.call_to(stmt.value, "pullback")):
        return None
    seed = code(value.args[0].value).replace(" ", "")
    loss = code(tup.elements[0].value)
    if seed not in _UNIT_SEEDS and seed != f"torch.ones_like({loss})":
        return None
    return stmt.value


def grads_path(
    stage: Stage, index: cst.BaseExpression, model: cst.Name
) -> list[cst.CSTNode] | None:
    """For ``gs[model.a[0].w]``: the trailers ``.a``, ``[0]``, ``.w``; None if unresolvable."""
    pieces = explicit_of(stage, model)
    if pieces is not None:
        # ``gs[w]`` for ``ps = params(w, b)``: the piece's position in the tuple
        text = code(index)
        for i, piece in enumerate(pieces):
            if text == piece:
                if len(pieces) == 1 and not explicit_is_tuple(stage, model):
                    return None
                return [cst.SubscriptElement(cst.Index(cst.Integer(str(i))))]
        return None
    trail: list[cst.CSTNode] = []
    cur = index
    while isinstance(cur, (cst.Attribute, cst.Subscript)):
        if isinstance(cur, cst.Attribute):
            trail.append(cur.attr)
        else:
            if len(cur.slice) != 1 or not isinstance(cur.slice[0].slice, cst.Index):
                return None
            v = cur.slice[0].slice.value
            if not isinstance(v, (cst.Integer, cst.SimpleString)):
                return None
            trail.append(cur.slice[0])
        cur = cur.value
    if not isinstance(cur, cst.Name) or cur.value != model.value or not trail:
        return None
    if id(cur) not in model_accesses(stage, model):
        return None
    return list(reversed(trail))


def grads_uses_ok(stage: Stage, name: cst.Name, model: cst.Name) -> tuple[bool, list[cst.CSTNode]]:
    """Are all uses of the gradient ``name`` convertible (update_'s 3rd arg, ``gs[path]``)?

    Returns (ok, bad_nodes)."""
    bad: list[cst.CSTNode] = []
    for a in stage.assignments(name):
        for ref in a.references:
            node = ref.node
            parent = stage.parent_of(node)
            if isinstance(parent, cst.Arg):
                call = stage.parent_of(parent)
                if (
                    isinstance(call, cst.Call)
                    and stage.call_to(call, "update_")
                    and len(call.args) == 3
                    and call.args[2] is parent
                ):
                    continue
            if isinstance(parent, cst.Subscript) and parent.value is node:
                sl = parent.slice
                if (
                    len(sl) == 1
                    and isinstance(sl[0].slice, cst.Index)
                    and grads_path(stage, sl[0].slice.value, model) is not None
                ):
                    continue
            bad.append(node)
    return (not bad, bad)
