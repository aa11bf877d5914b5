"""PyroSVGP: a Pyro model/guide pair that is GPyTorch's ELBO and that the unlearning losses use."""

from __future__ import annotations

import gpytorch
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_unlearn as pu
from pyro_unlearn.contrib import gpytorch as pug
from tests.contrib.gpytorch.closed_form import (
    GP,
    KINDS,
    gaussian_likelihood,
    optimal,
    set_q,
    trained,
)


def test_pyro_model_is_gpytorchs_elbo(data):
    """Trace_ELBO on PyroSVGP's model/guide is GPyTorch's VariationalELBO (in expectation)."""
    x, y, _, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    loc, precision = optimal(gp, x, y)
    set_q(gp, loc + 0.3, 2 * precision)  # away from the optimum, where the integrand varies
    svgp = pug.PyroSVGP(gp, likelihood)
    elbo = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    pyro_loss = elbo.loss(svgp.model, svgp.guide, x, y)
    with torch.no_grad():
        gp_elbo = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=len(y))(gp(x), y)
    assert pyro_loss == pytest.approx(-float(gp_elbo) * len(y), rel=2e-3)
    assert abs(pyro_loss - elbo.loss(svgp.model, svgp.guide, x, y)) > 0  # it is a Monte-Carlo
    # estimate, not an identity


def test_pyro_path_refuses_a_natural_parameterisation(data):
    x, _, _, _ = data
    gp = GP(x[::6].clone(), kind=KINDS["natural"]).double()
    with pytest.raises(TypeError, match="NGD"):
        pug.PyroSVGP(gp, gaussian_likelihood())


def test_unsupported_variational_distribution_is_named(data):
    x, _, _, _ = data
    other = GP(x[::3].clone()).double()
    delta = gpytorch.models.ApproximateGP(
        gpytorch.variational.VariationalStrategy(
            other, x[:4], gpytorch.variational.DeltaVariationalDistribution(4)
        )
    )
    with pytest.raises(TypeError, match="CholeskyVariationalDistribution"):
        pug.PyroSVGP(delta, gaussian_likelihood())


def test_name_prefix_collision_is_an_error(data):
    x, y, _, _ = data
    pyro.clear_param_store()
    first = pug.PyroSVGP(trained(x, y), gaussian_likelihood())
    first.guide(x)
    second = pug.PyroSVGP(trained(x, y), gaussian_likelihood())
    with pytest.raises(RuntimeError, match="distinct name_prefix"):
        second.guide(x)
    pug.PyroSVGP(trained(x, y), gaussian_likelihood(), name_prefix="other").guide(x)  # fine


def test_batch_gp_through_pyro(data):
    """Two independent outputs (batch_shape [2]): y is (N, 2) in Pyro; the EUBO moves q(u)."""
    x, y, erased, _ = data
    batch = torch.Size([2])
    gp = GP(x[::6].clone(), batch_shape=batch).double()
    gp(x)
    likelihood = gaussian_likelihood(batch)
    y2 = torch.stack([y, -y])  # (2, N)
    svgp = pug.PyroSVGP(gp, likelihood, name_prefix="batch")
    pyro.clear_param_store()
    posterior = svgp.freeze()
    assert pug.inducing_distribution(posterior).mean.shape == (2, 10)
    loss = pu.Trace_EUBO(posterior, lam=1e-3, num_particles=8, vectorize_particles=True)
    svi = SVI(pu.unlearn(svgp.model), svgp.guide, pyro.optim.Adam({"lr": 0.01}), loss)
    before = gp.variational_strategy._variational_distribution.variational_mean.clone()
    for _ in range(3):
        svi.step(x[erased], y2[:, erased].T)
    after = gp.variational_strategy._variational_distribution.variational_mean
    assert not torch.equal(before, after)
