"""Closed-form unlearning for conjugate models: the exact targets the approximate methods chase.

Each ``*_posterior`` is Bayes' rule p(θ|D) ∝ p(θ) p(D|θ); each ``*_unlearn`` divides a posterior
by the likelihood of the erased data, q(θ|D) / p(D_e|θ) (Nguyen et al. 2020), and raises
:class:`NotNormalizableError`, naming the condition that failed, when the quotient is not a
distribution. Parameters are returned in the order of ``torch.distributions``:
``Beta(*beta_binomial_unlearn(...))``, ``Gamma(*gamma_poisson_unlearn(...))``,
``MultivariateNormal(loc, precision_matrix=precision)``. Data sums run over the leading dimension.

References:
    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    A. Gelman, J. B. Carlin, H. S. Stern, D. B. Dunson, A. Vehtari, D. B. Rubin. Bayesian Data
    Analysis, 3rd edition. CRC Press, 2013 (the conjugate updates, chapters 2, 3 and 14).
"""

from __future__ import annotations

import torch

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


def _positive(value, name: str, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """``value`` as a tensor on ``like``'s device, or a ValueError unless it is positive."""
    value = torch.as_tensor(value, dtype=dtype, device=like.device)
    if not bool((value > 0).all()):
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _floating(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _counts(x, name: str) -> torch.Tensor:
    """``x`` as an (N, ...) tensor of non-negative integers, or a ValueError."""
    x = torch.as_tensor(x)
    x = x.long() if x.dtype == torch.bool else x
    whole = x == x.round() if x.is_floating_point() else torch.ones_like(x, dtype=torch.bool)
    if x.dim() == 0 or not bool((whole & (x >= 0)).all()):
        raise ValueError(f"{name} must be an (N, ...) tensor of non-negative integers, got {x}")
    return x


def _broadcast(x, like: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(x, device=like.device).broadcast_to(like.shape)
    except RuntimeError as e:
        raise ValueError(
            f"{name} of shape {tuple(torch.as_tensor(x).shape)} does not broadcast "
            f"to the data's shape {tuple(like.shape)}"
        ) from e


def _beta_binomial(alpha, beta, successes, trials) -> tuple[torch.Tensor, ...]:
    """Validated (α, β, Σ y, Σ (n − y)), the prior's parameters as floats on the data's device."""
    successes = _counts(successes, "successes")
    trials = _counts(_broadcast(trials, successes, "trials"), "trials")
    if not bool((successes <= trials).all()):
        raise ValueError("successes must not exceed trials (Bernoulli data are 0 or 1)")
    alpha = _floating(_positive(alpha, "alpha", successes))
    beta = _floating(_positive(beta, "beta", successes))
    return alpha, beta, successes.sum(0), (trials - successes).sum(0)


def _gamma_poisson(shape, rate, counts, exposure) -> tuple[torch.Tensor, ...]:
    """Validated (a, b, Σ y, Σ t), the prior's parameters as floats on the data's device."""
    counts = _counts(counts, "counts")
    exposure = _positive(_broadcast(exposure, counts, "exposure"), "exposure", counts)
    shape = _floating(_positive(shape, "shape", counts))
    rate = _floating(_positive(rate, "rate", counts))
    return shape, rate, counts.sum(0), exposure.sum(0)


def beta_binomial_posterior(alpha, beta, successes, trials=1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for a Beta(α, β) prior and y_n ~ Binomial(n_n, θ) (Bernoulli when n_n = 1):

    .. math:: α_D = α + Σ_n y_n, \qquad β_D = β + Σ_n (n_n − y_n)

    Returns ``(alpha, beta)``. Example::

        >>> beta_binomial_posterior(1.0, 1.0, torch.tensor([1, 0, 1]))
        (tensor(3.), tensor(2.))
    """
    alpha, beta, ones, zeros = _beta_binomial(alpha, beta, successes, trials)
    return alpha + ones, beta + zeros


def beta_binomial_unlearn(alpha, beta, successes, trials=1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide Beta(α, β) by the likelihood of y_e ~ Binomial(n_e, θ) (Bernoulli when n_e = 1):

    .. math:: \tilde α = α − Σ_e y_e, \qquad \tilde β = β − Σ_e (n_e − y_e)

    Returns ``(alpha, beta)``. Raises :class:`NotNormalizableError` when a pseudo-count is not
    positive (more successes or failures erased than q(θ|D) holds). Example::

        >>> from torch.distributions import Beta
        >>> Beta(*beta_binomial_unlearn(3.0, 2.0, torch.tensor([1]))).mean
        tensor(0.5000)
    """
    alpha, beta, ones, zeros = _beta_binomial(alpha, beta, successes, trials)
    alpha = _normalizable(alpha - ones, "Beta pseudo-count alpha")
    return alpha, _normalizable(beta - zeros, "Beta pseudo-count beta")


def gamma_poisson_posterior(shape, rate, counts, exposure=1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bayes' rule for a Gamma(a, b) prior (shape, rate) and y_n ~ Poisson(t_n θ), exposure t_n:

    .. math:: a_D = a + Σ_n y_n, \qquad b_D = b + Σ_n t_n

    Returns ``(shape, rate)``. Example::

        >>> gamma_poisson_posterior(2.0, 1.0, torch.tensor([3, 0, 1]))
        (tensor(6.), tensor(4.))
    """
    shape, rate, total, time = _gamma_poisson(shape, rate, counts, exposure)
    return shape + total, rate + time


def gamma_poisson_unlearn(shape, rate, counts, exposure=1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide Gamma(a, b) (shape, rate) by the likelihood of y_e ~ Poisson(t_e θ):

    .. math:: \tilde a = a − Σ_e y_e, \qquad \tilde b = b − Σ_e t_e

    Returns ``(shape, rate)``. Raises :class:`NotNormalizableError` when the shape or the rate is
    not positive (more counts or more exposure erased than q(θ|D) holds). Example::

        >>> from torch.distributions import Gamma
        >>> Gamma(*gamma_poisson_unlearn(6.0, 4.0, torch.tensor([3]))).mean
        tensor(1.)
    """
    shape, rate, total, time = _gamma_poisson(shape, rate, counts, exposure)
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


def _linear(loc, precision, X: torch.Tensor, y: torch.Tensor) -> tuple:
    D = X.shape[-1:]
    if X.dim() != 2 or y.shape != X.shape[:1] or loc.shape != D or precision.shape != D + D:
        raise ValueError(
            "features must be (N, D), targets (N,), loc (D,) and precision (D, D), got "
            f"{tuple(X.shape)}, {tuple(y.shape)}, {tuple(loc.shape)}, {tuple(precision.shape)}"
        )
    return X, y


def _inverse_variance(noise_scale, like: torch.Tensor) -> torch.Tensor:
    return 1.0 / _positive(noise_scale, "noise_scale", like, like.dtype) ** 2


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
    X, y = _linear(loc, precision, features, targets)
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
    X, y = _linear(loc, precision, features, targets)
    w = _inverse_variance(noise_scale, X)
    return _gaussian_update(loc, precision, w * X.T @ X, w * X.T @ y, _PRIOR)


def _normal_normal(loc, precision, samples, noise_scale, sign: float, cause: str) -> tuple:
    """y_n ~ N(θ, σ² I): Λ' = Λ ± N σ⁻² I, Λ'μ' = Λμ ± σ⁻² Σ_n y_n (scalar θ kept scalar)."""
    scalar = loc.dim() == 0
    if scalar:
        loc, precision, samples = loc.reshape(1), precision.reshape(1, 1), samples.unsqueeze(-1)
    D = loc.shape
    if loc.dim() != 1 or precision.shape != D + D or samples.dim() != 2 or samples.shape[1:] != D:
        raise ValueError(
            "samples must be (N, D) for loc (D,) and precision (D, D), or (N,) for scalar ones, "
            f"got {tuple(samples.shape)}, {tuple(loc.shape)}, {tuple(precision.shape)}"
        )
    w = sign * _inverse_variance(noise_scale, loc)
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
    X, y = _linear(loc, precision, features, targets)
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
    X, y = _linear(loc, precision, features, targets)
    shape = _positive(shape, "shape", X, X.dtype)
    scale = _positive(scale, "scale", X, X.dtype)
    new_loc, new_precision = _gaussian_update(loc, precision, -X.T @ X, -X.T @ y, _ERASED)
    new_shape = _normalizable(shape - len(y) / 2, "inverse-Gamma shape")
    new_scale = scale - _scale_gap(loc, new_loc, new_precision, X, y)
    return new_loc, new_precision, new_shape, _normalizable(new_scale, "inverse-Gamma scale")
