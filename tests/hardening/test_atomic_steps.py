"""One step is atomic: after an exception inside a ``train_`` step or an ``update_``
call, parameters and optimiser state are bitwise either all before or all after it.

Faults: an exception in the loss, in a callback, a non-finite loss, a gradient
of the wrong shape half-way through the tree, and an injected exception
(``RuntimeError`` and ``KeyboardInterrupt``) at every leaf position of a
3-layer model (inside the rule's ``apply_many``), in both styles, plus a real
``SIGINT`` delivered while a step commits. See docs/guarantees.md.
"""

from __future__ import annotations

import copy
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import fluxtrain as F
from fluxtrain import core
from fluxtrain import optimisers as O
from fluxtrain.core import plan
from fluxtrain.optimise import optimisers as oldopt
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.tree import StateTree

D64 = torch.float64
N_LEAVES = 6

@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- snapshots
def snap(x: Any) -> Any:
    """A bitwise, comparable picture of a model, state tree, or old-optimiser state."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        return ("T", str(t.dtype), tuple(t.shape), t.numpy().tobytes() if t.numel() else b"")
    if isinstance(x, np.ndarray):
        return ("A", str(x.dtype), x.shape, x.tobytes())
    if type(x) is Leaf:
        return ("Leaf", repr(x.rule), x.frozen, snap(x.state))
    if type(x) is StateTree:
        return ("ST", tuple((k, snap(v)) for k, v in x._children.items()))
    if isinstance(x, torch.nn.Module):
        return ("M", tuple((k, snap(v)) for k, v in x.state_dict(keep_vars=True).items()))
    if isinstance(x, dict):
        return ("D", tuple((k, snap(v)) for k, v in x.items()))
    if isinstance(x, tuple | list):
        return (type(x).__name__, tuple(snap(v) for v in x))
    if isinstance(x, float | int | bool | str) or x is None:
        return x
    raise AssertionError(f"cannot snapshot {type(x).__name__}")


def snap_old(opt: Any, ps: list[torch.Tensor]) -> Any:
    """Every per-parameter state (in parameter order) and hyperparameter of an old optimiser."""
    if isinstance(opt, oldopt.Optimiser):
        return ("chain", tuple(snap_old(o, ps) for o in opt.os))
    hyper = tuple((n, getattr(opt, n)) for n in opt._hyper)
    per = tuple(snap(opt._states[p]) if p in opt._states else "absent" for p in ps)
    return (type(opt).__name__, hyper, per, len(opt._states))


# --------------------------------------------------------------------------- fixtures
class Net3(torch.nn.Module):
    """Three linear layers (6 leaves); each layer computes in its own dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(2, 3)
        self.l2 = torch.nn.Linear(3, 3)
        self.l3 = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lay in (self.l1, self.l2, self.l3):
            x = torch.tanh(lay(x.to(lay.weight.dtype))) if lay is not self.l3 else lay(
                x.to(lay.weight.dtype))
        return x.to(D64)


def model3(mixed: bool = False) -> Net3:
    torch.manual_seed(0)
    m = Net3().to(D64)
    if mixed:
        m.l2.to(torch.float32)  # two (device, dtype) groups: the fault may hit either
    return m


DATA = [(torch.tensor([[0.5, -1.0]], dtype=D64), torch.tensor([[0.25]], dtype=D64)),
        (torch.tensor([[1.5, 2.0]], dtype=D64), torch.tensor([[-1.0]], dtype=D64)),
        (torch.tensor([[-0.5, 0.5]], dtype=D64), torch.tensor([[2.0]], dtype=D64))]


def loss_explicit(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((m(x) - y) ** 2).sum()


NEW_RULES: dict[str, Callable[[], Any]] = {
    "Adam": lambda: O.Adam(0.01),
    "Chain(ClipGrad,Momentum)": lambda: O.OptimiserChain(O.ClipGrad(0.5), O.Momentum(0.1, 0.9)),
}
OLD_RULES: dict[str, Callable[[], Any]] = {
    "Adam": lambda: F.Adam(0.01),
    "Optimiser(ClipValue,Momentum)": lambda: F.Optimiser(F.ClipValue(0.5), F.Momentum(0.1, 0.9)),
}
INNER = {"Adam": core.Adam, "Chain(ClipGrad,Momentum)": core.Momentum,
         "Optimiser(ClipValue,Momentum)": core.Momentum}


class Injected(RuntimeError):
    pass


def inject_at(monkeypatch: pytest.MonkeyPatch, cls: type, k: int, exc: BaseException) -> list[int]:
    """Make ``cls.apply_many`` apply leaves one by one (mutating their state, as rules
    do) and raise ``exc`` when it reaches the ``k``-th leaf of the step (over all groups)."""
    orig_apply = cls.apply
    seen = [0]

    def apply_many(self: Any, states: Any, xs: Any, dxs: Any) -> Any:
        out_s, out_d = [], []
        for s, x, dx in zip(states, xs, dxs):
            if seen[0] == k:
                raise exc
            seen[0] += 1
            s2, d = orig_apply(self, s, x, dx)
            out_s.append(s2)
            out_d.append(d)
        return out_s, out_d

    monkeypatch.setattr(cls, "apply_many", apply_many)
    return seen


def grads_of(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    return F.gradient(lambda mm: loss_explicit(mm, x, y), m)[0]


# --------------------------------------------------------------------------- explicit
def explicit_ref(rule: str, mixed: bool, steps: int) -> tuple[Any, Any]:
    m = model3(mixed)
    st = F.setup(NEW_RULES[rule](), m)
    for x, y in DATA[:steps]:
        F.update_(st, m, grads_of(m, x, y))
    return snap(m), snap(st)


@pytest.mark.parametrize("exc", [Injected("boom"), KeyboardInterrupt()], ids=["error", "kbint"])
@pytest.mark.parametrize("k", range(N_LEAVES))
@pytest.mark.parametrize("rule", list(NEW_RULES))
@pytest.mark.parametrize("mixed", [False, True], ids=["one-dtype", "two-dtypes"])
def test_explicit_update_fault_at_every_leaf(
    monkeypatch: pytest.MonkeyPatch, rule: str, k: int, exc: BaseException, mixed: bool,
) -> None:
    m = model3(mixed)
    st = F.setup(NEW_RULES[rule](), m)
    F.update_(st, m, grads_of(m, *DATA[0]))  # state is non-trivial before the faulty step
    g = grads_of(m, *DATA[1])
    before = (snap(m), snap(st))
    after = explicit_ref(rule, mixed, 2)
    seen = inject_at(monkeypatch, INNER[rule], k, exc)
    with pytest.raises(type(exc)):
        F.update_(st, m, g)
    assert seen[0] == k  # the fault really came at leaf k
    now = (snap(m), snap(st))
    assert now in (before, after), "half-updated: neither before nor after the step"
    assert now == before


def test_explicit_wrong_grad_shape_half_way() -> None:
    m = model3()
    st = F.setup(O.Adam(0.01), m)
    F.update_(st, m, grads_of(m, *DATA[0]))
    g = grads_of(m, *DATA[1])
    g = {"l1": g.l1, "l2": {"weight": torch.zeros(3, 4, dtype=D64), "bias": g.l2.bias},
         "l3": g.l3}  # the middle layer's weight (3rd of 6 leaves) has the wrong shape
    before = (snap(m), snap(st))
    with pytest.raises(ValueError, match=r"model\.l2\.weight.*\(3, 4\).*\(3, 3\)"):
        F.update_(st, m, g)
    assert (snap(m), snap(st)) == before


@pytest.mark.parametrize("fault", ["loss-raises", "loss-nan", "loss-inf"])
def test_explicit_train_fault_in_step_2(fault: str) -> None:
    m = model3()
    st = F.setup(O.Adam(0.01), m)
    calls = [0]

    def loss(mm: Any, x: Any, y: Any) -> Any:
        calls[0] += 1
        out = loss_explicit(mm, x, y)
        if calls[0] == 2:
            if fault == "loss-raises":
                raise Injected("in the loss")
            return out * float("nan" if fault == "loss-nan" else "inf")
        return out

    exc = Injected if fault == "loss-raises" else F.DomainError
    with pytest.raises(exc, match="in the loss" if exc is Injected else "item 2"):
        F.train_(loss, m, DATA, st)
    assert (snap(m), snap(st)) == explicit_ref("Adam", False, 1)  # step 1 done, step 2 not


@pytest.mark.parametrize("k", range(N_LEAVES))
def test_explicit_train_fault_at_leaf_in_step_2(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    ref = explicit_ref("Adam", False, 1)
    m = model3()
    st = F.setup(O.Adam(0.01), m)
    orig = core.Adam.apply_many
    steps = [0]

    def counting(self: Any, states: Any, xs: Any, dxs: Any) -> Any:
        steps[0] += 1
        if steps[0] == 2:
            monkeypatch.setattr(core.Adam, "apply_many", orig)
            inject_at(monkeypatch, core.Adam, k, KeyboardInterrupt())
            return core.Adam.apply_many(self, states, xs, dxs)
        return orig(self, states, xs, dxs)

    monkeypatch.setattr(core.Adam, "apply_many", counting)
    with pytest.raises(KeyboardInterrupt):
        F.train_(loss_explicit, m, DATA, st)
    assert (snap(m), snap(st)) == ref


# --------------------------------------------------------------------------- implicit
def implicit_run(rule: str, mixed: bool, steps: int) -> tuple[torch.nn.Module, Any, Any]:
    m = model3(mixed)
    opt = OLD_RULES[rule]()
    ps = F.params(m)
    for x, y in DATA[:steps]:
        gs = F.gradient(lambda x=x, y=y: loss_explicit(m, x, y), ps)
        F.update_(opt, ps, gs)
    return m, opt, ps


def implicit_snap(m: torch.nn.Module, opt: Any) -> Any:
    return snap(m), snap_old(opt, list(m.parameters()))


@pytest.mark.parametrize("exc", [Injected("boom"), KeyboardInterrupt()], ids=["error", "kbint"])
@pytest.mark.parametrize("k", range(N_LEAVES))
@pytest.mark.parametrize("rule", list(OLD_RULES))
@pytest.mark.parametrize("mixed", [False, True], ids=["one-dtype", "two-dtypes"])
def test_implicit_update_fault_at_every_leaf(
    monkeypatch: pytest.MonkeyPatch, rule: str, k: int, exc: BaseException, mixed: bool
) -> None:
    m, opt, ps = implicit_run(rule, mixed, 1)
    gs = F.gradient(lambda: loss_explicit(m, *DATA[1]), ps)
    before = implicit_snap(m, opt)
    ref_m, ref_opt, _ = implicit_run(rule, mixed, 2)
    after = implicit_snap(ref_m, ref_opt)
    assert before != after
    seen = inject_at(monkeypatch, INNER[rule], k, exc)
    with pytest.raises(type(exc)):
        F.update_(opt, ps, gs)
    assert seen[0] == k
    assert implicit_snap(m, opt) == before


def test_implicit_first_step_fault_adds_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    m = model3()
    opt = F.Adam(0.01)
    ps = F.params(m)
    gs = F.gradient(lambda: loss_explicit(m, *DATA[0]), ps)
    before = implicit_snap(m, opt)
    inject_at(monkeypatch, core.Adam, 3, Injected("boom"))
    with pytest.raises(Injected):
        F.update_(opt, ps, gs)
    assert implicit_snap(m, opt) == before and len(opt.state) == 0


def test_implicit_wrong_grad_shape_half_way() -> None:
    m, opt, ps = implicit_run("Adam", False, 1)
    gs = F.gradient(lambda: loss_explicit(m, *DATA[1]), ps)
    gs[m.l2.weight] = torch.zeros(3, 4, dtype=D64)
    before = implicit_snap(m, opt)
    with pytest.raises(ValueError, match=r"parameter 2 .*\(3, 4\).*\(3, 3\)"):
        F.update_(opt, ps, gs)
    assert implicit_snap(m, opt) == before


@pytest.mark.parametrize("fault", ["loss-raises", "loss-nan", "callback-raises", "cb-kbint"])
def test_implicit_train_fault_in_step_2(fault: str) -> None:
    m = model3()
    opt = F.Adam(0.01)
    ps = F.params(m)
    calls = [0]

    def loss(x: Any, y: Any) -> Any:
        calls[0] += 1
        out = loss_explicit(m, x, y)
        if calls[0] == 2 and fault == "loss-raises":
            raise Injected("in the loss")
        if calls[0] == 2 and fault == "loss-nan":
            return out * float("nan")
        return out

    def cb() -> None:
        if calls[0] == 2 and fault == "callback-raises":
            raise Injected("in the callback")
        if calls[0] == 2 and fault == "cb-kbint":
            raise KeyboardInterrupt

    exc: type[BaseException] = {"loss-raises": Injected, "loss-nan": F.DomainError,
                                "callback-raises": Injected, "cb-kbint": KeyboardInterrupt}[fault]
    with pytest.raises(exc):
        F.train_(loss, ps, DATA, opt, cb=cb)
    # a fault in the loss: step 2 not taken; in the callback (which runs after the
    # update, as in Flux): step 2 fully taken
    steps = 1 if fault.startswith("loss") else 2
    ref_m, ref_opt, _ = implicit_run("Adam", False, steps)
    assert implicit_snap(m, opt) == implicit_snap(ref_m, ref_opt)


# --------------------------------------------------------------------------- real SIGINT
def _sigint_during_subtract(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    orig = getattr(module, name)
    fired = [False]

    def sub(xs: Any, steps: Any) -> None:
        if not fired[0]:
            fired[0] = True
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step commits
        orig(xs, steps)

    monkeypatch.setattr(module, name, sub)


pytestmark_sig = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt",
                                    reason="needs POSIX signals")


@pytestmark_sig
def test_implicit_real_sigint_while_committing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    m, opt, ps = implicit_run("Adam", False, 1)
    gs = F.gradient(lambda: loss_explicit(m, *DATA[1]), ps)
    ref_m, ref_opt, _ = implicit_run("Adam", False, 2)
    _sigint_during_fused_run(monkeypatch)  # plain Adam: the fused step's run
    with pytest.raises(KeyboardInterrupt):
        F.update_(opt, ps, gs)
    assert implicit_snap(m, opt) == implicit_snap(ref_m, ref_opt)  # deferred: fully after


def _sigint_during_fused_run(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = plan.Pending.run
    fired = [False]

    def run(self: Any) -> Any:
        if not fired[0]:
            fired[0] = True
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the fused step commits
        return orig(self)

    monkeypatch.setattr(plan.Pending, "run", run)


@pytestmark_sig
@pytest.mark.parametrize("rule", list(NEW_RULES))
def test_explicit_real_sigint_while_committing(rule: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Adam takes the fused path (the interrupt lands inside its run), the chain the
    general one (inside the subtraction of the steps)."""
    m = model3()
    st = F.setup(NEW_RULES[rule](), m)
    F.update_(st, m, grads_of(m, *DATA[0]))
    g = grads_of(m, *DATA[1])
    after = explicit_ref(rule, False, 2)
    if rule == "Adam":
        _sigint_during_fused_run(monkeypatch)
    else:
        _sigint_during_subtract(monkeypatch, core, "subtract_many_")
    with pytest.raises(KeyboardInterrupt):
        F.update_(st, m, g)
    assert (snap(m), snap(st)) == after  # deferred: fully after


def test_snapshot_sees_every_state_tensor() -> None:
    """The snapshot is sharp: one flipped bit in any state tensor changes it."""
    m = model3()
    st = F.setup(O.Adam(0.01), m)
    F.update_(st, m, grads_of(m, *DATA[0]))
    s0 = snap(st)
    st2 = copy.deepcopy(st)
    assert snap(st2) == s0
    v = st2.l3.bias.state[1]
    v.view(torch.int64)[0] ^= 1
    assert snap(st2) != s0
    opt = F.Adam()
    _, opt, _ = implicit_run("Adam", False, 1)
    ps = list(model3().parameters())
    assert snap_old(opt, ps) != snap_old(F.Adam(0.01), ps)
