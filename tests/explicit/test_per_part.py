"""Per-part rules for ``setup`` (issue #10): a mapping of path patterns or a function
choosing each parameter's rule, ``default=`` for the rest, and the
``no_decay_on_bias_and_norm`` preset. Truth: separate setups of the parts
(bit for bit) and ``torch.optim.AdamW`` with two parameter groups."""

from __future__ import annotations

import copy
import dataclasses
import doctest
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

import fluxtrain
import fluxtrain.optimisers.parts as parts_module
from fluxtrain import FluxDeprecationWarning, optimise
from fluxtrain.optimisers import (
    Adam,
    AdamW,
    ClipGrad,
    Descent,
    Leaf,
    Momentum,
    OptimiserChain,
    WeightDecay,
    no_decay_on_bias_and_norm,
    setup,
    thaw_,
    update_,
)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def grads_of(model: nn.Module, x: torch.Tensor) -> Any:
    return fluxtrain.gradient(lambda m: (m(x) ** 2).sum(), model)[0]


def leaves_of(st: Any) -> list[Leaf]:
    out: list[Leaf] = []

    def walk(s: Any) -> None:
        if isinstance(s, Leaf):
            out.append(s)
        elif isinstance(s, dict | fluxtrain.optimisers.StateTree):
            for v in s.values():
                walk(v)
        elif isinstance(s, tuple | list):
            for v in s:
                walk(v)

    walk(st)
    return out


def test_docstring_examples() -> None:
    result = doctest.testmod(parts_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ============================================================================ acceptance 1
def test_mapping_equals_separate_setups_bit_for_bit() -> None:
    a = mlp()
    b = copy.deepcopy(a)
    st = setup({"0.*": Adam(1e-3), "2.*": Descent(0.1)}, a)
    s0 = setup(Adam(1e-3), b[0])
    s2 = setup(Descent(0.1), b[2])
    torch.manual_seed(1)
    xs = [torch.randn(5, 3) for _ in range(6)]
    for x in xs:
        ga, gb = grads_of(a, x), grads_of(b, x)
        update_(st, a, ga)
        update_(s0, b[0], gb[0])
        update_(s2, b[2], gb[2])
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    # the states agree too (Adam moments of part 0)
    assert st[0] == s0 and st[2] == s2
    assert not torch.equal(a[0].weight, mlp()[0].weight)  # it did train


def test_each_pattern_shares_one_rule_object() -> None:
    m = mlp()
    r0, r2 = Adam(1e-3), Descent(0.1)
    st = setup({"0.*": r0, "2.*": r2}, m)
    assert st[0].weight.rule is r0 and st[0].bias.rule is r0
    assert st[2].weight.rule is r2 and st[2].bias.rule is r2


# ============================================================================ acceptance 2
class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.hid = nn.Linear(8, 8, bias=False)  # a bias before BatchNorm has no gradient
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.ln(self.inp(x)))
        h = torch.relu(self.bn(self.hid(h)))
        return self.out(h)


def test_bias_norm_preset_matches_torch_adamw_with_two_groups() -> None:
    """fluxtrain's ``AdamW(eta, beta, lambda_, epsilon)`` (couple=True, the default) steps
    by ``eta * (adam + lambda_ * x)``; torch.optim.AdamW first decays ``p *= 1 - lr * wd``
    and then steps by ``lr * adam``. Both are ``x - lr*wd*x - lr*adam``, so
    ``eta = lr``, ``beta = betas``, ``lambda_ = weight_decay``, ``epsilon = eps``.
    torch groups: ``weight_decay=wd`` for the Linear weights (2-D), 0 for every bias and
    the LayerNorm/BatchNorm scale and shift. The running BatchNorm statistics are buffers
    (not trained) and evolve identically in both models."""
    lr, betas, wd, eps = 1e-2, (0.9, 0.99), 0.1, 1e-8
    torch.manual_seed(0)
    ours = NormNet()
    ref = copy.deepcopy(ours)
    everywhere = copy.deepcopy(ours)  # control: torch with weight decay on every parameter
    st = setup(no_decay_on_bias_and_norm(AdamW(lr, betas, wd, eps)), ours)
    assert st.inp.weight.rule.lambda_ == wd and st.hid.weight.rule.lambda_ == wd
    assert all(st[m].bias.rule.lambda_ == 0.0 for m in ("inp", "ln", "bn", "out"))
    assert st.ln.weight.rule.lambda_ == 0.0 and st.bn.weight.rule.lambda_ == 0.0

    decay = [p for n, p in ref.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in ref.named_parameters() if p.ndim < 2]
    assert len(decay) == 3 and len(no_decay) == 6
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps,
    )
    opt_all = torch.optim.AdamW(everywhere.parameters(), lr=lr, betas=betas, eps=eps,
                                weight_decay=wd)
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def loss(m: nn.Module) -> torch.Tensor:
        return ((m(x) - y) ** 2).mean()

    for _ in range(50):
        update_(st, ours, fluxtrain.gradient(loss, ours)[0])
        for o, m in ((opt, ref), (opt_all, everywhere)):
            o.zero_grad()
            loss(m).backward()
            o.step()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(ours.bn.running_mean, ref.bn.running_mean)
    # the split mattered: decaying everything ends elsewhere (by ~1e-2, far beyond tolerance)
    for name in ("ln.weight", "bn.weight", "inp.bias"):
        diff = (ours.get_parameter(name) - everywhere.get_parameter(name)).abs().max()
        assert diff > 1e-3, name


def test_preset_classification() -> None:
    model = nn.ModuleDict({
        "conv": nn.Conv2d(1, 2, 3), "emb": nn.Embedding(5, 3), "gn": nn.GroupNorm(1, 2),
        "inorm": nn.InstanceNorm1d(2, affine=True), "rms": nn.RMSNorm(3), "prelu": nn.PReLU(),
    })
    f = no_decay_on_bias_and_norm(AdamW(1e-3, lambda_=0.05))
    st = setup(f, model)
    assert st.conv.weight.rule is f.decay and st.emb.weight.rule is f.decay  # type: ignore[attr-defined]
    for leaf in (st.conv.bias, st.gn.weight, st.gn.bias, st.inorm.weight, st.rms.weight,
                 st.prelu.weight):
        assert leaf.rule is f.no_decay  # type: ignore[attr-defined]
    assert f.no_decay == AdamW(1e-3, lambda_=0.0)  # type: ignore[attr-defined]
    # a 2-D "bias" is still spared (by name); a top-level bias too (no dot in its path)
    m = {"bias": torch.zeros(2, 2), "w": torch.zeros(2, 2)}
    st2 = setup(f, m)
    assert st2["bias"].rule is f.no_decay and st2["w"].rule is f.decay  # type: ignore[attr-defined]
    assert "no_decay_on_bias_and_norm(AdamW(" in repr(f)


def test_preset_reaches_chain_members() -> None:
    chain = OptimiserChain(ClipGrad(1.0), WeightDecay(0.1), Adam(1e-3))
    f = no_decay_on_bias_and_norm(chain)
    st = setup(f, nn.Linear(2, 2))
    assert st.weight.rule is chain
    assert st.bias.rule == OptimiserChain(ClipGrad(1.0), WeightDecay(0.0), Adam(1e-3))


def test_preset_refuses_rules_without_decay() -> None:
    with pytest.raises(ValueError, match=r"Adam\(.*has no weight decay"):
        no_decay_on_bias_and_norm(Adam())
    with pytest.raises(ValueError, match="no weight decay"):
        no_decay_on_bias_and_norm(AdamW())  # lambda_ = 0 already
    with pytest.raises(TypeError, match="needs a rule with weight decay.*str"):
        no_decay_on_bias_and_norm("adamw")  # type: ignore[arg-type]


# ============================================================================ acceptance 3
def test_double_match_names_both_patterns() -> None:
    with pytest.raises(ValueError, match=r"'0\.bias' is matched by 2 patterns, '0\.\*' and "
                                         r"'\*\.bias'"):
        setup({"0.*": Adam(), "*.bias": Descent(), "2.weight": Descent()}, mlp())
    # an exact path and a glob both count
    with pytest.raises(ValueError, match=r"'0\.weight' is matched by 2 patterns, '0\.weight' "
                                         r"and '0\.\*'"):
        setup({"0.weight": Descent(), "0.*": Adam()}, mlp(), default=Adam())


def test_unmatched_without_default_names_the_leaves() -> None:
    with pytest.raises(ValueError, match=r"2 trainable parameter\(s\) match no pattern: "
                                         r"\['2\.weight', '2\.bias'\].*default="):
        setup({"0.*": Adam()}, mlp())


def test_unmatched_take_the_default_rule() -> None:
    d = Momentum(0.1)
    st = setup({"0.*": Adam()}, mlp(), default=d)
    assert st[2].weight.rule is d and st[2].bias.rule is d
    assert st[2].weight == Leaf(d, torch.zeros(2, 4))


def test_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'0\.weigth' matches no trainable parameter.*"
                                         r"did you mean '0\.weight'.*Available paths: "
                                         r"\['0\.weight', '0\.bias', '2\.weight', '2\.bias'\]"):
        setup({"0.weigth": Adam(), "0.bias": Adam()}, mlp(), default=Descent())
    with pytest.raises(ValueError, match="'x' matches nothing: the model has no trainable"):
        setup({"x": Adam()}, {"n": 3})
    # a requires_grad=False parameter is not trainable, so a pattern for it alone fails
    m = mlp()
    m[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"'0\.weight' matches no trainable"):
        setup({"0.weight": Adam()}, m, default=Descent())


def test_many_available_paths_are_abbreviated() -> None:
    m = {f"p{i}": torch.zeros(1) for i in range(20)}
    with pytest.raises(ValueError, match=r"Available paths: \['p0', .*'p7', \.\.\. \(20 in all\)"):
        setup({"zzz": Adam()}, m, default=Adam())


def test_wrong_value_and_key_types() -> None:
    with pytest.raises(TypeError, match=r"value for pattern '0\.\*' must be a rule.*got str "
                                        r"'adam'"):
        setup({"0.*": "adam"}, mlp())
    with pytest.raises(TypeError, match=r"got the class Adam \(a type, not a rule: "
                                        r"did you mean Adam\(\)\?\)"):
        setup({"0.*": Adam}, mlp())
    with pytest.raises(TypeError, match="keys of a per-part mapping are path patterns.*int 0"):
        setup({0: Adam()}, mlp())
    with pytest.raises(TypeError, match="default must be a rule.*got str 'frozen'"):
        setup({"0.*": Adam()}, mlp(), default="frozen")
    with pytest.raises(TypeError, match="default= is for per-part rules"):
        setup(Adam(), mlp(), default=Descent())
    with pytest.raises(TypeError, match="other way round"):
        setup(mlp(), {"0.*": Adam()})
    with pytest.raises(TypeError, match=r"needs an optimisation rule.*the class Adam \(a type"):
        setup(Adam, mlp())


def test_function_returning_a_non_rule() -> None:
    with pytest.raises(TypeError, match=r"returned for '0\.weight' must be a rule.*got int 3"):
        setup(lambda path, x: 3, mlp())
    with pytest.raises(TypeError, match=r"returned for '0\.weight'.*got the class Descent"):
        setup(lambda path, x: Descent, mlp())


def test_function_returning_none_everywhere() -> None:
    with pytest.raises(ValueError, match=r"4 trainable.*\(the function returned None\)"):
        setup(lambda path, x: None, mlp())


def test_tie_with_conflicting_rules() -> None:
    w = torch.zeros(2)
    with pytest.raises(ValueError, match=r"'a' is tied to .* the one at 'b', but they get "
                                         r"different rules: Adam\(.*\(from pattern 'a'\) and "
                                         r"Descent\(.*\(from pattern 'b'\)"):
        setup({"a": Adam(), "b": Descent()}, {"a": w, "b": w})
    with pytest.raises(ValueError, match="tied to.*freeze"):
        setup({"a": Adam(), "b": "freeze"}, {"a": w, "b": w})


def test_ties_get_one_leaf() -> None:
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    r = Adam()
    st = setup({"0.*": r}, model)  # "2.*" is the same tensors: matched through "0.*"
    assert st[0].weight is st[2].weight and st[0].weight.rule is r
    st = setup({"0.*": r, "2.*": r}, model)
    assert st[0].bias is st[2].bias
    st = setup({"0.*": Descent(0.1), "2.*": Descent(0.1)}, model)  # equal rules agree
    assert st[2].weight.rule == Descent(0.1)
    w = torch.zeros(2)
    st = setup(lambda p, x: Descent(0.5), {"a": w, "b": w})
    assert st["a"] is st["b"]


def test_freeze_really_freezes() -> None:
    m = mlp()
    before = [p.detach().clone() for p in m.parameters()]
    st = setup({"2.*": Descent(0.1)}, m, default="freeze")
    assert st[0].weight.frozen and st[0].bias.frozen and not st[2].weight.frozen
    torch.manual_seed(3)
    for _ in range(3):
        update_(st, m, grads_of(m, torch.randn(5, 3)))
    assert torch.equal(m[0].weight, before[0]) and torch.equal(m[0].bias, before[1])
    assert not torch.equal(m[2].weight, before[2])
    # "freeze" as a mapping value, and the placeholder rule changes nothing after thaw_
    m2 = mlp()
    st2 = setup({"0.*": "freeze", "2.*": Adam()}, m2)
    assert st2[0].weight == Leaf(Descent(0.0), None, frozen=True)
    thaw_(st2)
    w0 = m2[0].weight.detach().clone()
    update_(st2, m2, grads_of(m2, torch.randn(5, 3)))
    assert torch.equal(m2[0].weight, w0)


def test_function_form() -> None:
    seen: list[str] = []

    def choose(path: str, x: torch.Tensor) -> Any:
        seen.append(path)
        return Adam(1e-3) if path.startswith("0.") else Descent(0.1)

    a = mlp()
    b = copy.deepcopy(a)
    st = setup(choose, a)
    assert seen == ["0.weight", "0.bias", "2.weight", "2.bias"]
    # fresh but equal rules are pooled into one object per group (one batch, one whole-tree group)
    assert st[0].weight.rule is st[0].bias.rule and st[2].weight.rule is st[2].bias.rule
    ref = setup({"0.*": Adam(1e-3), "2.*": Descent(0.1)}, b)
    x = torch.randn(5, 3)
    update_(st, a, grads_of(a, x))
    update_(ref, b, grads_of(b, x))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # the function may freeze, and sees the model's own objects
    st = setup(lambda p, x: "freeze" if isinstance(x, nn.Parameter) and x.ndim == 1
               else Descent(), mlp())
    assert st[0].bias.frozen and not st[0].weight.frozen


def test_function_with_unhashable_rules_still_pools() -> None:
    @dataclasses.dataclass(eq=True)  # eq without frozen: unhashable
    class Scaled(fluxtrain.optimisers.AbstractRule):
        eta: float = 0.1

        def apply(self, state: Any, x: torch.Tensor, dx: torch.Tensor) -> Any:
            return state, dx * self.eta

    st = setup(lambda p, x: Scaled(0.5), mlp())
    assert st[0].weight.rule is st[2].bias.rule


def test_paths_of_other_trees() -> None:
    class NT(NamedTuple):
        w: torch.Tensor
        n: int

    @dataclasses.dataclass
    class DC:
        a: torch.Tensor
        skip: torch.Tensor = dataclasses.field(metadata={"trainable": False})

    model = {
        "enc": [torch.zeros(2), (torch.zeros(1),)],
        "nt": NT(torch.zeros(3), 4),
        "dc": DC(torch.zeros(1), torch.zeros(1)),
        "np": np.zeros(2),
    }
    got: list[str] = []
    setup(lambda p, x: got.append(p) or Descent(), model)
    assert got == ["enc.0", "enc.1.0", "nt.w", "dc.a", "np"]
    st = setup({"enc.*": Adam(), "nt.w": Descent(0.1), "dc.a": Momentum(), "np": Descent(0.2)},
               model)
    assert st["enc"][1][0].rule == Adam() and st["nt"].w.rule == Descent(0.1)
    assert st["dc"].skip == () and st["np"].rule == Descent(0.2)


def test_old_optimisers_as_values_translate() -> None:
    a = mlp()
    b = copy.deepcopy(a)
    with pytest.warns(FluxDeprecationWarning, match="old-style.*Descent"):
        st = setup({"0.*": optimise.Descent(0.1), "2.*": Adam()}, a)
    assert st[0].weight.rule == Descent(0.1) and st[0].weight.rule is st[0].bias.rule
    ref = setup({"0.*": Descent(0.1), "2.*": Adam()}, b)
    x = torch.randn(5, 3)
    update_(st, a, grads_of(a, x))
    update_(ref, b, grads_of(b, x))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.warns(FluxDeprecationWarning):
        st = setup({"0.*": Adam()}, mlp(), default=optimise.Momentum(0.1))
    assert st[2].bias.rule == Momentum(0.1, 0.9)


# ============================================================================ acceptance 4
def test_through_fluxtrain_setup_and_train_() -> None:
    a = mlp()
    b = copy.deepcopy(a)
    torch.manual_seed(5)
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(4)]

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((m(x) - y) ** 2).mean()

    st = fluxtrain.setup({"0.*": Adam(1e-2)}, a, default="freeze")
    fluxtrain.train_(loss, a, data, st, progress=False)
    # reference: the same steps, by hand, on the first layer only
    s0 = fluxtrain.setup(Adam(1e-2), b[0])
    for x, y in data:
        g = fluxtrain.gradient(loss, b, x, y)[0]
        fluxtrain.update_(s0, b[0], g[0])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a[2].weight, mlp()[2].weight)  # frozen part unchanged
    # Flux's setup keeps its mutability check for per-part rules
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="model must be fully mutable"):
        fluxtrain.setup({"w": Descent()}, {"w": ro})
    with pytest.raises(ValueError, match="match no pattern"):
        fluxtrain.setup({"0.*": Adam()}, mlp())


def test_checkpoint_round_trip_of_per_part_state() -> None:
    from fluxtrain import checkpoint

    m = mlp()
    st = setup({"0.*": Adam(1e-3), "2.weight": Descent(0.1)}, m, default="freeze")
    update_(st, m, grads_of(m, torch.randn(2, 3)))
    back = checkpoint.load_state_dict(checkpoint.state_dict(st, m), m)
    assert back == st


def test_whole_tree_members_see_the_leaves_of_their_rule_object() -> None:
    ClipGlobalNorm = getattr(fluxtrain.optimisers, "ClipGlobalNorm", None)
    if ClipGlobalNorm is None:
        pytest.skip("ClipGlobalNorm not in fluxtrain.optimisers yet")
    clip = OptimiserChain(ClipGlobalNorm(0.1), Descent(0.5))
    torch.manual_seed(2)
    x = torch.randn(5, 3)
    # one pattern: the norm is taken over part 0 only, as a separate setup of part 0 does
    a = mlp()
    b = copy.deepcopy(a)
    st = setup({"0.*": clip, "2.*": Descent(0.5)}, a)
    s0, s2 = setup(clip, b[0]), setup(Descent(0.5), b[2])
    update_(st, a, grads_of(a, x))
    gb = grads_of(b, x)
    update_(s0, b[0], gb[0])
    update_(s2, b[2], gb[2])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # the same object under two patterns, or equal rules from a function: one group,
    # exactly as one rule for the whole model
    for rules in ({"0.*": clip, "2.*": clip},
                  lambda p, t: OptimiserChain(ClipGlobalNorm(0.1), Descent(0.5))):
        a = mlp()
        b = copy.deepcopy(a)
        st, whole = setup(rules, a), setup(clip, b)
        update_(st, a, grads_of(a, x))
        update_(whole, b, grads_of(b, x))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # and the per-part split really differs from one global norm
    c = mlp()
    update_(setup({"0.*": clip, "2.*": OptimiserChain(ClipGlobalNorm(0.1), Descent(0.5))}, c),
            c, grads_of(c, x))
    assert not torch.equal(c[0].weight, a[0].weight)
