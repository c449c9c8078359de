"""Layer 2: the explicit tree API of Optimisers.jl (setup, update, adjust, freeze)."""

from fluxtrain.core.base import AbstractRule
from fluxtrain.core.rules import *  # noqa: F403
from fluxtrain.core.rules import __all__ as _rules_all
from fluxtrain.core.schedules import (
    Constant,
    ExponentialDecay,
    InverseTimeDecay,
    Join,
    LinearRamp,
    Schedule,
    ScheduledState,
    StepDecay,
    WarmupCosine,
)
from fluxtrain.core.transforms import ClipGlobalNorm, SkipNonFinite, SkipNonFiniteState
from fluxtrain.optimisers.adjust import adjust, adjust_, freeze_, thaw_
from fluxtrain.optimisers.interface import setup, update, update_
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.parts import no_decay_on_bias_and_norm
from fluxtrain.optimisers.skipped import skipped_steps
from fluxtrain.optimisers.trainables import trainables
from fluxtrain.optimisers.tree import StateTree

__all__ = [
    "AbstractRule",
    *_rules_all,
    "ClipGlobalNorm",
    "SkipNonFinite",
    "SkipNonFiniteState",
    "skipped_steps",
    "Schedule",
    "Constant",
    "LinearRamp",
    "StepDecay",
    "ExponentialDecay",
    "InverseTimeDecay",
    "WarmupCosine",
    "Join",
    "ScheduledState",
    "Leaf",
    "StateTree",
    "setup",
    "update",
    "update_",
    "adjust",
    "adjust_",
    "freeze_",
    "thaw_",
    "trainables",
    "no_decay_on_bias_and_norm",
]
