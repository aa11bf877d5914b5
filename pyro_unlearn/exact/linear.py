"""Bayesian linear regression, y = X θ + N(0, σ²): Bayes' rule and its inverse for a Gaussian
prior with known noise (Gaussian–linear) and for unknown noise (Normal–inverse-Gamma)."""

from __future__ import annotations

import torch

from ._checks import (
    ERASED,
    PRIOR,
    check_not_empty,
    common_dtype,
    gaussian_parameters,
    inverse_variance,
    normalizable,
    positive,
    real_tensor,
)
from .conjugate import gaussian_update

__all__ = [
    "gaussian_linear_posterior",
    "gaussian_linear_unlearn",
    "normal_inverse_gamma_posterior",
    "normal_inverse_gamma_unlearn",
]


def _linear(loc, precision, X, y, erased: bool) -> tuple[torch.Tensor, ...]:
    """μ, Λ, X, y checked (types, shapes, finiteness, Λ) and cast to one floating dtype."""
    loc, precision = gaussian_parameters(loc, precision, erased)
    X, y = real_tensor(X, "features"), real_tensor(y, "targets")
    D = X.shape[-1:]
    if X.dim() != 2 or y.shape != X.shape[:1] or loc.shape != D or precision.shape != D + D:
        raise ValueError(
            "features must be (N, D), targets (N,), loc (D,) and precision (D, D), got "
            f"{tuple(X.shape)}, {tuple(y.shape)}, {tuple(loc.shape)}, {tuple(precision.shape)}"
        )
    if erased:
        check_not_empty(X, "features")
    dtype = common_dtype(loc, precision, X, y)
    return loc.to(dtype), precision.to(dtype), X.to(dtype), y.to(dtype)


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

    Returns ``(loc, precision)`` of p̃(θ|D_r). Raises
    :class:`~pyro_unlearn.exact.NotNormalizableError` when Λ̃ is not positive definite: the erased
    points were never in the posterior, or q is not the exact posterior. Example::

        >>> loc, prec = gaussian_linear_unlearn(torch.zeros(1), torch.eye(1) * 3,
        ...                                      torch.ones(2, 1), torch.ones(2), 1.0)
        >>> prec.item(), loc.item()
        (1.0, -2.0)
    """
    loc, precision, X, y = _linear(loc, precision, features, targets, erased=True)
    w = inverse_variance(noise_scale, X)
    return gaussian_update(loc, precision, -w * X.T @ X, -w * X.T @ y, ERASED)


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
    loc, precision, X, y = _linear(loc, precision, features, targets, erased=False)
    w = inverse_variance(noise_scale, X)
    return gaussian_update(loc, precision, w * X.T @ X, w * X.T @ y, PRIOR)


def _scale_gap(loc_big, loc_small, precision_small, X, y) -> torch.Tensor:
    """b_big − b_small = ½‖y − X μ_big‖² + ½ (μ_big − μ_small)ᵀ Λ_small (μ_big − μ_small)."""
    residual, shift = y - X @ loc_big, loc_big - loc_small
    return 0.5 * (residual @ residual + shift @ precision_small @ shift)


def normal_inverse_gamma_posterior(
    loc: torch.Tensor,
    precision: torch.Tensor,
    shape: float | torch.Tensor,
    scale: float | torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for y = X θ + N(0, σ²) under θ|σ² ~ N(μ, σ² Λ⁻¹), σ² ~ InvGamma(a, b):

    .. math:: Λ_D = Λ + X^\top X, \quad Λ_D μ_D = Λ μ + X^\top y, \quad a_D = a + N/2, \quad
              b_D = b + ½‖y − X μ_D‖² + ½ (μ_D − μ)^\top Λ (μ_D − μ)

    Returns ``(loc, precision, shape, scale)``: σ² ~ ``InverseGamma(shape, scale)`` and θ is
    marginally Student-t with 2a degrees of freedom, location μ and scale matrix (b/a) Λ⁻¹.
    Example::

        >>> post = normal_inverse_gamma_posterior(torch.zeros(1), torch.eye(1), 1.0, 1.0,
        ...                                       torch.ones(2, 1), torch.tensor([1.0, 3.0]))
        >>> [round(p.item(), 4) for p in post]
        [1.3333, 3.0, 2.0, 3.3333]
    """
    loc, precision, X, y = _linear(loc, precision, features, targets, erased=False)
    shape = positive(shape, "shape", X, X.dtype)
    scale = positive(scale, "scale", X, X.dtype)
    new_loc, new_precision = gaussian_update(loc, precision, X.T @ X, X.T @ y, PRIOR)
    new_scale = scale + _scale_gap(new_loc, loc, precision, X, y)
    return new_loc, new_precision, shape + len(y) / 2, new_scale


def normal_inverse_gamma_unlearn(
    loc: torch.Tensor,
    precision: torch.Tensor,
    shape: float | torch.Tensor,
    scale: float | torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Divide a Normal–inverse-Gamma posterior by the likelihood of y_e = X_e θ + N(0, σ²):

    .. math:: \tilde Λ = Λ − X_e^\top X_e, \quad \tilde Λ \tilde μ = Λ μ − X_e^\top y_e, \quad
              \tilde a = a − N_e/2, \quad
              \tilde b = b − ½‖y_e − X_e μ‖² − ½ (μ − \tilde μ)^\top \tilde Λ (μ − \tilde μ)

    Returns ``(loc, precision, shape, scale)`` as :func:`normal_inverse_gamma_posterior`. Raises
    :class:`~pyro_unlearn.exact.NotNormalizableError` unless Λ̃ is positive definite and ã, b̃ are
    positive. Example::

        >>> post = normal_inverse_gamma_unlearn(torch.tensor([4 / 3]), torch.tensor([[3.0]]), 2.0,
        ...                                     10 / 3, torch.ones(1, 1), torch.tensor([3.0]))
        >>> [round(p.item(), 4) for p in post]
        [0.5, 2.0, 1.5, 1.25]
    """
    loc, precision, X, y = _linear(loc, precision, features, targets, erased=True)
    shape = positive(shape, "shape", X, X.dtype)
    scale = positive(scale, "scale", X, X.dtype)
    new_loc, new_precision = gaussian_update(loc, precision, -X.T @ X, -X.T @ y, ERASED)
    new_shape = normalizable(shape - len(y) / 2, "inverse-Gamma shape")
    new_scale = scale - _scale_gap(loc, new_loc, new_precision, X, y)
    return new_loc, new_precision, new_shape, normalizable(new_scale, "inverse-Gamma scale")
