"""Importance log-weights summarised: PSIS k̂, the KL estimate with its error, effective sizes."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["WeightSummary", "as_log_weights", "pareto_smooth", "summarize_weights"]

#: Log-weights that vary by less than this (relative to their size) are equal up to rounding.
_EQUAL = 1e-5


class WeightSummary(NamedTuple):
    """What :func:`summarize_weights` reads off log w_s = log p̃(θ_s) − log r(θ_s), θ_s ~ r."""

    #: PSIS k̂ of the weights' tail (−∞: weights equal up to rounding, bounded).
    pareto_k: float
    #: KL(r ‖ p̃/Z̃) ≈ log Ẑ − mean log w, log Ẑ the log-mean of the smoothed weights.
    kl: float
    #: the Monte-Carlo standard error of ``kl`` (delta method).
    kl_se: float
    #: the effective sample size (Σw)²/Σw² of the smoothed weights.
    ess: float
    #: the same of the raw weights.
    raw_ess: float


def as_log_weights(log_weights: torch.Tensor, what: str) -> np.ndarray:
    """Log-weights ``(S,)`` as float64 NumPy for ArviZ, refusing non-finite ones.

    Arguments:
        log_weights: a tensor on any device.
        what: what they are, for the error.

    Returns:
        A float64 array (one transfer from the device: PSIS is NumPy).

    Raises:
        ValueError: naming the first non-finite value and how many there are.

    Example:
        >>> as_log_weights(torch.tensor([0.0, -1.0]), "log w")
        array([ 0., -1.])
    """
    values = log_weights.detach().to("cpu", torch.float64).numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"{what} is {values[bad][0]} at {int(bad.sum())} of {values.size} draws: the target "
            "q(θ|D)/p_adj(D_e|θ) or the posterior is not finite there"
        )
    return values


def pareto_smooth(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log-weights (unnormalised) and k̂, by ArviZ's ``psislw``.

    Weights equal up to the rounding of the densities are bounded: k̂ = −∞ (ArviZ's tail fit
    would find no tail and answer +∞).

    Arguments:
        log_weights: float64 log-weights ``(S,)``.

    Returns:
        ``(smoothed, k)``.

    References:
        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

    Example:
        >>> pareto_smooth(np.zeros(100))[1]
        -inf
    """
    if float(np.ptp(log_weights)) <= _EQUAL * (1.0 + float(np.abs(log_weights).max())):
        return log_weights.copy(), -math.inf
    from arviz import psislw  # on use: ArviZ imports pandas, which the library must not load

    smoothed, k = psislw(log_weights, reff=1.0, normalize=False)
    return np.asarray(smoothed, dtype=np.float64), float(k)


def _log_mean_exp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + float(np.log(np.mean(np.exp(values - top))))


def _ess(log_weights: np.ndarray) -> float:
    ratio = np.exp(log_weights - log_weights.max())
    return float(ratio.sum() ** 2 / (ratio**2).sum())


def summarize_weights(log_weights: np.ndarray) -> WeightSummary:
    r"""k̂, the KL estimate and the effective sample sizes of importance log-weights:

    .. math:: \widehat{\mathrm{KL}}(r \,\|\, \tilde p/\tilde Z) = \log \hat Z − \bar L, \quad
              \log \hat Z = \log \tfrac1S \textstyle\sum_s \tilde w_s, \quad
              \bar L = \tfrac1S \textstyle\sum_s \log w_s,

    w̃ the Pareto-smoothed weights; L̄ ≤ log Z̃ is the evidence lower bound and log Ẑ the
    importance estimate, so their gap estimates the KL. Its standard error is the delta
    method's: the standard deviation of w̃_s/mean w̃ − (log w_s − L̄), over √S.

    Arguments:
        log_weights: float64 log-weights ``(S,)``, θ_s ~ r.

    Returns:
        A :class:`WeightSummary`.

    References:
        Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
        Variational Inference. ICML 2018.

    Example:
        >>> theta = np.random.default_rng(0).normal(0.0, 1.5, 4000)  # r = N(0, 1.5²)
        >>> log_w = -0.5 * theta**2 + 0.5 * (theta / 1.5) ** 2 + np.log(1.5)  # p̃ = N(0, 1)
        >>> s = summarize_weights(log_w)
        >>> true = 0.5 * (1.5**2 - 1 - float(np.log(1.5**2)))  # KL(N(0, 1.5²) ‖ N(0, 1))
        >>> s.pareto_k < 0.5, abs(s.kl - true) < 4 * s.kl_se
        (True, True)
    """
    smoothed, k = pareto_smooth(log_weights)
    log_z = _log_mean_exp(smoothed)
    mean = float(log_weights.mean())
    ratio = np.exp(smoothed - log_z)  # w̃_s / mean w̃
    influence = ratio - (log_weights - mean)  # of (mean w̃, L̄) on log Ẑ − L̄
    kl_se = float(influence.std(ddof=1)) / math.sqrt(log_weights.size)
    return WeightSummary(k, log_z - mean, kl_se, _ess(smoothed), _ess(log_weights))
