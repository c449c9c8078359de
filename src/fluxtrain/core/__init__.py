"""Layer 1: the rule core. Every rule's arithmetic lives here and nowhere else."""

from fluxtrain.core.base import AbstractRule, State, Step, maywrite
from fluxtrain.core.batched import apply_batched, group_key, needs_whole_tree
from fluxtrain.core.hyper import cast, eps_for
from fluxtrain.core.ops import add_grads, check_grad, subtract, subtract_, subtract_many_
from fluxtrain.core.rules import *  # noqa: F403
from fluxtrain.core.rules import __all__ as _rules_all
from fluxtrain.core.transforms import ClipGlobalNorm, SkipNonFinite, SkipNonFiniteState

__all__ = [
    "AbstractRule",
    "State",
    "Step",
    "maywrite",
    "apply_batched",
    "group_key",
    "needs_whole_tree",
    "cast",
    "eps_for",
    "add_grads",
    "check_grad",
    "subtract",
    "subtract_",
    "subtract_many_",
    *_rules_all,
    "ClipGlobalNorm",
    "SkipNonFinite",
    "SkipNonFiniteState",
]
