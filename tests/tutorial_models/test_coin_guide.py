"""Pyro's coin tutorial (SVI Part I): a plain guide function with two ``pyro.param``s. freeze
names the data it needs, and forget and retrain reach the exact Beta posterior on D_r."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints
from torch.distributions.kl import kl_divergence

import pyro_unlearn as pu
from pyro_unlearn.exact import beta_binomial_unlearn

PRIOR = (10.0, 10.0)


def model(data):
    alpha0, beta0 = torch.tensor(PRIOR[0]), torch.tensor(PRIOR[1])
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    for i in range(len(data)):
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])


def guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


DATA = torch.cat([torch.ones(6), torch.zeros(4)])  # the tutorial's 6 heads, 4 tails
ERASED, REMAINING = DATA[7:], DATA[:7]  # forget three tails


def trained():
    """The tutorial's SVI optimum: the guide family holds the exact posterior Beta(16, 14)
    (set directly, to keep the test fast)."""
    pyro.param("alpha_q", torch.tensor(PRIOR[0] + 6), constraint=constraints.positive)
    pyro.param("beta_q", torch.tensor(PRIOR[1] + 4), constraint=constraints.positive)
    return dist.Beta(pyro.param("alpha_q").detach(), pyro.param("beta_q").detach())


def live_beta():
    return dist.Beta(pyro.param("alpha_q").detach(), pyro.param("beta_q").detach())


def target():
    return dist.Beta(*beta_binomial_unlearn(PRIOR[0] + 6, PRIOR[1] + 4, ERASED))


def test_freeze_without_the_data_names_it():
    trained()
    with pytest.raises(TypeError, match=r"it needs \['data'\].*pu.freeze\(guide, data\)"):
        pu.freeze(guide)
    posterior = pu.freeze(guide, DATA)
    assert sorted(posterior.params) == ["alpha_q", "beta_q"]


def test_forget_reaches_the_exact_beta_posterior():
    original = trained()
    before = float(kl_divergence(original, target()))

    result = pu.forget(model, guide, ERASED, progress=False)  # every observation erased

    after = float(kl_divergence(live_beta(), target()))
    assert after < 0.1 * before, (after, before)
    assert torch.allclose(result.original.params["alpha_q"].exp(), torch.tensor(PRIOR[0] + 6))


@pytest.mark.parametrize("init", ["posterior", "prior"])  # prior: from pyro.param's Beta(15, 15)
def test_retrain_trains_the_guide_function_in_a_private_store(init):
    original = trained()
    before = float(kl_divergence(original, target()))
    store = {n: v.detach().clone() for n, v in pyro.get_param_store().items()}

    result = pu.retrain(model, guide, REMAINING, init=init, num_steps=1000, lr=0.05, progress=False)

    with result.posterior.context():
        retrained = live_beta()
    after = float(kl_divergence(retrained, target()))
    assert after < 0.1 * before, (after, before)
    for name, value in pyro.get_param_store().items():  # the live guide is left as it was
        assert torch.equal(value.detach(), store[name]), name
