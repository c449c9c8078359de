"""The leaf-set cache of ``fluxtrain.core.plan.prepare`` decides exactly as the full checks.

``prepare`` records the facts about a rule's parameters and states once and
afterwards re-checks only their fingerprints, their writability and the
gradients. Each test warms the cache on a good leaf set, then changes one
thing, and compares the cached ``prepare`` with the uncached checks
(``plan._prepare_full`` on a fresh rule with no cache): the same ``None`` or
the same groups taking the same engine (native kernel or foreach runs). A
training sequence through the cache is also compared bit for bit with the
rule's own ``apply`` per leaf.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from fluxtrain.core import native, plan, tensormeta
from fluxtrain.core import rules as R
from fluxtrain.core.batched import CPU_CHUNK_BYTES

# every test twice: per-step checks read from Python, and by the C++ bulk reads
pytestmark = pytest.mark.usefixtures("tensor_reads")

RULES: dict[str, Callable[[], Any]] = {
    "Descent": lambda: R.Descent(0.1),
    "Momentum": lambda: R.Momentum(0.01, 0.9),
    "Adam": lambda: R.Adam(0.001),
}
BIG = CPU_CHUNK_BYTES // 4 + 5  # float32 elements: a leaf the foreach runs slice


class Case:
    """A leaf set: parameters, states and gradients of one rule."""

    def __init__(self, rule: Any, shapes: list[tuple[int, ...]]) -> None:
        torch.manual_seed(0)
        self.rule = rule
        self.xs: list[Any] = [torch.randn(s) for s in shapes]
        self.states: list[Any] = [rule.init(x) for x in self.xs]
        self.dxs: list[Any] = [torch.randn(s) * 1e-2 for s in shapes]

    def step(self) -> None:
        pending = plan.prepare(self.rule, self.states, self.xs, self.dxs)
        assert pending is not None
        for p in pending:
            given = [self.states[i] for i in p.idx]
            # kept: the new states are the given objects (callers then store nothing);
            # and they are known before the run (callers may store them first)
            assert p.kept == all(a is b for a, b in zip(p.states, given))
            new = p.states
            assert p.run() is new
            for i, s in zip(p.idx, new):
                self.states[i] = s


def cached(rule: Any) -> Any:
    return plan._workspaces(rule).get(("leaves", threading.get_ident()))


def decide(rule: Any, case: Case, full: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """(group indices, engine per group) of prepare, or None; nothing is run."""
    engines: list[bool] = []
    orig = plan._native

    def spy(*a: Any) -> Any:
        p = orig(*a)
        engines.append(p is not None)
        return p

    # the foreach engine may move state tensors into its flat buffers (values kept):
    # put them back afterwards, so that each decision sees the same tensors
    tensors = [t for s in case.states for t in (
        [s] if isinstance(s, torch.Tensor) else [s.m, s.v] if isinstance(s, R.AdamState) else [])]
    where = [(t, t.untyped_storage(), t.storage_offset(), t.shape, t.stride()) for t in tensors]
    monkeypatch.setattr(plan, "_native", spy)
    try:
        if full:
            cls = type(rule)
            nstate = 0 if cls is R.Descent else 1 if cls is R.Momentum else 2
            out = plan._prepare_full(cls, rule, nstate, plan._workspaces(rule),
                                     threading.get_ident(), case.states, case.xs, case.dxs)
        else:
            out = plan.prepare(rule, case.states, case.xs, case.dxs)
    finally:
        monkeypatch.setattr(plan, "_native", orig)
        with torch.no_grad():
            for t, st, off, shape, stride in where:
                t.set_(st, off, shape, stride)
    if out is None:
        return None
    return [p.idx for p in out], engines


def mk_readonly(c: Case) -> None:
    c.xs[1]._fluxtrain_readonly = True


def mk_inference(c: Case) -> None:
    with torch.inference_mode():
        c.xs[1] = c.xs[1].clone()


def mk_inference_data(c: Case) -> None:
    # same object, address, shape and strides, but now an inference tensor
    x = c.xs[1]
    with torch.inference_mode():
        y = torch.from_numpy(x.numpy())
    x.data = y


def mk_replaced(c: Case) -> None:
    c.xs[0] = c.xs[0].clone()


def mk_set(c: Case) -> None:
    c.xs[0].set_(c.xs[0].clone())  # same object, new address


def mk_resized(c: Case) -> None:
    c.xs[0].resize_(3)  # same object and address, other shape; the gradient too
    c.dxs[0] = torch.randn(3)


def mk_transposed(c: Case) -> None:
    x = c.xs[2]
    x.set_(x.untyped_storage(), 0, (x.shape[1], x.shape[0]), (1, x.shape[1]))
    c.dxs[2] = torch.randn(x.shape)  # the state keeps the old shape


def mk_reinterpreted(c: Case) -> None:
    c.xs[0].data = c.xs[0].data.view(torch.int32)  # same address, shape, strides


def mk_shared(c: Case) -> None:
    c.xs[1] = c.xs[0][:]  # two parameters on the same memory


def mk_expanded(c: Case) -> None:
    c.xs[1] = torch.randn(1).expand(c.xs[1].shape)


def mk_subclass(c: Case) -> None:
    class T(torch.Tensor):
        pass

    c.xs[0] = c.xs[0].as_subclass(T)


def mk_g_dtype(c: Case) -> None:
    c.dxs[1] = c.dxs[1].double()


def mk_g_shape(c: Case) -> None:
    c.dxs[1] = c.dxs[1].reshape(-1)


def mk_g_device(c: Case) -> None:
    c.dxs[1] = torch.empty(c.dxs[1].shape, device="meta")


def mk_g_none(c: Case) -> None:
    c.dxs[1] = None


def mk_g_strided(c: Case) -> None:
    c.dxs[2] = torch.randn(c.dxs[2].shape[::-1]).t()  # small leaf: foreach runs


def mk_g_strided_big(c: Case) -> None:
    c.dxs[3] = torch.randn(BIG * 2)[::2]  # sliced leaf: refused


def mk_g_is_param(c: Case) -> None:
    c.dxs[0] = c.xs[0]


def mk_g_aliases_param(c: Case) -> None:
    c.dxs[1] = c.xs[0].view(c.xs[1].shape) if c.xs[0].numel() == c.xs[1].numel() else c.dxs[1]
    c.dxs[4] = c.xs[5]


def mk_g_aliases_state(c: Case) -> None:
    s = c.states[5]
    c.dxs[5] = s if isinstance(s, torch.Tensor) else s.m if s is not None else c.dxs[5]


def mk_g_is_big_param(c: Case) -> None:
    c.dxs[3] = c.xs[3]


def mk_g_empty_alias(c: Case) -> None:
    c.xs[4] = torch.empty(0)
    c.states[4] = c.rule.init(c.xs[4])
    c.dxs[4] = c.xs[1].view(-1)[:0]  # empty, at a parameter's address


def mk_g_short(c: Case) -> None:
    c.dxs.pop()


def mk_state_replaced(c: Case) -> None:
    s = c.states[1]
    if isinstance(s, torch.Tensor):
        c.states[1] = s.clone()
    elif isinstance(s, R.AdamState):
        c.states[1] = R.AdamState(s.m.clone(), s.v, s.beta_t)


def mk_state_shape(c: Case) -> None:
    s = c.states[1]
    if isinstance(s, torch.Tensor):
        c.states[1] = s.reshape(-1).clone()
    elif isinstance(s, R.AdamState):
        c.states[1] = R.AdamState(s.m, s.v.reshape(-1).clone(), s.beta_t)


def mk_state_dtype(c: Case) -> None:
    s = c.states[1]
    if isinstance(s, torch.Tensor):
        c.states[1] = s.double()
    elif isinstance(s, R.AdamState):
        c.states[1] = R.AdamState(s.m.double(), s.v, s.beta_t)


def mk_state_set(c: Case) -> None:
    s = c.states[2]
    t = s if isinstance(s, torch.Tensor) else s.v if isinstance(s, R.AdamState) else None
    if t is not None:
        u = torch.randn(t.shape[::-1]).t()  # same object: other address, not contiguous
        t.set_(u.untyped_storage(), u.storage_offset(), u.shape, u.stride())


def mk_state_betas(c: Case) -> None:
    s = c.states[1]
    if isinstance(s, R.AdamState):
        c.states[1] = R.AdamState(s.m, s.v, list(s.beta_t))  # type: ignore[arg-type]


def mk_state_betas_differ(c: Case) -> None:
    s = c.states[1]
    if isinstance(s, R.AdamState):
        c.states[1] = R.AdamState(s.m, s.v, (0.5, 0.25))


def mk_state_none(c: Case) -> None:
    c.states[1] = None


def mk_double_group(c: Case) -> None:
    c.xs[2] = c.xs[2].double()
    c.states[2] = c.rule.init(c.xs[2])
    c.dxs[2] = c.dxs[2].double()


def mk_nothing(c: Case) -> None:
    pass


CHANGES = {f.__name__[3:]: f for f in [
    mk_nothing, mk_readonly, mk_inference, mk_inference_data, mk_replaced, mk_set,
    mk_resized, mk_transposed,
    mk_reinterpreted, mk_shared, mk_expanded, mk_subclass, mk_g_dtype, mk_g_shape,
    mk_g_device, mk_g_none, mk_g_strided, mk_g_strided_big, mk_g_is_param,
    mk_g_aliases_param, mk_g_aliases_state, mk_g_is_big_param, mk_g_empty_alias, mk_g_short,
    mk_state_replaced, mk_state_shape, mk_state_dtype, mk_state_set, mk_state_betas,
    mk_state_betas_differ, mk_state_none, mk_double_group,
]}
#: changes after which the fused path must refuse the leaf set (by the documented checks)
REFUSED = {"readonly", "inference", "inference_data", "reinterpreted", "shared", "expanded",
           "subclass",
           "g_dtype", "g_shape", "g_device", "g_none", "g_strided_big", "g_aliases_param",
           "state_shape", "state_dtype", "state_betas", "state_none"}
SHAPES = [(4, 3), (4, 3), (5, 2), (BIG,), (7,), (7,)]


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("name", list(RULES))
def test_cached_decision_equals_full_checks(name: str, change: str, use_native: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if use_native and not native.available():
        pytest.skip(f"native kernel unavailable: {native.why_unavailable()}")
    if not use_native:
        monkeypatch.setattr(native, "available", lambda: False)
    rule = RULES[name]()
    c = Case(rule, SHAPES)
    c.step()
    c.step()
    assert cached(rule) is not None  # warmed: the next prepare takes the cached checks
    CHANGES[change](c)
    got = decide(rule, c, False, monkeypatch)
    want = decide(RULES[name](), c, True, monkeypatch)
    assert got == want
    stateless_ok = name == "Descent" and change.startswith("state_")
    if change in REFUSED and not stateless_ok and not (name != "Adam" and "betas" in change):
        assert got is None
    if change in ("nothing", "replaced", "set", "state_replaced", "g_strided", "g_is_param"):
        assert got is not None
    # and again: the cache rebuilt (or kept) for the changed set decides the same
    assert decide(rule, c, False, monkeypatch) == want


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("name", list(RULES))
def test_cached_steps_equal_apply(name: str, use_native: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the cache, over changing leaf sets, the bits of ``rule.apply`` per leaf."""
    if use_native and not native.available():
        pytest.skip(f"native kernel unavailable: {native.why_unavailable()}")
    if not use_native:
        monkeypatch.setattr(native, "available", lambda: False)
    c = Case(RULES[name](), SHAPES)
    ref_rule = RULES[name]()
    rxs = [x.clone() for x in c.xs]
    rst = [ref_rule.init(x) for x in rxs]
    for k in range(6):
        torch.manual_seed(10 + k)
        c.dxs = [torch.randn(x.shape) * 1e-2 for x in c.xs]
        if k == 2:
            c.xs[1] = c.xs[1].clone()  # a replaced parameter: the cache is rebuilt
        if k == 4:
            c.dxs[2] = torch.randn(c.xs[2].shape[::-1]).t()  # strided: foreach runs
        c.step()
        for i, (x, dx) in enumerate(zip(rxs, c.dxs)):
            rst[i], step = ref_rule.apply(rst[i], x, dx.contiguous())
            x.sub_(step)
        for a, b in zip(c.xs, rxs):
            assert torch.equal(a, b)
    assert cached(c.rule) is not None


def test_cache_is_per_thread_and_rule() -> None:
    rule = R.Momentum(0.01, 0.9)
    c = Case(rule, [(3,), (4,)])
    c.step()
    seen: list[Any] = []

    def other() -> None:
        seen.append(cached(rule))
        c.step()
        seen.append(cached(rule))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen[0] is None and seen[1] is not None and seen[1] is not cached(rule)
    assert cached(R.Momentum(0.01, 0.9)) is None


def test_defer_interrupts_leaves_other_handlers_and_restores_default() -> None:
    """``defer_interrupts`` (on the C ``_signal`` functions) keeps the handler semantics."""
    import os
    import signal

    from fluxtrain.core.guards import defer_interrupts

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        with defer_interrupts():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            os.kill(os.getpid(), signal.SIGINT)
            done = True  # reached: the interrupt was held back
    assert done
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen: list[int] = []
    for handler in (lambda s, f: seen.append(s), signal.SIG_IGN):
        old = signal.signal(signal.SIGINT, handler)
        try:
            with defer_interrupts():
                assert signal.getsignal(signal.SIGINT) is handler  # left alone
                os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is handler
        finally:
            signal.signal(signal.SIGINT, old)
    assert seen == [signal.SIGINT]


@pytest.mark.parametrize("name", list(RULES))
def test_reads_built_later_take_over_without_a_miss(name: str, tensor_reads: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A leaf set recorded while the C++ reads were still being built switches to them
    once they exist, at the next step that passed the Python checks, with the same bits."""
    if not tensor_reads.startswith("tensormeta"):
        pytest.skip("needs the C++ reads")
    built = tensormeta.module()
    ready = [False]
    monkeypatch.setattr(tensormeta, "module", lambda wait=False: built if ready[0] else None)
    used = []
    orig = plan._prepare_meta
    monkeypatch.setattr(plan, "_prepare_meta", lambda *a: used.append(1) or orig(*a))
    c = Case(RULES[name](), SHAPES)
    ref_rule = RULES[name]()
    rxs = [x.clone() for x in c.xs]
    rst = [ref_rule.init(x) for x in rxs]
    for k in range(6):
        ready[0] = k >= 3  # "the build finished" before step 3
        c.step()
        for i, (x, dx) in enumerate(zip(rxs, c.dxs)):
            rst[i], step = ref_rule.apply(rst[i], x, dx)
            x.sub_(step)
        assert all(torch.equal(a, b) for a, b in zip(c.xs, rxs)), k
    lc = cached(c.rule)
    assert lc is not None and lc.meta is built
    assert len(used) == 2  # steps 4 and 5 (step 3 ran the Python checks, then adopted)
