"""One call that unlearns: runs the SVI loop with a progress bar until the loss has converged."""

from .checks import check_erased_rows
from .convergence import has_converged, run_until_flat
from .methods import METHODS, loss_option_names
from .result import ForgetResult
from .run import forget

__all__ = [
    "METHODS",
    "ForgetResult",
    "check_erased_rows",
    "forget",
    "has_converged",
    "loss_option_names",
    "run_until_flat",
]
