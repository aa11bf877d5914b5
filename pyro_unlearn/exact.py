"""Closed-form unlearning for conjugate models: the exact targets the approximate methods chase.

Each ``*_posterior`` is Bayes' rule p(θ|D) ∝ p(θ) p(D|θ); each ``*_unlearn`` divides a posterior
by the likelihood of the erased data, q(θ|D) / p(D_e|θ) (Nguyen et al. 2020), and raises
:class:`NotNormalizableError`, naming the condition that failed, when the quotient is not a
distribution. Parameters are returned in the order of ``torch.distributions``:
``Beta(*beta_binomial_unlearn(...))``, ``Gamma(*gamma_poisson_unlearn(...))``,
``MultivariateNormal(loc, precision_matrix=precision)``. Data sums run over the leading dimension.
Inputs are checked before anything is computed: a ``ValueError`` names a non-finite entry (the
argument and its first bad row), a shape mismatch, a precision that is not symmetric (or, for
q(θ|D), not positive definite) and erased data with no rows; non-numbers raise ``TypeError``.
Every function is pure: its inputs are never modified.

References:
    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    A. Gelman, J. B. Carlin, H. S. Stern, D. B. Dunson, A. Vehtari, D. B. Rubin. Bayesian Data
    Analysis, 3rd edition. CRC Press, 2013 (the conjugate updates, chapters 2, 3 and 14).
"""

from __future__ import annotations

from typing import Any

import torch

from .validation import check_finite

__all__ = [
    "NotNormalizableError",
    "beta_binomial_posterior",
    "beta_binomial_unlearn",
    "gamma_poisson_posterior",
    "gamma_poisson_unlearn",
    "gaussian_linear_posterior",
    "gaussian_linear_unlearn",
    "normal_inverse_gamma_posterior",
    "normal_inverse_gamma_unlearn",
    "normal_normal_posterior",
    "normal_normal_unlearn",
]

_ERASED = (
    "the erased data carry more information than q(θ|D) holds — were they ever in the posterior, "
    "and is q(θ|D) the exact posterior rather than an approximation?"
)
_PRIOR = "the data do not identify θ under this prior (is the prior precision positive definite?)"


class NotNormalizableError(ValueError):
    """q(θ|D)/p(D_e|θ) is not a distribution: the division left no valid posterior."""


def _normalizable(value: torch.Tensor, what: str) -> torch.Tensor:
    if not bool((value > 0).all()):
        raise NotNormalizableError(f"{what} = {float(value.min()):.3g} ≤ 0: {_ERASED}")
    return value


def _tensor(value: Any, name: str, like: torch.Tensor | None = None, dtype=None) -> torch.Tensor:
    """``value`` as a real tensor (on ``like``'s device), checked finite: a ``TypeError`` for
    anything that is not numbers, a ``ValueError`` naming ``name`` and the first bad row."""
    if not isinstance(value, torch.Tensor):
        try:
            device = None if like is None else like.device
            value = torch.as_tensor(value, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be a number or a tensor, got {value!r} ({type(value).__name__})"
            ) from None
    elif dtype is not None:
        value = value.to(dtype)
    if value.dtype.is_complex:
        raise TypeError(f"{name} must be real, got a {value.dtype} tensor")
    check_finite(name, value)
    return value


def _positive(value, name: str, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """``value`` as a finite tensor on ``like``'s device, or a ValueError unless it is positive."""
    value = _tensor(value, name, like, dtype)
    if not bool((value > 0).all()):
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _floating(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _not_empty(data: torch.Tensor, name: str) -> None:
    if data.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows): there is nothing to erase")


def _counts(x, name: str) -> torch.Tensor:
    """``x`` as an (N, ...) tensor of non-negative integers, or a ValueError."""
    what = f"{name} must be an (N, ...) tensor of non-negative integers"
    try:
        x = _tensor(x, name)
    except ValueError as e:  # non-finite: named as such
        raise ValueError(f"{e}; {what}") from None
    x = x.long() if x.dtype == torch.bool else x
    whole = x == x.round() if x.is_floating_point() else torch.ones_like(x, dtype=torch.bool)
    if x.dim() == 0 or not bool((whole & (x >= 0)).all()):
        raise ValueError(f"{what}, got {x}")
    return x


def _broadcast(x, like: torch.Tensor, name: str) -> torch.Tensor:
    x = _tensor(x, name, like)
    try:
        return x.broadcast_to(like.shape)
    except RuntimeError as e:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to the data's shape "
            f"{tuple(like.shape)}"
        ) from e


def _beta_binomial(alpha, beta, successes, trials, erased: bool) -> tuple[torch.Tensor, ...]:
    """Validated (α, β, Σ y, Σ (n − y)), the prior's parameters as floats on the data's device."""
    successes = _counts(successes, "successes")
    if erased:
        _not_empty(successes, "successes")
    trials = _counts(_broadcast(trials, successes, "trials"), "trials")
    if not bool((successes <= trials).all()):
        raise ValueError("successes must not exceed trials (Bernoulli data are 0 or 1)")
    alpha = _floating(_positive(alpha, "alpha", successes))
    beta = _floating(_positive(beta, "beta", successes))
    return alpha, beta, successes.sum(0), (trials - successes).sum(0)


def _gamma_poisson(shape, rate, counts, exposure, erased: bool) -> tuple[torch.Tensor, ...]:
    """Validated (a, b, Σ y, Σ t), the prior's parameters as floats on the data's device."""
    counts = _counts(counts, "counts")
    if erased:
        _not_empty(counts, "counts")
    exposure = _positive(_broadcast(exposure, counts, "exposure"), "exposure", counts)
    shape = _floating(_positive(shape, "shape", counts))
    rate = _floating(_positive(rate, "rate", counts))
    return shape, rate, counts.sum(0), exposure.sum(0)


def beta_binomial_posterior(
    alpha: torch.Tensor | float,
    beta: torch.Tensor | float,
    successes: torch.Tensor,
    trials: torch.Tensor | float = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for a Beta(α, β) prior and y_n ~ Binomial(n_n, θ) (Bernoulli when n_n = 1):

    .. math:: α_D = α + Σ_n y_n, \qquad β_D = β + Σ_n (n_n − y_n)

    Returns ``(alpha, beta)``. Example::

        >>> beta_binomial_posterior(1.0, 1.0, torch.tensor([1, 0, 1]))
        (tensor(3.), tensor(2.))
    """
    alpha, beta, ones, zeros = _beta_binomial(alpha, beta, successes, trials, False)
    return alpha + ones, beta + zeros


def beta_binomial_unlearn(
    alpha: torch.Tensor | float,
    beta: torch.Tensor | float,
    successes: torch.Tensor,
    trials: torch.Tensor | float = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide Beta(α, β) by the likelihood of y_e ~ Binomial(n_e, θ) (Bernoulli when n_e = 1):

    .. math:: \tilde α = α − Σ_e y_e, \qquad \tilde β = β − Σ_e (n_e − y_e)

    Returns ``(alpha, beta)``. Raises :class:`NotNormalizableError` when a pseudo-count is not
    positive (more successes or failures erased than q(θ|D) holds). Example::

        >>> from torch.distributions import Beta
        >>> Beta(*beta_binomial_unlearn(3.0, 2.0, torch.tensor([1]))).mean
        tensor(0.5000)
    """
    alpha, beta, ones, zeros = _beta_binomial(alpha, beta, successes, trials, True)
    alpha = _normalizable(alpha - ones, "Beta pseudo-count alpha")
    return alpha, _normalizable(beta - zeros, "Beta pseudo-count beta")


def gamma_poisson_posterior(
    shape: torch.Tensor | float,
    rate: torch.Tensor | float,
    counts: torch.Tensor,
    exposure: torch.Tensor | float = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for a Gamma(a, b) prior (shape, rate) and y_n ~ Poisson(t_n θ), exposure t_n:

    .. math:: a_D = a + Σ_n y_n, \qquad b_D = b + Σ_n t_n

    Returns ``(shape, rate)``. Example::

        >>> gamma_poisson_posterior(2.0, 1.0, torch.tensor([3, 0, 1]))
        (tensor(6.), tensor(4.))
    """
    shape, rate, total, time = _gamma_poisson(shape, rate, counts, exposure, False)
    return shape + total, rate + time


def gamma_poisson_unlearn(
    shape: torch.Tensor | float,
    rate: torch.Tensor | float,
    counts: torch.Tensor,
    exposure: torch.Tensor | float = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide Gamma(a, b) (shape, rate) by the likelihood of y_e ~ Poisson(t_e θ):

    .. math:: \tilde a = a − Σ_e y_e, \qquad \tilde b = b − Σ_e t_e

    Returns ``(shape, rate)``. Raises :class:`NotNormalizableError` when the shape or the rate is
    not positive (more counts or more exposure erased than q(θ|D) holds). Example::

        >>> from torch.distributions import Gamma
        >>> Gamma(*gamma_poisson_unlearn(6.0, 4.0, torch.tensor([3]))).mean
        tensor(1.)
    """
    shape, rate, total, time = _gamma_poisson(shape, rate, counts, exposure, True)
    shape = _normalizable(shape - total, "Gamma shape")
    return shape, _normalizable(rate - time, "Gamma rate")


def _gaussian_update(
    loc: torch.Tensor,
    precision: torch.Tensor,
    gram: torch.Tensor,
    moment: torch.Tensor,
    cause: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Λ' = Λ + G, Λ'μ' = Λμ + m, with Λ' checked positive definite."""
    new_precision = precision + gram
    new_precision = 0.5 * (new_precision + new_precision.mT)
    chol, info = torch.linalg.cholesky_ex(new_precision)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(new_precision)[0])
        raise NotNormalizableError(
            f"the precision is not positive definite (smallest eigenvalue {smallest:.3g}): {cause}"
        )
    rhs = precision @ loc + moment
    return torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1), new_precision


def _common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.get_default_dtype()
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    for other in floating[1:]:
        floating[0] = torch.promote_types(floating[0], other)
    return floating[0] if floating else dtype


def _gaussian(loc, precision, erased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """μ and Λ as finite tensors, Λ symmetric; for q(θ|D) (``erased``) also positive definite."""
    loc, precision = _tensor(loc, "loc"), _tensor(precision, "precision")
    if precision.dim() >= 2:
        scale = float(precision.abs().max()) if precision.numel() else 0.0
        eps = torch.finfo(_common_dtype(precision)).eps
        gap = float((precision - precision.mT).abs().max()) if precision.numel() else 0.0
        # eps^¼: tolerates the rounding of an inverted Σ, not a wrong matrix
        if precision.shape[-1] != precision.shape[-2] or gap > eps**0.25 * scale:
            raise ValueError(
                f"precision must be a symmetric (D, D) matrix, got shape "
                f"{tuple(precision.shape)} with |Λ − Λᵀ| up to {gap:.3g}"
            )
    if erased:
        square = precision.reshape(1, 1) if precision.dim() == 0 else precision
        if square.dim() == 2 and square.shape[0] == square.shape[1] and square.numel():
            square = _floating(square)
            if int(torch.linalg.cholesky_ex(0.5 * (square + square.mT))[1]) != 0:
                smallest = float(torch.linalg.eigvalsh(0.5 * (square + square.mT))[0])
                raise ValueError(
                    f"the precision of q(θ|D) is not positive definite (smallest eigenvalue "
                    f"{smallest:.3g}): pass Λ = Σ⁻¹ of a Gaussian posterior"
                )
    return loc, precision


def _linear(loc, precision, X, y, erased: bool) -> tuple[torch.Tensor, ...]:
    """μ, Λ, X, y checked (types, shapes, finiteness, Λ) and cast to one floating dtype."""
    loc, precision = _gaussian(loc, precision, erased)
    X, y = _tensor(X, "features"), _tensor(y, "targets")
    D = X.shape[-1:]
    if X.dim() != 2 or y.shape != X.shape[:1] or loc.shape != D or precision.shape != D + D:
        raise ValueError(
            "features must be (N, D), targets (N,), loc (D,) and precision (D, D), got "
            f"{tuple(X.shape)}, {tuple(y.shape)}, {tuple(loc.shape)}, {tuple(precision.shape)}"
        )
    if erased:
        _not_empty(X, "features")
    dtype = _common_dtype(loc, precision, X, y)
    return loc.to(dtype), precision.to(dtype), X.to(dtype), y.to(dtype)


def _inverse_variance(noise_scale, like: torch.Tensor, per_row: bool = True) -> torch.Tensor:
    """1/σ², σ a positive scalar, or (``per_row``) one per row of ``like``."""
    sigma = _positive(noise_scale, "noise_scale", like, like.dtype)
    if sigma.numel() == 1:
        sigma = sigma.reshape(())
    elif not (per_row and sigma.shape == like.shape[:1]):
        rows = f" or ({like.shape[0]},), one per row" if per_row else ""
        raise ValueError(f"noise_scale must be a scalar{rows}, got shape {tuple(sigma.shape)}")
    return 1.0 / sigma**2


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
    loc, precision, X, y = _linear(loc, precision, features, targets, erased=True)
    w = _inverse_variance(noise_scale, X)
    return _gaussian_update(loc, precision, -w * X.T @ X, -w * X.T @ y, _ERASED)


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
    w = _inverse_variance(noise_scale, X)
    return _gaussian_update(loc, precision, w * X.T @ X, w * X.T @ y, _PRIOR)


def _normal_normal(loc, precision, samples, noise_scale, sign: float, cause: str) -> tuple:
    """y_n ~ N(θ, σ² I): Λ' = Λ ± N σ⁻² I, Λ'μ' = Λμ ± σ⁻² Σ_n y_n (scalar θ kept scalar)."""
    loc, precision = _gaussian(loc, precision, erased=sign < 0)
    samples = _tensor(samples, "samples")
    dtype = _common_dtype(loc, precision, samples)
    loc, precision, samples = loc.to(dtype), precision.to(dtype), samples.to(dtype)
    scalar = loc.dim() == 0
    if scalar:
        loc, precision, samples = loc.reshape(1), precision.reshape(1, 1), samples.unsqueeze(-1)
    D = loc.shape
    if loc.dim() != 1 or precision.shape != D + D or samples.dim() != 2 or samples.shape[1:] != D:
        raise ValueError(
            "samples must be (N, D) for loc (D,) and precision (D, D), or (N,) for scalar ones, "
            f"got {tuple(samples.shape)}, {tuple(loc.shape)}, {tuple(precision.shape)}"
        )
    if sign < 0:
        _not_empty(samples, "samples")
    w = sign * _inverse_variance(noise_scale, loc, per_row=False)
    gram = w * len(samples) * torch.eye(D[0], dtype=loc.dtype, device=loc.device)
    loc, precision = _gaussian_update(loc, precision, gram, w * samples.sum(0), cause)
    return (loc.reshape(()), precision.reshape(())) if scalar else (loc, precision)


def normal_normal_posterior(
    loc: torch.Tensor,
    precision: torch.Tensor,
    samples: torch.Tensor,
    noise_scale: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for the mean of y_n ~ N(θ, σ² I) under a prior N(μ, Λ⁻¹):

    .. math:: Λ_D = Λ + N σ^{-2} I, \qquad Λ_D μ_D = Λ μ + σ^{-2} Σ_n y_n

    ``loc`` (D,), ``precision`` (D, D) and ``samples`` (N, D); or scalars and (N,). Returns
    ``(loc, precision)``. Example::

        >>> normal_normal_posterior(torch.tensor(0.0), torch.tensor(1.0), torch.ones(3), 1.0)
        (tensor(0.7500), tensor(4.))
    """
    return _normal_normal(loc, precision, samples, noise_scale, 1.0, _PRIOR)


def normal_normal_unlearn(
    loc: torch.Tensor,
    precision: torch.Tensor,
    samples: torch.Tensor,
    noise_scale: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide N(μ, Λ⁻¹), a posterior over the mean of y ~ N(θ, σ² I), by the likelihood of y_e:

    .. math:: \tilde Λ = Λ − N_e σ^{-2} I, \qquad \tilde Λ \tilde μ = Λ μ − σ^{-2} Σ_e y_e

    Shapes as in :func:`normal_normal_posterior`. Raises :class:`NotNormalizableError` when Λ̃ is
    not positive definite. Example::

        >>> normal_normal_unlearn(torch.tensor(0.75), torch.tensor(4.0), torch.ones(1), 1.0)
        (tensor(0.6667), tensor(3.))
    """
    return _normal_normal(loc, precision, samples, noise_scale, -1.0, _ERASED)


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
    shape = _positive(shape, "shape", X, X.dtype)
    scale = _positive(scale, "scale", X, X.dtype)
    new_loc, new_precision = _gaussian_update(loc, precision, X.T @ X, X.T @ y, _PRIOR)
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
    :class:`NotNormalizableError` unless Λ̃ is positive definite and ã, b̃ are positive. Example::

        >>> post = normal_inverse_gamma_unlearn(torch.tensor([4 / 3]), torch.tensor([[3.0]]), 2.0,
        ...                                     10 / 3, torch.ones(1, 1), torch.tensor([3.0]))
        >>> [round(p.item(), 4) for p in post]
        [0.5, 2.0, 1.5, 1.25]
    """
    loc, precision, X, y = _linear(loc, precision, features, targets, erased=True)
    shape = _positive(shape, "shape", X, X.dtype)
    scale = _positive(scale, "scale", X, X.dtype)
    new_loc, new_precision = _gaussian_update(loc, precision, -X.T @ X, -X.T @ y, _ERASED)
    new_shape = _normalizable(shape - len(y) / 2, "inverse-Gamma shape")
    new_scale = scale - _scale_gap(loc, new_loc, new_precision, X, y)
    return new_loc, new_precision, new_shape, _normalizable(new_scale, "inverse-Gamma scale")
