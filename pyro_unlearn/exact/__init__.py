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

The modules: :mod:`~pyro_unlearn.exact.conjugate` (Beta–binomial, Gamma–Poisson, Normal–normal)
and :mod:`~pyro_unlearn.exact.linear` (Gaussian–linear, Normal–inverse-Gamma regression).

References:
    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    A. Gelman, J. B. Carlin, H. S. Stern, D. B. Dunson, A. Vehtari, D. B. Rubin. Bayesian Data
    Analysis, 3rd edition. CRC Press, 2013 (the conjugate updates, chapters 2, 3 and 14).
"""

from ._checks import NotNormalizableError
from .conjugate import (
    beta_binomial_posterior,
    beta_binomial_unlearn,
    gamma_poisson_posterior,
    gamma_poisson_unlearn,
    normal_normal_posterior,
    normal_normal_unlearn,
)
from .linear import (
    gaussian_linear_posterior,
    gaussian_linear_unlearn,
    normal_inverse_gamma_posterior,
    normal_inverse_gamma_unlearn,
)

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
