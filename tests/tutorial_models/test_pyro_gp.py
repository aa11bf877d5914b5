"""pyro.contrib.gp's VariationalSparseGP, written and trained as Pyro's GP tutorial does: the raw
model is refused (its likelihood does not depend on the sampled u), and through the adapter the
README's forget, with its defaults, unlearns toward the exact q(u|D_r) (hyperparameters fixed
at the trained values)."""

from __future__ import annotations

import pyro
import pyro.contrib.gp as gp
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.contrib.pyro_gp import VariationalGPAdapter, inducing_distribution
from pyro_unlearn.exact import gaussian_linear_posterior


def _tutorial_gp():
    """Pyro's GP tutorial, smaller: noisy 0.5 sin(3x) on [0, 5], a whitened VariationalSparseGP
    with an RBF kernel and a Gaussian likelihood, trained by gp.util.train."""
    pyro.set_rng_seed(0)
    N = 40
    X = dist_uniform(N)
    y = 0.5 * torch.sin(3 * X) + pyro.distributions.Normal(0.0, 0.2).sample((N,))
    Xu = torch.arange(10.0) / 2.0
    likelihood = gp.likelihoods.Gaussian()
    vsgp = gp.models.VariationalSparseGP(
        X, y, gp.kernels.RBF(input_dim=1), Xu=Xu, likelihood=likelihood, whiten=True
    )
    gp.util.train(vsgp, num_steps=300)
    return X, y, vsgp


def dist_uniform(n):
    return pyro.distributions.Uniform(0.0, 5.0).sample((n,))


def _exact_q(vsgp, x, y):
    """The optimal q(u) for (x, y) at the trained hyperparameters, in closed form (whitened u:
    E[f|u] = aᵀu, a = L⁻¹k(X_u, x); p̃(y|u) = N(y; aᵀu, σ²) up to a constant)."""
    with torch.no_grad():
        z = vsgp.Xu
        kzz = vsgp.kernel(z) + vsgp.jitter * torch.eye(len(z))
        a = torch.linalg.solve_triangular(
            torch.linalg.cholesky(kzz), vsgp.kernel(z, x), upper=False
        )
        noise = vsgp.likelihood.variance
        return gaussian_linear_posterior(
            torch.zeros(len(z)), torch.eye(len(z)), a.T, y, noise.sqrt()
        )


def _kl(q, loc, precision):
    target = torch.distributions.MultivariateNormal(loc, precision_matrix=precision)
    return float(torch.distributions.kl_divergence(q, target))


def test_the_raw_tutorial_model_is_refused():
    X, y, vsgp = _tutorial_gp()
    vsgp.set_data(X[:5], y[:5])  # D_e alone, as the README's erased=None call takes it
    with pytest.raises(ValueError, match=r"does not depend on the latent.*VariationalGPAdapter"):
        pu.forget(vsgp.model, vsgp.guide, progress=False)


def test_the_tutorial_gp_unlearns_through_the_adapter():
    X, y, vsgp = _tutorial_gp()
    erased = torch.arange(0, 40, 4)  # every fourth point
    keep = torch.tensor([i for i in range(40) if i % 4])
    target = _exact_q(vsgp, X[keep], y[keep])
    adapter = VariationalGPAdapter(vsgp)
    trained = _kl(inducing_distribution(vsgp), *target)
    # Pyro's Gaussian-likelihood objective leaves q(u) wider than the bound's optimum, too wide
    # to divide by p̃(D_e|u): put q(u|D) at the optimum for the trained hyperparameters first
    adapter.fit_optimal(X, y)
    full = _kl(inducing_distribution(vsgp), *target)
    assert full < trained
    result = pu.forget(
        adapter.model, adapter.guide, X, y, erased=erased, plate=adapter.plate, progress=False
    )
    unlearned = _kl(inducing_distribution(result.posterior), *target)
    assert unlearned < 0.8 * full
    assert torch.equal(
        inducing_distribution(vsgp).mean, inducing_distribution(result.posterior).mean
    )
