"""Acceptance 3 and 4: training an nn.Module, and update leaving its inputs alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from explicitutil import assert_unchanged, flatten

from fluxtrain.explicit import setup as flux_setup
from fluxtrain.explicit import train_explicit, update_explicit
from fluxtrain.gradients import gradient_explicit
from fluxtrain.optimisers import (
    Adam,
    Descent,
    Leaf,
    Momentum,
    OptimiserChain,
    setup,
    update,
    update_,
)
from fluxtrain.optimisers.tree import StateTree


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 1),
    )


def make_data(n: int = 200, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    xs = [torch.randn(8, 4, generator=g) for _ in range(n)]
    return [(x, x @ w) for x in xs]


def mse(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((m(x) - y) ** 2).mean()


def every_tensor(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_mlp_batchnorm_train_equals_hand_loop_bit_for_bit() -> None:
    data = make_data()
    rule = OptimiserChain(rule_clip(), Adam(1e-2))
    m1, m2 = make_mlp(), make_mlp()
    s1, s2 = flux_setup(rule, m1), flux_setup(rule, m2)
    # BatchNorm's running statistics are buffers: not in the state
    assert set(s1[1].keys()) == {"weight", "bias"}
    assert isinstance(s1[1].weight, Leaf) and s1[2] == StateTree({})
    assert "running_mean" not in s1[1] and "num_batches_tracked" not in s1[1]
    stats0 = m1[1].running_mean.clone()

    train_explicit(mse, m1, data, s1, progress=False)
    for x, y in data:  # the loop the seed page says train_ is
        grads = gradient_explicit(mse, m2, x, y)
        update_(s2, m2, grads[0])

    t1, t2 = every_tensor(m1), every_tensor(m2)
    assert t1.keys() == t2.keys()
    for k in t1:
        assert torch.equal(t1[k], t2[k]), k
    assert torch.equal(s1[0].weight.state[1].m, s2[0].weight.state[1].m)
    assert s1[0].weight.state[1].beta_t == s2[0].weight.state[1].beta_t
    assert not torch.equal(m1[1].running_mean, stats0)  # the forward pass updated them
    assert int(m1[1].num_batches_tracked) == 200
    assert all(p.grad is None for p in m1.parameters())  # gradient never wrote .grad
    # and it learned something
    with torch.no_grad():
        m1.eval()
        assert mse(m1, *data[0]).item() < mse(make_mlp().eval(), *data[0]).item()


def rule_clip():  # type: ignore[no-untyped-def]
    from explicitutil import rule

    return rule("ClipNorm")(1.0)


def test_module_update_matches_plain_torch_backward_with_named_grads() -> None:
    """Independent truth: torch's own backward + SGD-momentum written out by hand."""
    data = make_data(20)
    m_fx, m_pt = make_mlp(3), make_mlp(3)
    st = setup(Momentum(0.05, 0.9), m_fx)
    bufs = {n: torch.zeros_like(p) for n, p in m_pt.named_parameters()}
    for x, y in data:
        for m in (m_fx, m_pt):
            m.zero_grad()
            mse(m, x, y).backward()
        # fluxtrain, fed the flat mapping torch users have
        update_(st, m_fx, {n: p.grad for n, p in m_fx.named_parameters()})
        with torch.no_grad():
            for n, p in m_pt.named_parameters():
                bufs[n].mul_(0.9).add_(p.grad * 0.05)
                p.sub_(bufs[n])
    for (n, a), b in zip(m_fx.named_parameters(), m_pt.parameters()):
        assert torch.equal(a, b), n


def test_state_tree_is_reached_by_model_paths() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)])
            self.enc = torch.nn.ModuleDict({"proj": torch.nn.Linear(2, 2, bias=False)})
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers[1](self.layers[0](self.enc["proj"](x))) * self.scale

    net = Net()
    st = setup(Momentum(), net)
    assert isinstance(st.layers[0].weight, Leaf)
    assert st.layers[1] is st["layers"]["1"] and st.layers[1] is st.layers["1"]
    assert st.enc["proj"].bias == () and st.enc.proj.weight is st["enc"]["proj"]["weight"]
    assert st.scale.state.shape == (1,)
    assert list(st.keys()) == ["scale", "layers", "enc"]
    assert repr(st.enc) == "(proj = (weight = Leaf(Momentum(eta=0.01, rho=0.9), "\
        "Float32[0.0 0.0; 0.0 0.0]), bias = ()))"
    (g,) = gradient_explicit(lambda m: m(torch.ones(2)).sum(), net)
    assert isinstance(g, StateTree) and g.layers[0].weight.shape == (2, 2)
    assert g.enc.proj.bias is None
    with pytest.raises(AttributeError, match="no child 'nope'"):
        st.nope  # noqa: B018
    with pytest.raises(IndexError):
        st.layers[5]


def test_update_leaves_inputs_bitwise_unchanged() -> None:
    data = make_data(3)
    m = make_mlp(2)
    ro = np.array([1.0, 2.0], dtype=np.float32)
    ro.flags.writeable = False
    shared = torch.tensor([0.5, -0.5])
    model = {"net": m, "np": np.array([3.0, 4.0]), "ro": ro, "tie": (shared, shared)}
    st = setup(Adam(0.1), model)
    st, _ = update(st, model, {"net": gradient_explicit(mse, m, *data[0])[0],
                               "np": np.ones(2), "ro": np.ones(2, dtype=np.float32),
                               "tie": (torch.ones(2), None)})  # some non-trivial state
    gnet = gradient_explicit(mse, m, *data[1])[0]
    grads = {"net": gnet, "np": np.array([1.0, -1.0]), "ro": np.ones(2, dtype=np.float32),
             "tie": (torch.ones(2), torch.ones(2))}
    snap_model, snap_state, snap_grads = flatten(model), flatten(st), flatten(grads)
    st2, model2 = update(st, model, grads)
    assert_unchanged(snap_model, model)
    assert_unchanged(snap_state, st)
    assert_unchanged(snap_grads, grads)
    # ... and the copies did move, equal to what update_ does to the originals
    st3, model3 = update_(st, model, grads)
    assert not torch.equal(model2["net"][0].weight, every_tensor(make_mlp(2))["0.weight"])
    for k, v in every_tensor(model2["net"]).items():
        assert torch.equal(v, every_tensor(model3["net"])[k]), k
    assert np.array_equal(model2["np"], model3["np"]) and np.array_equal(
        model2["ro"], model3["ro"])
    assert model2["tie"][0] is model2["tie"][1] and model2["tie"][0] is not shared
    assert torch.equal(model2["tie"][0], model3["tie"][0])
    assert st2["tie"][0] is st2["tie"][1]
    assert torch.equal(st2["net"][0].weight.state.m, st3["net"][0].weight.state.m)


def test_update_explicit_records_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    import fluxtrain.trace as trace

    calls = []
    monkeypatch.setattr(trace, "active", lambda: True)
    monkeypatch.setattr(trace, "record_step", lambda *a: calls.append(a))
    m = make_mlp()
    st = setup(Momentum(), m)
    g = gradient_explicit(mse, m, *make_data(1)[0])[0]
    update_explicit(st, m, g, loss=1.5)
    assert len(calls) == 1
    style, params, loss = calls[0]
    assert style == "explicit" and loss == 1.5
    assert [id(p) for p in params] == [id(p) for p in m.parameters()]
    train_explicit(mse, m, make_data(2), st, progress=False)
    assert len(calls) == 3 and all(isinstance(c[2], float) for c in calls[1:])


def test_copy_model_deepcopy_still_trainable() -> None:
    m = make_mlp()
    st = setup(Momentum(), m)
    m2 = copy.deepcopy(m)
    g = gradient_explicit(mse, m2, *make_data(1)[0])[0]
    update_(st, m2, g)  # the state mirrors structure, not identity
    assert not torch.equal(m2[0].weight, m[0].weight)


def test_flat_names_with_tied_parameter_listed_twice_count_once() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(2, 2, bias=False, dtype=torch.float64)
            self.b = torch.nn.Linear(2, 2, bias=False, dtype=torch.float64)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    m = Tied()
    w0 = m.a.weight.detach().clone()
    m(torch.ones(2, dtype=torch.float64)).sum().backward()
    total = m.a.weight.grad.clone()
    st = setup(Descent(0.5), m)
    # named_parameters(remove_duplicate=False) names the tied tensor twice, same .grad object
    update_(st, m, {n: p.grad for n, p in m.named_parameters(remove_duplicate=False)})
    assert torch.equal(m.a.weight.detach(), w0 - total * 0.5)


@pytest.mark.cuda
def test_update_and_gradient_on_cuda() -> None:
    net = make_mlp().cuda()
    ref = copy.deepcopy(net)
    st = setup(Adam(0.01), net)
    x, y = (t.cuda() for t in make_data(1)[0])
    g = gradient_explicit(mse, net, x, y)[0]
    assert g[0].weight.device.type == "cuda"
    update_(st, net, g)
    mse(ref, x, y).backward()
    assert torch.equal(g[0].weight, ref[0].weight.grad)
    assert not torch.equal(net[0].weight, ref[0].weight)
    # a CPU gradient for a CUDA parameter is moved, not refused
    update_(st, net, {n: p.grad.cpu() for n, p in ref.named_parameters()})
