"""Hostile inputs to every public function: each row asserts the exact outcome.

A row is ``Row(id, call, check=...)`` (the call succeeds and ``check(result)``
compares it with a hand-computed value) or ``Row(id, call, raises=(Type,
words))`` (the call raises exactly that type, and every word appears in the
message, naming the bad input). Rows that show a known bug in a file owned
elsewhere are marked ``xfail(strict=True)`` with the failure named.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import fluxtrain as F
from fluxtrain import optimisers as O

D64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet_and_one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(n)


@dataclass
class Row:
    id: str
    call: Callable[[], Any]
    check: Callable[[Any], None] | None = None
    raises: tuple[type[BaseException], tuple[str, ...]] | None = None
    xfail: str = ""
    marks: list[Any] = field(default_factory=list)


def t64(*v: float) -> torch.Tensor:
    return torch.tensor(list(v), dtype=D64)


def eq(a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if isinstance(b, np.ndarray):
        b = torch.from_numpy(b)
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), (a, b)


def explicit_step(model: Any, rule: Any, grads: Any) -> Any:
    st = F.setup(rule, model)
    F.update_(st, model, grads)
    return model


# --------------------------------------------------------------------------- row bodies
def _mixed_dtypes() -> dict[str, torch.Tensor]:
    m = {
        "a": t64(1.0, 2.0),
        "b": torch.tensor([1.0, 2.0], dtype=torch.float32),
        "c": torch.tensor([1.0], dtype=torch.float16),
    }
    # gradients of other dtypes: each parameter keeps its own dtype (Optimisers.jl's subtract!)
    g = {"a": torch.ones(2), "b": torch.ones(2, dtype=D64), "c": torch.ones(1, dtype=D64)}
    return explicit_step(m, O.Descent(0.5), g)


def _check_mixed(m: dict[str, torch.Tensor]) -> None:
    assert [m[k].dtype for k in "abc"] == [D64, torch.float32, torch.float16]
    eq(m["a"], t64(0.5, 1.5))
    eq(m["b"], torch.tensor([0.5, 1.5]))
    eq(m["c"], torch.tensor([0.5], dtype=torch.float16))


def _mixed_dtypes_implicit() -> list[torch.Tensor]:
    a, b = t64(1.0, 2.0), torch.tensor([3.0], dtype=torch.float32)
    ps = F.params(a, b)
    gs = F.gradient(lambda: (a * 2).sum() + (b * 4).sum(), ps)
    F.update_(F.Descent(0.25), ps, gs)
    return [a, b]


def _noncontig_explicit() -> torch.Tensor:
    base = torch.zeros(4, 4, dtype=D64)
    w = base.t()[:, ::2]  # shape (4, 2), strides (1, 8): written through to base
    g = torch.arange(8, dtype=D64).reshape(2, 4).t()  # non-contiguous gradient too
    explicit_step({"w": w}, O.Descent(0.5), {"w": g})
    return base


def _check_noncontig(base: torch.Tensor) -> None:
    want = torch.zeros(4, 4, dtype=D64)
    want[0] = -0.5 * torch.arange(4, dtype=D64)
    want[2] = -0.5 * torch.arange(4, 8, dtype=D64)
    eq(base, want)


def _noncontig_implicit() -> torch.Tensor:
    w = torch.empty_strided((2, 3), (1, 2), dtype=D64).zero_()  # non-contiguous, no _base
    assert not w.is_contiguous() and w._base is None
    ps = F.params(w)
    gs = F.gradient(lambda: (w * t64(1.0, 2.0, 3.0)).sum(), ps)
    F.update_(F.Descent(0.5), ps, gs)
    return w.t()


def _expanded_grad_adam() -> torch.Tensor:
    m = {"w": torch.zeros(3, dtype=D64)}
    g = torch.ones(1, dtype=D64).expand(3)
    explicit_step(m, O.Adam(0.1), {"w": g})
    assert torch.equal(g, torch.ones(3, dtype=D64))  # the gradient is never written
    return m["w"]


def _expanded_param_explicit() -> Any:
    w = torch.zeros(1, dtype=D64).expand(3)
    return explicit_step({"w": w}, O.Descent(0.5), {"w": t64(1.0, 2.0, 3.0)})


def _expanded_param_tree() -> Any:
    w = torch.zeros(1, dtype=D64).expand(3)
    m = {"w": w}
    _, m2 = O.update_(O.setup(O.Descent(0.5), m), m, {"w": t64(1.0, 2.0, 3.0)})
    assert m2["w"] is not w and m2["w"].stride() == (1,)
    return w, m2["w"]


def _expanded_param_implicit() -> Any:
    w = torch.zeros(1, dtype=D64).expand(3)
    return F.update_(F.Descent(0.5), w, t64(1.0, 2.0, 3.0))


def _requires_grad_leaf() -> torch.Tensor:
    w = t64(1.0, 2.0).requires_grad_(True)
    explicit_step({"w": w}, O.Descent(0.5), {"w": t64(1.0, 1.0)})
    assert w.requires_grad and w.grad is None and w.is_leaf
    return w.detach()


def _requires_grad_implicit() -> torch.Tensor:
    w = torch.nn.Parameter(t64(1.0, 2.0))
    ps = F.params(w)
    gs = F.gradient(lambda: (w * w).sum(), ps)
    F.update_(F.Descent(0.25), ps, gs)
    assert w.requires_grad and w.grad is None
    return w.detach()


def _generator_explicit() -> tuple[torch.Tensor, int]:
    m = {"w": torch.zeros(1, dtype=D64)}
    st = F.setup(O.Descent(0.1), m)
    gen = (t64(float(i)) for i in (1, 2, 3))
    F.train_(lambda m, x: (m["w"] * x).sum(), m, gen, st)
    F.train_(lambda m, x: (m["w"] * x).sum(), m, gen, st)  # consumed: a no-op
    return m["w"], len(list(gen))


def _generator_implicit() -> tuple[torch.Tensor, int]:
    w = torch.zeros(1, dtype=D64)
    gen = (t64(float(i)) for i in (1, 2, 3))
    F.train_(lambda x: (w * x).sum(), F.params(w), gen, F.Descent(0.1))
    F.train_(lambda x: (w * x).sum(), F.params(w), gen, F.Descent(0.1))
    return w, len(list(gen))


def _check_gen(r: tuple[torch.Tensor, int]) -> None:
    w, left = r
    eq(w, t64(-0.1 * 1 - 0.1 * 2 - 0.1 * 3))  # each item once: 0 - 0.1*(1+2+3)
    assert left == 0


def _dict_items_explicit() -> tuple[torch.Tensor, list[Any]]:
    m = {"w": torch.zeros(1, dtype=D64)}
    seen: list[Any] = []
    items = [{"x": t64(2.0), "y": t64(1.0)}, {"x": t64(3.0), "y": t64(0.0)}]

    def loss(m: Any, d: Any) -> torch.Tensor:
        seen.append(d)
        return (m["w"] * d["x"] - d["y"]).sum()

    F.train_(loss, m, items, F.setup(O.Descent(0.1), m))
    assert seen[0] is items[0] and seen[1] is items[1]  # the dict itself, not its keys
    return m["w"], seen


def _dict_items_implicit() -> torch.Tensor:
    w = torch.zeros(1, dtype=D64)
    seen: list[Any] = []
    items = [{"x": t64(2.0)}]
    F.train_(lambda d: (seen.append(d), (w * d["x"]).sum())[1], F.params(w), items,
             F.Descent(0.1))
    assert seen == [items[0]] and seen[0] is items[0]
    return w


def _nan_grad(rule: Any) -> dict[str, torch.Tensor]:
    return explicit_step({"w": torch.zeros(2, dtype=D64)}, rule,
                         {"w": t64(float("nan"), 1.0)})


def _inf_grad_implicit() -> torch.Tensor:
    w = torch.zeros(2, dtype=D64)
    F.update_(F.Descent(0.5), w, t64(float("inf"), 2.0))
    return w


def _readonly_update() -> tuple[np.ndarray, Any]:
    a = np.array([1.0, 2.0])
    a.flags.writeable = False
    m = {"w": a}
    st = O.setup(O.Descent(0.5), m)
    _, m2 = O.update_(st, m, {"w": np.array([1.0, 1.0])})
    return a, m2["w"]


def _check_readonly(r: tuple[np.ndarray, Any]) -> None:
    a, new = r
    np.testing.assert_array_equal(a, [1.0, 2.0])  # untouched
    assert isinstance(new, np.ndarray) and new is not a
    np.testing.assert_array_equal(new, [0.5, 1.5])


def _readonly_flux_setup() -> Any:
    a = np.array([1.0, 2.0])
    a.flags.writeable = False
    return F.setup(O.Adam(), {"w": a})


def _readonly_implicit() -> Any:
    a = np.array([1.0, 2.0])
    a.flags.writeable = False
    ps = F.params(a)
    return F.update_(F.Descent(0.5), ps, F.gradient(lambda: (ps[0] * 1).sum(), ps))


def _writable_numpy() -> np.ndarray:
    a = np.array([1.0, 2.0])
    explicit_step({"w": a}, O.Descent(0.5), {"w": np.array([2.0, 2.0])})
    return a


def _zero_size_explicit() -> dict[str, torch.Tensor]:
    m = {"w": torch.zeros(0, 3), "b": torch.ones(2)}
    st = F.setup(O.Adam(0.1), m)
    F.update_(st, m, {"w": torch.ones(0, 3), "b": torch.ones(2)})
    assert st["w"].state[0].shape == (0, 3)
    return m


def _zero_size_implicit() -> torch.Tensor:
    w = torch.zeros(0, dtype=D64)
    F.update_(F.Adam(), w, torch.zeros(0, dtype=D64))
    return w


def _int_grad() -> Any:
    return explicit_step({"w": torch.zeros(2, dtype=D64)}, O.Descent(0.5),
                         {"w": torch.ones(2, dtype=torch.int64)})


def _empty_train_explicit() -> int:
    calls = []
    m: dict[str, Any] = {}
    F.train_(lambda m, x: (calls.append(x), torch.tensor(1.0))[1], m, [1, 2], F.setup(O.Adam(), m))
    return len(calls)


def _only_nontrainable() -> Any:
    m = {"i": torch.arange(3), "s": "name", "n": 3, "f": len, "none": None}
    st = F.setup(O.Adam(), m)
    assert st == {"i": (), "s": (), "n": (), "f": (), "none": ()}
    F.update_(st, m, {"i": None, "s": None, "n": None, "f": None, "none": None})
    return m


def _buffers_only_module() -> Any:
    bn = torch.nn.BatchNorm1d(2, affine=False)
    st = F.setup(O.Adam(), bn)
    F.update_(st, bn, {})
    return bn.running_mean


def _train_loss_not_callable() -> Any:
    m = {"w": torch.zeros(1)}
    return F.train_(3, m, [1], F.setup(O.Adam(), m))


def _train_data_none() -> Any:
    m = {"w": torch.zeros(1)}
    return F.train_(lambda m, x: m["w"].sum(), m, None, F.setup(O.Adam(), m))


def _train_data_none_implicit() -> Any:
    w = torch.zeros(1)
    return F.train_(lambda x: w.sum(), F.params(w), 5, F.Adam())


def _state_for_other_model() -> Any:
    st = F.setup(O.Adam(), {"w": torch.zeros(2)})
    return F.update_(st, {"v": torch.zeros(2)}, {"v": torch.zeros(2)})


def _grad_extra_key() -> Any:
    m = {"w": torch.zeros(2)}
    return F.update_(F.setup(O.Adam(), m), m, {"w": torch.zeros(2), "zz": torch.zeros(2)})


def _int_param_implicit() -> Any:
    x = torch.arange(3)
    return F.update_(F.Descent(0.1), x, torch.ones(3))


def _implicit_wrong_grads() -> Any:
    w = torch.zeros(2)
    return F.update_(F.Descent(), F.params(w), 3)


def _implicit_grad_shape() -> Any:
    w = torch.zeros(2)
    return F.update_(F.Descent(), w, torch.zeros(3))


def _setup_translate_old() -> Any:
    st = F.setup(F.Momentum(0.1, 0.5), {"w": t64(1.0)})
    return st["w"].rule


def _opt_update_pure() -> Any:
    m = {"w": t64(1.0, 2.0)}
    st = O.setup(O.Momentum(0.1, 0.9), m)
    st2, m2 = O.update(st, m, {"w": t64(10.0, 20.0)})
    eq(m["w"], t64(1.0, 2.0))
    eq(st["w"].state, t64(0.0, 0.0))
    return m2["w"], st2["w"].state


def _adjust_unknown_kw() -> Any:
    st = F.setup(O.Adam(0.1), {"w": torch.zeros(2)})
    return F.adjust(st, foo=1.0)["w"].rule


def _freeze_then_update() -> Any:
    m = {"a": t64(1.0), "b": t64(1.0)}
    st = F.setup(O.Descent(0.5), m)
    F.freeze_(st["a"])
    F.update_(st, m, {"a": t64(1.0), "b": t64(1.0)})
    F.thaw_(st)
    F.update_(st, m, {"a": t64(1.0), "b": t64(1.0)})
    return m


def _implicit_gradient_int_param() -> Any:
    x = torch.arange(3)
    gs = F.gradient(lambda: 1.0 + 0 * x.sum(), F.params(x))
    return gs[x]


def _old_optimiser_bad_assign() -> Any:
    opt = F.Adam()
    try:
        opt.eta = -1.0
    finally:
        assert opt.eta == 0.001  # the bad value is not kept
    return opt


def _gradient_kw() -> Any:
    return F.withgradient(lambda x: (x**2).sum(), t64(1.0, 2.0))


def _cuda_mixed() -> Any:
    m = {"a": torch.ones(2, device="cuda"), "b": torch.ones(2)}
    return explicit_step(m, O.Descent(0.5), {"a": torch.ones(2), "b": torch.ones(2, device="cuda")})


def _check_cuda_mixed(m: Any) -> None:
    assert m["a"].device.type == "cuda" and m["b"].device.type == "cpu"
    eq(m["a"].cpu(), torch.full((2,), 0.5))
    eq(m["b"], torch.full((2,), 0.5))


# --------------------------------------------------------------------------- the table
# Adam's first step on g = 1 (eta 0.1): mt/(1-b1) / (sqrt(vt/(1-b2)) + eps) * eta
ADAM1 = (0.1 * 1.0) / (1 - 0.9) / (((0.001 * 1.0) / (1 - 0.999)) ** 0.5 + 1e-8) * 0.1


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding of the hand formula (2 ulp)."""
    torch.testing.assert_close(a, b, rtol=4 * torch.finfo(b.dtype).eps, atol=0)

ROWS = [
    # wrong types
    Row("setup-rule-is-str", lambda: F.setup("adam", {"w": torch.zeros(2)}),
        raises=(TypeError, ("setup", "rule", "str"))),
    Row("setup-rule-is-None", lambda: O.setup(None, {"w": torch.zeros(2)}),
        raises=(TypeError, ("rule", "NoneType"))),
    Row("setup-rule-is-class", lambda: O.setup(O.Adam, {"w": torch.zeros(2)}),
        raises=(TypeError, ("rule", "type"))),
    Row("update_-given-rule-not-state",
        lambda: F.update_(O.Adam(), {"w": torch.zeros(2)}, {"w": torch.zeros(2)}),
        raises=(TypeError, ("state tree", "setup", "Adam"))),
    Row("update_-grad-is-list",
        lambda: explicit_step({"w": torch.zeros(2)}, O.Adam(), {"w": [1.0, 2.0]}),
        raises=(TypeError, ("gradient", "model['w']", "list"))),
    Row("update_-grad-wrong-shape",
        lambda: explicit_step({"w": torch.zeros(2)}, O.Adam(), {"w": torch.ones(3)}),
        raises=(ValueError, ("model['w']", "(3,)", "(2,)"))),
    Row("update_-state-for-other-model", _state_for_other_model,
        raises=(ValueError, ("state tree does not match", "keys"))),
    Row("update_-grad-extra-key", _grad_extra_key, raises=(ValueError, ("zz", "lacks"))),
    Row("optimisers.update-state-is-int",
        lambda: O.update(3, {"w": torch.zeros(2)}, {"w": torch.zeros(2)}),
        raises=(ValueError, ("state tree does not match", "int"))),
    Row("train_-loss-not-callable", _train_loss_not_callable,
        raises=(TypeError, ("loss", "callable", "int"))),
    Row("train_-data-None", _train_data_none, raises=(TypeError, ("data", "iterable", "NoneType"))),
    Row("train_-implicit-data-int", _train_data_none_implicit,
        raises=(TypeError, ("data", "iterable", "int"))),
    Row("gradient-f-not-callable", lambda: F.gradient(3, torch.zeros(2)),
        raises=(TypeError, ("int", "not callable"))),
    Row("gradient-nonscalar-loss", lambda: F.gradient(lambda x: x * 2, torch.zeros(2)),
        raises=(ValueError, ("scalar", "(2,)"))),
    Row("gradient-loss-is-str", lambda: F.gradient(lambda x: "a", torch.zeros(2)),
        raises=(TypeError, ("scalar loss", "str"))),
    Row("gradient-integer-input", lambda: F.gradient(lambda x: x.sum(), torch.arange(3)),
        raises=(TypeError, ("floating-point", "int64"))),
    Row("withgradient-value-and-grad", _gradient_kw,
        check=lambda r: (eq(r[0], torch.tensor(5.0, dtype=D64)), eq(r[1][0], t64(2.0, 4.0)))),
    Row("adjust-eta-is-str",
        lambda: F.adjust(F.setup(O.Adam(), {"w": torch.zeros(2)}), "x"),
        raises=(TypeError, ("eta", "str"))),
    Row("adjust-eta-negative",
        lambda: F.adjust(F.setup(O.Adam(), {"w": torch.zeros(2)}), -1.0),
        raises=(F.DomainError, ("learning rate", "negative", "-1.0"))),
    Row("adjust-unknown-keyword-refused", _adjust_unknown_kw,
        raises=(ValueError, ("adjust", "'foo'", "beta, epsilon, eta"))),
    Row("adjust_-on-a-model", lambda: F.adjust_({"w": torch.zeros(2)}, 0.1),
        raises=(TypeError, ("adjust_", "model", "Tensor"))),
    Row("adjust_-on-a-rule", lambda: F.adjust_(O.Adam(), 0.1),
        raises=(TypeError, ("adjust_", "Adam"))),
    Row("freeze_-on-a-tensor", lambda: F.freeze_(torch.zeros(2)),
        raises=(TypeError, ("freeze_", "model", "Tensor"))),
    Row("freeze_-on-a-module", lambda: F.freeze_(torch.nn.Linear(2, 2)),
        raises=(TypeError, ("freeze_", "Linear"))),
    Row("freeze_-on-a-number", lambda: F.freeze_(3),
        raises=(TypeError, ("freeze_", "int"))),
    Row("thaw_-on-a-tensor", lambda: F.thaw_(torch.zeros(2)),
        raises=(TypeError, ("thaw_", "Tensor"))),
    Row("freeze_-then-thaw_-numbers", _freeze_then_update,
        check=lambda m: (eq(m["a"], t64(0.5)), eq(m["b"], t64(0.0)))),
    Row("trainables-of-a-number", lambda: F.trainables(3),
        check=lambda r: r == [] or pytest.fail()),
    Row("trainables-skips-integers",
        lambda: F.trainables({"a": torch.arange(2), "b": t64(1.0), "c": np.zeros(2),
                              "d": np.arange(2)}),
        check=lambda r: (len(r) == 2 or pytest.fail(repr(r)), eq(r[0], t64(1.0)),
                         eq(r[1], np.zeros(2)))),
    Row("throttle-f-not-callable", lambda: F.throttle(3, 1),
        raises=(TypeError, ("throttle", "int"))),
    Row("throttle-negative-timeout", lambda: F.throttle(print, -1),
        raises=(ValueError, ("timeout", "-1"))),
    Row("epochs-negative", lambda: list(F.epochs(-1)), raises=(ValueError, ("epochs", "-1"))),
    Row("epochs-float", lambda: list(F.epochs(2.5)), raises=(TypeError, ("epochs", "2.5"))),
    Row("epochs-str", lambda: list(F.epochs("3")), raises=(TypeError, ("epochs", "'3'"))),
    Row("old-Adam-eta-str", lambda: F.Adam("x"), raises=(TypeError, ("Adam", "eta", "str"))),
    Row("old-Descent-negative", lambda: F.Descent(-1.0),
        raises=(F.DomainError, ("learning rate", "-1.0"))),
    Row("old-optimiser-bad-assignment-refused", _old_optimiser_bad_assign,
        raises=(F.DomainError, ("learning rate", "-1.0"))),
    Row("new-Adam-beta-wrong-length", lambda: O.Adam(beta=(0.9,)),
        raises=(ValueError, ("beta", "2 elements"))),
    Row("setup-translates-old-optimiser", _setup_translate_old,
        check=lambda r: (type(r) is O.Momentum and (r.eta, r.rho) == (0.1, 0.5))
        or pytest.fail(repr(r))),
    Row("optimisers.update-is-pure", _opt_update_pure,
        check=lambda r: (eq(r[0], t64(1.0 - 1.0, 2.0 - 2.0)), eq(r[1], t64(1.0, 2.0)))),
    # empty models and models without trainable leaves
    Row("setup-empty-dict", lambda: F.setup(O.Adam(), {}),
        check=lambda r: r == {} or pytest.fail()),
    Row("setup-empty-Sequential", lambda: F.setup(O.Adam(), torch.nn.Sequential()),
        check=lambda r: (type(r).__name__ == "StateTree" and list(r) == [])
        or pytest.fail(repr(r))),
    Row("train_-empty-model-calls-loss-per-item", _empty_train_explicit,
        check=lambda n: n == 2 or pytest.fail(str(n))),
    Row("only-nontrainable-leaves", _only_nontrainable,
        check=lambda m: (eq(m["i"], torch.arange(3)), m["s"] == "name" or pytest.fail())),
    Row("module-with-buffers-only", _buffers_only_module,
        check=lambda r: eq(r, torch.zeros(2))),
    Row("params-of-nothing", lambda: len(F.params()), check=lambda n: n == 0 or pytest.fail()),
    Row("params-of-a-string", lambda: len(F.params("abc")),
        check=lambda n: n == 0 or pytest.fail()),
    # mixed dtypes/devices
    Row("mixed-dtypes-explicit", _mixed_dtypes, check=_check_mixed),
    Row("mixed-dtypes-implicit", _mixed_dtypes_implicit,
        check=lambda r: (eq(r[0], t64(0.5, 1.5)), eq(r[1], torch.tensor([2.0])))),
    Row("mixed-devices-explicit", _cuda_mixed, check=_check_cuda_mixed,
        marks=[pytest.mark.cuda]),
    # integer and zero-size tensors
    Row("integer-gradient-promoted", _int_grad, check=lambda m: eq(m["w"], t64(-0.5, -0.5))),
    Row("integer-parameter-implicit", _int_param_implicit,
        raises=(TypeError, ("dtype torch.int64", "floating-point"))),
    Row("implicit-gradient-of-integer-param-is-None", _implicit_gradient_int_param,
        check=lambda g: g is None or pytest.fail(repr(g))),
    Row("zero-size-explicit-adam", _zero_size_explicit,
        check=lambda m: (eq(m["w"], torch.zeros(0, 3)),
                         close(m["b"], torch.full((2,), 1 - ADAM1, dtype=torch.float32)))),
    Row("zero-size-implicit-adam", _zero_size_implicit,
        check=lambda w: eq(w, torch.zeros(0, dtype=D64))),
    # strides
    Row("non-contiguous-param-and-grad-explicit", _noncontig_explicit, check=_check_noncontig),
    Row("non-contiguous-param-implicit", _noncontig_implicit,
        check=lambda b: eq(b, torch.tensor([[-0.5, -0.5], [-1.0, -1.0], [-1.5, -1.5]],
                                           dtype=D64))),
    Row("expanded-gradient-adam", _expanded_grad_adam,
        check=lambda w: close(w, torch.full((3,), -ADAM1, dtype=D64))),
    Row("expanded-parameter-implicit", _expanded_param_implicit,
        raises=(TypeError, ("sharing memory", "expanded", "clone"))),
    Row("expanded-parameter-explicit", _expanded_param_explicit,
        raises=(ValueError, ("model['w']", "expanded"))),
    Row("expanded-parameter-optimisers.update_-returns-new", _expanded_param_tree,
        check=lambda r: (eq(r[0], torch.zeros(3, dtype=D64)),
                         eq(r[1], t64(-0.5, -1.0, -1.5)))),
    # requires_grad tensors
    Row("requires-grad-leaf-explicit", _requires_grad_leaf, check=lambda w: eq(w, t64(0.5, 1.5))),
    Row("nn.Parameter-implicit", _requires_grad_implicit,
        check=lambda w: eq(w, t64(1.0 - 0.5, 2.0 - 1.0))),
    # data
    Row("generator-data-explicit-consumed-once", _generator_explicit, check=_check_gen),
    Row("generator-data-implicit-consumed-once", _generator_implicit, check=_check_gen),
    Row("dict-items-explicit", _dict_items_explicit,
        check=lambda r: eq(r[0], t64(-0.1 * 2 - 0.1 * 3))),
    Row("dict-items-implicit", _dict_items_implicit, check=lambda w: eq(w, t64(-0.2))),
    # non-finite gradients: propagate (as Flux does) unless a rule checks them
    Row("nan-gradient-descent-propagates", lambda: _nan_grad(O.Descent(0.1)),
        check=lambda m: eq(torch.isnan(m["w"]), torch.tensor([True, False]))
        or eq(m["w"][1], t64(-0.1)[0])),
    Row("nan-gradient-clipnorm-refuses", lambda: _nan_grad(O.ClipNorm(1.0)),
        raises=(F.DomainError, ("ClipNorm", "nan"))),
    Row("inf-gradient-implicit-propagates", _inf_grad_implicit,
        check=lambda w: eq(w, t64(float("-inf"), -1.0))),
    # read-only numpy
    Row("readonly-numpy-update_-returns-new", _readonly_update, check=_check_readonly),
    Row("readonly-numpy-flux-setup-refuses", _readonly_flux_setup,
        raises=(ValueError, ("mutable", "model['w']", "read-only"))),
    Row("readonly-numpy-implicit-refuses", _readonly_implicit,
        raises=(TypeError, ("read-only", "(2,)"))),
    Row("writable-numpy-in-place", _writable_numpy,
        check=lambda a: np.testing.assert_array_equal(a, [0.0, 1.0])),
    Row("implicit-update_-grads-is-int", _implicit_wrong_grads,
        raises=(TypeError, ("Grads", "int"))),
    Row("implicit-update_-grad-wrong-shape", _implicit_grad_shape,
        raises=(ValueError, ("(3,)", "(2,)"))),
    Row("implicit-update_-grad-None", lambda: F.update_(F.Descent(), torch.zeros(2), None),
        raises=(TypeError, ("gradient", "None"))),
]


def _param(r: Row) -> Any:
    marks = list(r.marks)
    if r.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=r.xfail))
    return pytest.param(r, id=r.id, marks=marks)


def test_table_has_at_least_40_rows() -> None:
    assert len(ROWS) >= 40
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert all((r.check is None) != (r.raises is None) for r in ROWS)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_hostile_input(row: Row) -> None:
    if row.raises is not None:
        exc, words = row.raises
        with pytest.raises(BaseException) as info:
            row.call()
        assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
        msg = str(info.value)
        for w in words:
            assert w in msg, f"{w!r} not in {msg!r}"
    else:
        assert row.check is not None
        row.check(row.call())
