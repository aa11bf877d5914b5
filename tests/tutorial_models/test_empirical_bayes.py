"""Empirical Bayes: a model holding a ``pyro.param`` (a learnt prior scale). freeze copies its
guides, the model's parameter stays fixed at its trained value while unlearning and retraining,
and both reach the exact posterior on D_r under that prior."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from torch.distributions import constraints

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.metrics import gaussian_kl

NOISE = 0.5


def model(x, y=None):
    prior_scale = pyro.param("prior_scale", torch.tensor(1.0), constraint=constraints.positive)
    a = pyro.sample("a", dist.Normal(0.0, prior_scale))
    b = pyro.sample("b", dist.Normal(0.0, prior_scale))
    with pyro.plate("data", len(x)):
        return pyro.sample("obs", dist.Normal(a + b * x, NOISE), obs=y)


def data():
    x = torch.cat([torch.linspace(-1.0, 1.0, 30), torch.full((3,), 2.0)])
    y = 1.0 + 2.0 * x + NOISE * torch.randn(33)
    y[30:] += 1.0  # the erased rows: outliers at x = 2
    keep = torch.ones(33, dtype=torch.bool)
    keep[30:] = False
    return x, y, torch.arange(30, 33), keep


def exact(x, y):
    """p(a, b | x, y) under the prior N(0, s²) with s the trained prior scale."""
    scale = pyro.param("prior_scale").detach()
    features = torch.stack([torch.ones_like(x), x], dim=-1)
    loc, precision = gaussian_linear_posterior(
        torch.zeros(2), torch.eye(2) / scale**2, features, y, NOISE
    )
    return loc, torch.linalg.inv(precision)


def trained(cls, x, y):
    guide = cls(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):  # type-II maximum likelihood of the prior scale, with q
        svi.step(x, y)
    # the guide's optimum for the learnt scale (exact: a Gaussian linear model), to keep it fast
    loc, cov = exact(x, y)
    if cls is AutoMultivariateNormal:
        write_gaussian(guide, loc, cov)
    else:  # the mean-field optimum: the exact mean, the conditional precisions
        write_gaussian(guide, loc, scale=torch.linalg.inv(cov).diagonal().rsqrt())
    return guide


@pytest.mark.parametrize("cls", [AutoNormal, AutoMultivariateNormal])
def test_freeze_snapshots_the_guide_without_the_model_parameter(cls):
    x, y, _, _ = data()
    guide = trained(cls, x, y)
    posterior = pu.freeze(guide)  # failed: "deepcopy failed (Only Tensors created explicitly...)"
    assert "prior_scale" not in posterior.params
    assert sorted(posterior.site_shapes) == (
        ["a_unconstrained", "b_unconstrained"]
        if cls is AutoNormal
        else ["_AutoMultivariateNormal_latent"]
    )
    loc, _ = read_gaussian(posterior)
    assert torch.allclose(loc, exact(x, y)[0])


def test_forget_unlearns_with_the_prior_scale_fixed():
    x, y, erased, keep = data()
    guide = trained(AutoMultivariateNormal, x, y)
    scale = pyro.param("prior_scale").detach().clone()
    target = exact(x[keep], y[keep])
    before = float(gaussian_kl(*read_gaussian(guide), *target))

    result = pu.forget(model, guide, x, y, erased=erased, plate="data", progress=False)

    after = float(gaussian_kl(*read_gaussian(result.posterior), *target))
    assert after < 0.25 * before, (after, before)
    assert torch.equal(pyro.param("prior_scale").detach(), scale)


@pytest.mark.parametrize("init", ["posterior", "prior"])
def test_retrain_holds_the_prior_scale_at_its_trained_value(init):
    x, y, _, keep = data()
    guide = trained(AutoMultivariateNormal, x, y)
    scale = pyro.param("prior_scale").detach().clone()
    target = exact(x[keep], y[keep])
    before = float(gaussian_kl(*read_gaussian(guide), *target))

    result = pu.retrain(
        model, guide, x[keep], y[keep], init=init, num_steps=1000, lr=0.05, progress=False
    )

    after = float(gaussian_kl(*read_gaussian(result.posterior), *target))
    assert after < 0.25 * before, (after, before)
    assert "prior_scale" not in result.posterior.params
    assert torch.equal(pyro.param("prior_scale").detach(), scale)
