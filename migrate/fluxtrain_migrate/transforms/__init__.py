"""One transformer per rewrite; ``RULES`` is the order they run in (one parse per file)."""

from fluxtrain_migrate.transforms.epochs import EpochsRule
from fluxtrain_migrate.transforms.gradients import GradientRule
from fluxtrain_migrate.transforms.imports import ImportsRule
from fluxtrain_migrate.transforms.losses import LossRule
from fluxtrain_migrate.transforms.optimisers import OptimiserRule
from fluxtrain_migrate.transforms.params import ParamsRule
from fluxtrain_migrate.transforms.train import TrainRule

#: Order matters: optimisers before losses before gradients before train_, params last,
#: imports after everything.
RULES = [EpochsRule, OptimiserRule, LossRule, GradientRule, TrainRule, ParamsRule, ImportsRule]

#: Rules that only make sense together (disabling one disables its dependents).
DEPENDS: dict[str, set[str]] = {
    "FM003": {"FM002", "FM004"},
    "FM004": {"FM003"},
    "FM005": {"FM002", "FM004"},
}

__all__ = ["RULES", "DEPENDS"]
