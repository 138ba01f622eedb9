"""AutoNAT's generation-strategy search (Sec. 4.2): the xi vector and its feasible set, forward-difference
gradients with projected momentum SGD, one search session (objective, update, files, state) shared by the Lightning
callback (lit_nat.callbacks.ScheduleSearch) that runs it between training epochs and the stand-alone ``search`` command;
the training-strategy line search over Beta(alpha, beta) (Sec. 4.3); the
alternating driver of Algorithm 1 (``autonat`` command, Sec. 4.1)."""

from lit_nat.search.alternating import AutoNAT
from lit_nat.search.gradient import GradientEstimate, StrategySearch, UpdateRecord, estimate_gradient
from lit_nat.search.launchers import CandidateResult, LocalLauncher, SearchStep, SlurmLauncher
from lit_nat.search.line_search import BetaLineSearch, LineSearchResult
from lit_nat.search.session import SearchSession, SearchSettings
from lit_nat.search.strategy import Group, SearchSpace, default_groups

__all__ = [
    "AutoNAT",
    "CandidateResult",
    "LocalLauncher",
    "SearchStep",
    "SlurmLauncher",
    "BetaLineSearch",
    "LineSearchResult",
    "GradientEstimate",
    "Group",
    "SearchSession",
    "SearchSettings",
    "SearchSpace",
    "StrategySearch",
    "UpdateRecord",
    "default_groups",
    "estimate_gradient",
]
