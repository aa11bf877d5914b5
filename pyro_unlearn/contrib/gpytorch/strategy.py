"""Which GPyTorch variational strategies and distributions q(u) can be unlearned; copying a GP."""

from __future__ import annotations

import copy

import gpytorch
from gpytorch.variational import (
    CholeskyVariationalDistribution,
    MeanFieldVariationalDistribution,
    NaturalVariationalDistribution,
    TrilNaturalVariationalDistribution,
    UnwhitenedVariationalStrategy,
    VariationalStrategy,
)

__all__ = [
    "NATURAL_DISTRIBUTIONS",
    "clear_caches",
    "clone",
    "variational_strategy",
]

STRATEGIES = (VariationalStrategy, UnwhitenedVariationalStrategy)
#: The natural-parameter q(u), stepped by :class:`gpytorch.optim.NGD` (not by Pyro's optimisers).
NATURAL_DISTRIBUTIONS = (NaturalVariationalDistribution, TrilNaturalVariationalDistribution)
DISTRIBUTIONS = (
    CholeskyVariationalDistribution,
    MeanFieldVariationalDistribution,
    *NATURAL_DISTRIBUTIONS,
)


def variational_strategy(gp: gpytorch.models.ApproximateGP) -> VariationalStrategy:
    """The variational strategy of ``gp``, checked to be one that unlearning supports.

    Arguments:
        gp: a GPyTorch ``ApproximateGP`` with a whitened :class:`~gpytorch.variational.\
VariationalStrategy` or an :class:`~gpytorch.variational.UnwhitenedVariationalStrategy`, and a
            Cholesky, mean-field or natural-parameter q(u).

    Returns:
        ``gp.variational_strategy``.

    Raises:
        TypeError: for anything else, naming what is supported.
    """
    strategy = getattr(gp, "variational_strategy", None)
    if strategy is None:
        raise TypeError(
            f"expected a gpytorch.models.ApproximateGP with a variational_strategy, got "
            f"{type(gp).__name__}"
        )
    if not isinstance(strategy, STRATEGIES):
        raise TypeError(
            f"{type(strategy).__name__} is not supported: use VariationalStrategy (whitened) or "
            "UnwhitenedVariationalStrategy (a batch GP, with batch_shape, gives several outputs)"
        )
    if not isinstance(strategy._variational_distribution, DISTRIBUTIONS):
        raise TypeError(
            f"{type(strategy._variational_distribution).__name__} is not supported: use "
            "CholeskyVariationalDistribution, MeanFieldVariationalDistribution, or (with "
            "gpytorch.optim.NGD and the mlls-style objectives) NaturalVariationalDistribution or "
            "TrilNaturalVariationalDistribution"
        )
    return strategy


def clear_caches(gp: gpytorch.models.ApproximateGP) -> None:
    """Drop the tensors ``gp``'s modules cache from their last call (recomputed on the next).

    A deep copy refuses them, and after ``gp.eval()`` they are stale while q(u) trains."""
    for module in gp.modules():
        clear = getattr(module, "_clear_cache", None)
        if callable(clear):
            clear()


def clone(gp: gpytorch.models.ApproximateGP) -> gpytorch.models.ApproximateGP:
    """An independent copy of a (trained) GP, ``variational_params_initialized`` included.

    ``copy.deepcopy`` of a GP fails while its strategy caches tensors of the last call; the caches
    are cleared first (:func:`clear_caches`).

    Arguments:
        gp: any GPyTorch model.

    Returns:
        A deep copy of ``gp``, sharing no tensor with it.
    """
    clear_caches(gp)
    return copy.deepcopy(gp)
