"""Issue 22 item 7: every public entry point fed its arguments swapped or of the wrong kind
raises a clear error (TypeError/ValueError naming the argument and what was expected), and
the model and the optimiser state are exactly as they were."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import fluxtrain
from fluxtrain import optimisers as O

F64 = torch.float64


class Env:
    """A trained-once Linear model, its state, a gradient, a dict model and its state, and
    the implicit twins (Params, Grads, an old optimiser with state)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(2, 1).double()
        self.x = torch.randn(4, 2, dtype=F64)
        self.loss = lambda m, x: m(x).pow(2).mean()
        self.st = fluxtrain.setup(O.Momentum(0.1), self.model)
        self.g = fluxtrain.gradient(self.loss, self.model, self.x)[0]
        fluxtrain.update_(self.st, self.model, self.g)  # momentum is non-zero now
        self.data = [(self.x,)]
        self.dmodel = {"w": torch.ones(2, dtype=F64)}
        self.dst = fluxtrain.setup(O.Momentum(0.1), self.dmodel)
        self.dg = {"w": torch.ones(2, dtype=F64)}
        fluxtrain.update_(self.dst, self.dmodel, self.dg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
            self.ps = fluxtrain.params(self.model)
            self.gs = fluxtrain.gradient(lambda: self.loss(self.model, self.x), self.ps)
            self.opt = fluxtrain.Momentum(0.1)
            fluxtrain.update_(self.opt, self.ps, self.gs)

    def snapshot(self) -> list[Any]:
        out: list[Any] = [p.detach().clone() for p in self.model.parameters()]
        out += [self.dmodel["w"].clone()]
        for st in (self.st, self.dst):
            for leaf in _leaves(st):
                out += [leaf.rule, leaf.frozen, leaf.state.clone()]
        out += [(k, v.clone()) for k, v in self.opt.state.items()] + [self.opt.eta]
        return out


def _leaves(st: Any) -> list[O.Leaf]:
    if type(st) is O.Leaf:
        return [st]
    if type(st) is O.StateTree:
        return [lf for v in st._children.values() for lf in _leaves(v)]
    if isinstance(st, dict):
        return [lf for v in st.values() for lf in _leaves(v)]
    return []


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if isinstance(u, tuple):
            if u[0] is not v[0] or not torch.equal(u[1], v[1]):
                return False
        elif isinstance(u, torch.Tensor):
            if not torch.equal(u, v):
                return False
        elif u != v:
            return False
    return True


Call = Callable[[Env], Any]
ROWS: list[tuple[str, Call, type[BaseException], str]] = [
    # update_ / update (explicit)
    ("update_(model, st, g)", lambda e: fluxtrain.update_(e.model, e.st, e.g), TypeError,
     r"first argument is an nn.Module.*did you swap opt_state and model"),
    ("update_(st, g, model)", lambda e: fluxtrain.update_(e.st, e.g, e.model), TypeError,
     r"third argument \(grads\) is an nn.Module"),
    ("update_(g, model, st)", lambda e: fluxtrain.update_(e.g, e.model, e.st), ValueError,
     r"state tree does not match the model"),
    ("update_(dict: model, st, g)", lambda e: fluxtrain.update_(e.dmodel, e.dst, e.dg),
     TypeError, r"the model has a Leaf.*did you swap opt_state and model"),
    ("update_(dict: st, g, model)", lambda e: fluxtrain.update_(e.dst, e.dg, e.dmodel),
     TypeError, r"third argument \(grads\) is the model this state was last used with"),
    ("update_(st, model) 2 args", lambda e: fluxtrain.update_(e.st, e.model), TypeError,
     r"it takes 3"),
    ("update_(rule, model, g)", lambda e: fluxtrain.update_(O.Adam(), e.model, e.g), TypeError,
     r"needs the state tree from setup"),
    ("update_(st, model, Grads)", lambda e: fluxtrain.update_(e.st, e.model, e.gs), TypeError,
     r"cannot be used with implicit gradients"),
    ("update_(st, model, bad shape)",
     lambda e: fluxtrain.update_(e.st, e.model, {"weight": torch.ones(3), "bias": None}),
     ValueError, r"weight"),
    ("optimisers.update_(model, st, g)", lambda e: O.update_(e.model, e.st, e.g), TypeError,
     r"first argument is an nn.Module"),
    ("optimisers.update(model, st, g)", lambda e: O.update(e.model, e.st, e.g), TypeError,
     r"update\(opt_state, model, grads\): the first argument is an nn.Module"),
    ("optimisers.update(st, g, model)", lambda e: O.update(e.st, e.g, e.model), TypeError,
     r"third argument \(grads\) is an nn.Module"),
    # update_ (implicit)
    ("update_(ps, opt, gs)", lambda e: fluxtrain.update_(e.ps, e.opt, e.gs), TypeError,
     r"wrong order.*update_\(opt, ps, gs\)"),
    ("update_(opt, gs, ps)", lambda e: fluxtrain.update_(e.opt, e.gs, e.ps), TypeError,
     r"wrong order"),
    ("update_(opt, model, g)", lambda e: fluxtrain.update_(e.opt, e.model, e.g), TypeError,
     r"Invalid input to update_.*2nd argument"),
    ("update_(st, ps, gs)", lambda e: fluxtrain.update_(e.st, e.ps, e.gs), TypeError,
     r"can't mix implicit Params with an explicit state"),
    ("update_(opt, ps, explicit g)", lambda e: fluxtrain.update_(e.opt, e.ps, (e.g,)),
     TypeError, r"can't mix implicit Params with explicit gradients"),
    # train_
    ("train_(loss, st, data, model)", lambda e: fluxtrain.train_(e.loss, e.st, e.data, e.model),
     TypeError, r"2nd argument \(model\) is StateTree.*swap model and opt_state"),
    ("train_(model, loss, data, st)", lambda e: fluxtrain.train_(e.model, e.loss, e.data, e.st),
     TypeError, r"swap loss and model"),
    ("train_(loss, model, st, data)", lambda e: fluxtrain.train_(e.loss, e.model, e.st, e.data),
     TypeError, r"3rd argument \(data\).*swap data and opt_state"),
    ("train_(zero-arg loss, model, ...)",
     lambda e: fluxtrain.train_(lambda: e.loss(e.model, e.x), e.model, e.data, e.st),
     TypeError, r"calls loss\(model, \*batch\).*implicit style"),
    ("train_(loss of wrong arity)",
     lambda e: fluxtrain.train_(lambda m: m(e.x).sum(), e.model, e.data, e.st),
     TypeError, r"train_ calls loss\(model, \*item\).*2 arguments"),
    ("train_(3, model, data, st)", lambda e: fluxtrain.train_(3, e.model, e.data, e.st),
     TypeError, r"loss \(1st argument\) must be callable"),
    ("train_(loss, model, 5, st)", lambda e: fluxtrain.train_(e.loss, e.model, 5, e.st),
     TypeError, r"data \(3rd argument\) must be iterable"),
    ("train_(..., cb=f) explicit",
     lambda e: fluxtrain.train_(e.loss, e.model, e.data, e.st, cb=print), TypeError,
     r"does not support callbacks"),
    ("train_(loss, ps, data, st)", lambda e: fluxtrain.train_(e.loss, e.ps, e.data, e.st),
     TypeError, r"can't mix implicit Params with explicit state"),
    ("train_(loss, ps, opt, data)", lambda e: fluxtrain.train_(e.loss, e.ps, e.opt, e.data),
     TypeError, r"3rd argument \(data\) is an old optimiser.*swap"),
    ("train_(loss, data, ps, opt)", lambda e: fluxtrain.train_(e.loss, e.data, e.ps, e.opt),
     TypeError, r"3rd argument \(data\) is Params.*swap"),
    # gradient / withgradient
    ("gradient(model, f)", lambda e: fluxtrain.gradient(e.model, e.loss), TypeError,
     r"1st argument is an nn.Module.*argument 1 a function; did you swap"),
    ("withgradient(model, f)", lambda e: fluxtrain.withgradient(e.model, e.loss), TypeError,
     r"withgradient\(f, \*args\): the 1st argument is an nn.Module"),
    ("gradient(3, model)", lambda e: fluxtrain.gradient(3, e.model), TypeError,
     r"f \(the 1st argument\) must be the function"),
    ("gradient(ps, f)", lambda e: fluxtrain.gradient(e.ps, lambda: 0.0), TypeError,
     r"the Params come second"),
    ("gradient(zero-arg f, model)", lambda e: fluxtrain.gradient(lambda: 0.0, e.model),
     TypeError, r"f takes no arguments, which is the implicit style"),
    ("gradient(f, ps, x)", lambda e: fluxtrain.gradient(lambda: 0.0, e.ps, e.x), TypeError,
     r"exactly one Params"),
    # setup
    ("setup(model, rule)", lambda e: fluxtrain.setup(e.model, O.Adam()), TypeError,
     r"setup needs an optimisation rule.*first argument.*got Linear"),
    ("optimisers.setup(model, rule)", lambda e: O.setup(e.model, O.Adam()), TypeError,
     r"got Linear"),
    # adjust / adjust_ / freeze_ / thaw_
    ("adjust_(st, foo=1)", lambda e: fluxtrain.adjust_(e.st, foo=1), ValueError,
     r"no rule in this state tree has the field 'foo'; its rules' fields are eta, rho"),
    ("adjust(st, foo=1)", lambda e: fluxtrain.adjust(e.st, foo=1), ValueError,
     r"adjust: no rule in this state tree has the field 'foo'"),
    ("adjust_(st, eta=0.2, etaa=1)", lambda e: fluxtrain.adjust_(e.st, 0.2, etaa=1), ValueError,
     r"'etaa'"),
    ("adjust_(st, 'x')", lambda e: fluxtrain.adjust_(e.st, "x"), TypeError, r"eta='x'"),
    ("adjust_(st, -1)", lambda e: fluxtrain.adjust_(e.st, -1.0), ValueError, r"negative"),
    ("adjust_(st)", lambda e: fluxtrain.adjust_(e.st), ValueError, r"something to act on"),
    ("adjust_(model, 0.1)", lambda e: fluxtrain.adjust_(e.model, 0.1), TypeError,
     r"must not be applied to a model"),
    ("adjust(model, 0.1)", lambda e: fluxtrain.adjust(e.model, 0.1), TypeError,
     r"must not be applied to a model"),
    ("adjust_(opt old, 0.1)", lambda e: fluxtrain.adjust_(e.opt, 0.1), TypeError,
     r"not on an old optimiser; got Momentum"),
    ("freeze_(model)", lambda e: fluxtrain.freeze_(e.model), TypeError,
     r"`freeze_` must not be applied to a model"),
    ("thaw_(model)", lambda e: fluxtrain.thaw_(e.model), TypeError,
     r"`thaw_` must not be applied to a model"),
    ("freeze_(rule)", lambda e: fluxtrain.freeze_(O.Adam()), TypeError, r"not on a rule"),
    # params / Params / throttle / epochs
    ("params(st)", lambda e: fluxtrain.params(e.st), TypeError,
     r"params\(\.\.\.\) collects the parameters of a model, but was given a StateTree"),
    ("params(rule)", lambda e: fluxtrain.params(O.Adam()), TypeError, r"given a Adam"),
    ("Params(3)", lambda e: fluxtrain.Params([3]), TypeError, r"Params holds tensors"),
    ("Grads[non-member]", lambda e: e.gs[torch.ones(1)], KeyError, r"not one of the"),
    ("throttle(f, nan)", lambda e: fluxtrain.throttle(print, math.nan), ValueError,
     r"timeout.*0 <= timeout < inf"),
    ("throttle(3, 1)", lambda e: fluxtrain.throttle(3, 1), TypeError, r"f must be callable"),
    ("epochs(-1)", lambda e: fluxtrain.epochs(-1), ValueError, r"epochs\(n\).*0 <= n"),
    ("epochs(1.5)", lambda e: fluxtrain.epochs(1.5), TypeError, r"whole number"),
    ("trainables(st)", lambda e: fluxtrain.trainables(e.st), TypeError,
     r"trainables.*state tree"),
    ("pullback(model, f)", lambda e: fluxtrain.pullback(e.model, e.loss), TypeError,
     r"pullback\(f, \*args\): the 1st argument is an nn.Module"),
    ("patience(3, 1)", lambda e: fluxtrain.patience(3, 1), TypeError,
     r"predicate must be callable"),
    ("patience(f, 0)", lambda e: fluxtrain.patience(bool, 0), ValueError, r"1 <= wait"),
    ("early_stopping(f, -1)", lambda e: fluxtrain.early_stopping(float, -1), ValueError,
     r"1 <= wait"),
    ("loadparams_(model, wrong shapes)",
     lambda e: fluxtrain.loadparams_(e.model, [torch.ones(2), torch.ones(1)]), ValueError,
     r"Expected param size \(1, 2\), got \(2,\)"),
    ("loadparams_(st, xs)", lambda e: fluxtrain.loadparams_(e.st, []), TypeError,
     r"given a StateTree"),
    ("update_(x, dx) wrong shape", lambda e: fluxtrain.update_(e.model.weight, torch.ones(3)),
     ValueError, r"dx of shape \(3,\) cannot be subtracted from x of shape \(1, 2\)"),
]


@pytest.mark.parametrize(("name", "call", "exc", "match"), ROWS, ids=[r[0] for r in ROWS])
def test_wrong_arguments_raise_clearly_and_change_nothing(
    name: str, call: Call, exc: type[BaseException], match: str
) -> None:
    e = Env()
    before = e.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
        with pytest.raises(exc, match=match):
            call(e)
    assert _same(before, e.snapshot()), f"{name} changed the model or the state"


def test_rule_level_adjust_still_ignores_unknown_keywords() -> None:
    # the contract of the rule-level adjust (Optimisers.jl's adjust(rule; kw...)) is unchanged
    assert O.Momentum(0.1).adjust(zeta=1) == O.Momentum(0.1)
    assert fluxtrain.adjust(O.Momentum(0.1), zeta=1) == O.Momentum(0.1)


def test_adjust_field_of_one_chain_member_is_accepted() -> None:
    m = {"w": torch.zeros(2, dtype=F64)}
    st = fluxtrain.setup(O.OptimiserChain(O.ClipGrad(1.0), O.Adam()), m)
    fluxtrain.adjust_(st, delta=0.5)  # only ClipGrad has delta: fine
    assert st["w"].rule == O.OptimiserChain(O.ClipGrad(0.5), O.Adam())
    with pytest.raises(ValueError, match=r"'rho'.*beta, delta, epsilon, eta"):
        fluxtrain.adjust_(st, rho=0.5)
