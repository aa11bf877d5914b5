"""The adjusted likelihood p_adj(D_e|θ; λ), which curbs unlearning where q(θ|D) is unreliable."""

from __future__ import annotations

import math

import torch

__all__ = ["adjusted_log_likelihood", "check_lam", "log_threshold"]


def check_lam(lam: float) -> float:
    """Validate λ ∈ [0, 1] and return it as a float."""
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise TypeError(f"lam must be a number in [0, 1], got {lam!r}") from None
    if not 0.0 <= lam <= 1.0:  # also rejects nan
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return lam


def log_threshold(lam: float, log_q_max: torch.Tensor) -> torch.Tensor:
    """log λ + log q*; −∞ for λ = 0 (the plain likelihood)."""
    if lam == 0.0:
        return torch.full_like(log_q_max, -math.inf)
    return log_q_max + math.log(lam)


def adjusted_log_likelihood(
    log_lik: torch.Tensor, log_q: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    r"""log p_adj(D_e|θ; λ) per particle, as one tensor op over the particle dim:

    .. math:: \log p_\mathrm{adj} = \begin{cases} \log p(D_e|θ) & \log q(θ|D) > \log λ + \log q^*
              \\ 0 & \text{otherwise} \end{cases}

    Example::

        >>> adjusted_log_likelihood(torch.tensor([-3.0, -5.0]), torch.tensor([-1.0, -9.0]),
        ...                         torch.tensor(-4.0))
        tensor([-3., 0.])
    """
    return torch.where(log_q > threshold, log_lik, torch.zeros_like(log_lik))
