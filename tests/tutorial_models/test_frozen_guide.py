"""A guide frozen after training, as Pyro's regression tutorial leaves it
(``guide.requires_grad_(False)``): forget unlearns it all the same and gives the flags back."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.metrics import gaussian_kl

NOISE = 0.5


def model(x, y=None):
    # Pyro's "Bayesian regression" tutorials: scalar latents, the observations in a plate
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    mean = a + b * x
    with pyro.plate("data", len(x)):
        return pyro.sample("obs", dist.Normal(mean, NOISE), obs=y)


def data():
    x = torch.cat([torch.linspace(-1.0, 1.0, 30), torch.full((3,), 2.0)])
    y = 1.0 + 2.0 * x + NOISE * torch.randn(33)
    y[30:] += 1.0  # the erased rows: outliers at x = 2, which pull the slope up
    return x, y, torch.arange(30, 33)


def exact(x, y):
    features = torch.stack([torch.ones_like(x), x], dim=-1)
    loc, precision = gaussian_linear_posterior(
        torch.zeros(2), torch.eye(2) / 100.0, features, y, NOISE
    )
    return loc, torch.linalg.inv(precision)


def trained_and_frozen(x, y):
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    # Trace_ELBO's optimum on D, which a Gaussian guide of a Gaussian linear model can reach:
    # the exact posterior (written directly, to keep the test fast)
    write_gaussian(guide, *exact(x, y))
    guide.requires_grad_(False)  # as the tutorial does after training
    return guide


def test_a_frozen_guide_is_unlearned_and_stays_frozen():
    x, y, erased = data()
    guide = trained_and_frozen(x, y)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[erased] = False
    target = exact(x[keep], y[keep])
    before = float(gaussian_kl(*read_gaussian(guide), *target))

    result = pu.forget(model, guide, x, y, erased=erased, plate="data", progress=False)

    after = float(gaussian_kl(*read_gaussian(result.posterior), *target))
    assert after < 0.25 * before, (after, before)  # it moved, towards q(θ|D_r)
    assert [p.requires_grad for p in guide.parameters()] == [False, False, False]
    store = pyro.get_param_store()
    assert not any(store._params[n].requires_grad for n in store.keys())


def test_flags_are_given_back_when_the_run_fails():
    x, y, erased = data()
    guide = trained_and_frozen(x, y)
    loc = pyro.param("AutoMultivariateNormal.loc").detach().clone()
    with pytest.raises(ValueError, match="diverged"):
        pu.forget(
            model,
            guide,
            x,
            y,
            erased=erased,
            plate="data",
            lr=1e30,
            num_steps=20,
            progress=False,
            method="rkl",  # SGD steps (auto would solve it by moment matching: no lr)
        )
    assert [p.requires_grad for p in guide.parameters()] == [False, False, False]
    assert torch.equal(pyro.param("AutoMultivariateNormal.loc").detach(), loc)
