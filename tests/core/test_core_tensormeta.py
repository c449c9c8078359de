"""The C++ bulk reads of tensor metadata against torch's own Python reads.

Truth: ``type(t)``, ``t.data_ptr()``, ``t.dtype``, ``t.device``, ``t.shape``,
``t.stride()``, ``t.is_contiguous()``, ``t.is_inference()``,
``getattr(t, "_fluxtrain_readonly", False)`` read tensor by tensor; ``AdamState(m, v,
beta_t)``, ``leaf.state``/``leaf.rule``/``leaf.frozen`` and ``is`` for the helpers.
"""

from __future__ import annotations

import gc
import struct
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from fluxtrain.core import tensormeta


@pytest.fixture(scope="module")
def meta() -> Any:
    m = tensormeta.module(wait=True)
    if m is None:
        pytest.skip(f"tensormeta unavailable: {tensormeta.why_unavailable()}")
    return m


class Sub(torch.Tensor):
    pass


def variety() -> list[torch.Tensor]:
    a = torch.arange(24.0).reshape(2, 3, 4)
    with torch.inference_mode():
        inf = torch.ones(3)
    return [a, a.transpose(0, 2), a[:, 1:], a[0, 0, 0], torch.zeros(0, 5),
            torch.ones(5, dtype=torch.float64), torch.nn.Parameter(torch.ones(2, 2)),
            torch.ones(3).as_subclass(Sub), torch.ones(4, dtype=torch.int32), inf,
            torch.ones(3, 1).expand(3, 4), a.view(-1)[::2], readonly(torch.ones(2))]


def readonly(t: torch.Tensor) -> torch.Tensor:
    t._fluxtrain_readonly = True  # type: ignore[attr-defined]
    return t


def words(b: bytes) -> list[int]:
    return list(struct.unpack(f"{len(b) // 8}q", b))


def test_fingerprint_decodes_to_each_tensors_fields(meta: Any) -> None:
    ts = variety()
    w = words(meta.fingerprint(ts))
    dtypes: dict[int, torch.dtype] = {}
    for t in ts:
        head, w = w[:9], w[9:]
        tp, ptr, dt, devtype, devidx, dim, contig, inference, readonly = head
        assert readonly == bool(getattr(t, "_fluxtrain_readonly", False))
        assert tp == id(type(t)) and ptr == t.data_ptr()
        assert dtypes.setdefault(dt, t.dtype) == t.dtype  # one code per dtype
        assert (devtype, devidx) == (0, -1)  # CPU, no index
        assert dim == t.dim() and contig == t.is_contiguous() and inference == t.is_inference()
        sizes, w = w[:dim], w[dim:]
        assert sizes == list(t.shape)
        if not contig:
            strides, w = w[:dim], w[dim:]
            assert strides == list(t.stride())
    assert w == []
    assert len(set(dtypes.values())) == len(dtypes) == 3


def test_like_addresses_and_contiguity_equal_the_python_reads(meta: Any) -> None:
    ts = variety()
    assert meta.addresses(ts) == [t.data_ptr() for t in ts]
    assert meta.all_contiguous(ts) is False
    assert meta.all_contiguous([t for t in ts if t.is_contiguous()]) is True
    assert meta.all_contiguous([]) is True
    w = words(meta.like(ts))
    for t in ts:
        dt, devtype, devidx, dim = w[:4]
        assert dim == t.dim() and w[4:4 + dim] == list(t.shape)
        w = w[4 + dim:]
    assert w == []
    kinds = [t.is_floating_point() or t.is_complex() for t in ts]
    assert meta.all_float_or_complex(ts) is all(kinds) is False
    assert meta.all_float_or_complex([t for t, k in zip(ts, kinds) if k]) is True
    grads = [t.requires_grad for t in ts]
    assert meta.any_requires_grad(ts) is any(grads) is True
    assert meta.all_require_grad(ts) is all(grads) is False
    assert meta.any_requires_grad([t for t in ts if not t.requires_grad]) is False
    assert meta.all_require_grad([t for t in ts if t.requires_grad]) is True
    # like() ignores type, address and layout, and sees dtype, shape and device
    a = torch.ones(3, 4)
    assert meta.like([a]) == meta.like([torch.nn.Parameter(a.t().contiguous().t())])
    assert meta.like([a]) != meta.like([a.double()])
    assert meta.like([a]) != meta.like([a.view(4, 3)])


def test_fingerprints_tell_apart_what_the_checks_must(meta: Any) -> None:
    fp = meta.fingerprint
    x = torch.ones(4, 4)
    before = fp([x])
    assert fp([x]) == before  # same tensor, nothing changed
    for change in (lambda t: t.resize_(16), lambda t: t.t_(), lambda t: t.set_(torch.ones(4, 4)),
                   lambda t: setattr(t, "data", t.data.view(torch.int32)),
                   lambda t: setattr(t, "data", t.data.view(2, 8)),
                   lambda t: setattr(t, "_fluxtrain_readonly", True)):
        y = torch.ones(4, 4)
        was = fp([y])
        change(y)
        assert fp([y]) != was


def test_anything_but_a_list_of_tensors_answers_none(meta: Any) -> None:
    x = torch.ones(2)
    for bad in ([x, 1.0], [x, None], (x,), x, None, [torch.ones(2).numpy()]):
        assert meta.fingerprint(bad) is None
        assert meta.like(bad) is None
        assert meta.addresses(bad) is None
        assert meta.all_contiguous(bad) is None
        assert meta.all_float_or_complex(bad) is None
        assert meta.all_require_grad(bad) is None
        assert meta.any_requires_grad(bad) is None
    for bad in ([x, 1.0], (x,), x, None):
        assert meta.gradient_reads(bad, (torch.Tensor,)) is None
        assert meta.slot_addresses(bad, 1) is None
        assert meta.leaf_states(bad, None) is None
    assert meta.gradient_reads([x], [torch.Tensor]) is None  # types not a tuple
    assert meta.slot_addresses([x], 3) is None  # one or two slots only
    assert meta.slot_addresses([(x, 1.0)], 2) is None  # item 1 not a tensor
    assert meta.slot_addresses([(x,)], 2) is None  # too short
    assert meta.identical([x], iter([x])) is None
    # a tensor kind whose C++ reads throw: None, not a crash
    sparse = torch.ones(2, 2).to_sparse()
    assert meta.fingerprint([sparse]) is None
    assert meta.addresses([sparse]) is None


@pytest.mark.parametrize("env", [("FLUXTRAIN_NATIVE", "0"), ("CXX", "/nonexistent/c++"),
                                 ("CXX", "false")])
def test_unavailable_builds_leave_the_python_reads(env: tuple[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXTRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(*env)
    tensormeta._reset()
    try:
        assert tensormeta.module(wait=True) is None
        why = tensormeta.why_unavailable()
        assert {"FLUXTRAIN_NATIVE": "FLUXTRAIN_NATIVE=0", "/nonexistent/c++": "no C++ compiler",
                "false": "false"}[env[1] if env[0] == "CXX" else env[0]] in why
        # nothing built or half-built is left; a failed build is recorded, not retried
        assert not [p for p in tmp_path.glob("tensormeta-*") if p.suffix in (".so", ".tmp")]
        failed = list(tmp_path.glob("tensormeta-*.failed"))
        assert len(failed) == (1 if env == ("CXX", "false") else 0)
        if failed:
            tensormeta._reset()
            assert tensormeta.module(wait=True) is None
            assert tensormeta.why_unavailable().startswith("an earlier build failed")
            assert tensormeta._state.get("thread") is None  # decided without a build
    finally:
        monkeypatch.undo()
        tensormeta._reset()


@pytest.mark.slow  # a real build: some tens of seconds
def test_a_corrupt_cached_build_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           meta: Any) -> None:
    monkeypatch.setenv("FLUXTRAIN_CACHE_DIR", str(tmp_path))
    tensormeta._reset()
    try:
        cands, _, _ = tensormeta._candidates()
        cands[0][2].parent.mkdir(parents=True, exist_ok=True)
        cands[0][2].write_bytes(b"not a shared library")
        m = tensormeta.module(wait=True)
        assert m is not None, tensormeta.why_unavailable()
        assert m.addresses([torch.ones(1)]) is not None
    finally:
        monkeypatch.undo()
        tensormeta._reset()


@pytest.mark.slow  # a real build: some tens of seconds
def test_processes_building_at_once_share_one_build(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from fluxtrain.core import tensormeta as t; m = t.module(wait=True); "
            "print('ok' if m is not None else t.why_unavailable())")
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cxx"  # the system compiler, logging each compile
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-shared*) echo x >> {log};; esac\n'
                       'exec c++ "$@"\n')
    wrapper.chmod(0o755)
    env = {**__import__("os").environ, "FLUXTRAIN_CACHE_DIR": str(tmp_path / "cache"),
           "CXX": str(wrapper)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert outs == ["ok", "ok"], outs
    built = [p for p in (tmp_path / "cache").glob("tensormeta-*") if p.suffix == ".so"]
    assert len(built) == 1
    assert log.read_text().count("x") == 1  # the second process waited for the first's build


@pytest.mark.slow  # a real build: some tens of seconds
def test_a_build_outlives_the_short_script_that_started_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "FLUXTRAIN_CACHE_DIR": str(tmp_path)}
    # starts the build, works for 3 s (a short script) and exits long before the build ends
    start = ("import time; from fluxtrain.core import tensormeta as t; "
             "print(t.module() is None); time.sleep(3)")
    out = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stdout + out.stderr
    deadline = time.monotonic() + 300
    while not [p for p in tmp_path.glob("tensormeta-*") if p.suffix == ".so"]:
        assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
        time.sleep(1)
    time.sleep(1)
    assert not list(tmp_path.glob("*.tmp"))
    load = "from fluxtrain.core import tensormeta as t; print(t.module() is not None)"
    out = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stdout + out.stderr  # loaded, no waiting


class Raising(torch.Tensor):
    @property
    def _fluxtrain_readonly(self) -> bool:
        raise RuntimeError("unreadable")


def test_an_unreadable_readonly_mark_is_its_own_value(meta: Any) -> None:
    """A mark whose read raises is neither "writable" nor "read-only": the fingerprint
    differs from both (the cached step then misses and the full checks decide)."""
    odd = torch.ones(2).as_subclass(Raising)
    w = words(meta.fingerprint([odd]))
    assert w[8] == 2
    plain, marked = torch.ones(2), readonly(torch.ones(2))
    assert words(meta.fingerprint([plain]))[8] == 0 and words(meta.fingerprint([marked]))[8] == 1


def test_gradient_reads_equal_like_addresses_and_contiguity(meta: Any) -> None:
    ts = [t for t in variety() if type(t) in (torch.Tensor, torch.nn.Parameter)]
    got = meta.gradient_reads(ts, (torch.Tensor, torch.nn.Parameter))
    assert got == (meta.like(ts), [t.data_ptr() for t in ts],
                   all(t.is_contiguous() for t in ts))
    contiguous = [t for t in ts if t.is_contiguous()]
    assert meta.gradient_reads(contiguous, (torch.Tensor, torch.nn.Parameter))[2] is True
    # exact types only: a Parameter is refused where only Tensor is allowed, a subclass always
    assert meta.gradient_reads(ts, (torch.Tensor,)) is None
    sub = torch.ones(2).as_subclass(Sub)
    assert meta.gradient_reads([sub], (torch.Tensor, torch.nn.Parameter)) is None
    assert meta.gradient_reads([], (torch.Tensor,)) == (b"", [], True)
    # the addresses: the list given third when it holds exactly them (no new ints)
    types = (torch.Tensor, torch.nn.Parameter)
    prev = [t.data_ptr() for t in ts]
    assert meta.gradient_reads(ts, types, prev)[1] is prev
    assert meta.gradient_reads(ts, types, prev) == got
    for other in (prev[:-1], prev[::-1], [float(p) for p in prev], tuple(prev),
                  prev[:-1] + [True], prev[:-1] + [1 << 70], None):
        addrs = meta.gradient_reads(ts, types, other)[1]
        assert addrs is not other and addrs == prev


def test_slot_addresses_read_the_state_tensors(meta: Any) -> None:
    from fluxtrain.core.rules import AdamState

    ms = [torch.ones(3), torch.zeros(2, 2)]
    vs = [torch.ones(1), torch.empty(0)]
    states = [AdamState(m, v, (0.9, 0.99)) for m, v in zip(ms, vs)]
    assert words(meta.slot_addresses(states, 2)) == [t.data_ptr() for t in ms + vs]
    assert words(meta.slot_addresses(ms, 1)) == [t.data_ptr() for t in ms]
    assert meta.slot_addresses([], 2) == b""
    ms[0].set_(torch.ones(3))  # re-pointed in place: the read sees it
    assert words(meta.slot_addresses(states, 2))[0] == ms[0].data_ptr()


def test_restate_equals_building_each_adam_state(meta: Any) -> None:
    from fluxtrain.core.rules import AdamState

    bt = (0.9, 0.999)
    states = [AdamState(torch.ones(2) * i, torch.zeros(2) + i, bt) for i in range(4)]
    nxt = tuple([0.81, 0.998])
    new = meta.restate(AdamState, states, bt, nxt)
    assert new == [AdamState(s.m, s.v, nxt) for s in states]
    assert all(type(n) is AdamState and n.m is s.m and n.v is s.v and n.beta_t is nxt
               for n, s in zip(new, states))
    assert all(s.beta_t is bt for s in states)  # the old states are unchanged
    # refused: another βt object somewhere (even if equal), another type, a bad class
    other = states[:3] + [AdamState(states[3].m, states[3].v, tuple(list(bt)))]
    assert meta.restate(AdamState, other, bt, nxt) is None
    assert meta.restate(AdamState, states + [(states[0].m, states[0].v, bt)], bt, nxt) is None

    class Wider(AdamState):
        pass

    assert meta.restate(Wider, states, bt, nxt) is None  # states not exactly Wider
    assert meta.restate(dict, [], bt, nxt) is None  # not a tuple type
    assert meta.restate(AdamState, (states[0],), bt, nxt) is None  # not a list
    assert meta.restate(AdamState, [], bt, nxt) == []
    # not tracked by the cycle collector (which would traverse them at every young-
    # generation collection); reference counting still frees them with their tensors
    assert not any(map(gc.is_tracked, new))
    ref = weakref.ref(new[0].m)
    del new, states, other
    assert ref() is None


def test_leaf_states_and_identical_against_python(meta: Any) -> None:
    from fluxtrain.core.rules import Descent
    from fluxtrain.optimisers.leaf import Leaf, shared_rule

    r = Descent(0.1)
    leaves = [Leaf(r, torch.ones(2)), Leaf(r, None), Leaf(r, (torch.ones(1),))]
    got = meta.leaf_states(leaves, r)
    assert len(got) == 3 and all(g is leaf.state for g, leaf in zip(got, leaves))
    assert meta.leaf_states(leaves, Descent(0.1)) is None  # an equal rule is not the rule
    leaves[1].frozen = True
    assert meta.leaf_states(leaves, r) is None
    assert meta.leaf_states([object()], r) is None  # no .rule
    assert shared_rule(leaves) is None  # the Python route's answer: the same refusal
    leaves[1].frozen = False
    assert meta.leaf_states(leaves, r) == got and shared_rule(leaves) is r
    a, b = torch.ones(1), torch.ones(1)
    assert meta.identical([a, b], [a, b]) is True and meta.identical([a, b], (a, b)) is True
    assert meta.identical([a, b], [a, torch.ones(1)]) is False  # equal is not identical
    assert meta.identical([a], [a, b]) is False and meta.identical([], []) is True
    for x, y in (([a, b], [a, b]), ([a], [b]), ([a], [])):
        same = len(x) == len(y) and all(p is q for p, q in zip(x, y))
        assert tensormeta.identical(x, y) is same


def both_routes(monkeypatch: pytest.MonkeyPatch, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with the C++ read, checked equal to the Python route's answer."""
    got = fn(*args)
    with monkeypatch.context() as m:
        m.setattr(tensormeta, "module", lambda wait=False: None)
        assert fn(*args) == got
    return got


def test_grads_by_id_equals_the_per_parameter_lookup(meta: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    xs = [torch.ones(2), torch.ones(3), torch.ones(1)]
    gs = [torch.zeros(2), torch.zeros(3, requires_grad=True), torch.zeros(1)]
    by_id = {id(x): g for x, g in zip(xs, gs)}
    got = both_routes(monkeypatch, tensormeta.grads_by_id, by_id, xs, torch.Tensor)
    assert got[1] is True and all(a is b for a, b in zip(got[0], gs))
    gs[1].requires_grad_(False)
    assert both_routes(monkeypatch, tensormeta.grads_by_id, by_id, xs, torch.Tensor)[1] is False
    assert both_routes(monkeypatch, tensormeta.grads_by_id, {}, [], torch.Tensor) == ([], False)
    # anything but a plain tensor gradient for every parameter: None (the loop decides)
    for bad in ({**by_id, id(xs[0]): None},  # a parameter without gradient
                {**by_id, id(xs[0]): torch.nn.Parameter(torch.zeros(2))},  # not exactly Tensor
                {**by_id, id(xs[0]): xs[0]},  # the parameter itself
                {**by_id, id(xs[0]): 1.0},
                {k: v for k, v in by_id.items() if k != id(xs[2])}):  # missing
        assert both_routes(monkeypatch, tensormeta.grads_by_id, bad, xs, torch.Tensor) is None
    assert meta.grads_by_id(list(by_id.items()), xs, torch.Tensor) is None  # not a dict
    assert meta.grads_by_id(by_id, tuple(xs), torch.Tensor) is None  # not a list


def test_values_if_keys_compares_keys_by_identity_and_order(
        meta: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [object(), object(), object()]
    d = {k: i for i, k in enumerate(keys)}
    assert both_routes(monkeypatch, tensormeta.values_if_keys, d, keys) == [0, 1, 2]
    assert both_routes(monkeypatch, tensormeta.values_if_keys, {}, []) == []
    for bad in (keys[::-1], keys[:2], keys + [object()], [keys[0], keys[1], object()]):
        assert both_routes(monkeypatch, tensormeta.values_if_keys, d, bad) is None
    # equal keys are not the keys
    ints = {10**20: "a"}
    assert both_routes(monkeypatch, tensormeta.values_if_keys, ints, [int("1" + "0" * 20)]) is None
    assert meta.values_if_keys(list(d.items()), keys) is None  # not a dict


def test_gradient_check_equals_the_numpy_overlap_rule(meta: Any) -> None:
    """The native step's per-step gradient check against the searchsorted rule it
    replaces, on random disjoint ranges and random gradients (some overlapping)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for trial in range(200):
        cuts = np.sort(rng.choice(10_000, size=2 * int(rng.integers(0, 6)), replace=False))
        lo, hi = cuts[0::2].astype(np.int64), cuts[1::2].astype(np.int64)
        n = int(rng.integers(1, 6))
        gptr = rng.integers(0, 10_000, size=n).astype(np.int64)
        gsz = rng.integers(0, 300, size=n).astype(np.int64)
        gstarts = (gptr - gptr[0]) if trial % 3 == 0 else rng.integers(0, 50, size=n)
        got = meta.gradient_check(list(map(int, gptr)), gsz, lo, hi, gstarts.astype(np.int64))
        j = np.searchsorted(lo, gptr + gsz, side="left") - 1
        hit = (j >= 0) & (gsz > 0)
        overlap = bool(hit.any()) and bool((hi[j[hit]] > gptr[hit]).any())
        assert got[0] == gptr.tobytes() and got[2] is overlap
        assert got[3] is bool((gptr == gptr[0] + gstarts).all())
        assert meta.gradient_check(list(map(int, gptr)), gsz, lo, hi, None)[3] is False
    # the address is that of the bytes' own buffer
    import ctypes

    got = meta.gradient_check([7, 9], np.array([1, 1]), np.array([0]), np.array([1]), None)
    assert ctypes.string_at(got[1], 16) == got[0]
    # not int64 arrays, mismatched lengths, not a list: None
    i64 = np.array([1], dtype=np.int64)
    for bad in (([1], np.array([1], dtype=np.int32), i64, i64, None),
                ([1, 2], i64, i64, i64, None), ((1,), i64, i64, i64, None),
                ([1], i64, i64, np.array([1, 2], dtype=np.int64), None),
                ([1.0], i64, i64, i64, None), ([1], i64, i64, i64, np.array([0, 1]))):
        assert meta.gradient_check(*bad) is None


def test_a_collection_that_changes_the_list_read_gives_none_not_a_crash(meta: Any) -> None:
    """Allocating may run the cycle collector, and with it finalizers and gc callbacks
    (synchronously before CPython 3.12). One that shrinks the very list being read makes
    the read answer None; where the collection runs later, the answer is that of the
    list as it was."""
    from fluxtrain.core.rules import AdamState

    bt, nxt = (0.9, 0.999), (0.81, 0.998)
    states = [AdamState(torch.ones(2) * i, torch.zeros(2), bt) for i in range(50)]
    expected = [AdamState(s.m, s.v, nxt) for s in states]
    xs = [torch.ones(1) for _ in range(50)]
    by_id = {id(x): torch.zeros(1) for x in xs}
    expected_grads = [by_id[id(x)] for x in xs]

    def shrink(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            for lst in (states, xs):
                if lst:
                    lst.pop()

    old = gc.get_threshold()
    gc.callbacks.append(shrink)
    gc.set_threshold(1)
    try:
        got = meta.restate(AdamState, states, bt, nxt)
        grads = meta.grads_by_id(by_id, xs, torch.Tensor)
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(shrink)
    # None, or the answer for the list as it was when read (a prefix of the original)
    assert got is None or (len(got) <= len(expected) and all(
        n.m is e.m and n.v is e.v and n.beta_t is nxt for n, e in zip(got, expected)))
    assert grads is None or (grads[1] is False and len(grads[0]) <= len(expected_grads) and all(
        g is e for g, e in zip(grads[0], expected_grads)))
    assert len(states) < 50  # the callback did run


def test_python_code_run_by_a_read_that_changes_the_list_gives_none(meta: Any) -> None:
    """A tensor subclass's read-only property, or a Leaf subclass's state property, may
    run any Python code during the read; if it changes the list being read, the read
    answers None (the Python route then decides), and nothing dangles."""
    from fluxtrain.core.rules import Descent
    from fluxtrain.optimisers.leaf import Leaf

    victim: list[Any] = []

    class Meddling(torch.Tensor):
        @property
        def _fluxtrain_readonly(self) -> bool:
            if len(victim) > 3:
                victim.pop()
            return False

    victim += [torch.ones(2).as_subclass(Meddling) for _ in range(6)]
    assert meta.fingerprint(victim) is None
    assert len(victim) == 5
    steady = [torch.ones(2).as_subclass(Meddling)]
    victim[:] = []
    assert meta.fingerprint(steady) is not None  # no change: an answer

    rule = Descent(0.1)
    leaves: list[Any] = []

    class MeddlingLeaf(Leaf):
        __slots__ = ()

        @property  # type: ignore[override]
        def state(self) -> Any:
            if len(leaves) > 2:
                del leaves[-1]
            return None

        @state.setter
        def state(self, value: Any) -> None:
            pass

    leaves += [MeddlingLeaf(rule, None) for _ in range(5)]
    assert meta.leaf_states(leaves, rule) is None


# ------------------------------------------------------------ reads on several threads
@pytest.fixture()
def threaded(meta: Any) -> Any:
    """``meta`` reading lists of 4 items or more on several threads (its default: 512)."""
    was = meta.parallel_threshold()
    if was == 0:
        pytest.skip("tensormeta built without OpenMP: every read is on the calling thread")
    meta.parallel_threshold(4)
    yield meta
    meta.parallel_threshold(was)


def single(meta: Any, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` read on the calling thread alone."""
    was = meta.parallel_threshold(1 << 40)
    try:
        return fn(*args)
    finally:
        meta.parallel_threshold(was)


def test_threaded_reads_equal_the_python_reads(threaded: Any) -> None:
    meta = threaded
    ts = variety() * 40  # subclasses, int and inference tensors, views: all kinds at once
    exact = [t for t in ts if type(t) in (torch.Tensor, torch.nn.Parameter)]
    assert meta.addresses(ts) == [t.data_ptr() for t in ts]
    assert meta.all_contiguous(exact) is all(t.is_contiguous() for t in exact) is False
    floats = [t for t in exact if t.is_floating_point()]
    assert meta.all_float_or_complex(floats) is True
    assert meta.all_float_or_complex(floats + [torch.ones(1, dtype=torch.int64)]) is False
    params = [t for t in exact if t.requires_grad]
    assert params and meta.all_require_grad(params) is True
    assert meta.all_require_grad(exact) is False and meta.any_requires_grad(exact) is True
    got = meta.gradient_reads(exact, (torch.Tensor, torch.nn.Parameter))
    assert got == (single(meta, meta.like, exact), [t.data_ptr() for t in exact],
                   all(t.is_contiguous() for t in exact))
    assert meta.gradient_reads(exact, (torch.Tensor,)) is None  # a Parameter among them
    assert meta.gradient_reads(ts, (torch.Tensor, torch.nn.Parameter)) is None  # a subclass
    from fluxtrain.core.rules import AdamState

    states = [AdamState(m, v, (0.9, 0.99)) for m, v in zip(exact, exact[::-1])]
    assert words(meta.slot_addresses(states, 2)) == (
        [s.m.data_ptr() for s in states] + [s.v.data_ptr() for s in states])
    assert words(meta.slot_addresses(exact, 1)) == [t.data_ptr() for t in exact]
    for fn, args in ((meta.addresses, (ts,)), (meta.all_float_or_complex, (ts,)),
                     (meta.gradient_reads, (exact, (torch.Tensor, torch.nn.Parameter))),
                     (meta.slot_addresses, (states, 2)), (meta.fingerprint, (ts,))):
        assert fn(*args) == single(meta, fn, *args)


def test_threaded_reads_hand_what_they_cannot_read_to_the_calling_thread(
        threaded: Any) -> None:
    meta = threaded
    from fluxtrain.core.rules import AdamState

    plain = [torch.ones(2) for _ in range(50)]
    sub = torch.ones(2).as_subclass(Sub)  # isinstance may run Python code: not off-thread
    deep = torch.ones([1] * 9)  # more dimensions than a threaded read records
    sparse = torch.ones(2, 2).to_sparse()  # a read that throws
    for odd in (sub, deep):
        ts = plain[:25] + [odd] + plain[25:]
        assert meta.addresses(ts) == [t.data_ptr() for t in ts]
        assert meta.all_float_or_complex(ts) is True
        states = [AdamState(t, t, ()) for t in ts]
        assert words(meta.slot_addresses(states, 2)) == [t.data_ptr() for t in ts] * 2
        assert meta.slot_addresses(ts, 1) == single(meta, meta.slot_addresses, ts, 1)
    got = meta.gradient_reads(plain + [deep], (torch.Tensor,))
    assert got == (meta.like(plain + [deep]), [t.data_ptr() for t in plain + [deep]], True)
    assert meta.gradient_reads(plain + [sub], (torch.Tensor, Sub)) == single(
        meta, meta.gradient_reads, plain + [sub], (torch.Tensor, Sub))
    assert meta.all_contiguous(plain + [sparse]) is False  # sparse: not contiguous, no throw
    for fn, args in ((meta.addresses, (plain + [sparse],)),
                     (meta.gradient_reads, (plain + [sparse], (torch.Tensor,))),
                     (meta.slot_addresses, (plain + [sparse], 1)),
                     (meta.slot_addresses, ([AdamState(t, t, ()) for t in plain]
                                            + [AdamState(sparse, sparse, ())], 2))):
        assert fn(*args) is None  # as on the calling thread: no answer, not a crash
        assert single(meta, fn, *args) is None
    assert meta.slot_addresses(plain + [1.0], 1) is None
    assert meta.slot_addresses([(t,) for t in plain], 2) is None


def test_parallel_threshold_reads_and_sets(meta: Any) -> None:
    was = meta.parallel_threshold()
    if was == 0:
        pytest.skip("tensormeta built without OpenMP")
    assert was == 512  # the default
    assert meta.parallel_threshold(7) == 512 and meta.parallel_threshold() == 7
    assert meta.parallel_threshold(0) == 7  # 0 only reads
    assert meta.parallel_threshold(was) == 7 and meta.parallel_threshold() == 512


def test_store_states_equals_setattr(meta: Any) -> None:
    from fluxtrain.core.rules import Descent
    from fluxtrain.optimisers.leaf import Leaf

    r = Descent(0.1)
    leaves = [Leaf(r, None) for _ in range(3)]
    new = [torch.ones(1), (torch.zeros(2),), None]
    assert meta.store_states(leaves, new) is True
    assert all(leaf.state is s for leaf, s in zip(leaves, new))
    assert meta.store_states([], []) is True
    for bad in ((leaves, new[:2]), (tuple(leaves), new), (leaves, tuple(new))):
        assert meta.store_states(*bad) is None  # not two lists of one length: nothing set
    assert all(leaf.state is s for leaf, s in zip(leaves, new))

    class Refusing(Leaf):
        __slots__ = ()

        @property  # type: ignore[override]
        def state(self) -> Any:
            return None

        @state.setter
        def state(self, value: Any) -> None:
            if value is not None:  # (the constructor stores None)
                raise ValueError("no")

    mixed = [Leaf(r, None), Refusing(r, None), Leaf(r, None)]
    with pytest.raises(ValueError, match="no"):
        meta.store_states(mixed, [1, 2, 3])
    assert mixed[0].state == 1 and mixed[2].state is None  # stopped there, as setattr


def test_leaf_slots_read_and_written_directly_equal_getattr_and_setattr(meta: Any) -> None:
    """Leaves whose rule, frozen and state are plain slots are read and written there;
    anything getattr/setattr would decide otherwise takes their route, same answers."""
    from fluxtrain.core.rules import Descent
    from fluxtrain.optimisers.leaf import Leaf

    r = Descent(0.1)

    class Slotted(Leaf):  # the same slots, inherited: still plain
        __slots__ = ()

    class Watched(Leaf):  # attribute access of its own: getattr's route
        __slots__ = ()

        def __getattribute__(self, name: str) -> Any:
            return object.__getattribute__(self, name)

    for kind in (Leaf, Slotted, Watched):
        leaves = [kind(r, torch.ones(1) * i) for i in range(4)]
        assert meta.leaf_states(leaves, r) == [leaf.state for leaf in leaves]
        assert meta.leaf_states(leaves, Descent(0.1)) is None  # equal is not the rule
        leaves[2].frozen = 1  # not a bool: its truth decides, as in getattr's route
        assert meta.leaf_states(leaves, r) is None
        leaves[2].frozen = 0
        assert [s.item() for s in meta.leaf_states(leaves, r)] == [0, 1, 2, 3]
        new = [torch.zeros(1) for _ in leaves]
        assert meta.store_states(leaves, new) is True
        assert all(leaf.state is s for leaf, s in zip(leaves, new))
    mixed = [Leaf(r, 1), Slotted(r, 2), Watched(r, 3)]
    assert meta.leaf_states(mixed, r) == [1, 2, 3]
    assert meta.store_states(mixed, [4, 5, 6]) is True and [x.state for x in mixed] == [4, 5, 6]
    unset = Leaf.__new__(Leaf)  # no slot set: getattr raises, so no answer
    assert meta.leaf_states([Leaf(r, 1), unset], r) is None
    object.__setattr__(unset, "rule", r)
    object.__setattr__(unset, "frozen", False)
    assert meta.leaf_states([Leaf(r, 1), unset], r) is None  # still no state
    assert meta.store_states([Leaf(r, 1), unset], [1, 2]) is True and unset.state == 2


def test_releasing_an_old_state_that_changes_the_lists_is_no_crash(meta: Any) -> None:
    from fluxtrain.core.rules import Descent
    from fluxtrain.optimisers.leaf import Leaf

    r = Descent(0.1)
    leaves = [Leaf(r, None) for _ in range(6)]
    states: list[Any] = []

    class Shrinking:
        def __del__(self) -> None:  # runs when store_states releases it
            del leaves[3:]
            del states[3:]

    leaves[1].state = Shrinking()
    states += [torch.ones(1) * i for i in range(6)]
    assert meta.store_states(leaves, states) is True
    assert len(leaves) == 3 and [leaf.state.item() for leaf in leaves] == [0, 1, 2]


def python_entries_unchanged(dicts: list[Any], mods: list[Any]) -> bool:
    """StepPlan.valid's container loops, as written in Python."""
    from operator import is_

    for d, keys, vals in dicts:
        if len(d) != len(keys) or not all(map(is_, d.values(), vals)) or tuple(d) != keys:
            return False
    for m, pk, pv, mk, mv in mods:
        p, s = m._parameters, m._modules
        if (len(p) != len(pk) or len(s) != len(mk) or not all(map(is_, p.values(), pv))
                or not all(map(is_, s.values(), mv)) or tuple(p) != pk or tuple(s) != mk):
            return False
    return True


def test_entries_unchanged_equals_the_python_loops(meta: Any) -> None:
    from collections import OrderedDict

    a, b = torch.ones(1), torch.zeros(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())

    def records() -> tuple[list[Any], list[Any]]:
        d = {"a": a, "b": [b]}
        mods = [(m, tuple(m._parameters), tuple(m._parameters.values()), tuple(m._modules),
                 tuple(m._modules.values())) for m in net.modules()]
        return [(d, tuple(d), tuple(d.values()))], mods

    def changes() -> list[Any]:
        return [
            lambda ds, ms: None,  # nothing changed
            lambda ds, ms: ds[0][0].__setitem__("a", torch.ones(1)),  # equal, not the same
            lambda ds, ms: ds[0][0].__setitem__("c", a),  # added
            lambda ds, ms: ds[0][0].pop("b"),  # removed
            lambda ds, ms: ds[0][0].update({"a": ds[0][0].pop("a")}),  # same entries, reordered
            lambda ds, ms: (ds[0][0].pop("a"), ds[0][0].__setitem__("z", a)),  # key renamed
            lambda ds, ms: setattr(net[0], "weight", torch.nn.Parameter(torch.ones(2, 2))),
            lambda ds, ms: net.append(torch.nn.Tanh()),  # a submodule added
            lambda ds, ms: net[0].register_parameter("bias", None),  # a parameter set to None
        ]

    for i in range(len(changes())):
        net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        ds, ms = records()
        changes()[i](ds, ms)
        want = python_entries_unchanged(ds, ms)
        assert meta.entries_unchanged(ds, ms) is want, i
        assert want is (i == 0)
    ds, ms = records()
    # where only the Python test can say: None (the caller then runs it)
    assert meta.entries_unchanged([(OrderedDict(ds[0][0]),) + ds[0][1:]], []) is None
    assert meta.entries_unchanged([({1: a}, (1.0,), (a,))], []) is None  # not str: == decides
    assert meta.entries_unchanged([({1: a}, (1,), (a,))], []) is not None  # (1 is 1)
    assert meta.entries_unchanged([ds[0][:2]], []) is None
    assert meta.entries_unchanged(ds, [(object(), (), (), (), ())]) is None  # no _parameters
    assert meta.entries_unchanged(tuple(ds), ms) is None
    assert meta.entries_unchanged([], []) is True


def test_the_self_check_draws_no_random_numbers(meta: Any) -> None:
    """The check runs when a training step first loads the extension: drawing from torch's
    generator there would change every random number the script draws afterwards (its
    dropout masks, its shuffles), so that an old-style and a migrated run differ."""
    before = torch.random.get_rng_state()
    assert tensormeta._selfcheck(meta) is None
    assert torch.equal(torch.random.get_rng_state(), before)
