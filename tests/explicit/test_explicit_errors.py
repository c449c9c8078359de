"""Acceptance 5: bad input gives clear errors and changes nothing."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from explicitutil import assert_unchanged, f64, flatten

from fluxtrain.errors import DomainError
from fluxtrain.explicit import setup as flux_setup
from fluxtrain.explicit import train_explicit, update_explicit
from fluxtrain.gradients import gradient_explicit
from fluxtrain.optimisers import (
    Adam,
    Descent,
    Momentum,
    adjust,
    adjust_,
    freeze_,
    setup,
    thaw_,
    update_,
)
from fluxtrain.optimisers.tree import StateTree


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))


# ------------------------------------------------------------------ mismatched trees


@pytest.mark.parametrize(
    ("second", "what"),
    [
        (f64(1.0), "the model is a tuple but the gradient is a Tensor"),
        ((f64(1.0),), "the model has 2 elements but the gradient has 1"),
        ((f64(1.0), f64(2.0), f64(3.0)), "the model has 2 elements but the gradient has 3"),
        ({"a": f64(1.0)}, "the model is a tuple but the gradient is a dict"),
    ],
)
def test_mismatched_tuple_trees(second: object, what: str) -> None:
    m = ((f64(0.0),), (f64(0.0), f64(0.0)))
    st = setup(Momentum(), m)
    before = flatten((st, m))
    with pytest.raises(ValueError) as e:
        update_(st, m, ((f64(1.0),), second))  # the first branch is fine
    assert str(e.value) == f"update_: the gradient does not match the model at model[1]: {what}"
    assert_unchanged(before, (st, m))


def test_mismatched_dict_and_module_trees_name_the_path() -> None:
    m = {"enc": {"w": f64(1.0, 2.0)}, "dec": f64(3.0)}
    st = setup(Descent(0.1), m)
    with pytest.raises(ValueError, match=r"model\['enc'\]: the gradient has keys \['v'\]"):
        update_(st, m, {"enc": {"w": f64(1.0, 1.0), "v": f64(1.0)}, "dec": None})
    with pytest.raises(ValueError, match=r"at model\['enc'\]: the model is a dict but the grad"):
        update_(st, m, {"enc": [f64(1.0, 1.0)], "dec": None})

    net = mlp()
    st = setup(Adam(), net)
    g = gradient_explicit(lambda n: n(torch.ones(3)).sum(), net)[0]
    bad = StateTree({"0": g[0], "1": None})  # layer 2 forgotten
    with pytest.raises(ValueError, match=r"model\[2\]: the gradient has no entry here"):
        update_(st, net, bad)
    extra = StateTree({"0": g[0], "1": None, "2": g[2], "3": None})
    with pytest.raises(ValueError, match=r"at model: the gradient has entries \['3'\] that the"):
        update_(st, net, extra)
    with pytest.raises(ValueError, match=r"at model\[0\]: the model has a Linear"):
        update_(st, net, StateTree({"0": [g[0].weight], "1": None, "2": None}))
    with pytest.raises(ValueError, match=r"did you pass the whole result of gradient"):
        update_(st, net, (g,))
    with pytest.raises(ValueError, match=r"names \['2.weight_typo'\] are not parameters"):
        update_(st, net, {"0.weight": None, "2.weight_typo": None})
    with pytest.raises(ValueError, match=r"state tree does not match the model at model"):
        update_(setup(Adam(), mlp()[0]), net, g)


def test_state_from_another_model_is_refused() -> None:
    st = setup(Descent(0.1), {"a": f64(1.0)})
    with pytest.raises(ValueError, match="the state tree does not match the model"):
        update_(st, {"b": f64(1.0)}, {"b": f64(1.0)})
    with pytest.raises(ValueError, match=r"at model\['a'\].*the state is a dict"):
        update_({"a": {"x": ()}}, {"a": f64(1.0)}, {"a": f64(1.0)})


# ------------------------------------------------------------------ wrong shapes


def test_wrong_shape_names_path_and_both_shapes_and_changes_nothing() -> None:
    N = namedtuple("N", "first last")
    m = N(first=f64(1.0, 2.0), last={"w": torch.zeros(2, 3, dtype=torch.float64)})
    st = setup(Adam(0.1), m)
    before = flatten((st, m))
    g = N(first=f64(1.0, 1.0), last={"w": torch.ones(3, 2, dtype=torch.float64)})
    with pytest.raises(ValueError) as e:
        update_(st, m, g)
    msg = str(e.value)
    assert "model.last['w']" in msg and "(3, 2)" in msg and "(2, 3)" in msg
    # validated before anything moved: the first leaf was fine and is untouched too
    assert_unchanged(before, (st, m))


def test_non_tensor_gradient_names_path() -> None:
    m = {"w": f64(1.0)}
    with pytest.raises(TypeError, match=r"model\['w'\].*must be a tensor"):
        update_(setup(Descent(), m), m, {"w": "oops"})


# ------------------------------------------------------------------ non-finite loss


def test_non_finite_loss_stops_before_the_step_flux_nan_test() -> None:
    """Flux's test: Dense 1=>1 with weight 0, Descent(0.1), loss sum(m(x)), NaN at item 51."""
    lin = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.zero_()
    st = setup(Descent(0.1), lin)
    data = [f64(1.0)] * 100
    data[50] = f64(math.nan)
    calls = []

    def loss(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(x).sum()

    with pytest.raises(DomainError, match="Loss is NaN on data item 51, stopping training"):
        train_explicit(loss, lin, data, st, progress=False)
    assert len(calls) == 51
    assert lin.weight.item() == pytest.approx(-5.0)


def test_non_finite_loss_leaves_params_and_state_as_after_last_good_step() -> None:
    data = [(torch.ones(3), torch.ones(1))] * 2 + [(torch.full((3,), math.inf), torch.ones(1))]
    net, ref = mlp(), mlp()
    st, st_ref = flux_setup(Adam(0.01), net), flux_setup(Adam(0.01), ref)

    def loss(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((m(x) - y) ** 2).sum()

    train_explicit(loss, ref, data[:2], st_ref, progress=False)
    with pytest.raises(DomainError, match=r"Loss is (Inf|NaN) on data item 3") as e:
        train_explicit(loss, net, data, st, progress=False)
    assert isinstance(e.value, ValueError)
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(st[0].weight.state.m, st_ref[0].weight.state.m)
    assert st[0].weight.state.beta_t == st_ref[0].weight.state.beta_t


# ------------------------------------------------------------------ freeze_ on a model


def test_freeze_and_thaw_on_a_model() -> None:
    with pytest.raises(TypeError, match="must not be applied to a model, only to the state"):
        freeze_(mlp())
    with pytest.raises(TypeError, match="thaw_"):
        thaw_({"w": f64(1.0)})
    with pytest.raises(TypeError, match="freeze_"):
        freeze_(np.zeros(2))


# ------------------------------------------------------------------ setup on read-only arrays


def test_flux_setup_refuses_read_only_array() -> None:
    ro = np.array([1.0, 2.0])
    ro.flags.writeable = False
    m = {"ok": np.zeros(2), "fixed": (ro,)}
    with pytest.raises(ValueError, match=r"model must be fully mutable.*model\['fixed'\]\[0\] :: "
                                         r"numpy.ndarray \(read-only"):
        flux_setup(Descent(), m)
    setup(Descent(), m)  # Optimisers' setup is fine with it: update_ returns new arrays
    with pytest.raises(ValueError, match="fully mutable"):
        train_explicit(lambda m, x: 0.0, m, [1], setup(Descent(), m), progress=False)


# ------------------------------------------------------------------ callbacks, rules


def test_cb_is_refused_with_a_loop_suggestion() -> None:
    net = mlp()
    with pytest.raises(TypeError, match=r"(?s)does not support callbacks.*for d in data"):
        train_explicit(lambda m, x: m(x).sum(), net, [torch.ones(3)], setup(Descent(), net),
                       cb=lambda: None)


def test_update_explicit_given_a_rule() -> None:
    net = mlp()
    with pytest.raises(TypeError, match=r"needs the state tree from setup"):
        update_explicit(Adam(), net, None)


def test_setup_argument_errors() -> None:
    with pytest.raises(TypeError, match="other way round"):
        setup(mlp(), Adam())
    with pytest.raises(TypeError, match="needs an optimisation rule"):
        setup("adam", mlp())


def test_setup_without_trainables_warns() -> None:
    with pytest.warns(UserWarning, match="setup found no trainable parameters in this model") as w:
        st = setup(Adam(), {"n": 3, "f": math.sin, "i": torch.tensor([1, 2])})
    assert st == {"n": (), "f": (), "i": ()}
    assert w[0].filename == __file__


def test_gradient_needs_a_scalar_loss() -> None:
    with pytest.raises(ValueError, match=r"scalar loss, got a tensor of shape \(3,\).*\.sum\(\)"):
        gradient_explicit(lambda x: x * 2, torch.ones(3))
    with pytest.raises(TypeError, match="scalar loss"):
        gradient_explicit(lambda x: "loss", torch.ones(3))
    x = torch.ones(3)
    with pytest.raises(ValueError):
        gradient_explicit(lambda x: x * 2, x)
    assert not x.requires_grad  # restored even after the error


def test_non_viewable_numpy_is_refused_by_flux_setup_and_copied_by_update() -> None:
    rev = np.array([1.0, 2.0, 3.0])[::-1]  # negative strides: torch cannot view it
    m = {"w": rev}
    with pytest.raises(ValueError, match=r"model\['w'\] :: numpy.ndarray \(not viewable"):
        flux_setup(Descent(), m)
    st = setup(Descent(0.5), m)
    _, m2 = update_(st, m, {"w": np.ones(3)})
    assert m2["w"].tolist() == [2.5, 1.5, 0.5] and rev.tolist() == [3.0, 2.0, 1.0]


def test_adjust_on_rules_and_freeze_on_numbers() -> None:
    assert adjust(Adam(), 0.1) == Adam(0.1)  # Optimisers.jl's rule-level adjust
    with pytest.raises(TypeError, match=r"`adjust_` acts on the state tree.*Adam"):
        adjust_(Adam(), 0.1)
    with pytest.raises(TypeError, match=r"`freeze_` must not be applied to a model.*int"):
        freeze_(3)


def test_expanded_parameter_is_not_written_in_place() -> None:
    w = torch.zeros(1, dtype=torch.float64).expand(3)  # three elements, one memory cell
    m = {"w": w}
    with pytest.raises(ValueError, match=r"model\['w'\] :: Tensor .*expanded"):
        flux_setup(Descent(0.5), m)
    _, m2 = update_(setup(Descent(0.5), m), m, {"w": f64(1.0, 2.0, 3.0)})
    assert m2["w"].tolist() == [-0.5, -1.0, -1.5] and w.tolist() == [0.0, 0.0, 0.0]
