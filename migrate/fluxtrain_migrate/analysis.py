"""Data flow shared by the rules: which model a Params holds, where gradients go."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from fluxtrain_migrate.common import Stage, code, positional, root_name


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


def params_info(stage: Stage, expr: cst.BaseExpression) -> ParamsInfo:
    """Resolve ``ps`` or ``params(model)`` to the model it holds."""
    call: cst.BaseExpression | None = expr
    binding = None
    if isinstance(expr, cst.Name):
        if stage.fq(expr) is not None:
            return ParamsInfo("none")
        assigns = stage.assignments(expr)
        value = stage.binding_value(expr)
        if value is None or not stage.call_to(value, "params"):
            for a in assigns:
                node = getattr(a, "node", None)
                parent = stage.parent_of(node) if node is not None else None
                stmt = stage.parent_of(parent) if parent is not None else None
                if isinstance(stmt, cst.Assign) and stage.call_to(stmt.value, "params"):
                    return ParamsInfo("ambiguous")
            return ParamsInfo("none")
        call = value
        binding = expr
    if not isinstance(call, cst.Call) or not stage.call_to(call, "params"):
        return ParamsInfo("none")
    args = call.args
    if len(args) != 1 or args[0].keyword is not None or args[0].star:
        return ParamsInfo("part", binding=binding)
    arg = args[0].value
    if not isinstance(arg, cst.Name):
        part = sequential_part(stage, arg)
        if part is not None:
            return ParamsInfo("ok", model=part[0], binding=binding, frozen=part[1])
        return ParamsInfo("part" if root_name(arg) is not None else "ambiguous", binding=binding)
    # every assignment of the model must come before the params call
    line = stage.position(call)[0]
    for a in stage.assignments(arg):
        node = getattr(a, "node", None)
        if node is None or stage.position(node)[0] >= line:
            return ParamsInfo("ambiguous", binding=binding)
    if not stage.assignments(arg):
        return ParamsInfo("ambiguous", binding=binding)
    return ParamsInfo("ok", model=arg, binding=binding)


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
    """``gradient(lambda: ..., ps)`` / ``withgradient(...)``: the ParamsInfo, else None."""
    if not stage.call_to(call, "gradient", "withgradient"):
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


def grads_path(
    stage: Stage, index: cst.BaseExpression, model: cst.Name
) -> list[cst.CSTNode] | None:
    """For ``gs[model.a[0].w]``: the trailers ``.a``, ``[0]``, ``.w``; None if unresolvable."""
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
