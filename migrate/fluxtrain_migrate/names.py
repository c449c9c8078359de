"""Static tables of fluxtrain's public names (no torch import at codemod time).

The coverage test in ``tests/migrate/test_coverage.py`` checks these tables
against the real ``fluxtrain.__all__`` and ``fluxtrain.optimise.__all__``.
"""

from __future__ import annotations

#: Old optimisers of ``fluxtrain.optimise`` (= Flux.Optimise), including aliases.
OLD_OPTIMISERS: frozenset[str] = frozenset(
    """AbstractOptimiser Descent Momentum Nesterov RMSProp Adam RAdam AdaMax OAdam
    AdaGrad AdaDelta AMSGrad NAdam AdamW AdaBelief InvDecay ExpDecay WeightDecay
    ClipValue ClipNorm Optimiser ADAM NADAM ADAMW RADAM OADAM ADAGrad ADADelta""".split()
)

#: ``fluxtrain.optimise.__all__``.
OPTIMISE_ALL: frozenset[str] = OLD_OPTIMISERS | {"update_", "train_", "stop", "skip"}

#: ``fluxtrain.__all__`` (Flux 0.13.9+: both styles side by side).
FLUXTRAIN_ALL: frozenset[str] = frozenset(
    """optimise optimisers setup train_ update_ gradient withgradient params Params
    Grads throttle stop skip epochs adjust adjust_ freeze_ thaw_ trainables Leaf
    DomainError FluxDeprecationWarning OptimiserChain ClipGrad checkpoint distributed
    torch_optim flatten_ FlatLayout pullback loadparams_ early_stopping patience
    plateau""".split()
) | OLD_OPTIMISERS

#: New-style rules of ``fluxtrain.optimisers`` the codemod may emit.
NEW_RULES: frozenset[str] = frozenset(
    """Descent Momentum Nesterov RMSProp Adam RAdam AdaMax OAdam AdaGrad AdaDelta
    AMSGrad NAdam AdamW AdaBelief WeightDecay ClipGrad ClipNorm OptimiserChain
    InvDecay ExpDecay""".split()
)

#: Uppercase deprecated aliases.
ALIASES: dict[str, str] = {
    "ADAM": "Adam",
    "NADAM": "NAdam",
    "ADAMW": "AdamW",
    "RADAM": "RAdam",
    "OADAM": "OAdam",
    "ADAGrad": "AdaGrad",
    "ADADelta": "AdaDelta",
}

#: old name -> (new rule name, {old keyword: new keyword}).  Positional order is kept.
#: AdamW and AdaBelief get extra treatment in the optimiser rule (FM004).
TRANSLATE: dict[str, tuple[str, dict[str, str]]] = {
    **{n: (n, {}) for n in (
        "Descent Momentum Nesterov RMSProp Adam RAdam AdaMax OAdam AdaGrad AdaDelta "
        "AMSGrad NAdam AdaBelief InvDecay ExpDecay".split()
    )},
    "AdamW": ("AdamW", {"decay": "lambda_"}),
    "WeightDecay": ("WeightDecay", {"wd": "lambda_"}),
    "ClipValue": ("ClipGrad", {"thresh": "delta"}),
    "ClipGrad": ("ClipGrad", {"thresh": "delta"}),
    "ClipNorm": ("ClipNorm", {"thresh": "omega"}),
    "Optimiser": ("OptimiserChain", {}),
    "OptimiserChain": ("OptimiserChain", {}),
}
for _alias, _target in ALIASES.items():
    TRANSLATE[_alias] = TRANSLATE[_target]

#: Names of the explicit API (in ``fluxtrain``) the codemod emits.
EMITTED_API: frozenset[str] = frozenset(
    "setup train_ update_ gradient withgradient adjust_ freeze_ trainables DomainError "
    "optimisers".split()
)

#: Every implicit-era name of ``fluxtrain``/``fluxtrain.optimise`` and what handles it:
#: a rule id (rewritten) or a marker code (left for the user, with the marker text).
IMPLICIT_ERA: dict[str, str] = {
    "params": "FM001",
    "gradient": "FM003",
    "withgradient": "FM003",
    "update_": "FM004",
    "train_": "FM005",
    "stop": "FM005",
    "skip": "FM005",
    "epochs": "FM006",
    "Params": "FM110",
    "loadparams_": "FM110",
    "pullback": "FM105",
    "Grads": "FM110",
    "AbstractOptimiser": "FM110",
    **{n: "FM004" for n in OLD_OPTIMISERS if n != "AbstractOptimiser"},
    "OptimiserChain": "FM004",
    "ClipGrad": "FM004",
}

#: Names of ``fluxtrain`` that are fine in explicit code and are left as they are.
KEPT: frozenset[str] = frozenset(
    """optimise optimisers setup adjust adjust_ freeze_ thaw_ trainables Leaf DomainError
    FluxDeprecationWarning throttle checkpoint distributed torch_optim flatten_
    FlatLayout early_stopping patience plateau""".split()
)
