"""Checkpoint and resume (issue 8, acceptance 3 and 4).

3. 30 steps, checkpoint (torch.save), load in a fresh process into a fresh
   model (torch.load(weights_only=True)), 30 more steps == 60 uninterrupted
   steps bit for bit: Adam, a chain with AccumGrad left mid-accumulation, an
   old optimiser (keyed by model paths) and an old Optimiser chain (keyed by
   Params positions).
4. Loading errors (wrong structure, wrong shapes, a different rule): clear
   messages; model and state untouched.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ckptcommon as K  # noqa: E402

import fluxtrain  # noqa: E402
from fluxtrain import checkpoint as CK  # noqa: E402
from fluxtrain import optimisers as O  # noqa: E402
from fluxtrain.checkpoint import CheckpointError  # noqa: E402


def roundtrip(d):
    """torch.save then torch.load(weights_only=True): only plain data survives."""
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------------------- acceptance 3
@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    ckdir = tmp_path_factory.mktemp("ckpt")
    full = {}
    for name in K.SCENARIOS:
        model = K.make_model()
        state = K.start(name, model)
        K.train(name, model, state, 0, K.TOTAL)
        full[name] = K.params_of(model)
        model = K.make_model()
        state = K.start(name, model)
        K.train(name, model, state, 0, K.HALF)
        torch.save(K.save(name, model, state), ckdir / f"{name}.pt")
    out = ckdir / "resumed.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FLUXTRAIN_TRACE", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "ckpt_resume.py"), str(ckdir), str(out)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return full, torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", K.SCENARIOS)
def test_resume_in_fresh_process_is_bitwise_identical(resumed, name):
    full, res = resumed
    start = K.params_of(K.make_model())
    assert any(not torch.equal(a, b) for a, b in zip(full[name], start)), "nothing trained"
    assert len(full[name]) == len(res[name])
    for i, (a, b) in enumerate(zip(full[name], res[name])):
        assert torch.equal(a, b), f"{name}: parameter {i} differs, max {(a - b).abs().max()}"


def test_chain_checkpoint_is_mid_accumulation():
    model = K.make_model()
    st = K.start("chain_accum", model)
    K.train("chain_accum", model, st, 0, K.HALF)
    d = roundtrip(CK.state_dict(st, model))
    acc = d["leaves"]["0.weight"]["state"][0]
    assert acc["__namedtuple__"] == "AccumGradState"
    assert acc["fields"]["counter"] == 3  # 30 = 7*4 + 2: the third gradient comes next
    assert d["leaves"]["2.bias"]["frozen"] is True
    assert d["rules"][0]["opts"][2]["fields"]["eta"] == 0.03
    st2 = CK.load_state_dict(d, K.make_model(seed=3))
    assert st2[2].bias.frozen and not st2[0].weight.frozen
    assert st2[0].weight.rule == O.OptimiserChain(O.AccumGrad(4), O.ClipGrad(0.5),
                                                  O.Momentum(0.03, 0.8))
    assert st2 == st  # Leaf equality: rules, states by value, frozen flags


def test_naive_resume_without_optimiser_state_differs(resumed):
    """Guard: the resume test can fail - restarting Adam from scratch gives other numbers."""
    full, _ = resumed
    model = K.make_model()
    st = K.start("adam", model)
    K.train("adam", model, st, 0, K.HALF)
    st = fluxtrain.setup(O.Adam(0.004), model)  # fresh moments, same (adjusted) rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fluxtrain.train_(K.loss, model, K.batches()[K.HALF:], st)
    assert any(not torch.equal(a, b) for a, b in zip(K.params_of(model), full["adam"]))


# ---------------------------------------------------------------------------- round trips
def test_format_is_plain_and_keyed_by_path():
    model = K.make_model()
    st = fluxtrain.setup(O.Adam(0.01), model)
    d = CK.state_dict(st, model)
    assert d["format"] == "fluxtrain.state_dict" and d["version"] == 1
    assert d["paths"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(d["leaves"]) == d["paths"]
    assert d["rules"] == [{"type": "Adam", "module": "fluxtrain.core.rules",
                           "fields": {"eta": 0.01, "beta": (0.9, 0.999), "epsilon": 1e-8}}]
    d2 = roundtrip(d)
    assert d2["rules"] == d["rules"]
    assert CK.load_state_dict(d2, model) == st


def test_state_dict_is_a_snapshot():
    model = K.make_model()
    st = fluxtrain.setup(O.Momentum(0.1), model)
    d = CK.state_dict(st, model)
    fluxtrain.train_(K.loss, model, K.batches()[:2], st)
    assert torch.count_nonzero(st[0].weight.state) > 0
    assert torch.count_nonzero(d["leaves"]["0.weight"]["state"]) == 0


def test_tied_parameters_share_one_leaf():
    w = torch.randn(3, 3)
    model = {"enc": w, "dec": w, "b": torch.zeros(3)}
    st = O.setup(O.Momentum(0.1), model)
    O.update_(st, model, {"enc": torch.ones(3, 3), "dec": None, "b": torch.ones(3)})
    d = roundtrip(CK.state_dict(st, model))
    assert d["tied"] == {"dec": "enc"} and list(d["leaves"]) == ["enc", "b"]
    w2 = w.clone()
    model2 = {"enc": w2, "dec": w2, "b": torch.zeros(3)}
    st2 = CK.load_state_dict(d, model2)
    assert st2["enc"] is st2["dec"] and st2 == st
    with pytest.raises(CheckpointError, match="tied parameters differ at 'dec'"):
        CK.load_state_dict(d, {"enc": w.clone(), "dec": w.clone(), "b": torch.zeros(3)})


def test_mixed_precision_chain_and_tree_model_roundtrip():
    model = {"layers": [torch.randn(4, 3), torch.randn(4)], "scale": 2.0}
    rule = O.MixedPrecision(torch.float64, O.OptimiserChain(O.ClipNorm(1.0), O.Adam(0.01)))
    st = O.setup(rule, model)
    g = {"layers": [torch.randn(4, 3), torch.randn(4)], "scale": None}
    O.update_(st, model, g)
    d = roundtrip(CK.state_dict(st, model))
    assert d["paths"] == ["layers.0", "layers.1"]
    model2 = {"layers": [t.clone() for t in model["layers"]], "scale": 2.0}
    st2 = CK.load_state_dict(d, model2)
    assert st2["layers"][0].rule == rule
    for _ in range(3):
        O.update_(st, model, g)
        O.update_(st2, model2, g)
    for a, b in zip(model["layers"], model2["layers"]):
        assert torch.equal(a, b)


def test_whole_tree_transforms_roundtrip_without_rules_argument():
    """ClipGlobalNorm and SkipNonFinite (core/transforms.py) load like any built-in rule,
    with the skip counters, and training resumes bit for bit."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    rule = O.OptimiserChain(O.SkipNonFinite(5), O.ClipGlobalNorm(0.5), O.Adam(0.01))
    st = O.setup(rule, model)
    nan = {n: torch.full_like(p, float("nan")) for n, p in model.named_parameters()}
    good = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    O.update_(st, model, good)
    O.update_(st, model, nan)
    d = roundtrip(CK.state_dict(st, model))
    model2 = copy.deepcopy(model)
    st2 = CK.load_state_dict(d, model2)
    assert st2[0].weight.rule == rule
    assert O.skipped_steps(st2) == O.skipped_steps(st)
    assert O.skipped_steps(st2).skipped == 1
    for g in (good, nan, good):
        O.update_(st, model, g)
        O.update_(st2, model2, g)
    assert O.skipped_steps(st2) == O.skipped_steps(st)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_custom_rule_needs_rules_argument():
    import dataclasses

    @dataclasses.dataclass(frozen=True, repr=False)
    class HalfDescent(O.AbstractRule):
        eta: float = 0.1

        def init(self, x):
            return 0

        def apply(self, state, x, dx):
            return state + 1, dx * (self.eta / 2)

    model = {"w": torch.ones(2)}
    st = O.setup(HalfDescent(0.2), model)
    O.update_(st, model, {"w": torch.ones(2)})
    d = roundtrip(CK.state_dict(st, model))
    with pytest.raises(CheckpointError, match=r"unknown rule .HalfDescent.*rules=\[HalfDescent"):
        CK.load_state_dict(d, model)
    st2 = CK.load_state_dict(d, model, rules=[HalfDescent])
    assert st2["w"].rule == HalfDescent(0.2) and st2["w"].state == 1


def test_old_optimiser_roundtrip_into_given_optimiser():
    model = K.make_model()
    ps, opt = K.start("old_adam", model)
    K.train("old_adam", model, (ps, opt), 0, 12)
    d = roundtrip(CK.optimiser_state_dict(opt, model))
    assert d["params"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert d["optimiser"]["hyper"]["eta"] == 0.004
    model2 = K.make_model(seed=1)
    model2.load_state_dict(model.state_dict())
    target = fluxtrain.optimise.Adam(0.5)
    got = CK.load_optimiser_state_dict(target, d, model2)
    assert got is target and target.eta == 0.004
    for p, q in zip(model.parameters(), model2.parameters()):
        s, s2 = opt.state[p], target.state[q]
        assert torch.equal(s.m, s2.m) and torch.equal(s.v, s2.v) and s.beta_t == s2.beta_t


# ---------------------------------------------------------------------------- acceptance 4
def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model, snap):
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), snap))


@pytest.fixture
def adam_ckpt():
    model = K.make_model()
    st = K.start("adam", model)
    K.train("adam", model, st, 0, 3)
    return roundtrip(CK.state_dict(st, model))


@pytest.fixture
def old_ckpt():
    model = K.make_model()
    ps, opt = K.start("old_adam", model)
    K.train("old_adam", model, (ps, opt), 0, 3)
    return roundtrip(CK.optimiser_state_dict(opt, model))


def test_error_wrong_structure(adam_ckpt, old_ckpt):
    other = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 2))
    snap = _snapshot(other)
    msg = "at parameter 2: the checkpoint has '2.weight' where the model has '1.weight'"
    with pytest.raises(CheckpointError, match=msg):
        CK.load_state_dict(adam_ckpt, other)
    opt = fluxtrain.optimise.Adam(0.5)
    with pytest.raises(CheckpointError, match=msg):
        CK.load_optimiser_state_dict(opt, old_ckpt, other)
    assert _unchanged(other, snap) and opt.eta == 0.5 and len(opt.state) == 0
    fewer = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2,
                                                                                       bias=False))
    with pytest.raises(CheckpointError, match="'2.bias' that the model lacks"):
        CK.load_state_dict(adam_ckpt, fewer)


def test_error_wrong_shapes(adam_ckpt, old_ckpt):
    wide = torch.nn.Sequential(torch.nn.Linear(5, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2))
    snap = _snapshot(wide)
    with pytest.raises(CheckpointError,
                       match=r"'0\.weight': shape mismatch: the checkpoint has \(8, 5\), "
                             r"the model's parameter needs \(9, 5\)"):
        CK.load_state_dict(adam_ckpt, wide)
    assert _unchanged(wide, snap)


def test_error_wrong_shape_late_leaves_optimiser_untouched():
    """The mismatch is in the last parameter: nothing of the earlier ones may be applied."""
    a, b = torch.ones(3), torch.ones(4)
    opt = fluxtrain.optimise.Momentum(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fluxtrain.update_(opt, fluxtrain.params(a, b), fluxtrain.Grads({a: a, b: b},
                                                                       fluxtrain.params(a, b)))
    d = roundtrip(CK.optimiser_state_dict(opt, {"a": a, "b": b}))
    a2, b2 = torch.zeros(3), torch.zeros(5)
    target = fluxtrain.optimise.Momentum(0.7)
    pre = torch.ones(3)
    target.state[a2] = pre
    with pytest.raises(CheckpointError, match=r"at 'b': shape mismatch: the checkpoint has "
                                              r"\(4,\), the model's parameter needs \(5,\)"):
        CK.load_optimiser_state_dict(target, d, {"a": a2, "b": b2})
    assert target.eta == 0.7 and target.state[a2] is pre and b2 not in target.state
    assert torch.equal(a2, torch.zeros(3)) and torch.equal(b2, torch.zeros(5))


def test_error_different_rule(adam_ckpt, old_ckpt):
    model = K.make_model()
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match="saved with the rule Adam.*not a Momentum"):
        CK.load_state_dict(adam_ckpt, model, rule=O.Momentum())
    opt = fluxtrain.optimise.Momentum(0.3)
    with pytest.raises(CheckpointError, match="holds the state of a Adam, but the optimiser "
                                              "given is a Momentum"):
        CK.load_optimiser_state_dict(opt, old_ckpt, model)
    assert opt.eta == 0.3 and len(opt.state) == 0
    # a state that does not fit the rule it claims (hand-edited file): named path
    bad = roundtrip(adam_ckpt)
    bad["rules"][0] = {"type": "Momentum", "module": "fluxtrain.core.rules",
                       "fields": {"eta": 0.1, "rho": 0.9}}
    with pytest.raises(CheckpointError, match="Momentum state at '0.weight'"):
        CK.load_state_dict(bad, model)
    # the two formats are not interchangeable
    with pytest.raises(CheckpointError, match="load it with fluxtrain.checkpoint."
                                              "load_optimiser_state_dict"):
        CK.load_state_dict(old_ckpt, model)
    with pytest.raises(CheckpointError, match="load it with fluxtrain.checkpoint.load_state_dict"):
        CK.load_optimiser_state_dict(None, adam_ckpt, model)
    with pytest.raises(CheckpointError, match="looks like a model's state_dict"):
        CK.load_state_dict(model.state_dict(), model)
    assert _unchanged(model, snap)


def test_old_chain_kind_mismatch():
    model = K.make_model()
    ps, opt = K.start("old_chain", model)
    d = roundtrip(CK.optimiser_state_dict(opt, ps))
    wrong = fluxtrain.optimise.Optimiser(fluxtrain.optimise.ClipValue(0.5),
                                         fluxtrain.optimise.Descent(0.05))
    with pytest.raises(CheckpointError, match=r"Optimiser\(ClipValue, ExpDecay, Descent\)"):
        CK.load_optimiser_state_dict(wrong, d, ps)


def test_numpy_tree_model_roundtrip():
    import numpy as np

    model = {"w": np.ones((2, 3)), "n": np.arange(3), "name": "lin"}
    st = O.setup(O.Adam(0.1), model)
    O.update_(st, model, {"w": np.full((2, 3), 0.5), "n": None, "name": None})
    d = roundtrip(CK.state_dict(st, model))
    assert d["paths"] == ["w"]  # the integer array and the string are not trainable
    model2 = {"w": model["w"].copy(), "n": np.arange(3), "name": "lin"}
    st2 = CK.load_state_dict(d, model2)
    assert st2 == st and st2["n"] == () and st2["name"] == ()


def test_params_positions_count_mismatch():
    a, b = torch.ones(2), torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = fluxtrain.params(a, b)
        d = roundtrip(CK.optimiser_state_dict(fluxtrain.optimise.Descent(0.1), ps))
        assert d["params"] == ["0", "1"]
        with pytest.raises(CheckpointError, match="the model has the parameter '2' that the "
                                                  "checkpoint lacks"):
            CK.load_optimiser_state_dict(None, d, fluxtrain.params(a, b, torch.ones(1)))


def test_malformed_checkpoint(adam_ckpt):
    bad = dict(adam_ckpt)
    del bad["leaves"]
    with pytest.raises(CheckpointError, match="malformed checkpoint.*leaves"):
        CK.load_state_dict(bad, K.make_model())
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        CK.load_state_dict(dict(adam_ckpt, version=99), K.make_model())
