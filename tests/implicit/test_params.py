"""params / Params / Grads / implicit gradient (seed page examples, reference §2, A1-A7)."""

import collections
import dataclasses
import warnings

import numpy as np
import pytest
import torch

import fluxtrain
from fluxtrain import Grads, Params
from fluxtrain.implicit.params import collect_params as P


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fluxtrain.FluxDeprecationWarning)
        yield


# ---------------------------------------------------------------------------- seed examples
def test_seed_params_chain_dense_softmax():
    # params(Chain(Dense(ones(2,3)), softmax)) -> weight (2x3 ones), bias (zeros 2)
    dense = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.fill_(1.0)
        dense.bias.zero_()
    model = torch.nn.Sequential(dense, torch.nn.Softmax(dim=-1))
    ps = fluxtrain.params(model)
    assert len(ps) == 2
    assert ps[0] is dense.weight and ps[1] is dense.bias
    assert ps[0].tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert ps[1].tolist() == [0.0, 0.0]


def test_seed_params_batchnorm_only_trainable():
    bn = torch.nn.BatchNorm1d(2)
    ps = fluxtrain.params(bn)
    assert len(ps) == 2  # 4 parameters' worth of running stats are not in it
    assert ps[0] is bn.weight and ps[1] is bn.bias
    assert bn.running_mean not in ps and bn.running_var not in ps
    assert ps[0].tolist() == [1.0, 1.0] and ps[1].tolist() == [0.0, 0.0]


def test_seed_params_arrays_and_array_of_arrays():
    a, b = torch.tensor([1, 2, 3]), torch.tensor([4])
    assert list(fluxtrain.params(a, b)) == [a, b]
    ps = fluxtrain.params([a, b])
    assert len(ps) == 2 and ps[0] is a and ps[1] is b


def test_seed_params_namedtuple_with_scalars_ref_function():
    NT = collections.namedtuple("NT", "alpha beta gamma")

    class Ref:  # Julia's Ref(4): an opaque box, not walked
        def __init__(self, x):
            self.x = x

    two = torch.tensor([[2, 2]])
    alpha = torch.tensor([3, 3, 3])
    ps = fluxtrain.params(1, two, NT(alpha, Ref(4), torch.sin))
    assert len(ps) == 2 and ps[0] is two and ps[1] is alpha


# ---------------------------------------------------------------------------- more params
def test_params_dedup_and_order_and_cycles():
    mat = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert len(P(None, mat, (3, mat, 4))) == 1
    assert len(P({"m": mat, "a": mat.T})) == 1  # a transpose stands for its tensor
    lin = torch.nn.Linear(2, 2)
    assert len(P(torch.nn.Sequential(lin, lin))) == 2
    r = [None, lin]
    r[0] = r
    assert len(P(r)) == 2


def test_params_dataclass_dict_numpy():
    @dataclasses.dataclass
    class Layer:
        w: torch.Tensor
        name: str
        act: object

    w = torch.ones(2)
    arr = np.zeros(3)
    ps = P(Layer(w, "l", abs), {"x": arr, "s": "text"})
    assert len(ps) == 2 and ps[0] is w
    assert arr in ps
    ps[1].add_(1.0)  # the wrapped tensor shares the array's memory
    assert arr.tolist() == [1.0, 1.0, 1.0]


def test_params_set_operations():
    x, y, z = torch.zeros(2), torch.zeros(1), torch.zeros(3)
    ps = Params([x, y])
    assert len(ps) == 2 and x in ps and z not in ps and torch.zeros(2) not in ps
    ps.push(x)
    assert len(ps) == 2
    ps.push(z)
    assert ps[2] is z
    ps.delete(y)
    assert list(ps) == [x, z] and y not in ps
    assert len(ps.union([y])) == 3 and len(ps) == 2
    ps.union_([y])
    assert list(ps) == [x, z, y]
    assert list(ps.intersect([y, z])) == [z, y]
    c = ps.copy()
    c.delete(x)
    assert x in ps
    assert Params([x, y]) == Params([x, y])
    assert Params([torch.ones(1), torch.zeros(1)]) != Params([torch.zeros(1), torch.ones(1)])
    assert len(Params()) == len(Params(())) == len(Params([])) == 0
    assert ps[0:2] == [x, z]


def test_params_flat_copy():
    x, y = torch.zeros(2), torch.zeros(1)
    Params([x, y]).copy_([1.0, 2.0, 3.0])
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [3.0]
    assert Params([x, y]).flatten().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="3 elements"):
        Params([x, y]).copy_([1.0])


# ---------------------------------------------------------------------------- gradient / Grads
def test_basics_doctest_gradient():
    # x = [2, 1]; y = [2, 0]; gs = gradient(() -> f(x, y), params(x, y))
    x, y = torch.tensor([2.0, 1.0]), torch.tensor([2.0, 0.0])
    gs = fluxtrain.gradient(lambda: ((x - y) ** 2).sum(), fluxtrain.params(x, y))
    assert isinstance(gs, Grads)
    assert gs[x].tolist() == [0.0, 2.0] and gs[y].tolist() == [-0.0, -2.0]
    assert not x.requires_grad and x.grad is None


def test_zygote_doctests():
    x = torch.tensor([[1.0, 2, 3], [4, 5, 6]])
    y = torch.tensor([7.0, 8])
    z = torch.tensor([1.0, 10, 100])
    g = fluxtrain.gradient(lambda: (x * y[:, None] * z[None, :]).sum(), Params([x, y]))
    assert g[x].tolist() == [[7.0, 70.0, 700.0], [8.0, 80.0, 800.0]]
    assert z not in g
    with pytest.raises(KeyError, match="not one of the 2 parameters"):
        g[z]
    w = torch.tensor([3.0])
    r = fluxtrain.withgradient(lambda: (w**2).sum(), Params([w]))
    assert r.val.item() == 9.0 and r.grad[w].tolist() == [6.0]
    assert r == (r.val, r.grad)


def test_gradient_restores_requires_grad_and_grad():
    lin = torch.nn.Linear(2, 1)
    lin.bias.requires_grad_(False)
    marker = torch.ones(1, 2)
    lin.weight.grad = marker
    # a frozen Parameter (requires_grad=False) is not trainable: params skips it, and the
    # implicit gradient never switches it on, even when Params are built by hand (issue 22.4)
    assert lin.bias not in fluxtrain.params(lin)
    gs = fluxtrain.gradient(lambda: lin(torch.ones(1, 2)).sum(),
                            fluxtrain.Params([lin.weight, lin.bias]))
    assert gs[lin.bias] is None and gs[lin.weight].tolist() == [[1.0, 1.0]]
    assert lin.weight.grad is marker and lin.bias.requires_grad is False
    assert lin.bias.grad is None
    # a plain tensor gets its gradient whatever its requires_grad, which is restored after
    w = torch.ones(2)
    assert fluxtrain.gradient(lambda: (3 * w).sum(), fluxtrain.params(w))[w].tolist() == [3.0, 3.0]
    assert w.requires_grad is False


def test_params_gradient_norms_A4():
    m = {
        "x": torch.tensor([1.0, 2.0], dtype=torch.float64),
        "y": torch.tensor([3.0], dtype=torch.float64),
    }
    ps = fluxtrain.params(m)
    gold = fluxtrain.gradient(lambda: sum(torch.linalg.norm(p) for p in ps), ps)
    assert gold[m["x"]].tolist() == pytest.approx([0.4472135954999579, 0.8944271909999159])
    assert gold[m["y"]].tolist() == [1.0]


def test_unused_parameter_is_none_and_output_checks():
    a, b = torch.ones(2), torch.ones(2)
    gs = fluxtrain.gradient(lambda: a.sum(), Params([a, b]))
    assert gs[b] is None
    with pytest.raises(ValueError, match="scalar"):
        fluxtrain.gradient(lambda: a * 2, Params([a]))
    with pytest.raises(TypeError, match="complex"):
        fluxtrain.gradient(lambda: (a * 1j).sum(), Params([a]))


def test_grads_mapping_iteration_and_arithmetic():
    w, b = torch.tensor([1.0, 2.0]), torch.tensor([5.0])
    ps = Params([w, b])
    gs1 = fluxtrain.gradient(lambda: (w * 3).sum(), ps)  # b unused -> None
    gs2 = fluxtrain.gradient(lambda: (w * w).sum() + b.sum(), ps)
    assert list(gs1) == [gs1[w], None]  # iterates over values
    assert gs1.keys() is ps and len(gs1) == 2 and w in gs1
    assert [p for p, _ in gs1.items()] == [w, b]
    s = gs1 + gs2
    assert s[w].tolist() == [5.0, 7.0] and s[b].tolist() == [1.0]  # None read as zeros
    assert (gs2 - gs1)[w].tolist() == [-1.0, 1.0]
    assert (2 * gs1)[w].tolist() == [6.0, 6.0] and (gs1 * 2)[b].tolist() == [0.0]
    assert (gs2 / 2)[w].tolist() == [1.0, 2.0]
    assert (-gs2)[b].tolist() == [-1.0]
    assert gs1.map(torch.sign)[w].tolist() == [1.0, 1.0]
    for g in gs2:  # clamping in place through iteration changes gs[w]
        g.clamp_(max=1.5)
    assert gs2[w].tolist() == [1.5, 1.5]
    other = fluxtrain.gradient(lambda: w.sum(), Params([w]))
    with pytest.raises(ValueError, match="same Params"):
        gs1 + other
    with pytest.raises(TypeError, match="Only tensors"):
        gs1[3]


def test_grads_merge_and_copy():
    w, b = torch.ones(1), torch.ones(1)
    g1 = fluxtrain.gradient(lambda: w.sum(), Params([w]))
    g2 = fluxtrain.gradient(lambda: b.sum(), Params([b]))
    c = g1.copy()
    g1.merge_(g2)
    assert len(g1) == 2 and g1[b].tolist() == [1.0]
    assert len(c) == 2  # copy shares the Params object, as Zygote
