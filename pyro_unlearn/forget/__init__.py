"""One call that unlearns: runs the SVI loop with a progress bar until the loss has converged."""

from .auto import AUTO, AUTO_LADDER, Rung
from .checks import check_erased_rows
from .convergence import (
    COLLAPSED_ESS,
    COLLAPSED_ESS_FRACTION,
    WeightCollapseWarning,
    collapsed_ess_threshold,
    has_converged,
    run_until_flat,
    weights_collapsed,
)
from .methods import METHODS, loss_option_names
from .result import ForgetResult
from .run import forget

__all__ = [
    "AUTO",
    "AUTO_LADDER",
    "Rung",
    "COLLAPSED_ESS",
    "COLLAPSED_ESS_FRACTION",
    "METHODS",
    "ForgetResult",
    "WeightCollapseWarning",
    "check_erased_rows",
    "collapsed_ess_threshold",
    "forget",
    "has_converged",
    "loss_option_names",
    "run_until_flat",
    "weights_collapsed",
]
