"""fluxtrain.flat: flatten_ and the one-leaf kernel path give exactly the general path's bits.

The truth for every training here is the same training on a model that was
*not* flattened, with the fused path switched off (``plan.trusted`` patched
to refuse every rule): the per-rule ``apply_batched`` route that the
conformance tests check against Optimisers.jl. The flat runs take the fused
kernel with parameters, gradients and states each as one array (checked by
spying on the kernel's leaf count) and the identity-and-address check of
``plan._prepare_flat``; every way of leaving the layout between steps must
still give the truth's bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from explicitutil import bits
from torch import nn

import fluxtrain as F
from fluxtrain import optimisers as O
from fluxtrain.core import native, plan
from fluxtrain.flat import FlatLayout, flatten_

# every test twice: per-step checks read from Python, and by the C++ bulk reads
pytestmark = [pytest.mark.filterwarnings("ignore::fluxtrain.FluxDeprecationWarning"),
              pytest.mark.usefixtures("tensor_reads")]

RULES: dict[str, Callable[[], Any]] = {
    "Adam": lambda: O.Adam(0.01),
    "Momentum": lambda: O.Momentum(0.1, 0.9),
    "Descent": lambda: O.Descent(0.3),
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def data(k: int, dt: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + k)
    return (torch.randn(5, 3, generator=g) * 2.0 ** k).to(dt)


def loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (m(x) ** 2).sum()


def general(train: Callable[[bool], Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``train(flat=False)`` on the general (unfused) route: the truth."""
    with monkeypatch.context() as mp:
        mp.setattr(plan, "trusted", lambda rule: False)
        return bits(train(False))


@pytest.fixture
def leaf_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``nleaf`` of every native kernel call (empty without the native kernel)."""
    counts: list[int] = []
    lib = native.library()
    if lib is None:
        return counts
    step = lib.fluxtrain_step

    def spy(*args: Any) -> Any:
        counts.append(args[2])
        return step(*args)

    monkeypatch.setattr(lib, "fluxtrain_step", spy)
    return counts


needs_native = pytest.mark.skipif(not native.available(), reason="no native kernel built")


# ----------------------------------------------------------------------- the layout
def test_flatten_keeps_objects_values_and_gradients() -> None:
    torch.manual_seed(0)
    m = Net()
    m.a.weight.grad = torch.randn(4, 3)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    objects = [m.a.weight, m.a.bias, m.b.weight, m.b.bias]
    old_grad = m.a.weight.grad.clone()
    layout = flatten_(m)
    assert isinstance(layout, FlatLayout)
    assert [p for p in m.parameters()] == objects  # same objects, in place
    assert layout.params == objects
    assert layout.paths == ["model.a.weight", "model.a.bias", "model.b.weight", "model.b.bias"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    (buf,), (gbuf,) = layout.buffers, layout.grad_buffers
    assert buf.numel() == gbuf.numel() == 12 + 4 + 8 + 2
    off = 0
    for p, view in zip(objects, layout.views):
        assert p.data_ptr() == buf.data_ptr() + off * 4 and p.is_contiguous()
        assert p.grad is view and view.data_ptr() == gbuf.data_ptr() + off * 4
        off += p.numel()
    assert torch.equal(m.a.weight.grad, old_grad)  # an existing .grad is kept
    assert not m.b.weight.grad.any()  # and the others start at zero
    # the gradient tree is what gradient() returns for the model, made of the views
    ref = F.gradient(lambda mm: loss(mm, data(0)), m)[0]
    assert type(layout.grads) is type(ref) and list(layout.grads) == list(ref)
    assert layout.grads.a.weight is m.a.weight.grad
    assert layout.intact()


def test_backward_accumulates_into_the_buffer_and_matches_gradient() -> None:
    torch.manual_seed(1)
    m = Net()
    layout = flatten_(m)
    ref = F.gradient(lambda mm: loss(mm, data(1)), m)[0]
    ptrs = [v.data_ptr() for v in layout.views]
    layout.zero_grad()
    loss(m, data(1)).backward()
    assert [p.grad.data_ptr() for p in m.parameters()] == ptrs
    assert layout.intact()
    for g, r in zip(layout.views, [ref.a.weight, ref.a.bias, ref.b.weight, ref.b.bias]):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    layout.zero_grad()
    assert not layout.grad_buffers[0].any() and layout.intact()


def test_groups_by_dtype_ties_once_and_skips_untrainable() -> None:
    w = torch.ones(3)
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    model = {"w": w, "tied": w, "d": torch.full((2,), 2.0, dtype=torch.float64),
             "i": torch.arange(3), "frozen": frozen, "x": torch.full((4,), 5.0)}
    layout = flatten_(model)
    assert repr(layout) == "FlatLayout(3 tensors: 7 × float32 on cpu, 2 × float64 on cpu)"
    assert [t.dtype for t in layout.buffers] == [torch.float32, torch.float64]
    assert layout.buffers[0].tolist() == [1, 1, 1, 5, 5, 5, 5]
    assert model["tied"] is w and w.data_ptr() == layout.buffers[0].data_ptr()
    assert frozen.grad is None and model["i"].grad is None
    assert layout.grads["tied"] is None and layout.grads["w"] is w.grad
    assert layout.grads["i"] is None and layout.grads["frozen"] is None


def test_a_non_contiguous_parameter_becomes_a_contiguous_view() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    t = base.t()  # a transposed view: its own memory is all of base, once
    vals = t.clone()
    layout = flatten_([t])
    assert t.is_contiguous() and torch.equal(t, vals)
    assert t.data_ptr() == layout.buffers[0].data_ptr()
    assert torch.equal(base, torch.arange(12.0).reshape(3, 4))  # the old memory is untouched


# ----------------------------------------------------------------------- bad inputs
def _unchanged(model: list[torch.Tensor]) -> Callable[[], None]:
    ptrs = [t.data_ptr() for t in model]
    vals = [t.clone() for t in model]
    grads = [t.grad for t in model]

    def check() -> None:
        assert [t.data_ptr() for t in model] == ptrs
        assert all(torch.equal(a, b) for a, b in zip(model, vals))
        assert all(t.grad is g for t, g in zip(model, grads))

    return check


def test_numpy_leaf_is_refused_by_name() -> None:
    model = [torch.zeros(2), np.zeros(3, dtype=np.float32)]
    check = _unchanged([model[0]])
    with pytest.raises(TypeError, match=r"model\[1\] is a numpy array"):
        flatten_(model)
    check()


def test_inference_and_read_only_tensors_are_refused() -> None:
    with torch.inference_mode():
        inf = torch.zeros(2)
    with pytest.raises(ValueError, match=r"model\[1\] is read-only"):
        flatten_([torch.zeros(1), inf])
    ro = torch.zeros(2)
    ro._fluxtrain_readonly = True  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"model\['r'\] is read-only"):
        flatten_({"r": ro})


def test_non_leaf_tensor_is_refused() -> None:
    w = torch.ones(2, requires_grad=True)
    model = [w * 2]
    with pytest.raises(ValueError, match=r"model\[0\] is not a leaf of autograd.*MulBackward"):
        flatten_(model)


def test_tensors_sharing_memory_are_refused_and_nothing_moves() -> None:
    base = torch.arange(6.0)
    model = [torch.zeros(2), base[:4], base[2:]]
    check = _unchanged(model)
    with pytest.raises(ValueError, match=r"model\[1\] and model\[2\] share memory"):
        flatten_(model)
    check()
    # disjoint slices of one tensor are fine
    flatten_([base[:3], base[3:]])


def test_sparse_and_empty_models_are_refused() -> None:
    sp = torch.eye(2).to_sparse()
    with pytest.raises(TypeError, match=r"model\[0\] is a torch.sparse_coo tensor"):
        flatten_([sp])
    with pytest.raises(ValueError, match="list has no trainable tensors"):
        flatten_([torch.arange(3), "name"])
    with pytest.raises(ValueError, match="ReLU has no trainable tensors"):
        flatten_(nn.ReLU())


def test_check_names_what_left_the_layout() -> None:
    m = Net()
    layout = flatten_(m)
    layout.check()
    m.b.bias.data = torch.zeros(2)
    assert not layout.intact()
    with pytest.raises(RuntimeError, match=r"model\.b\.bias left the flat layout: its memory"):
        layout.check()
    m2 = Net()
    layout2 = flatten_(m2)
    torch.optim.SGD(m2.parameters(), lr=0.1).zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match=r"model\.a\.weight left the flat layout: its \.grad"):
        layout2.check()


def test_load_state_dict_keeps_the_layout() -> None:
    m = Net()
    layout = flatten_(m)
    src = Net()
    m.load_state_dict(src.state_dict())
    assert layout.intact()
    assert torch.equal(layout.buffers[0][:12], src.a.weight.detach().reshape(-1))


# ----------------------------------------------------------------------- training
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_flat_training_equals_the_general_path(
    rule: str, dt: torch.dtype, monkeypatch: pytest.MonkeyPatch, leaf_counts: list[int]
) -> None:
    def train(flat: bool) -> Any:
        torch.manual_seed(3)
        m = Net().to(dt)
        layout = flatten_(m) if flat else None
        st = O.setup(RULES[rule](), m)
        for k in range(6):
            if layout is not None:
                layout.zero_grad()
                loss(m, data(k, dt)).backward()
                grads = layout.grads
            else:
                grads = F.gradient(lambda mm, k=k: loss(mm, data(k, dt)), m)[0]
            O.update_(st, m, grads)
        return m, st

    truth = general(train, monkeypatch)
    assert bits(train(True)) == truth
    if native.available():
        assert leaf_counts[-3:] == [1, 1, 1]  # one leaf covering the whole buffer


@pytest.mark.parametrize("counter", [True, False], ids=["storage-counts", "addresses"])
@pytest.mark.parametrize("rule", ["Adam", "Momentum"])
def test_leaving_the_layout_between_steps_still_gives_the_truth(
    rule: str, counter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way out of the layout (or of the last step's gradients) after the
    identity-and-address check has been armed; with torch's storage reference
    counter, and without it (then every address is read)."""
    if counter:
        assert plan._storage_use_count is not None  # torch >= 2.3 has it
    else:
        monkeypatch.setattr(plan, "_storage_use_count", None)
    step = [0]

    def train(flat: bool) -> Any:
        torch.manual_seed(4)
        ts = [torch.randn(n, dtype=torch.float64) for n in (5, 7, 3, 6)]
        layout = flatten_(ts) if flat else None
        st = O.setup(RULES[rule](), ts)
        for k in range(16):
            g = torch.Generator().manual_seed(k)
            fresh = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ts]
            if k == 10 and layout is not None:  # back into a layout after leaving it
                layout = flatten_(ts)
            if layout is not None:
                for v, f in zip(layout.views, fresh):
                    v.copy_(f)
                grads: list[Any] = list(layout.grads)
            else:
                grads = fresh
            if k == 3:  # a state tensor re-pointed (values kept)
                s = st[3].state
                tensor = s if rule == "Momentum" else s.m
                tensor.set_(tensor.clone())
            if k == 5:  # a state that is not the object the last step returned
                s = st[1].state
                st[1].state = s.clone() if rule == "Momentum" else O.AdamState(*s)
            if k == 7:  # a gradient that is not the layout's view (other values)
                grads[2] = fresh[2] * 2
            if k == 9:  # a parameter re-pointed (values kept)
                ts[1].data = ts[1].data.clone()
            if k == 13:  # a layout gradient re-pointed in place, to other values
                if layout is not None:
                    layout.views[0].set_(fresh[0] * 3)
                else:
                    grads[0] = fresh[0] * 3
            step[0] = k
            O.update_(st, ts, grads)
        return ts, st

    truth = general(train, monkeypatch)
    taken: dict[int, bool] = {}
    orig = plan._prepare_flat

    def spy(*args: Any) -> Any:
        out = orig(*args)
        taken[step[0]] = out is not None
        return out

    monkeypatch.setattr(plan, "_prepare_flat", spy)
    assert bits(train(True)) == truth
    # each event met the armed check (it was called) and was refused by it
    assert all(taken.get(k) is False for k in (3, 5, 7, 9, 13)), taken
    assert taken[2] and taken[12]  # and the check does pass the plain steps


def test_bad_gradient_after_flat_steps_raises_and_changes_nothing() -> None:
    ts = [torch.randn(4), torch.randn(3)]
    layout = flatten_(ts)
    st = O.setup(O.Adam(0.1), ts)
    for _ in range(3):
        layout.grad_buffers[0].normal_()
        O.update_(st, ts, layout.grads)
    snap = bits((ts, st))
    bad = list(layout.grads)
    bad[1] = torch.ones(5)
    with pytest.raises(ValueError, match="shape"):
        O.update_(st, ts, bad)
    assert bits((ts, st)) == snap
    bad[1] = layout.views[1].view(3, 1)  # the right address, not the right tensor
    for _ in range(2):
        with pytest.raises(ValueError, match="shape"):
            O.update_(st, ts, bad)
        assert bits((ts, st)) == snap
    layout.views[1].unsqueeze_(0)  # an in-place shape change of a view: unsupported,
    layout.views[1].squeeze_(0)  # but undone here, so the layout holds again
    O.update_(st, ts, layout.grads)
    assert bits((ts, st)) != snap


@pytest.mark.parametrize("counter", [True, False], ids=["storage-counts", "addresses"])
def test_new_gradient_objects_where_the_last_ones_were(
    counter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares the ids of the last step's gradients; once one of them is
    gone its id may be reused by a new object (here: a view of another shape at the
    same address, which must fail as it does on the general path)."""
    if not counter:
        monkeypatch.setattr(plan, "_storage_use_count", None)
    ts = [torch.randn(6), torch.randn(6)]
    flatten_(ts)
    st = O.setup(O.Momentum(0.1), ts)
    buf = torch.randn(12)
    for _ in range(3):
        grads = [buf[:6], buf[6:]]  # back to back, new objects every step...
        O.update_(st, ts, grads)
    held = [buf[:6], buf[6:]]
    for _ in range(2):
        O.update_(st, ts, held)  # ...and the same ones (the check is armed)
    snap = bits((ts, st))
    first, second = map(id, held)
    keep = held[1]
    del held, grads  # the first gradient object is gone, the second still held
    made = {}  # new objects, all kept, until one takes the freed address
    for _ in range(200):
        t = buf[:6].view(2, 3)
        made.setdefault(id(t), t)
    bad = [made.get(first, buf[:6].view(2, 3)), keep]
    assert id(bad[1]) == second
    with pytest.raises(ValueError, match="shape"):
        O.update_(st, ts, bad)
    assert bits((ts, st)) == snap


@pytest.mark.parametrize("rule", ["Adam", "Momentum"])
def test_the_same_non_contiguous_gradients_every_step(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def train(flat: bool) -> Any:
        torch.manual_seed(6)
        ts = [torch.randn(3, 4), torch.randn(4, 4)]
        if flat:
            flatten_(ts)
        bases = [torch.zeros(4, 3), torch.zeros(4, 4)]
        grads = [b.t() for b in bases]  # transposed views: the same objects every step
        st = O.setup(RULES[rule](), ts)
        for k in range(5):
            g = torch.Generator().manual_seed(k)
            for b in bases:
                b.copy_(torch.randn(b.shape, generator=g))
            O.update_(st, ts, grads)
        return ts, st

    assert bits(train(True)) == general(train, monkeypatch)


@pytest.mark.parametrize("name", ["Adam", "Momentum"])
def test_implicit_flat_equals_general(name: str, monkeypatch: pytest.MonkeyPatch,
                                      leaf_counts: list[int]) -> None:
    def train(flat: bool) -> Any:
        torch.manual_seed(5)
        m = Net()
        layout = flatten_(m) if flat else None
        ps = F.params(m)
        opt = getattr(F.optimise, name)()
        for k in range(5):
            if layout is not None:
                layout.zero_grad()
                loss(m, data(k)).backward()
                gs = F.Grads([(p, p.grad) for p in ps], ps)
            else:
                gs = F.gradient(lambda k=k: loss(m, data(k)), ps)
            F.update_(opt, ps, gs)
        return m

    truth = general(train, monkeypatch)
    assert bits(train(True)) == truth
    if native.available():
        assert leaf_counts[-1] == 1


def test_docstring_examples() -> None:
    import doctest

    import fluxtrain.flat
    import fluxtrain.gradients

    for module in (fluxtrain.flat, fluxtrain.gradients):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@pytest.mark.parametrize("rule", ["Adam", "Momentum"])
def test_freeze_thaw_adjust_and_ties_on_a_flat_model(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.b.weight = self.a.weight  # one tensor at two positions

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)))

    def train(flat: bool) -> Any:
        torch.manual_seed(7)
        m = Tied()
        layout = flatten_(m) if flat else None
        st = O.setup(RULES[rule](), m)
        for k in range(8):
            if k == 2:
                O.freeze_(st.a)
            if k == 4:
                O.thaw_(st.a)
                O.adjust_(st, 0.05)
            if layout is not None:
                layout.zero_grad()
                loss(m, data(k)).backward()
                grads = layout.grads
            else:
                grads = F.gradient(lambda mm, k=k: loss(mm, data(k)), m)[0]
            O.update_(st, m, grads)
        return m, st

    assert bits(train(True)) == general(train, monkeypatch)


@pytest.mark.parametrize("rule", ["Adam", "Momentum"])
def test_back_to_back_gradients_in_separate_storages(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gradients laid out back to back over one numpy array, each its own torch storage:
    one gradient's storage count says nothing about the others, so re-pointing the
    second must still be seen."""

    def train(flat: bool) -> Any:
        torch.manual_seed(8)
        ts = [torch.randn(6), torch.randn(6)]
        if flat:
            flatten_(ts)
        arr = np.zeros(12, dtype=np.float32)
        grads = [torch.from_numpy(arr[:6]), torch.from_numpy(arr[6:])]  # the same objects
        st = O.setup(RULES[rule](), ts)
        for k in range(6):
            g = torch.Generator().manual_seed(k)
            arr[:] = torch.randn(12, generator=g).numpy()
            if k == 4:
                grads[1].set_(torch.randn(6, generator=g) * 5)
            O.update_(st, ts, grads)
        return ts, st

    assert bits(train(True)) == general(train, monkeypatch)
