"""FM006: ``for _ in epochs(n):`` -> ``for epoch in range(1, n + 1):``."""

from __future__ import annotations

import libcst as cst

from fluxtrain_migrate.common import Rule, free_name, positional


class EpochsRule(Rule):
    """Replace the deprecated ``epochs(n)`` iterable by ``range(1, n + 1)``.

    The "Epoch i" log line that ``epochs`` printed is not kept.
    """

    RULE_ID = "FM006"
    NAME = "epochs"
    DESCRIPTION = "for _ in epochs(n): -> for epoch in range(1, n + 1):"

    def leave_For(self, original_node: cst.For, updated_node: cst.For) -> cst.For:
        it = original_node.iter
        if not (isinstance(it, cst.Call) and self.stage.call_to(it, "epochs")):
            return updated_node
        pos = positional(it)
        if len(pos) != 1 or len(it.args) != 1:
            self.mark(original_node, "FM109", "epochs() with unusual arguments: use "
                      "for epoch in range(1, n + 1)")
            return updated_node
        n = pos[0].value
        if not isinstance(n, (cst.Name, cst.Integer, cst.Attribute, cst.Call, cst.Subscript)):
            n = n.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        new_iter = cst.Call(
            func=cst.Name("range"),
            args=[
                cst.Arg(cst.Integer("1"),
                        comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                cst.Arg(cst.BinaryOperation(
                    left=n, operator=cst.Add(
                        whitespace_before=cst.SimpleWhitespace(" "),
                        whitespace_after=cst.SimpleWhitespace(" ")),
                    right=cst.Integer("1"))),
            ],
        )
        target = updated_node.target
        if isinstance(target, cst.Name) and target.value == "_":
            name = free_name(self.stage, "epoch")
            if name == "epoch":
                target = cst.Name("epoch")
        self.change(original_node, "epochs(n) -> range(1, n + 1)")
        self.ctx.maybe_unused.add("epochs")
        return updated_node.with_changes(iter=new_iter, target=target)
