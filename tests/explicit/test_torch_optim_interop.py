"""fluxtrain.torch_optim: moving a run between torch.optim and fluxtrain (issue 10).

The truth is torch.optim itself: a run continued with fluxtrain after
``from_torch`` must give the parameters (and optimizer state) that the same
run continued with torch.optim gives, and the other way round after
``to_torch``. Float32 MLP, fixed data; tolerance rtol=1e-5, atol=1e-6 (the
two libraries order a few scalar operations differently, e.g. Adam's
``lr / bias_correction1`` in float64 in torch, ``m / (1-beta_t1) ... * eta`` in
float32 in fluxtrain). The expected rules are written out by hand.
"""

from __future__ import annotations

import copy
import doctest
from typing import Any

import pytest
import torch
from torch import nn

import fluxtrain.torch_optim as TO
from fluxtrain.optimisers import (
    AdaGrad,
    Adam,
    AdamState,
    AdamW,
    Descent,
    Leaf,
    Lion,
    Momentum,
    Nesterov,
    OptimiserChain,
    RMSProp,
    WeightDecay,
    freeze_,
    setup,
    update_,
)
from fluxtrain.torch_optim import from_torch, to_torch

O = torch.optim
TOL = {"rtol": 1e-5, "atol": 1e-6}
N_BEFORE, N_AFTER = 10, 20

X = torch.linspace(-1.0, 1.0, 16 * 4).reshape(16, 4).sin()
Y = torch.linspace(0.0, 2.0, 16 * 3).reshape(16, 3).cos()


def mlp() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def loss(model: nn.Module) -> torch.Tensor:
    return ((model(X) - Y) ** 2).mean()


def torch_steps(opt: O.Optimizer, model: nn.Module, n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        loss(model).backward()
        opt.step()


def flux_steps(st: Any, model: nn.Module, n: int) -> None:
    for _ in range(n):
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        ps = [p for p in model.parameters() if p.requires_grad]
        gs = torch.autograd.grad(loss(model), ps)
        update_(st, model, dict(zip(names, gs)))


def assert_params_close(a: nn.Module, b: nn.Module) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, **TOL, msg=lambda m, n=n: f"{n}: {m}")


def assert_torch_state_close(o1: O.Optimizer, m1: nn.Module, o2: O.Optimizer,
                             m2: nn.Module) -> None:
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        s1, s2 = o1.state.get(p, {}), o2.state.get(q, {})
        for k in s2:
            if k == "step" and not isinstance(o2, O.Adam):
                continue  # fluxtrain keeps no counter for these: to_torch starts it at 0
            torch.testing.assert_close(s1[k], s2[k], **TOL, msg=lambda m, n=n, k=k: f"{n} {k}: {m}")


# (torch optimizer factory, the fluxtrain rule it must become)
CASES = {
    "SGD": (lambda ps: O.SGD(ps, lr=0.1), Descent(0.1)),
    "SGD-wd": (lambda ps: O.SGD(ps, lr=0.1, weight_decay=0.01),
               OptimiserChain(WeightDecay(0.01), Descent(0.1))),
    "SGD-momentum": (lambda ps: O.SGD(ps, lr=0.05, momentum=0.9), Momentum(0.05, 0.9)),
    "SGD-momentum-wd": (lambda ps: O.SGD(ps, lr=0.05, momentum=0.8, weight_decay=0.02),
                        OptimiserChain(WeightDecay(0.02), Momentum(0.05, 0.8))),
    "SGD-nesterov": (lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                     Nesterov(0.05, 0.9)),
    "SGD-nesterov-wd": (lambda ps: O.SGD(ps, lr=0.05, momentum=0.7, nesterov=True,
                                         weight_decay=0.01),
                        OptimiserChain(WeightDecay(0.01), Nesterov(0.05, 0.7))),
    "Adam": (lambda ps: O.Adam(ps, lr=0.01), Adam(0.01, (0.9, 0.999), 1e-8)),
    "Adam-betas": (lambda ps: O.Adam(ps, lr=0.02, betas=(0.8, 0.99), eps=1e-6),
                   Adam(0.02, (0.8, 0.99), 1e-6)),
    "Adam-wd": (lambda ps: O.Adam(ps, lr=0.01, weight_decay=0.05),
                OptimiserChain(WeightDecay(0.05), Adam(0.01))),
    "AdamW": (lambda ps: O.AdamW(ps, lr=0.01, weight_decay=0.1),
              AdamW(0.01, (0.9, 0.999), 0.1, 1e-8, couple=True)),
    "Adam-decoupled": (lambda ps: O.Adam(ps, lr=0.01, weight_decay=0.1,
                                         decoupled_weight_decay=True),
                       AdamW(0.01, lambda_=0.1)),
    "RMSprop": (lambda ps: O.RMSprop(ps, lr=0.01), RMSProp(0.01, 0.99, 1e-8)),
    "RMSprop-centered": (lambda ps: O.RMSprop(ps, lr=0.01, alpha=0.9, centered=True),
                         RMSProp(0.01, 0.9, 1e-8, centred=True)),
    "RMSprop-wd": (lambda ps: O.RMSprop(ps, lr=0.01, weight_decay=0.01),
                   OptimiserChain(WeightDecay(0.01), RMSProp(0.01, 0.99))),
    "Adagrad": (lambda ps: O.Adagrad(ps, lr=0.1), AdaGrad(0.1, 1e-10)),
    "Adagrad-init-wd": (lambda ps: O.Adagrad(ps, lr=0.1, initial_accumulator_value=0.1,
                                             weight_decay=0.01, eps=1e-8),
                        OptimiserChain(WeightDecay(0.01), AdaGrad(0.1, 1e-8))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_torch_then_fluxtrain_equals_torch(case: str) -> None:
    make, rule = CASES[case]
    model = mlp()
    opt = make(model.parameters())
    torch_steps(opt, model, N_BEFORE)
    # the reference: the same run continued with torch.optim
    ref_model = copy.deepcopy(model)
    ref_opt = make(ref_model.parameters())
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (shares tensors otherwise)
    torch_steps(ref_opt, ref_model, N_AFTER)

    st = from_torch(opt, model)
    assert st[0].weight.rule == rule
    assert st[0].weight.rule is st[2].bias.rule  # one group: one rule object
    flux_steps(st, model, N_AFTER)
    assert_params_close(model, ref_model)
    # and the states agree too (read back through to_torch)
    assert_torch_state_close(to_torch(st, model), model, ref_opt, ref_model)


@pytest.mark.parametrize("case", list(CASES))
def test_fluxtrain_then_torch_equals_fluxtrain(case: str) -> None:
    _make, rule = CASES[case]
    model = mlp()
    st = setup(rule, model)
    flux_steps(st, model, N_BEFORE)
    ref_model, ref_st = copy.deepcopy(model), copy.deepcopy(st)
    flux_steps(ref_st, ref_model, N_AFTER)

    opt = to_torch(st, model)
    torch_steps(opt, model, N_AFTER)
    assert_params_close(model, ref_model)


def test_torch_state_mapping_by_hand() -> None:
    """The state layouts, checked against the formulas of the module docs."""
    model = mlp()
    opt = O.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    torch_steps(opt, model, 3)
    buf = opt.state[model[0].weight]["momentum_buffer"]
    torch.testing.assert_close(from_torch(opt, model)[0].weight.state, -0.05 * buf)

    opt = O.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    torch_steps(opt, model, 3)
    s = from_torch(opt, model)[0].weight.state
    assert isinstance(s, AdamState)
    assert torch.equal(s.m, opt.state[model[0].weight]["exp_avg"])
    assert torch.equal(s.v, opt.state[model[0].weight]["exp_avg_sq"])
    # after 3 steps fluxtrain holds beta^4, rounded to float32
    assert s.beta_t == (torch.tensor(0.8 ** 4).item(), torch.tensor(0.9 ** 4).item())

    opt = O.RMSprop(model.parameters(), centered=True)
    torch_steps(opt, model, 2)
    s = from_torch(opt, model)[2].bias.state
    assert torch.equal(s.quad, opt.state[model[2].bias]["square_avg"])
    assert torch.equal(s.lin, opt.state[model[2].bias]["grad_avg"])
    s = from_torch(O.RMSprop(model.parameters()), model)[2].bias.state
    assert s.lin is False

    opt = O.Adagrad(model.parameters(), initial_accumulator_value=0.5)
    assert torch.equal(from_torch(opt, model)[0].bias.state, torch.full((8,), 0.5))


def test_state_is_a_copy() -> None:
    model = mlp()
    opt = O.Adam(model.parameters(), lr=0.01)
    torch_steps(opt, model, 2)
    st = from_torch(opt, model)
    before = opt.state[model[0].weight]["exp_avg"].clone()
    flux_steps(st, model, 1)
    assert torch.equal(opt.state[model[0].weight]["exp_avg"], before)
    opt2 = to_torch(st, model)
    assert opt2.state[model[0].weight]["exp_avg"] is not st[0].weight.state.m


def test_two_param_groups_with_different_lr() -> None:
    def make(model: nn.Module) -> O.Optimizer:
        return O.SGD([{"params": model[0].parameters(), "lr": 0.1},
                      {"params": model[2].parameters()}], lr=0.01, momentum=0.9)

    model = mlp()
    opt = make(model)
    torch_steps(opt, model, N_BEFORE)
    ref_model = copy.deepcopy(model)
    ref_opt = make(ref_model)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (shares tensors otherwise)
    torch_steps(ref_opt, ref_model, N_AFTER)

    st = from_torch(opt, model)
    assert st[0].weight.rule == Momentum(0.1, 0.9)
    assert st[2].weight.rule == Momentum(0.01, 0.9)
    assert st[0].weight.rule is st[0].bias.rule
    assert st[2].weight.rule is st[2].bias.rule
    flux_steps(st, model, N_AFTER)
    assert_params_close(model, ref_model)

    back = to_torch(st, model)
    assert [g["lr"] for g in back.param_groups] == [0.1, 0.01]
    assert [len(g["params"]) for g in back.param_groups] == [2, 2]
    assert back.param_groups[0]["params"][0] is model[0].weight


def test_per_part_rules_back_to_param_groups() -> None:
    """Equal rules in separate objects share a group; Adam + AdamW give torch Adam."""
    model = mlp()
    st = setup(Adam(0.02), model)
    st[0].weight.rule = AdamW(0.01, lambda_=0.1)  # equal rules, separate objects
    st[0].bias.rule = AdamW(0.01, lambda_=0.1)
    flux_steps(st, model, N_BEFORE)
    ref_model, ref_st = copy.deepcopy(model), copy.deepcopy(st)
    flux_steps(ref_st, ref_model, N_AFTER)
    opt = to_torch(st, model)
    assert type(opt) is O.Adam
    assert [g["decoupled_weight_decay"] for g in opt.param_groups] == [True, False]
    torch_steps(opt, model, N_AFTER)
    assert_params_close(model, ref_model)


def test_parameters_outside_the_optimizer_are_frozen() -> None:
    model = mlp()
    opt = O.Adam(model[0].parameters(), lr=0.01)
    torch_steps(opt, model, N_BEFORE)
    st = from_torch(opt, model)
    assert st[2].weight == Leaf(Descent(0.0), None, frozen=True)
    assert st[2].bias == Leaf(Descent(0.0), None, frozen=True)
    w2 = model[2].weight.detach().clone()
    ref_model = copy.deepcopy(model)
    ref_opt = O.Adam(ref_model[0].parameters(), lr=0.01)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (shares tensors otherwise)
    torch_steps(ref_opt, ref_model, N_AFTER)
    flux_steps(st, model, N_AFTER)
    assert_params_close(model, ref_model)
    assert torch.equal(model[2].weight, w2)
    back = to_torch(st, model)  # frozen leaves are left out
    assert [p.shape for p in back.param_groups[0]["params"]] == [(8, 4), (8,)]


def test_freeze_then_to_torch_leaves_them_out() -> None:
    model = mlp()
    st = setup(Momentum(0.1), model)
    freeze_(st[2])
    opt = to_torch(st, model)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(model[0].weight),
                                                               id(model[0].bias)}


def test_never_stepped_and_requires_grad_false() -> None:
    model = mlp()
    # an optimizer that never stepped is setup's initial state
    assert from_torch(O.Adam(model.parameters(), lr=0.01), model) == setup(Adam(0.01), model)
    assert from_torch(O.SGD(model.parameters(), lr=0.1, momentum=0.5), model) == \
        setup(Momentum(0.1, 0.5), model)
    # a parameter with no gradient in the steps taken has no torch state: fresh fluxtrain state
    model[0].bias.requires_grad_(False)
    opt = O.Adam(model.parameters(), lr=0.01)
    torch_steps(opt, model, 2)
    model[0].bias.requires_grad_(True)
    st = from_torch(opt, model)
    assert st[0].bias == Leaf(Adam(0.01), Adam(0.01).init(model[0].bias))
    # requires_grad=False: not trainable in fluxtrain, skipped
    model[2].bias.requires_grad_(False)
    st = from_torch(opt, model)
    assert st[2].bias == ()
    assert st[2].weight.rule == Adam(0.01)


def test_tied_weights() -> None:
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)

    def f(m: nn.Module) -> torch.Tensor:
        return (m(X[:, :3]) ** 2).mean()

    opt = O.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        f(model).backward()
        opt.step()
    st = from_torch(opt, model)
    assert st[0].weight is st[2].weight
    back = to_torch(st, model)
    assert len(back.param_groups[0]["params"]) == 2
    assert back.state[lin.weight]["step"].item() == 3


@pytest.mark.parametrize("steps", [0, 1, 37, 800, 5000, 20000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_step_counter_round_trip(steps: int, dtype: torch.dtype) -> None:
    model = nn.Linear(2, 2).to(dtype)
    opt = O.Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        opt.state[p] = {"step": torch.tensor(float(steps)), "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p)}
    back = to_torch(from_torch(opt, model), model)
    assert back.state[model.weight]["step"].item() == steps


def test_adam_step_counter_after_underflow() -> None:
    """Past float32 underflow of both powers the count is not recoverable; the count
    to_torch picks gives torch the same bias corrections (exactly 1)."""
    model = nn.Linear(2, 2)
    opt = O.Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        opt.state[p] = {"step": torch.tensor(1e6), "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p)}
    st = from_torch(opt, model)
    assert st.weight.state.beta_t == (0.0, 0.0)
    t = to_torch(st, model).state[model.weight]["step"].item()
    assert 1 - 0.9 ** t == 1.0 and 1 - 0.999 ** t == 1.0
    assert t < 110_000  # about the first count at which 0.999**t underflows in float32


@pytest.mark.parametrize("case", ["SGD", "SGD-wd", "Adam", "Adam-wd", "AdamW", "RMSprop",
                                  "RMSprop-centered", "Adagrad", "Adagrad-init-wd"])
def test_round_trip_is_exact(case: str) -> None:
    make, _rule = CASES[case]
    model = mlp()
    opt = make(model.parameters())
    torch_steps(opt, model, 5)
    st = from_torch(opt, model)
    assert from_torch(to_torch(st, model), model) == st
    back = to_torch(st, model)
    for p in model.parameters():
        for k, v in opt.state[p].items():
            if k != "step" or isinstance(opt, O.Adam):
                assert torch.equal(back.state[p][k], v), k


@pytest.mark.parametrize("case", ["SGD-momentum", "SGD-nesterov", "SGD-momentum-wd"])
def test_round_trip_momentum_to_rounding(case: str) -> None:
    # v = lr*buf and buf = v/lr round once each: equal to about one float32 ulp
    make, _rule = CASES[case]
    model = mlp()
    opt = make(model.parameters())
    torch_steps(opt, model, 5)
    back = to_torch(from_torch(opt, model), model)
    for p in model.parameters():
        torch.testing.assert_close(back.state[p]["momentum_buffer"],
                                   opt.state[p]["momentum_buffer"], rtol=2.5e-7, atol=0)


# ---------------------------------------------------------------------------- errors
def _two_groups(model: nn.Module, cls: type, **bad: Any) -> O.Optimizer:
    return cls([{"params": model[0].parameters()}, {"params": model[2].parameters(), **bad}],
               lr=0.01)


@pytest.mark.parametrize("cls, option, value, fix", [
    (O.SGD, "dampening", 0.5, "use dampening=0"),
    (O.Adam, "amsgrad", True, "use amsgrad=False"),
    (O.AdamW, "amsgrad", True, "AMSGrad"),
    (O.RMSprop, "momentum", 0.9, "use momentum=0"),
    (O.Adagrad, "lr_decay", 0.1, "use lr_decay=0"),
    (O.Adam, "maximize", True, "negate the loss"),
    (O.SGD, "maximize", True, "negate the loss"),
    (O.Adam, "capturable", True, "capturable=False"),
    (O.RMSprop, "differentiable", True, "differentiable=False"),
    (O.SGD, "lr", torch.tensor(0.1), "pass a Python float (lr=0.1"),
])
def test_unsupported_options_name_option_and_group(cls: type, option: str, value: Any,
                                                   fix: str) -> None:
    model = mlp()
    opt = _two_groups(model, cls, **{option: value})
    with pytest.raises(ValueError) as e:
        from_torch(opt, model)
    msg = str(e.value)
    assert f"torch.optim.{cls.__name__} param group 1 has {option}=" in msg
    assert fix in msg


def test_optimizer_params_not_in_model() -> None:
    model, other = mlp(), nn.Linear(5, 7)
    opt = O.SGD([*model.parameters(), *other.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"not in the model: param 4 of group 0 \(shape "
                                         r"\(7, 5\)\), param 5 of group 0 \(shape \(7,\)\)"):
        from_torch(opt, model)


def test_mismatched_model_to_torch() -> None:
    st = setup(Adam(), mlp())
    with pytest.raises(ValueError, match="to_torch: the state tree does not match the model"):
        to_torch(st, nn.Linear(4, 8))
    narrow = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"to_torch: the Adam state at '0.weight' has a tensor "
                                         r"of shape \(8, 4\); the parameter has \(5, 4\)"):
        to_torch(st, narrow)
    with pytest.raises(ValueError, match="does not match the model"):
        to_torch("not a tree", mlp())


def test_wrong_types() -> None:
    model = mlp()
    with pytest.raises(TypeError, match="from_torch needs a torch.optim.SGD, Adam, AdamW, "
                                        "RMSprop or Adagrad optimizer, got str"):
        from_torch("adam", model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got Adadelta"):
        from_torch(O.Adadelta(model.parameters()), model)

    class MyAdam(O.Adam):
        pass

    with pytest.raises(TypeError, match="got MyAdam, a subclass of torch.optim.Adam whose "
                                        "step may differ"):
        from_torch(MyAdam(model.parameters()), model)


def test_bad_torch_state() -> None:
    model = mlp()
    opt = O.Adam(model.parameters())
    torch_steps(opt, model, 1)
    opt.state[model[0].weight]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"torch state of '0.weight' has exp_avg=shape \(3,\)"):
        from_torch(opt, model)
    opt.state[model[0].weight]["exp_avg"] = torch.zeros(8, 4)
    opt.state[model[0].weight]["step"] = torch.tensor(1.5)
    with pytest.raises(ValueError, match="step=1.5; expected a whole number"):
        from_torch(opt, model)


@pytest.mark.parametrize("rule, match", [
    (Lion(), r"the rule Lion\(.*\) at '0.weight' has no torch.optim equivalent"),
    (AdamW(couple=False), "AdamW\\(couple=False\\) decays by lambda_"),
    (OptimiserChain(WeightDecay(0.1), AdamW(lambda_=0.1)), "no torch.optim equivalent"),
])
def test_to_torch_unsupported_rules(rule: Any, match: str) -> None:
    model = mlp()
    with pytest.raises(ValueError, match=match):
        to_torch(setup(rule, model), model)


def test_to_torch_mixed_classes_and_nothing_trainable() -> None:
    model = mlp()
    st = setup(Adam(), model)
    for leaf in (st[2].weight, st[2].bias):
        leaf.rule, leaf.state = Momentum(), torch.zeros_like(leaf.state.m)
    with pytest.raises(ValueError, match=r"different torch.optim classes \(Adam for '0.weight', "
                                         r"SGD for '2.weight'\)"):
        to_torch(st, model)
    st = setup(Adam(), model)
    freeze_(st)
    with pytest.raises(ValueError, match="no parameter is trainable"):
        to_torch(st, model)


def test_to_torch_momentum_with_zero_eta() -> None:
    model = nn.Linear(2, 1)
    st = setup(Momentum(0.0), model)
    assert torch.equal(to_torch(st, model).state[model.weight]["momentum_buffer"],
                       torch.zeros(1, 2))
    st.weight.state.fill_(1.0)
    with pytest.raises(ValueError, match="eta=0 and a non-zero velocity"):
        to_torch(st, model)


def test_to_torch_numpy_leaf() -> None:
    import numpy as np

    model = {"w": np.zeros(3)}
    with pytest.raises(TypeError, match="the parameter at 'w' is a ndarray"):
        to_torch(setup(Descent(), model), model)


def test_docstring_examples() -> None:
    result = doctest.testmod(TO, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
