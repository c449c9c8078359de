"""The cached walk of explicit ``update_`` (fluxtrain.optimisers.stepplan).

Every scenario runs twice from the same start: with the cache, and with the
cache switched off (the general walk every step, as before the cache), and
the parameters and states must agree bit for bit after every step; errors
must be the same, with nothing changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import fluxtrain as F
from fluxtrain import optimisers as O
from fluxtrain.optimisers import stepplan

# every test twice: per-step checks read from Python, and by the C++ bulk reads
pytestmark = pytest.mark.usefixtures("tensor_reads")


def snap(x: Any) -> list[Any]:
    out: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            out.append((v.dtype, tuple(v.shape), v.detach().clone()))
        elif isinstance(v, np.ndarray):
            out.append(("np", v.copy()))
        elif isinstance(v, nn.Module):
            for _, p in v.named_parameters(remove_duplicate=False):
                walk(p)
        elif isinstance(v, O.Leaf):
            out.append(("leaf", repr(v.rule), v.frozen))
            walk(v.state)
        elif isinstance(v, dict):
            for k in v:
                walk(v[k])
        elif isinstance(v, tuple | list):
            for c in v:
                walk(c)
        elif type(v).__name__ == "StateTree":
            walk(v._children)
        else:
            out.append(v)

    walk(x)
    return out


def equal(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if isinstance(u, tuple) and len(u) == 3 and isinstance(u[2], torch.Tensor):
            if u[:2] != v[:2] or not torch.equal(u[2], v[2]):
                return False
        elif isinstance(u, tuple) and u and u[0] == "np":
            if not np.array_equal(u[1], v[1]):
                return False
        elif u != v:
            return False
    return True


def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stepplan, "lookup", lambda state, model: None)
    monkeypatch.setattr(stepplan, "store", lambda state, model, plan: None)


Script = Callable[[Any, Any, int], Any]


def run_both(monkeypatch: pytest.MonkeyPatch, make: Callable[[], tuple[Any, Any]],
             script: Script, steps: int = 5) -> list[bool]:
    """Run ``script`` (one update per call) cached and uncached; compare after each step."""
    state1, model1 = make()
    state2, model2 = copy.deepcopy((state1, model1))
    used = []
    snaps1 = []
    for i in range(steps):
        model1 = script(state1, model1, i)
        used.append(stepplan.lookup(state1, model1) is not None)
        snaps1.append(snap((model1, state1)))
    with monkeypatch.context() as mp:
        no_cache(mp)
        for i in range(steps):
            model2 = script(state2, model2, i)
            assert equal(snaps1[i], snap((model2, state2))), f"step {i}"
    return used


def grads_like(model: Any, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, nn.Module):
        return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    return [torch.randn(t.shape, generator=g) if isinstance(t, torch.Tensor) else None
            for t in model]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("rule", [O.Descent(0.1), O.Momentum(0.1), O.Adam(0.01),
                                  O.OptimiserChain(O.ClipGlobalNorm(1.0), O.RMSProp())])
def test_list_model_cached_equals_general_walk(monkeypatch: pytest.MonkeyPatch,
                                               rule: O.AbstractRule) -> None:
    def make() -> tuple[Any, Any]:
        m = [torch.randn(3, 2), torch.randn(4), 7, torch.randn(2, 2, dtype=torch.float64)]
        return O.setup(rule, m), m

    def script(st: Any, m: Any, i: int) -> Any:
        g = grads_like(m, i)
        if i == 3:
            g[1] = None
        return O.update_(st, m, g)[1]

    used = run_both(monkeypatch, make, script)
    assert all(used)


def test_module_nested_and_flat_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        m = mlp()
        return O.setup(O.Adam(0.01), m), m

    x = torch.randn(8, 4)

    def script(st: Any, m: Any, i: int) -> Any:
        if i % 2:
            g = F.gradient(lambda mm: mm(x).pow(2).sum(), m)[0]  # a nested tree
        else:
            g = grads_like(m, i)  # flat named_parameters names
            if i == 2:
                del g["2.bias"]  # a missing name: no gradient
        return O.update_(st, m, g)[1]

    used = run_both(monkeypatch, make, script, steps=6)
    assert all(used)


def test_adjust_freeze_thaw_between_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        m = mlp()
        return O.setup(O.Momentum(0.1), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        if i == 1:
            O.adjust_(st, 0.05)
        if i == 2:
            O.freeze_(st._children["0"])
        if i == 3:
            O.thaw_(st)
            O.adjust_(st, rho=0.5)
        return O.update_(st, m, grads_like(m, i))[1]

    used = run_both(monkeypatch, make, script)
    assert all(used)


def test_replaced_parameter_submodule_and_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        m = mlp()
        return O.setup(O.Adam(0.01), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        torch.manual_seed(100 + i)
        if i == 1:
            with torch.no_grad():
                m[0].weight.data = torch.randn(5, 4)  # .data reassignment: same structure
        if i == 2:
            m[2].bias = nn.Parameter(torch.zeros(3))  # a new Parameter object: same Leaf
        if i == 3:
            m[2] = nn.Linear(5, 3)  # a new submodule: same Leaf objects
            st2 = O.setup(O.Adam(0.01), m[2])
            st._children["2"] = st2
        return O.update_(st, m, grads_like(m, i))[1]

    run_both(monkeypatch, make, script)


def test_structure_changes_still_raise_the_same_errors() -> None:
    m = mlp()
    st = O.setup(O.Adam(0.01), m)
    O.update_(st, m, grads_like(m, 0))
    O.update_(st, m, grads_like(m, 1))
    assert stepplan.lookup(st, m) is not None
    before = snap((m, st))
    m[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        O.update_(st, m, grads_like(m, 2))
    m[0].weight.requires_grad_(True)
    g = grads_like(m, 3)
    g["0.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but the parameter has shape \(5, 4\)"):
        O.update_(st, m, g)
    with pytest.raises(ValueError, match="are not parameters of the model"):
        O.update_(st, m, {"0.nope": torch.zeros(1)})
    m.add_module("3", nn.Linear(3, 1))
    with pytest.raises(ValueError, match="the state tree does not match the model"):
        O.update_(st, m, grads_like(m, 4))
    del m._modules["3"]
    assert equal(before, snap((m, st)))
    O.update_(st, m, grads_like(m, 5))  # still works after the errors


def test_list_gradient_of_another_structure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        m = [torch.randn(3), (torch.randn(2), torch.randn(1))]
        return O.setup(O.Momentum(0.1), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        gens = [
            [torch.ones(3), (torch.ones(2), torch.ones(1))],
            [torch.ones(3), None],
            (torch.ones(3), [torch.ones(2), None]),
            [np.ones(3, dtype=np.float32), (torch.ones(2), torch.ones(1, dtype=torch.int64))],
            [torch.ones(3, dtype=torch.float64), (torch.ones(2), torch.ones(1))],
        ]
        return O.update_(st, m, gens[i])[1]

    run_both(monkeypatch, make, script)
    m = [torch.randn(3)]
    st = O.setup(O.Descent(), m)
    O.update_(st, m, [torch.ones(3)])
    with pytest.raises(ValueError, match="the model has 1 elements but the gradient has 2"):
        O.update_(st, m, [torch.ones(3), torch.ones(3)])


def test_tied_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        w = torch.randn(3)
        m = {"a": w, "b": [w, torch.randn(2)], "c": w}
        return O.setup(O.OptimiserChain(O.ClipGlobalNorm(0.5), O.Adam(0.1)), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        g = torch.Generator().manual_seed(i)
        gb = None if i == 2 else [torch.randn(3, generator=g), torch.randn(2, generator=g)]
        grads = {"a": None if i == 3 else torch.randn(3, generator=g), "b": gb,
                 "c": torch.randn(3, generator=g)}
        return O.update_(st, m, grads)[1]

    used = run_both(monkeypatch, make, script)
    assert all(used)


def test_tied_module_weights_flat_names(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        torch.manual_seed(1)
        m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        m[1].weight = m[0].weight
        return O.setup(O.Adam(0.01), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        g = {n: torch.full(p.shape, float(i + 1)) for n, p in
             m.named_parameters(remove_duplicate=False)}
        if i % 2:
            g["1.weight"] = g["0.weight"]  # the same tensor under both names
        return O.update_(st, m, g)[1]

    run_both(monkeypatch, make, script)


def test_numpy_and_read_only_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        ro = np.arange(3.0)
        ro.setflags(write=False)
        m = [np.ones(2), ro, torch.randn(2)]
        return O.setup(O.Momentum(0.1), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        g = [np.full(2, 0.5), np.full(3, 0.25), torch.ones(2)]
        return O.update_(st, m, g)[1]

    used = run_both(monkeypatch, make, script)
    assert not any(used)


def test_read_only_tensor_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[Any, Any]:
        t = torch.ones(2)
        t._fluxtrain_readonly = True  # type: ignore[attr-defined]
        m = [t, torch.ones(3)]
        return O.setup(O.Descent(0.5), m), m

    def script(st: Any, m: Any, i: int) -> Any:
        return O.update_(st, m, [torch.ones(2), torch.ones(3)])[1]

    run_both(monkeypatch, make, script)


def test_cached_path_equals_fresh_setup() -> None:
    torch.manual_seed(3)
    base = [torch.randn(4, 4) for _ in range(6)]
    grads = [[torch.randn(4, 4) for _ in range(6)] for _ in range(4)]
    m1 = [t.clone() for t in base]
    st1 = O.setup(O.Adam(0.01), m1)
    for g in grads:
        O.update_(st1, m1, g)
    assert stepplan.lookup(st1, m1) is not None
    m3 = [t.clone() for t in base]
    st3 = O.setup(O.Adam(0.01), m3)
    for g in grads:
        st3, m3 = O.update(st3, m3, g)  # copies: a new state tree every step, never cached
    assert all(torch.equal(a, b) for a, b in zip(m1, m3))
    assert equal(snap(st1), snap(st3))


def test_stale_plans_stop_being_rebuilt() -> None:
    m: list[Any] = [torch.zeros(2), 0]
    st = O.setup(O.Descent(0.1), m)
    for _ in range(stepplan.MAX_STALE + 3):
        m[1] = object()  # a new non-trainable object every step: the plan goes stale
        st2 = st
        st2, m = O.update_(st2, m, [torch.ones(2), None])
    plan = stepplan.lookup(st, m)
    assert plan is not None and plan.root is None  # marked: the general walk only
    assert torch.allclose(m[0], torch.full((2,), -0.1 * (stepplan.MAX_STALE + 3)))


def _reference_walk(node: Any, g: Any, out: list[Any]) -> bool:
    """The gradient walk as first written: one recursive call per node, no shortcuts."""
    kind = node[0]
    if kind == stepplan._LEAF:
        out[node[1]] = g
        return True
    if kind == stepplan._IGNORE or g is None:
        return True
    if kind == stepplan._NOGRAD:
        return False
    if kind == stepplan._SEQ:
        if type(g) not in (list, tuple) or len(g) != len(node[1]):
            return False
        return all(_reference_walk(c, s, out) for c, s in zip(node[1], g))
    keys, kids = node[1], node[2]
    if isinstance(g, O.StateTree):
        g = g._children
    elif not isinstance(g, dict):
        return False
    if len(g) != len(keys):
        return False
    return all(key in g and _reference_walk(c, g[key], out) for key, c in zip(keys, kids))


def test_gather_shortcuts_equal_the_recursive_walk() -> None:
    # runs of leaves (sliced), leaves among containers (inlined), modules, ignored parts
    models: list[Any] = [
        [torch.randn(2) for _ in range(5)],
        [torch.randn(2), [torch.randn(1), torch.randn(3)], 7, (torch.randn(2),)],
        {"a": torch.randn(2), "b": [torch.randn(1), torch.randn(1)], "c": "x"},
        [mlp(), torch.randn(2)],
    ]
    for model in models:
        st = O.setup(O.Momentum(0.1), model)
        plan = stepplan.build(st, model)
        assert plan is not None and plan.root is not None
        ones = F.gradient(lambda m: sum(t.sum() for t in O.trainables(m)), model)[0]
        candidates = [
            ones,
            None,
            [None] * 5,
            [ones[0]] * 4 if isinstance(ones, list) else [ones],
            [ones[0], None, 7, None] if isinstance(ones, list) else {"a": None},
        ]
        if isinstance(ones, dict):  # the same number of entries, one name wrong
            candidates.append({**{k: v for k, v in ones.items() if k != "a"}, "z": ones["a"]})
        if isinstance(ones, list):
            candidates.append(tuple(ones))
            candidates.append([None] + list(ones[1:]))
        for g in candidates:
            want: list[Any] = [None] * plan.npos
            ok = _reference_walk(plan.root, g, want)
            got = plan.gather(g, False)
            assert (got is not None) == ok, (model, g)
            if ok:
                assert got is not None and all(map(lambda a, b: a is b, got, want))


def test_a_parameter_whose_data_turns_integer_is_refused_as_before() -> None:
    # .data of an integer dtype keeps the object, but the tensor is no longer trainable:
    # the cached step must see it (the plan is stale) and raise the general walk's error
    torch.manual_seed(3)
    m = [torch.randn(4), torch.randn(3)]
    st = O.setup(O.Momentum(0.1), m)
    for _ in range(3):
        O.update_(st, m, [torch.full((4,), 0.5), torch.full((3,), 0.25)])
    assert stepplan.lookup(st, m) is not None
    m[1].data = torch.arange(3)
    before = snap((m, st))
    with pytest.raises(ValueError, match="the model has a torch.int64 tensor"):
        O.update_(st, m, [torch.full((4,), 0.5), None])
    assert equal(before, snap((m, st)))


def test_the_cpp_walk_fills_what_the_python_walk_fills(tensor_reads: str) -> None:
    """tensormeta.plan_walk against stepplan._walk on the same compiled trees: the same
    answer and the same positions filled, or None (then the Python walk decides)."""
    from collections import OrderedDict, namedtuple

    from fluxtrain.core import tensormeta

    if tensor_reads == "python-reads":
        pytest.skip("compares the C++ walk with the Python one")
    meta = tensormeta.module()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Sequential(nn.Linear(2, 1), nn.ReLU())
            self.frozen = nn.Linear(1, 1).requires_grad_(False)

    net = Net()
    pair = namedtuple("pair", "x y")
    x1, x2, x3 = torch.zeros(2), torch.zeros(3), torch.zeros(1)
    cases: list[tuple[Any, list[Any]]] = [
        (net, [F.gradient(lambda m: m.b(m.a(torch.ones(2))).sum(), net)[0],
               {"a": None, "b": None, "frozen": None},  # a plain dict for a Module
               {"a": {"weight": torch.ones(2, 2), "bias": None}, "b": None, "frozen": None},
               {"a": None, "b": None},  # an entry missing
               {"a": None, "b": None, "frozen": None, "c": None},  # one too many
               OrderedDict(a=None, b=None, frozen=None),  # another Mapping: Python's get
               [None, None, None]]),  # not a mapping
        ({"w": x1, "v": [x2, (x3,)]},
         [{"w": torch.ones(2), "v": [torch.ones(3), (torch.ones(1),)]},
          {"w": None, "v": None}, {"w": torch.ones(2), "v": [None, None]},
          {"w": torch.ones(2), "v": [torch.ones(3)]},  # a list too short
          {"w": torch.ones(2), "v": pair(torch.ones(3), None)},  # a namedtuple, not a list
          {"w": torch.ones(2), "v": (torch.ones(3), (torch.ones(1),))},  # a tuple for a list
          {1: None, "v": None}]),  # other keys
        ([x1, x2, x3], [[torch.ones(2), None, torch.ones(1)], (None,) * 3, [None] * 2,
                        torch.ones(3)]),
    ]
    seen = 0
    for model, grad_trees in cases:
        state = O.setup(O.Descent(0.1), model)
        plan = stepplan.build(state, model)
        assert plan is not None and plan.root is not None
        for g in grad_trees:
            py: list[Any] = [None] * plan.npos
            want = stepplan._walk(plan.root, g, py)
            got_out: list[Any] = [None] * plan.npos
            got = meta.plan_walk(plan.root, g, got_out, stepplan.StateTree)
            if got is None:
                continue  # the Python walk decides (gather runs it from scratch)
            seen += 1
            assert got is want
            gathered = plan.gather(g, False)
            if want:
                assert all(a is b for a, b in zip(got_out, py))
                assert gathered is not None and all(a is b for a, b in zip(gathered, py))
            else:
                assert gathered is None
    assert seen >= 12  # most cases are decided in C++
