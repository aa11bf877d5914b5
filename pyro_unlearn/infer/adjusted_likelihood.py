"""The adjusted likelihood p_adj(D_e|θ; λ), which curbs unlearning where q(θ|D) is unreliable."""

from __future__ import annotations

import math

import torch

from ..validation import check_in_unit_interval

__all__ = ["adjusted_log_likelihood", "check_lam", "log_threshold"]


def check_lam(lam: float) -> float:
    """Validate the adjusted likelihood's λ and return it as a float.

    Arguments:
        lam: λ ∈ [0, 1]: a real number (a Python or 0-dim tensor number; not a string).

    Returns:
        ``float(lam)``.

    Raises:
        TypeError: when ``lam`` is not a real number (a string, a bool, a tensor of several
            values).
        ValueError: when it is outside [0, 1] (or nan).

    Example:
        >>> check_lam(1e-3)
        0.001
    """
    return check_in_unit_interval("lam", lam)


def log_threshold(lam: float, log_q_max: torch.Tensor) -> torch.Tensor:
    """The adjusted likelihood's threshold on log q(θ|D): log λ + log q*.

    Arguments:
        lam: λ ∈ [0, 1].
        log_q_max: log q* = max_θ log q(θ|D), a tensor.

    Returns:
        A tensor like ``log_q_max``; −∞ for λ = 0 (the plain likelihood).

    Example:
        >>> log_threshold(0.0, torch.tensor(-1.0))
        tensor(-inf)
    """
    if lam == 0.0:
        return torch.full_like(log_q_max, -math.inf)
    return log_q_max + math.log(lam)


def adjusted_log_likelihood(
    log_lik: torch.Tensor, log_q: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    r"""The adjusted log-likelihood log p_adj(D_e|θ; λ) per particle, one tensor op:

    .. math:: \log p_\mathrm{adj} = \begin{cases} \log p(D_e|θ) & \log q(θ|D) > \log λ + \log q^*
              \\ 0 & \text{otherwise} \end{cases}

    Unlearning is curbed where q(θ|D) is small, where VI's q(θ|D) is least reliable.

    Arguments:
        log_lik: log p(D_e|θ_s), shape ``(S,)``.
        log_q: log q(θ_s|D), shape ``(S,)``.
        threshold: log λ + log q* (:func:`log_threshold`).

    Returns:
        A tensor of shape ``(S,)``.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3.3.1, eq. 6).

    Example:

        >>> adjusted_log_likelihood(torch.tensor([-3.0, -5.0]), torch.tensor([-1.0, -9.0]),
        ...                         torch.tensor(-4.0))
        tensor([-3., 0.])
    """
    return torch.where(log_q > threshold, log_lik, torch.zeros_like(log_lik))
