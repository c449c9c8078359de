"""Every style mix-up error (reference §5.5) and every deprecation warning:
category, key words, and that the warning points at the caller's line."""

import inspect
import warnings

import pytest
import torch

import fluxtrain
from fluxtrain import optimise as old
from fluxtrain import optimisers as new
from fluxtrain.implicit.params import collect_params


def here():
    """Line number of the caller."""
    return inspect.currentframe().f_back.f_lineno


def model_and_data():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x = torch.randn(4, 2)
    return m, x


def quiet_grads(m, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = collect_params(m)
        return ps, fluxtrain.gradient(lambda: m(x).sum(), ps)


# ---------------------------------------------------------------------------- errors
def test_E1_params_with_explicit_state():
    m, x = model_and_data()
    st = new.setup(new.Adam(), m)
    with pytest.raises(TypeError, match="can't mix implicit Params with explicit state") as e:
        fluxtrain.train_(lambda: m(x).sum(), collect_params(m), [()], st)
    assert "fluxtrain.optimise" in str(e.value) and "setup" in str(e.value)


def test_E2_params_with_new_rule():
    m, x = model_and_data()
    with pytest.raises(TypeError, match="can't mix implicit Params with the explicit rule") as e:
        fluxtrain.train_(lambda: m(x).sum(), collect_params(m), [()], new.Adam())
    assert "fluxtrain.Adam()" in str(e.value)


def test_E4_explicit_train_rejects_callbacks():
    m, x = model_and_data()
    st = new.setup(new.Descent(), m)
    with pytest.raises(TypeError, match="callback"):
        fluxtrain.train_(lambda m, x: m(x).sum(), m, [(x,)], st, cb=lambda: None)


def test_E5_old_optimiser_with_whole_model():
    m, x = model_and_data()
    ps, gs = quiet_grads(m, x)
    with pytest.raises(TypeError, match="Invalid input to update_") as e:
        fluxtrain.update_(old.Adam(), m, gs)
    assert "params(model)" in str(e.value) and "setup(opt, model)" in str(e.value)
    g = fluxtrain.gradient(lambda mm: mm(x).sum(), m)
    with pytest.raises(TypeError, match="Invalid input to update_"):  # E7: whole tuple
        fluxtrain.update_(old.Adam(), m, g)
    with pytest.raises(TypeError, match="Invalid input to update_"):
        fluxtrain.update_(old.Adam(), m, g[0])


def test_E6_whole_gradient_tuple_warns_and_uses_first():
    m, x = model_and_data()
    m2, _ = model_and_data()
    st, st2 = new.setup(new.Descent(0.1), m), new.setup(new.Descent(0.1), m2)
    g = fluxtrain.gradient(lambda mm: mm(x).sum(), m)
    with pytest.warns(UserWarning, match=r"you probably want grads\[0\]") as rec:
        line = here() + 1
        fluxtrain.update_(st, m, g)
    assert rec[0].filename == __file__ and rec[0].lineno == line
    fluxtrain.update_(st2, m2, fluxtrain.gradient(lambda mm: mm(x).sum(), m2)[0])
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_E8_params_with_explicit_gradients():
    m, x = model_and_data()
    ps = collect_params(m)
    g = fluxtrain.gradient(lambda mm: mm(x).sum(), m)
    for bad in (g, g[0], {"0.weight": torch.zeros(3, 2)}):
        with pytest.raises(
            TypeError, match="can't mix implicit Params with explicit gradients"
        ) as e:
            fluxtrain.update_(old.Adam(), ps, bad)
        assert "gradient(lambda: loss(model, x), ps)" in str(e.value)


def test_E9_explicit_state_with_implicit_grads():
    m, x = model_and_data()
    _, gs = quiet_grads(m, x)
    st = new.setup(new.Adam(), m)
    with pytest.raises(TypeError, match="implicit gradients"):
        fluxtrain.update_(st, m, gs)


def test_explicit_state_or_rule_with_params():
    m, x = model_and_data()
    ps, gs = quiet_grads(m, x)
    with pytest.raises(TypeError, match="can't mix implicit Params with an explicit state"):
        fluxtrain.update_(new.setup(new.Adam(), m), ps, gs)
    with pytest.raises(TypeError, match="can't mix implicit Params with an explicit rule"):
        fluxtrain.update_(new.Adam(), ps, gs)
    with pytest.raises(TypeError, match="state tree from setup"):
        fluxtrain.update_(new.Adam(), m, fluxtrain.gradient(lambda mm: mm(x).sum(), m)[0])


def test_single_array_update_needs_gradient_and_matching_shape():
    x = torch.zeros(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="got None"):
            fluxtrain.update_(old.Descent(), x, None)
        with pytest.raises(ValueError, match="shape"):
            fluxtrain.update_(old.Descent(), x, torch.zeros(3))


def test_implicit_gradient_takes_one_params():
    w = torch.zeros(2)
    with pytest.raises(TypeError, match="exactly one Params"):
        fluxtrain.gradient(lambda: w.sum(), fluxtrain.Params([w]), 3.0)


def test_update_gradients_not_mutated():
    w = torch.ones(2)
    g = torch.ones(2)
    ps = fluxtrain.Params([w])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fluxtrain.update_(old.Optimiser(), ps, fluxtrain.Grads({w: g}, ps))  # identity chain
        fluxtrain.update_(old.Momentum(), w, g)
    assert g.tolist() == [1.0, 1.0]


def test_old_expdecay_invdecay_translate_in_setup():
    m, _ = model_and_data()
    with pytest.warns(fluxtrain.FluxDeprecationWarning, match="InvDecay"):
        st = fluxtrain.setup(old.InvDecay(0.1), m)
    assert isinstance(st[0].weight.rule, new.InvDecay)


# ---------------------------------------------------------------------------- deprecations
def _check(rec, line, *words):
    dep = [r for r in rec if issubclass(r.category, fluxtrain.FluxDeprecationWarning)]
    assert dep, [str(r.message) for r in rec]
    w = dep[0]
    assert issubclass(w.category, DeprecationWarning)
    assert w.filename == __file__, w.filename
    assert w.lineno == line
    msg = str(w.message)
    assert "fluxtrain-migrate" in msg
    for word in words:
        assert word in msg, (word, msg)


def test_params_warns():
    m, _ = model_and_data()
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        fluxtrain.params(m)
    _check(rec, line, "params", "model itself", "setup")


def test_implicit_gradient_and_withgradient_warn():
    m, x = model_and_data()
    ps = collect_params(m)
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        fluxtrain.gradient(lambda: m(x).sum(), ps)
    _check(rec, line, "gradient(lambda m: loss(m, x), model)", "[0]")
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        fluxtrain.withgradient(lambda: m(x).sum(), ps)
    _check(rec, line, "withgradient(lambda m: loss(m, x), model)")


def test_implicit_update_warns_both_forms():
    m, x = model_and_data()
    ps, gs = quiet_grads(m, x)
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        fluxtrain.update_(old.Adam(), ps, gs)
    _check(rec, line, "update_(opt_state, model, grad)", "setup(opt, model)")
    w = torch.zeros(2)
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        fluxtrain.update_(old.Descent(), w, torch.ones(2))
    _check(rec, line, "update_(opt_state, model, grad)")
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        old.update_(old.Descent(), w, torch.ones(2))
    _check(rec, line, "update_")


def test_implicit_train_warns():
    m, x = model_and_data()
    ps = collect_params(m)
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        fluxtrain.train_(lambda x: m(x).sum(), ps, [x], old.Descent(), progress=False)
    _check(
        rec, line, "train_(lambda m, *d: loss(m, *d), model, data, opt_state)", "setup(opt, model)"
    )
    assert sum(issubclass(r.category, fluxtrain.FluxDeprecationWarning) for r in rec) == 1


def test_stop_and_skip_warn_at_their_line_inside_train():
    w = torch.zeros(1)
    ps = fluxtrain.Params([w])
    lines = {}

    def cb():
        lines["stop"] = here() + 1
        fluxtrain.stop()

    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        fluxtrain.train_(lambda: w.sum(), ps, [()], old.Descent(), cb=cb, progress=False)
    stop_w = [r for r in rec if "stop()" in str(r.message)]
    assert stop_w and stop_w[0].lineno == lines["stop"] and stop_w[0].filename == __file__
    assert "break" in str(stop_w[0].message) and "fluxtrain-migrate" in str(stop_w[0].message)

    def loss():
        lines["skip"] = here() + 1
        fluxtrain.skip()

    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        fluxtrain.train_(loss, ps, [()], old.Descent(), progress=False)
    skip_w = [r for r in rec if "skip()" in str(r.message)]
    assert skip_w and skip_w[0].lineno == lines["skip"]
    assert "continue" in str(skip_w[0].message)


def test_epochs_warns():
    with pytest.warns(fluxtrain.FluxDeprecationWarning) as rec:
        line = here() + 1
        it = fluxtrain.epochs(1)
    list(it)
    _check(rec, line, "for epoch in range(1, n + 1)")


def test_once_per_call_site():
    w = torch.zeros(1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            fluxtrain.params(w)
        fluxtrain.params(w)
    assert sum(issubclass(r.category, fluxtrain.FluxDeprecationWarning) for r in rec) == 2


def test_old_optimisers_do_not_warn_on_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old.Adam(), old.Optimiser(old.ClipValue(1.0), old.Descent()), old.AdamW()


def test_zero_argument_function_without_params():
    w = torch.zeros(2)
    with pytest.raises(TypeError, match="needs Params"):
        fluxtrain.gradient(lambda: w.sum(), [w])
    with pytest.raises(TypeError, match="needs Params"):
        fluxtrain.withgradient(lambda: w.sum(), w)


def test_old_optimiser_pickles_hyperparameters_only():
    import copy
    import pickle

    from fluxtrain.optimise.optimisers import step_many_

    a = old.Optimiser(old.ClipValue(1.0), old.Adam(0.01))
    x = torch.ones(2)
    step_many_(a, [x], [torch.ones(2)])
    for b in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert repr(b) == repr(a)
        assert len(b[1].state) == 0
        step_many_(b, [torch.ones(2)], [torch.ones(2)])


def test_custom_old_optimiser_runs_implicitly_but_does_not_translate():
    class Halve(old.AbstractOptimiser):
        def apply(self, x, dx):
            return dx / 2

    w = torch.ones(2)
    ps = fluxtrain.Params([w])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fluxtrain.train_(lambda: w.sum(), ps, [()], Halve(), progress=False)
    assert w.tolist() == [0.5, 0.5]
    m, _ = model_and_data()
    with pytest.raises(TypeError, match="does not know how to translate"):
        fluxtrain.setup(Halve(), m)


def test_a_deprecation_warns_once_per_call_site_of_an_old_loop():
    """An old training loop calls update_/gradient every step: one warning per line of the
    user's code (and key), not per call, each pointing at that line."""
    m, x = model_and_data()
    ps, _ = quiet_grads(m, x)
    opt = old.Descent(0.01)
    lines = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")  # Python's own once-per-location filter off
        for _ in range(3):
            lines.append(here() + 1)
            gs = fluxtrain.gradient(lambda: m(x).sum(), ps)
            lines.append(here() + 1)
            fluxtrain.update_(opt, ps, gs)
        lines.append(here() + 1)
        fluxtrain.update_(opt, ps, gs)  # another line: warned again
    dep = [r for r in rec if issubclass(r.category, fluxtrain.FluxDeprecationWarning)]
    assert [(w.filename, w.lineno) for w in dep] == [(__file__, n) for n in
                                                      (lines[0], lines[1], lines[-1])]
    assert "gradient(f, ps)" in str(dep[0].message) and "update_(opt, ps, gs)" in str(
        dep[1].message)
