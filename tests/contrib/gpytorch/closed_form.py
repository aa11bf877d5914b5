"""Sparse GPs of the GPyTorch tests and their closed-form q(u): with a Gaussian likelihood, the
ELBO-optimal Gaussian q(u|D) is closed form (Titsias), and q(u|D)/p̃(D_e|u) is the optimal
q(u|D_r), also closed form."""

from __future__ import annotations

import gpytorch
import torch

from pyro_unlearn.contrib import gpytorch as pug
from pyro_unlearn.exact import gaussian_linear_posterior

__all__ = [
    "GP", "KINDS", "NOISE", "features", "gaussian_likelihood", "kl_to", "mean_cov", "optimal",
    "set_q", "trained",
]  # fmt: skip

NOISE = 0.1  # σ², fixed

KINDS = {
    "cholesky": gpytorch.variational.CholeskyVariationalDistribution,
    "mean_field": gpytorch.variational.MeanFieldVariationalDistribution,
    "natural": gpytorch.variational.NaturalVariationalDistribution,
    "tril_natural": gpytorch.variational.TrilNaturalVariationalDistribution,
}


class GP(gpytorch.models.ApproximateGP):
    def __init__(self, z, whitened=True, mean_field=False, batch_shape=(), kind=None):
        kind = kind or KINDS["mean_field" if mean_field else "cholesky"]
        batch_shape = torch.Size(batch_shape)
        q = kind(z.shape[-2], batch_shape=batch_shape)
        strategy = (
            gpytorch.variational.VariationalStrategy
            if whitened
            else gpytorch.variational.UnwhitenedVariationalStrategy
        )
        super().__init__(strategy(self, z, q, learn_inducing_locations=False))
        self.mean_module = gpytorch.means.ZeroMean(batch_shape=batch_shape)
        self.covar_module = gpytorch.kernels.RBFKernel(batch_shape=batch_shape)
        self.covar_module.lengthscale = 0.8

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def gaussian_likelihood(batch_shape=()):
    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size(batch_shape))
    likelihood = likelihood.double()
    likelihood.noise = NOISE
    return likelihood


def features(gp, x):
    """Φ with E[f(x)|u] = Φ u, and the prior precision of u, computed from the kernel here."""
    s = gp.variational_strategy
    z = s.inducing_points
    with torch.no_grad():
        kzz = gp.covar_module(z).to_dense() + s.jitter_val * torch.eye(len(z), dtype=z.dtype)
        kzx = gp.covar_module(z, x).to_dense()
        chol = torch.linalg.cholesky(kzz)
        a = torch.linalg.solve_triangular(chol, kzx, upper=False)  # L⁻¹ K_zx
    if isinstance(s, gpytorch.variational.VariationalStrategy):
        return a.T, torch.eye(len(z), dtype=z.dtype)
    return a.T @ torch.linalg.inv(chol), torch.linalg.inv(kzz)


def optimal(gp, x, y):
    """The ELBO-optimal Gaussian q(u) for y (Titsias): (loc, precision)."""
    phi, prior_precision = features(gp, x)
    zero = torch.zeros(phi.shape[1], dtype=x.dtype)
    return gaussian_linear_posterior(zero, prior_precision, phi, y, NOISE**0.5)


def mean_cov(loc_precision):
    loc, precision = loc_precision
    return loc, torch.linalg.inv(precision)


def set_q(gp, loc, precision):
    pug.set_inducing_distribution(gp, loc, torch.linalg.inv(precision))


def trained(x, y, whitened=True):
    """A GP whose q(u) is the ELBO optimum for (x, y)."""
    gp = GP(x[::6].clone(), whitened=whitened).double()
    gp(x)  # GPyTorch initialises q(u) on the first call
    set_q(gp, *optimal(gp, x, y))
    return gp


def kl_to(gp, loc, precision):
    target = gpytorch.distributions.MultivariateNormal(loc, torch.linalg.inv(precision))
    return float(torch.distributions.kl_divergence(pug.inducing_distribution(gp), target))
