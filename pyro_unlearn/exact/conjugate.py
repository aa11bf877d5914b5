"""Beta–binomial, Gamma–Poisson and Normal–normal: Bayes' rule on sufficient statistics, and its
inverse, the division by the erased data's likelihood."""

from __future__ import annotations

import torch

from ._checks import (
    ERASED,
    PRIOR,
    NotNormalizableError,
    as_counts,
    broadcast,
    check_not_empty,
    common_dtype,
    floating,
    gaussian_parameters,
    inverse_variance,
    normalizable,
    positive,
    real_tensor,
)

__all__ = [
    "beta_binomial_posterior",
    "beta_binomial_unlearn",
    "gamma_poisson_posterior",
    "gamma_poisson_unlearn",
    "gaussian_update",
    "normal_normal_posterior",
    "normal_normal_unlearn",
]


def _beta_binomial(alpha, beta, successes, trials, erased: bool) -> tuple[torch.Tensor, ...]:
    """Validated (α, β, Σ y, Σ (n − y)), the prior's parameters as floats on the data's device."""
    successes = as_counts(successes, "successes")
    if erased:
        check_not_empty(successes, "successes")
    trials = as_counts(broadcast(trials, successes, "trials"), "trials")
    if not bool((successes <= trials).all()):
        raise ValueError("successes must not exceed trials (Bernoulli data are 0 or 1)")
    alpha = floating(positive(alpha, "alpha", successes))
    beta = floating(positive(beta, "beta", successes))
    return alpha, beta, successes.sum(0), (trials - successes).sum(0)


def _gamma_poisson(shape, rate, counts, exposure, erased: bool) -> tuple[torch.Tensor, ...]:
    """Validated (a, b, Σ y, Σ t), the prior's parameters as floats on the data's device."""
    counts = as_counts(counts, "counts")
    if erased:
        check_not_empty(counts, "counts")
    exposure = positive(broadcast(exposure, counts, "exposure"), "exposure", counts)
    shape = floating(positive(shape, "shape", counts))
    rate = floating(positive(rate, "rate", counts))
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

    Returns ``(alpha, beta)``. Raises :class:`~pyro_unlearn.exact.NotNormalizableError` when a
    pseudo-count is not positive (more successes or failures erased than q(θ|D) holds). Example::

        >>> from torch.distributions import Beta
        >>> Beta(*beta_binomial_unlearn(3.0, 2.0, torch.tensor([1]))).mean
        tensor(0.5000)
    """
    alpha, beta, ones, zeros = _beta_binomial(alpha, beta, successes, trials, True)
    alpha = normalizable(alpha - ones, "Beta pseudo-count alpha")
    return alpha, normalizable(beta - zeros, "Beta pseudo-count beta")


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

    Returns ``(shape, rate)``. Raises :class:`~pyro_unlearn.exact.NotNormalizableError` when the
    shape or the rate is not positive (more counts or more exposure erased than q(θ|D) holds).
    Example::

        >>> from torch.distributions import Gamma
        >>> Gamma(*gamma_poisson_unlearn(6.0, 4.0, torch.tensor([3]))).mean
        tensor(1.)
    """
    shape, rate, total, time = _gamma_poisson(shape, rate, counts, exposure, True)
    shape = normalizable(shape - total, "Gamma shape")
    return shape, normalizable(rate - time, "Gamma rate")


def gaussian_update(
    loc: torch.Tensor,
    precision: torch.Tensor,
    gram: torch.Tensor,
    moment: torch.Tensor,
    cause: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The Gaussian update shared by the Normal models, Bayes' rule (G, m from the data) or its
    inverse (−G, −m from the erased data):

    .. math:: Λ' = Λ + G, \qquad Λ' μ' = Λ μ + m

    Arguments:
        loc: (D,) μ.
        precision: (D, D) Λ.
        gram: (D, D) G, the data's precision.
        moment: (D,) m, the data's precision-weighted mean.
        cause: the likely cause of a failure, for the error's message.

    Returns:
        ``(loc, precision)``, μ' and Λ' (symmetrised).

    Raises:
        NotNormalizableError: Λ' is not positive definite.

    Example:
        >>> gaussian_update(torch.zeros(1), torch.eye(1), torch.eye(1), torch.ones(1), "")
        (tensor([0.5000]), tensor([[2.]]))
    """
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


def _normal_normal(loc, precision, samples, noise_scale, sign: float, cause: str) -> tuple:
    """y_n ~ N(θ, σ² I): Λ' = Λ ± N σ⁻² I, Λ'μ' = Λμ ± σ⁻² Σ_n y_n (scalar θ kept scalar)."""
    loc, precision = gaussian_parameters(loc, precision, erased=sign < 0)
    samples = real_tensor(samples, "samples")
    dtype = common_dtype(loc, precision, samples)
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
        check_not_empty(samples, "samples")
    w = sign * inverse_variance(noise_scale, loc, per_row=False)
    gram = w * len(samples) * torch.eye(D[0], dtype=loc.dtype, device=loc.device)
    loc, precision = gaussian_update(loc, precision, gram, w * samples.sum(0), cause)
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
    return _normal_normal(loc, precision, samples, noise_scale, 1.0, PRIOR)


def normal_normal_unlearn(
    loc: torch.Tensor,
    precision: torch.Tensor,
    samples: torch.Tensor,
    noise_scale: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Divide N(μ, Λ⁻¹), a posterior over the mean of y ~ N(θ, σ² I), by the likelihood of y_e:

    .. math:: \tilde Λ = Λ − N_e σ^{-2} I, \qquad \tilde Λ \tilde μ = Λ μ − σ^{-2} Σ_e y_e

    Shapes as in :func:`normal_normal_posterior`. Raises
    :class:`~pyro_unlearn.exact.NotNormalizableError` when Λ̃ is not positive definite. Example::

        >>> normal_normal_unlearn(torch.tensor(0.75), torch.tensor(4.0), torch.ones(1), 1.0)
        (tensor(0.6667), tensor(3.))
    """
    return _normal_normal(loc, precision, samples, noise_scale, -1.0, ERASED)
