"""Fixtures shared by the loss tests: a one-parameter Normal-mean model whose q(θ|D) and live
guide are known exactly."""

from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

import pyro_unlearn as pu
from pyro_unlearn.guides import write_gaussian


def normal_mean_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture
def moved():
    """``model, y, guide, posterior``: q(θ|D) = N(0.2, 0.3²) frozen; the live AutoNormal then
    moved to N(0.5, 0.3²)."""
    y = torch.tensor([0.8, 1.1, 1.4])
    guide = AutoNormal(
        normal_mean_model,
        init_loc_fn=init_to_value(values={"mu": torch.tensor(0.2)}),
        init_scale=0.3,
    )
    guide(y)
    posterior = pu.freeze(guide)
    with torch.no_grad():
        dict(pyro.get_param_store().named_parameters())["AutoNormal.locs.mu"].fill_(0.5)
    return SimpleNamespace(model=normal_mean_model, y=y, guide=guide, posterior=posterior)


@pytest.fixture
def exact_mvn_guide(linreg, model):
    """``exact_mvn_guide(mvn)``: a live AutoMultivariateNormal over the linear regression's
    (w, b) holding the MultivariateNormal ``mvn`` in its parameters."""

    def make(mvn):
        guide = AutoMultivariateNormal(model)
        guide(linreg.x[linreg.erased], linreg.y[linreg.erased])
        return write_gaussian(guide, mvn.loc, mvn.covariance_matrix)

    return make
