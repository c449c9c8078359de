"""The cached implicit step (``update_(opt, ps, gs)`` with per-Params state keys).

Truth: the rule core's per-leaf ``apply`` run by hand on copies (an
independent route from the batched/fused kernels), compared bit for bit.
"""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch

import fluxtrain as F
from fluxtrain import optimise as oldopt
from fluxtrain.core import rules as R

# every test twice: per-step checks read from Python, and by the C++ bulk reads
pytestmark = [pytest.mark.filterwarnings("ignore::fluxtrain.FluxDeprecationWarning"),
              pytest.mark.usefixtures("tensor_reads")]

OLD = {"Descent": (oldopt.Descent, R.Descent), "Momentum": (oldopt.Momentum, R.Momentum),
       "Adam": (oldopt.Adam, R.Adam)}


def tensors(seed: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


class Reference:
    """Per-leaf ``rule.apply`` on copies: state per tensor position."""

    def __init__(self, rule: R.AbstractRule) -> None:
        self.rule = rule
        self.states: dict[int, object] = {}

    def step(self, xs: list[torch.Tensor], dxs: list[torch.Tensor | None]) -> None:
        for i, (x, dx) in enumerate(zip(xs, dxs)):
            if dx is None:
                continue
            if i not in self.states:
                self.states[i] = self.rule.init(x)
            self.states[i], step = self.rule.apply(self.states[i], x, dx.clone())
            with torch.no_grad():
                x.sub_(step)


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))


SHAPES = [(5, 3), (7,), (2, 2, 2), (1,)]


@pytest.mark.parametrize("name", list(OLD))
def test_cached_steps_equal_per_leaf_apply(name: str) -> None:
    old_cls, rule_cls = OLD[name]
    opt = old_cls()
    xs = tensors(0, SHAPES)
    ref_xs = [x.clone() for x in xs]
    ref = Reference(opt._rule())
    ps = F.Params(xs)
    for step in range(5):
        gs_t = tensors(10 + step, SHAPES)
        gs = F.Grads(list(zip(xs, gs_t)), ps)
        F.update_(opt, ps, gs)
        ref.step(ref_xs, gs_t)
        assert same(xs, ref_xs), step
    assert opt.__dict__.get("_ps_plan") is not None  # the cache was used


def test_params_push_and_delete_between_steps() -> None:
    opt = oldopt.Adam(0.01)
    xs = tensors(1, SHAPES)
    ref_xs = [x.clone() for x in xs]
    ref = Reference(opt._rule())
    ps = F.Params(xs[:3])
    for step in range(6):
        if step == 2:
            ps.push(xs[3])  # a new parameter: gets a fresh state
        if step == 4:
            ps.delete(xs[0])  # no longer trained
        g = tensors(20 + step, SHAPES)
        members = [i for i in range(4) if xs[i] in ps]
        gs = F.Grads([(xs[i], g[i]) for i in members], ps)
        F.update_(opt, ps, gs)
        ref.step(ref_xs, [g[i] if i in members else None for i in range(4)])
        assert same(xs, ref_xs), step


def test_none_gradients_and_other_grads_objects() -> None:
    opt = oldopt.Momentum(0.1, 0.8)
    xs = tensors(2, SHAPES)
    ref_xs = [x.clone() for x in xs]
    ref = Reference(opt._rule())
    ps = F.Params(xs)
    other = F.Params(xs)  # same tensors, another Params: the general loop
    for step in range(6):
        g = tensors(30 + step, SHAPES)
        use: list[torch.Tensor | None] = [gi if (i + step) % 3 else None for i, gi in enumerate(g)]
        gs = F.Grads([(x, gi) for x, gi in zip(xs, use)], other if step % 2 else ps)
        F.update_(opt, ps, gs)
        ref.step(ref_xs, use)
        assert same(xs, ref_xs), step


def test_state_edits_and_hyperparameters_between_steps() -> None:
    opt = oldopt.Momentum(0.1, 0.9)
    xs = tensors(3, SHAPES)
    ref_xs = [x.clone() for x in xs]
    ref = Reference(opt._rule())
    ps = F.Params(xs)
    for step in range(6):
        if step == 2:
            del opt.state[xs[1]]  # forget one state: starts again from zero
            del ref.states[1]
        if step == 3:
            v = torch.full_like(xs[2], 0.5)  # a state put in by hand
            opt.state[xs[2]] = v
            ref.states[2] = v.clone()
        if step == 4:
            opt.eta = 0.02  # a new rule from now on
            ref.rule = opt._rule()
        g = tensors(40 + step, SHAPES)
        F.update_(opt, ps, F.Grads(list(zip(xs, g)), ps))
        ref.step(ref_xs, g)
        assert same(xs, ref_xs), step


def test_gradients_are_neither_changed_nor_kept() -> None:
    opt = oldopt.Adam(0.1)
    xs = tensors(4, SHAPES)
    ps = F.Params(xs)
    for step in range(3):
        g = tensors(50 + step, SHAPES)
        before = [t.clone() for t in g]
        F.update_(opt, ps, F.Grads(list(zip(xs, g)), ps))
        assert same(g, before)
        for x, t in zip(xs, g):
            st = opt.state[x]
            assert all(s.data_ptr() != t.data_ptr() for s in (st.m, st.v))


def test_gradient_that_is_the_parameter_itself() -> None:
    opt = oldopt.Descent(0.5)
    x = torch.tensor([1.0, -2.0, 4.0])
    ps = F.Params([x])
    for _ in range(3):
        F.update_(opt, ps, F.Grads([(x, x)], ps))
    assert x.tolist() == [0.125, -0.25, 0.5]


def test_errors_unchanged_on_the_cached_path() -> None:
    opt = oldopt.Adam()
    xs = tensors(5, SHAPES)
    ps = F.Params(xs)
    F.update_(opt, ps, F.Grads(list(zip(xs, tensors(6, SHAPES))), ps))
    snap = [x.clone() for x in xs]
    bad = tensors(7, SHAPES)
    bad[2] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"parameter 2 \(shape \(2, 2, 2\)\) has shape \(3,\)"):
        F.update_(opt, ps, F.Grads(list(zip(xs, bad)), ps))
    assert same(xs, snap)
    ro = F.Grads(list(zip(xs, tensors(8, SHAPES))), ps)
    ps.push(extra := torch.zeros(2))  # pushed after the Grads was made: Grads has no entry
    with pytest.raises(KeyError):
        F.update_(opt, ps, ro)
    assert same(xs, snap) and extra.tolist() == [0.0, 0.0]


def test_cache_keeps_nothing_alive_and_pickles() -> None:
    opt = oldopt.Adam()
    x = torch.ones(3)
    ps = F.Params([x])
    for _ in range(2):
        F.update_(opt, ps, F.Grads([(x, torch.ones(3))], ps))
    assert len(opt.state) == 1
    pickle.loads(pickle.dumps(opt))
    copy.deepcopy(opt)
    wx = weakref.ref(x)
    del x, ps
    gc.collect()
    assert wx() is None and len(opt.state) == 0


def test_gradients_that_require_grad_step_like_detached_ones() -> None:
    """The cached path detaches gradients that are part of a graph, and only those."""
    twins = [(oldopt.Adam(0.1), tensors(9, SHAPES)) for _ in range(2)]
    for step in range(3):
        g = tensors(60 + step, SHAPES)
        live = [t.clone().requires_grad_(k % 2 == 0) for k, t in enumerate(g)]
        for (opt, xs), grads in zip(twins, (live, g)):
            ps = F.Params(xs)
            F.update_(opt, ps, F.Grads(list(zip(xs, grads)), ps))
        assert same(twins[0][1], twins[1][1]), step
    assert not any(x.requires_grad for x in twins[0][1])


@pytest.mark.parametrize("name", ["Momentum", "Adam"])
def test_one_optimiser_over_params_in_other_orders(name: str) -> None:
    # the stored states are read off the state dict in one go only when its entries are
    # exactly this step's, in this step's order; every other case looks each one up
    old_cls, _ = OLD[name]
    opt = old_cls()
    shapes = [(4,)] * 4  # one shape: a state given to the wrong tensor would be accepted
    xs = tensors(5, shapes)
    xs[1] = xs[1].double()  # two (device, dtype) groups: the new states come out of order
    ref_xs = [x.clone() for x in xs]
    ref = Reference(opt._rule())
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [0, 2], [0, 1, 2, 3], [1, 3], [2, 0, 3, 1]]
    plist = [F.Params([xs[i] for i in o]) for o in orders]
    for step in range(3 * len(orders)):
        k = step % len(orders)
        if step == 8:
            del opt.state[xs[2]]  # a state deleted between steps: starts afresh
            ref.states.pop(2)
        g = tensors(60 + step, shapes)
        g[1] = g[1].double()
        gs = F.Grads([(xs[i], g[i]) for i in orders[k]], plist[k])
        F.update_(opt, plist[k], gs)
        ref.step(ref_xs, [g[i] if i in orders[k] else None for i in range(4)])
        assert same(xs, ref_xs), step
        assert all(opt.state[xs[i]] is not None for i in orders[k])
