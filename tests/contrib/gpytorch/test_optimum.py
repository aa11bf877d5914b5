"""q(u|D)'s distance to the ELBO's optimum, and the one call that puts it there, against the
closed form (Gaussian likelihood) and GPyTorch's own ELBO gradient (Bernoulli)."""

from __future__ import annotations

import gpytorch
import pytest
import torch

from pyro_unlearn.contrib import gpytorch as pug
from tests.contrib.gpytorch.closed_form import GP, gaussian_likelihood, kl_to, optimal, trained
from tests.contrib.gpytorch.test_guards import _tutorial


@pytest.mark.parametrize("whitened", [True, False])
def test_one_natural_step_is_the_closed_form_optimum(data, whitened):
    """From GPyTorch's initial q(u), natural_step (in chunks of 7) is Titsias' optimum; the gap
    before is the KL to it, and 0 after; num_data scales a sample as repeating it would."""
    x, y, _, _ = data
    gp = GP(x[::6].clone(), whitened=whitened).double()
    gp(x)
    likelihood, target = gaussian_likelihood(), optimal(gp, x, y)
    before = kl_to(gp, *target)
    assert pug.inducing_gap(gp, likelihood, x, y, warn=False) == pytest.approx(before, rel=1e-6)
    step = pug.natural_step(gp, likelihood, x, y, chunk_size=7)
    pug.set_inducing_distribution(gp, step.mean, step.covariance_matrix)
    assert before > 10.0 and abs(kl_to(gp, *target)) < 1e-9
    assert pug.inducing_gap(gp, likelihood, x, y) < 1e-9  # no warning
    half, twice = (
        pug.natural_step(gp, likelihood, x[::2], y[::2], num_data=60),
        pug.natural_step(gp, likelihood, x[::2].repeat(2, 1), y[::2].repeat(2)),
    )
    assert float(torch.distributions.kl_divergence(half, twice)) < 1e-9


def test_a_tutorial_trained_q_is_measured_converged_and_then_unlearns_exactly():
    """GPyTorch's tutorial loop (Adam on everything, 1-D inputs, then a prediction) leaves q(u)
    short of its optimum: freezing with the data warns with the gap, converge_inducing puts q(u)
    at the optimum in one step (hyperparameters untouched), and then the λ = 0 EUBO (LBFGS on the
    tutorial's Cholesky q(u), without inputs=: read from gp(x_e)) lands on q(u|D_r), the
    optimum on D_r (KL < 1e-6)."""
    gp, likelihood, x, y = _tutorial(steps=150)
    gp, likelihood, x, y = gp.double(), likelihood.double(), x.double(), y.double()
    erased, keep = torch.arange(120, 160), torch.cat([torch.arange(120), torch.arange(160, 200)])
    with pytest.warns(pug.InducingGapWarning, match=r"nats from the ELBO's optimum"):
        pug.freeze_inducing(gp, likelihood=likelihood, data=(x, y))
    fixed = {n: p.detach().clone() for n, p in gp.named_parameters() if "variational_" not in n}
    assert pug.converge_inducing(gp, likelihood, x, y) < 1e-8
    assert all(torch.equal(p, fixed[n]) for n, p in gp.named_parameters() if n in fixed)
    posterior = pug.freeze_inducing(gp, likelihood=likelihood, data=(x, y))  # no warning
    retrained = pug.natural_step(gp, likelihood, x[keep], y[keep])
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(erased))
    optimizer = torch.optim.LBFGS(list(gp.variational_parameters()), max_iter=500)

    def closure():
        optimizer.zero_grad()
        loss = -eubo(gp(x[erased]), y[erased])
        loss.backward()
        return loss

    optimizer.step(closure)
    kl = float(torch.distributions.kl_divergence(pug.inducing_distribution(gp), retrained))
    assert kl < 1e-6


def test_bernoulli_converges_to_gpytorchs_elbo_stationary_point(data):
    """Bernoulli classification: a few natural steps reach the q(u) where GPyTorch's own
    VariationalELBO has zero gradient (and where Adam on it ends, KL < 1e-6)."""
    x, y, _, _ = data
    labels = (y > 0).to(y.dtype)
    gp = GP(x[::6].clone()).double()
    gp(x)
    likelihood = gpytorch.likelihoods.BernoulliLikelihood()
    with pytest.warns(pug.InducingGapWarning, match="one natural-gradient step"):
        pug.inducing_gap(gp, likelihood, x, labels)
    assert pug.converge_inducing(gp, likelihood, x, labels) < 1e-8
    mll = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=len(x))
    (-mll(gp(x), labels)).backward()
    assert max(float(p.grad.abs().max()) for p in gp.variational_parameters()) < 1e-5
    with pytest.warns(pug.InducingGapWarning, match="raise max_steps"):
        other = trained(x, y)
        pug.converge_inducing(other, likelihood, x, labels, max_steps=1)


def test_float32_at_scale_warns_with_the_measured_rounding_error():
    """10⁴ points, M = 100: q(u|D) in float32 has ε·κ ≈ 10⁻², past the tolerance, and the
    objectives warn on construction; the same q(u|D) in float64 is 10⁶ times below it."""
    g = torch.Generator().manual_seed(0)
    x = 10 * torch.rand(10_000, generator=g, dtype=torch.float64)
    y = torch.sin(x) + 0.1 * torch.randn(10_000, generator=g, dtype=torch.float64)
    errors = {}
    for dtype in (torch.float64, torch.float32):
        gp = GP(torch.linspace(0, 10, 100, dtype=dtype).unsqueeze(-1)).to(dtype)
        gp.covar_module.lengthscale = 0.5
        likelihood = gaussian_likelihood().to(dtype)
        likelihood.noise = 0.01
        gp(x[:2].to(dtype))
        pug.converge_inducing(gp, likelihood, x.to(dtype), y.to(dtype), max_steps=2, tol=1e-3)
        errors[dtype] = pug.check_precision(gp, warn=False)
    assert errors[torch.float32] > 3 * pug.optimum.PRECISION_TOLERANCE
    assert errors[torch.float64] < 1e-6 * pug.optimum.PRECISION_TOLERANCE
    with pytest.warns(pug.PrecisionWarning, match=r"float32 has relative rounding error"):
        pug.VariationalEUBO(likelihood, gp, pug.freeze_inducing(gp), num_erased=10)
