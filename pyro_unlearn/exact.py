"""Closed-form unlearning for conjugate models: the exact targets the approximate methods chase."""

from __future__ import annotations

import torch

__all__ = ["NotNormalizableError", "gaussian_linear_posterior", "gaussian_linear_unlearn"]


def _checked(X: torch.Tensor, y: torch.Tensor, noise_scale) -> tuple:
    if X.dim() != 2 or y.shape != X.shape[:1]:
        raise ValueError(f"features must be (N, D) and targets (N,), got {X.shape}, {y.shape}")
    return X, y, 1.0 / torch.as_tensor(noise_scale, dtype=X.dtype, device=X.device) ** 2


class NotNormalizableError(ValueError):
    """q(θ|D)/p(D_e|θ) is not a distribution: the division left no valid posterior."""


def gaussian_linear_unlearn(
    loc: torch.Tensor,
    precision: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    noise_scale: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide a Gaussian posterior N(μ_q, Λ_q⁻¹) by the likelihood of y_e = X_e θ + N(0, σ²):

    .. math:: \tilde Λ = Λ_q − σ^{-2} X_e^\top X_e, \qquad
              \tilde Λ \tilde μ = Λ_q μ_q − σ^{-2} X_e^\top y_e

    Returns ``(loc, precision)`` of p̃(θ|D_r). Raises :class:`NotNormalizableError` when Λ̃ is
    not positive definite: the erased points were never in the posterior, or q is not the exact
    posterior. Example::

        >>> loc, prec = gaussian_linear_unlearn(torch.zeros(1), torch.eye(1) * 3,
        ...                                      torch.ones(2, 1), torch.ones(2), 1.0)
        >>> prec.item(), loc.item()
        (1.0, -2.0)
    """
    X, y, inv_var = _checked(features, targets, noise_scale)
    new_precision = precision - inv_var * X.T @ X
    new_precision = 0.5 * (new_precision + new_precision.T)
    chol, info = torch.linalg.cholesky_ex(new_precision)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(new_precision)[0])
        raise NotNormalizableError(
            "the unlearned precision is not positive definite "
            f"(smallest eigenvalue {smallest:.3g}): the erased points carry more information "
            "than q(θ|D) holds — were they ever in the training data, and is q(θ|D) the exact "
            "posterior?"
        )
    rhs = precision @ loc - inv_var * X.T @ y
    new_loc = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    return new_loc, new_precision


def gaussian_linear_posterior(
    loc: torch.Tensor,
    precision: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    noise_scale: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for a Gaussian prior N(μ, Λ⁻¹) and y = X θ + N(0, σ²), the exact p(θ|D):

    .. math:: Λ_D = Λ + σ^{-2} X^\top X, \qquad Λ_D μ_D = Λ μ + σ^{-2} X^\top y

    Returns ``(loc, precision)``; the reference for retraining on D_r. Example::

        >>> loc, prec = gaussian_linear_posterior(torch.zeros(1), torch.eye(1),
        ...                                       torch.ones(2, 1), torch.ones(2), 1.0)
        >>> prec.item(), round(loc.item(), 4)
        (3.0, 0.6667)
    """
    X, y, inv_var = _checked(features, targets, noise_scale)
    new_precision = precision + inv_var * X.T @ X
    new_precision = 0.5 * (new_precision + new_precision.T)
    rhs = precision @ loc + inv_var * X.T @ y
    return torch.linalg.solve(new_precision, rhs), new_precision
