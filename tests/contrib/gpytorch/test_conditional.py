"""p(f|u) and log p̃(D_e|u): GPyTorch's own ELBO, integrated over u."""

from __future__ import annotations

import gpytorch
import pytest
import torch

from pyro_unlearn.contrib import gpytorch as pug
from tests.contrib.gpytorch.closed_form import gaussian_likelihood, trained


@pytest.mark.parametrize("whitened", [True, False], ids=["whitened", "unwhitened"])
def test_the_closed_form_q_is_the_optimum_of_gpytorchs_elbo(data, whitened):
    x, y, _, _ = data
    gp, likelihood = trained(x, y, whitened), gaussian_likelihood()
    elbo = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=len(y))
    gp.train()
    (-elbo(gp(x), y)).backward()
    grads = [p.grad.abs().max() for p in gp.variational_parameters()]
    assert max(grads) < 1e-6


def test_monte_carlo_likelihood_of_u_integrates_to_gpytorchs_closed_form(data):
    """E_{q(u)}[log p̃(D_e|u)] by sampling u equals GPyTorch's expected_log_prob on q(f): our
    p(f|u) is GPyTorch's (the EUBO's λ > 0 estimator relies on it)."""
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    with torch.no_grad():
        closed = float(likelihood.expected_log_prob(y[erased], gp(x[erased])).sum())
        u = pug.inducing_distribution(pug.freeze_inducing(gp)).sample(torch.Size([20000]))
        per_u = pug.inducing_log_likelihood(gp, likelihood, u, x[erased], y[erased])
        chunked = pug.inducing_log_likelihood(gp, likelihood, u, x[erased], y[erased], chunk_size=5)
    assert per_u.shape == (20000,)
    assert torch.allclose(chunked, per_u, rtol=1e-12, atol=1e-9)
    assert abs(float(per_u.mean()) - closed) < 3 * float(per_u.std()) / 20000**0.5 + 1e-9


def test_one_dimensional_inputs_are_taken_as_gpytorch_takes_them(data):
    """x of shape (N,) (GPyTorch's 1-D tutorials) is (N, 1), as ApproximateGP's call reads it,
    through the likelihood of u and the Pyro model of PyroSVGP."""
    import pyro

    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    u = pug.inducing_distribution(pug.freeze_inducing(gp)).sample(torch.Size([7]))
    x_e, y_e = x[erased], y[erased]
    column = pug.inducing_log_likelihood(gp, likelihood, u, x_e, y_e)
    flat = pug.inducing_log_likelihood(gp, likelihood, u, x_e.squeeze(-1), y_e)
    assert torch.equal(flat, column)
    svgp = pug.PyroSVGP(gp, likelihood, name_prefix="gp1d")
    site = svgp.site
    traces = [
        pyro.poutine.trace(pyro.poutine.condition(svgp.model, {svgp.guide.site: u[0]})).get_trace(
            inputs, y_e
        )
        for inputs in (x_e, x_e.squeeze(-1))
    ]
    assert torch.equal(
        traces[0].nodes[site]["fn"].log_prob(y_e), traces[1].nodes[site]["fn"].log_prob(y_e)
    )
