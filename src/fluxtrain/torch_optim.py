"""Move an ongoing run between ``torch.optim`` and fluxtrain: :func:`from_torch`, :func:`to_torch`.

``from_torch(optimizer, model)`` turns a ``torch.optim`` optimizer and its
state into a fluxtrain state tree for ``model`` (the tree ``setup`` would
give, with the optimizer's hyperparameters and accumulated state);
``to_torch(opt_state, model)`` builds the matching ``torch.optim`` optimizer
over the model's parameters with its state filled in. Either way, training
on gives the same numbers as training on with the original (to float
rounding: the two libraries order a few scalar operations differently).

Parameters are matched by *path*, the dotted names of
``model.named_parameters()`` (``"0.weight"``), as everywhere in fluxtrain.
Each torch param group becomes one rule object shared by all of the group's
leaves; leaves with equal rules become one param group.

=====================================  =================================================
torch.optim                            fluxtrain rule, and the state mapping
=====================================  =================================================
``SGD(lr)``                            ``Descent(lr)``
``SGD(lr, momentum=mu)``               ``Momentum(lr, mu)``; ``v = lr * momentum_buffer``
``SGD(lr, mu, nesterov=True)``         ``Nesterov(lr, mu)``; ``v = -lr * momentum_buffer``
``Adam(lr, betas, eps)``               ``Adam(lr, betas, eps)``; ``m = exp_avg``,
                                       ``v = exp_avg_sq``, ``beta_t = betas ** (step + 1)``
``AdamW(lr, betas, eps, wd)``          ``AdamW(lr, betas, wd, eps)`` (``couple=True``); as Adam
``RMSprop(lr, alpha, eps, centered)``  ``RMSProp(lr, alpha, eps, centred)``;
                                       ``quad = square_avg``, ``lin = grad_avg``
``Adagrad(lr, eps=eps)``               ``AdaGrad(lr, eps)``; ``acc = sum``
any of these with ``weight_decay=wd``  ``OptimiserChain(WeightDecay(wd), rule)``
(AdamW and ``decoupled_weight_decay``  (state ``(None, rule state)``)
excepted)
=====================================  =================================================

Torch options the fluxtrain rules cannot express are refused with an error
naming the option and the param group: ``SGD`` ``dampening != 0``, ``Adam``
``amsgrad=True`` (fluxtrain's :class:`AMSGrad` has no bias correction and
starts at epsilon), ``RMSprop`` ``momentum != 0``, ``Adagrad`` ``lr_decay != 0``,
and for all ``maximize=True``, ``capturable=True``, ``differentiable=True``
and tensor-valued hyperparameters (``lr=torch.tensor(...)``). ``foreach`` and
``fused`` only choose torch's implementation and are accepted (``to_torch``
builds the default implementation).

Step counters: Adam's ``step`` is turned into fluxtrain's ``beta_t`` (and back,
from ``beta_t``). fluxtrain's Momentum, Nesterov, RMSProp and AdaGrad keep no
counter, and torch uses theirs for nothing these conversions allow
(Adagrad's ``lr_decay`` must be 0), so ``to_torch`` starts those at 0.

Parameters the optimizer does not hold become frozen leaves,
``Leaf(Descent(0.0), None, frozen=True)`` (as ``setup(..., default="freeze")``);
frozen leaves are left out of the torch optimizer. Parameters the optimizer
holds but never stepped get the rule's initial state. Parameters of the
optimizer with ``requires_grad=False`` are not trainable in fluxtrain and are
skipped (with any state they have).

>>> import torch
>>> from fluxtrain.torch_optim import from_torch, to_torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> model(torch.ones(1, 2)).sum().backward()
>>> opt.step()
>>> st = from_torch(opt, model)
>>> st.weight.rule
Momentum(eta=0.1, rho=0.9)
>>> torch.equal(st.weight.state, 0.1 * opt.state[model.weight]["momentum_buffer"])
True
>>> type(to_torch(st, model)).__name__
'SGD'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from fluxtrain.checkpoint import _leaves_with_paths  # the shared (state tree, model) walk
from fluxtrain.core.base import AbstractRule
from fluxtrain.core.hyper import cast
from fluxtrain.optimisers import (
    AdaGrad,
    Adam,
    AdamState,
    AdamW,
    Descent,
    Leaf,
    Momentum,
    Nesterov,
    OptimiserChain,
    RMSProp,
    RMSPropState,
    WeightDecay,
    setup,
)

__all__ = ["from_torch", "to_torch"]

_SUPPORTED = "torch.optim.SGD, Adam, AdamW, RMSprop or Adagrad"


def _torch_classes() -> dict[type, str]:
    O = torch.optim
    return {O.SGD: "SGD", O.Adam: "Adam", O.AdamW: "AdamW", O.RMSprop: "RMSprop",
            O.Adagrad: "Adagrad"}


# ============================================================================ torch -> fluxtrain
def _refuse(name: str, gi: int, option: str, value: Any, why: str) -> ValueError:
    return ValueError(
        f"from_torch: torch.optim.{name} param group {gi} has {option}={value!r}, which "
        f"fluxtrain cannot express: {why}"
    )


def _check_group(name: str, gi: int, group: dict[str, Any]) -> None:
    for key, value in group.items():
        if key != "params" and isinstance(value, torch.Tensor):
            raise _refuse(name, gi, key, value, "tensor hyperparameters are not supported; "
                          f"pass a Python float ({key}={float(value.detach().flatten()[0])!r})")
        if key == "betas" and any(isinstance(b, torch.Tensor) for b in value):
            raise _refuse(name, gi, key, value, "tensor hyperparameters are not supported; "
                          "pass Python floats")
    whys = {
        "maximize": "fluxtrain rules always minimise; negate the loss instead",
        "capturable": "fluxtrain keeps no step tensors on the device; use capturable=False",
        "differentiable": "fluxtrain updates in place outside autograd; use "
                          "differentiable=False",
    }
    for key, why in whys.items():
        if group.get(key):
            raise _refuse(name, gi, key, group[key], why)


def _with_decay(rule: AbstractRule, wd: float) -> AbstractRule:
    # torch's L2 weight_decay (grad += wd * param) is WeightDecay in front of the rule
    return OptimiserChain(WeightDecay(wd), rule) if wd != 0 else rule


def _rule_from_group(name: str, gi: int, group: dict[str, Any]) -> AbstractRule:
    """The fluxtrain rule equal to one torch param group (options checked first)."""
    _check_group(name, gi, group)
    lr, wd = group["lr"], group.get("weight_decay", 0)
    if name == "SGD":
        mu = group.get("momentum", 0)
        if group.get("dampening", 0) != 0:
            raise _refuse(name, gi, "dampening", group["dampening"],
                          "fluxtrain's Momentum has no dampening; use dampening=0")
        if mu == 0:
            core: AbstractRule = Descent(lr)
        else:
            core = Nesterov(lr, mu) if group.get("nesterov") else Momentum(lr, mu)
        return _with_decay(core, wd)
    if name in ("Adam", "AdamW"):
        if group.get("amsgrad"):
            raise _refuse(name, gi, "amsgrad", True,
                          "fluxtrain's AMSGrad has no bias correction and starts its moments "
                          "at epsilon, so its numbers differ; use amsgrad=False")
        b1, b2 = group["betas"]
        betas = (float(b1), float(b2))
        if name == "AdamW" or group.get("decoupled_weight_decay"):
            # torch: p *= 1 - lr*wd, then Adam  ==  p -= lr * (adam + wd*p): AdamW(couple=True)
            return AdamW(lr, betas, wd, group["eps"], couple=True)
        return _with_decay(Adam(lr, betas, group["eps"]), wd)
    if name == "RMSprop":
        if group.get("momentum", 0) != 0:
            raise _refuse(name, gi, "momentum", group["momentum"],
                          "fluxtrain's RMSProp has no momentum buffer; use momentum=0")
        return _with_decay(RMSProp(lr, group["alpha"], group["eps"],
                                   centred=bool(group.get("centered"))), wd)
    # Adagrad
    if group.get("lr_decay", 0) != 0:
        raise _refuse(name, gi, "lr_decay", group["lr_decay"],
                      "fluxtrain's AdaGrad has a constant learning rate; use lr_decay=0")
    return _with_decay(AdaGrad(lr, group["eps"]), wd)


def _core(rule: AbstractRule) -> tuple[AbstractRule, bool]:
    """The rule without a leading WeightDecay, and whether there was one."""
    if isinstance(rule, OptimiserChain):
        return rule.opts[1], True
    return rule, False


def _tensor(st: dict[str, Any], key: str, x: torch.Tensor, where: str) -> torch.Tensor:
    t = st.get(key)
    if not isinstance(t, torch.Tensor) or t.shape != x.shape:
        got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else repr(t)
        raise ValueError(
            f"from_torch: the torch state of {where!r} has {key}={got}; expected a tensor "
            f"of the parameter's shape {tuple(x.shape)}"
        )
    return t.detach().to(device=x.device, dtype=x.dtype).clone()


def _step_count(st: dict[str, Any], where: str) -> int:
    s = st.get("step", 0)
    t = float(s.item() if isinstance(s, torch.Tensor) else s)
    if not (t >= 0 and t == int(t)):
        raise ValueError(f"from_torch: the torch state of {where!r} has step={t!r}; expected "
                         "a whole number of steps")
    return int(t)


def _state_from_torch(rule: AbstractRule, st: dict[str, Any], x: torch.Tensor,
                      where: str) -> Any:
    """fluxtrain's state for ``rule`` from torch's per-parameter state dict ``st``."""
    core, decay = _core(rule)
    fresh = core.init(x)
    if not st or (isinstance(core, Momentum | Nesterov) and st.get("momentum_buffer") is None):
        state = fresh  # never stepped
    elif isinstance(core, Adam | AdamW):
        t = _step_count(st, where)
        b1, b2 = core.beta
        # beta_t holds beta ** (steps taken + 1), rounded to the parameter dtype
        state = AdamState(_tensor(st, "exp_avg", x, where), _tensor(st, "exp_avg_sq", x, where),
                          (cast(b1 ** (t + 1), x.dtype), cast(b2 ** (t + 1), x.dtype)))
    elif isinstance(core, Momentum):
        state = _tensor(st, "momentum_buffer", x, where).mul_(core.eta)  # v = lr * buf
    elif isinstance(core, Nesterov):
        state = _tensor(st, "momentum_buffer", x, where).mul_(-core.eta)  # v = -lr * buf
    elif isinstance(core, RMSProp):
        lin = _tensor(st, "grad_avg", x, where) if core.centred else False
        state = RMSPropState(_tensor(st, "square_avg", x, where), lin)
    elif isinstance(core, AdaGrad):
        state = _tensor(st, "sum", x, where)
    else:  # Descent
        state = fresh
    return (None, state) if decay else state


def _model_names(model: Any) -> dict[int, str]:
    if isinstance(model, torch.nn.Module):
        return {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {}


def from_torch(optimizer: torch.optim.Optimizer, model: Any) -> Any:
    """A fluxtrain state tree for ``model`` holding ``optimizer``'s rules and state.

    ``optimizer`` is a ``torch.optim.SGD``, ``Adam``, ``AdamW``, ``RMSprop`` or
    ``Adagrad`` over (some of) ``model``'s parameters; ``model`` any model
    ``setup`` accepts. See the module docs for the mapping of each optimizer,
    its options and its state. The optimizer is not changed; the tree holds
    copies of its state.

    Raises ``TypeError`` for an object that is not one of these optimizers (a
    subclass included: its ``step`` may differ), and ``ValueError`` naming the
    option and param group for an option fluxtrain cannot express, or naming
    the parameters the model lacks.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.AdamW([{"params": [model.weight]},
    ...                          {"params": [model.bias], "weight_decay": 0.0}], lr=0.01)
    >>> st = from_torch(opt, model)
    >>> st.weight.rule, st.bias.rule.lambda_
    (AdamW(eta=0.01, beta=(0.9, 0.999), lambda_=0.01, epsilon=1e-08, couple=True), 0.0)
    >>> from_torch(torch.optim.SGD(model.parameters(), lr=0.1, dampening=0.5), model)
    Traceback (most recent call last):
    ...
    ValueError: from_torch: torch.optim.SGD param group 0 has dampening=0.5, which fluxtrain \
cannot express: fluxtrain's Momentum has no dampening; use dampening=0
    """
    classes = _torch_classes()
    name = classes.get(type(optimizer))
    if name is None:
        what = type(optimizer).__name__
        base = next((c for c in type(optimizer).__mro__ if c in classes), None)
        if base is not None:
            what += f", a subclass of torch.optim.{base.__name__} whose step may differ"
        raise TypeError(f"from_torch needs a {_SUPPORTED} optimizer, got {what}")
    rules = [_rule_from_group(name, gi, g) for gi, g in enumerate(optimizer.param_groups)]
    tree = setup(Descent(0.0), model)
    by_tensor: dict[int, tuple[str, Leaf, Any]] = {}
    for path, leaf, x in _leaves_with_paths(tree, model, "from_torch"):
        by_tensor.setdefault(id(x), (path, leaf, x))
    names = _model_names(model)
    missing: list[str] = []
    assigned: dict[int, tuple[AbstractRule, Any]] = {}
    for gi, (group, rule) in enumerate(zip(optimizer.param_groups, rules)):
        for pi, p in enumerate(group["params"]):
            hit = by_tensor.get(id(p))
            if hit is None:
                if id(p) not in names:  # in the model but requires_grad=False: skipped
                    missing.append(f"param {pi} of group {gi} (shape {tuple(p.shape)})")
                continue
            path, _leaf, x = hit
            assigned[id(p)] = (rule, _state_from_torch(rule, optimizer.state.get(p, {}), x, path))
    if missing:
        raise ValueError(
            f"from_torch: the optimizer holds parameters that are not in the model: "
            f"{', '.join(missing)}; pass the model the optimizer was built for"
        )
    for xid, (_path, leaf, _x) in by_tensor.items():
        if xid in assigned:
            leaf.rule, leaf.state = assigned[xid]
        else:  # not in the optimizer: frozen, as setup(..., default="freeze")
            leaf.rule, leaf.state, leaf.frozen = Descent(0.0), None, True
    return tree


# ============================================================================ fluxtrain -> torch
def _torch_group(rule: AbstractRule, where: str) -> tuple[str, dict[str, Any]]:
    """The torch.optim class name and param-group options equal to ``rule``."""
    core: Any = rule
    wd = 0.0
    if (isinstance(rule, OptimiserChain) and len(rule.opts) == 2
            and isinstance(rule.opts[0], WeightDecay)):
        core, wd = rule.opts[1], rule.opts[0].lambda_
    if type(core) is Descent:
        return "SGD", {"lr": core.eta, "momentum": 0.0, "weight_decay": wd}
    if type(core) in (Momentum, Nesterov):
        return "SGD", {"lr": core.eta, "momentum": core.rho, "weight_decay": wd,
                       "nesterov": type(core) is Nesterov, "dampening": 0.0}
    if type(core) is Adam:
        return "Adam", {"lr": core.eta, "betas": core.beta, "eps": core.epsilon,
                        "weight_decay": wd, "decoupled_weight_decay": False}
    if type(core) is AdamW and core.couple and wd == 0:
        return "AdamW", {"lr": core.eta, "betas": core.beta, "eps": core.epsilon,
                         "weight_decay": core.lambda_, "decoupled_weight_decay": True}
    if type(core) is RMSProp:
        return "RMSprop", {"lr": core.eta, "alpha": core.rho, "eps": core.epsilon,
                           "centered": core.centred, "momentum": 0.0, "weight_decay": wd}
    if type(core) is AdaGrad:
        # new parameters start at epsilon, as fluxtrain's AdaGrad.init does
        return "Adagrad", {"lr": core.eta, "eps": core.epsilon, "weight_decay": wd,
                           "lr_decay": 0.0, "initial_accumulator_value": core.epsilon}
    hint = (" (AdamW(couple=False) decays by lambda_ rather than eta*lambda_, which "
            "torch.optim.AdamW cannot do)" if type(core) is AdamW and not core.couple else "")
    raise ValueError(
        f"to_torch: the rule {rule!r} at {where!r} has no torch.optim equivalent{hint}; "
        "supported: Descent, Momentum, Nesterov, Adam, AdamW, RMSProp, AdaGrad, each "
        "optionally as OptimiserChain(WeightDecay(wd), rule)"
    )


def _scalar_dtype() -> torch.dtype:
    # the dtype torch.optim gives its "step" tensors
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _steps_from_beta_t(beta: tuple[float, float], beta_t: tuple[float, float],
                       dt: torch.dtype) -> int:
    """Steps taken, from Adam's ``beta_t = beta ** (steps + 1)`` (the inverse of from_torch).

    Read from the first power that is still a normal number (the most precise); once
    both have underflowed, any count whose powers underflow too gives the same
    bias corrections (exactly 1), and about the smallest such count is returned.
    """
    fi = torch.finfo(dt)
    usable = [(b, bt) for b, bt in zip(beta, beta_t) if 0 < b < 1]
    for b, bt in usable:
        if bt >= fi.smallest_normal:
            return max(round(math.log(bt) / math.log(b)) - 1, 0)
    sub = fi.smallest_normal * fi.eps  # the smallest subnormal
    counts = [math.ceil(math.log(max(bt, sub)) / math.log(b)) - 1 for b, bt in usable]
    return max([0, *counts])


def _state_to_torch(rule: AbstractRule, state: Any, x: torch.Tensor,
                    where: str) -> dict[str, Any]:
    """torch's per-parameter state dict for fluxtrain's ``state`` of ``rule``."""
    if isinstance(rule, OptimiserChain):
        rule, state = rule.opts[1], state[1]
    for t in state if isinstance(state, tuple) else (state,):
        if isinstance(t, torch.Tensor) and t.shape != x.shape:
            raise ValueError(
                f"to_torch: the {type(rule).__name__} state at {where!r} has a tensor of shape "
                f"{tuple(t.shape)}; the parameter has {tuple(x.shape)}. Was the state tree "
                "made by setup(rule, model) for this model?"
            )
    zero = torch.tensor(0.0, dtype=_scalar_dtype())
    if isinstance(rule, Adam | AdamW):
        m, v, beta_t = state
        t = _steps_from_beta_t(rule.beta, beta_t, x.dtype)
        return {"step": torch.tensor(float(t), dtype=_scalar_dtype()),
                "exp_avg": m.detach().clone(), "exp_avg_sq": v.detach().clone()}
    if isinstance(rule, Momentum | Nesterov):
        v = state.detach()
        if rule.eta == 0:
            if bool(v.any()):
                raise ValueError(
                    f"to_torch: the {type(rule).__name__} state at {where!r} has eta=0 and a "
                    "non-zero velocity, which torch's momentum_buffer (= velocity / lr) "
                    "cannot hold; adjust eta first"
                )
            return {"momentum_buffer": torch.zeros_like(v)}
        # momentum_buffer = v / lr (Momentum), -v / lr (Nesterov)
        eta = rule.eta if isinstance(rule, Momentum) else -rule.eta
        return {"momentum_buffer": v / eta}
    if isinstance(rule, RMSProp):
        out = {"step": zero, "square_avg": state.quad.detach().clone()}
        if rule.centred:
            out["grad_avg"] = state.lin.detach().clone()
        return out
    if isinstance(rule, AdaGrad):
        return {"step": zero, "sum": state.detach().clone()}
    return {}  # Descent


def _unique_leaves(entries: Iterable[tuple[str, Any, Any]]) -> list[tuple[str, Leaf, Any]]:
    seen: set[int] = set()
    out = []
    for path, leaf, x in entries:
        if id(leaf) not in seen:
            seen.add(id(leaf))
            out.append((path, leaf, x))
    return out


def to_torch(opt_state: Any, model: Any) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer over ``model``'s parameters, equal to ``opt_state``.

    ``opt_state`` is a state tree from ``setup`` / :func:`from_torch` for
    ``model`` (possibly trained, adjusted, partly frozen). Leaves with equal
    rules become one param group (in model order); frozen leaves are left
    out. Every rule must map to the same torch optimizer class (Adam and
    AdamW leaves together give ``torch.optim.Adam`` with per-group
    ``decoupled_weight_decay``). The state tensors are copied.

    Raises ``ValueError`` naming the path for a rule with no torch
    equivalent (e.g. ``Lion``, ``AdamW(couple=False)``), when the rules need
    different torch classes, or when the tree does not match the model;
    ``TypeError`` for a numpy leaf (torch optimizers hold tensors).

    >>> import torch
    >>> from fluxtrain.optimisers import Adam, setup
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = to_torch(setup(Adam(0.01), model), model)
    >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.state[model.weight]["step"]
    ('Adam', 0.01, tensor(0.))
    """
    entries = _unique_leaves(_leaves_with_paths(opt_state, model, "to_torch"))
    groups: list[tuple[AbstractRule, list[tuple[str, Leaf, Any]]]] = []
    for path, leaf, x in entries:
        if leaf.frozen:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"to_torch: the parameter at {path!r} is a {type(x).__name__}; "
                            "torch.optim optimizers hold torch tensors")
        for rule, members in groups:
            if rule == leaf.rule:
                members.append((path, leaf, x))
                break
        else:
            groups.append((leaf.rule, [(path, leaf, x)]))
    if not groups:
        raise ValueError("to_torch: no parameter is trainable (every leaf is frozen or the "
                         "model has none); torch.optim needs at least one")
    specs = [(_torch_group(rule, members[0][0]), members) for rule, members in groups]
    kinds = {name if name != "AdamW" else "Adam" for (name, _), _ in specs}
    if len(kinds) > 1:
        first: dict[str, str] = {}
        for (name, _), members in specs:
            first.setdefault(name, members[0][0])
        listing = ", ".join(f"{n} for {p!r}" for n, p in first.items())
        raise ValueError(f"to_torch: the rules need different torch.optim classes ({listing}); "
                         "one torch optimizer has one class")
    names = {name for (name, _), _ in specs}
    cls = getattr(torch.optim, "AdamW" if names == {"AdamW"} else
                  "Adam" if "AdamW" in names else names.pop())
    param_groups = [{"params": [x for _, _, x in members], **kw} for (_, kw), members in specs]
    optimizer: torch.optim.Optimizer = cls(param_groups)
    for (rule, members) in groups:
        for path, leaf, x in members:
            optimizer.state[x] = _state_to_torch(rule, leaf.state, x, path)
    return optimizer
