"""The ``unlearn`` effect handler: flags the erased observations D_e of a model.

The unlearning losses read log p(D_e|θ) only from flagged sites (:func:`erased_log_likelihood`);
priors, ``pyro.factor`` sites and unflagged observations are never part of it.
"""

from .messenger import (
    ERASED,
    SUBSAMPLE_MODES,
    UnlearnMessenger,
    erased_log_likelihood,
    is_erased,
    unlearn,
)

__all__ = [
    "ERASED",
    "SUBSAMPLE_MODES",
    "UnlearnMessenger",
    "erased_log_likelihood",
    "is_erased",
    "unlearn",
]
