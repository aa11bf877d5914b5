"""Pyro's Bayesian regression tutorial model: ``PyroModule[nn.Linear]`` with ``PyroSample``
weights, which cannot take a particle plate (``F.linear`` wants 2-D weights): forget, retrain and
the metrics run it by ``torch.func.vmap`` (or one particle at a time) and unlearn."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_unlearn as pu
from pyro_unlearn.traces import vectorization_problem

NOISE = 0.5


class BayesianRegression(PyroModule):
    """As in Pyro's tutorial "Bayesian Regression - Introduction (Part 1)", with a known noise
    scale so that q(θ|D_r)'s mean-field optimum has a closed form."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, NOISE), obs=y)


def mean_field_optimum(x, y):
    """The mean-field Gaussian VI optimum of the conjugate posterior over (weight, bias): the
    exact mean and 1/diag(precision) (exact for a Gaussian target)."""
    features = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    prior_precision = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.01]))
    precision = prior_precision + features.T @ features / NOISE**2
    mean = torch.linalg.solve(precision, features.T @ y / NOISE**2)
    return mean, torch.diag(1 / torch.diagonal(precision))


@pytest.fixture
def tutorial():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(40, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + NOISE * torch.randn(40)
    y[:8] = x[:8] @ torch.tensor([1.5, -1.5, 0.5]) + NOISE * torch.randn(8)  # erased below
    model = BayesianRegression(3, 1)
    guide = AutoDiagonalNormal(model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}), Trace_ELBO())
    for _ in range(800):
        svi.step(x, y)
    return model, guide, x, y


def kl_to_optimum(posterior, x, y):
    loc, cov = pu.guides.read_gaussian(posterior)
    mean, optimum = mean_field_optimum(x, y)
    return float(pu.metrics.gaussian_kl(mean, optimum, loc, cov))


def test_the_model_cannot_take_a_particle_plate(tutorial):
    model, guide, x, y = tutorial
    reason = vectorization_problem(model, guide, (x, y), {}, 4)
    assert reason is not None and "RuntimeError" in reason


@pytest.mark.parametrize("method", ["rkl", "eubo"])
def test_forget_with_defaults_unlearns(tutorial, method, caplog):
    model, guide, x, y = tutorial
    original = pu.freeze(guide, x, y)
    with caplog.at_level(logging.INFO, logger="pyro"):
        result = pu.forget(
            model, guide, x, y, erased=torch.arange(8), plate="data", method=method, progress=False
        )
    assert result.particles == "vmap"
    assert not [r for r in caplog.records if "max_plate_nesting" in r.getMessage()]
    before = kl_to_optimum(original, x[8:], y[8:])
    after = kl_to_optimum(result.posterior, x[8:], y[8:])
    assert after < 0.5 * before, (before, after)


def test_sequential_particles_match_vmapped(tutorial):
    """Without vectorisation the loss loops over particles: the same loss in expectation."""
    model, guide, x, y = tutorial
    posterior = pu.freeze(guide, x, y)
    wrapped = pu.unlearn(model, erased=torch.arange(8), plate="data")
    losses = {}
    for vectorize in (True, False):
        loss = pu.Trace_EUBO(posterior, num_particles=200, vectorize_particles=vectorize)
        pyro.set_rng_seed(1)
        losses[loss.loss(wrapped, guide, x, y) and loss.particles] = loss.loss(wrapped, guide, x, y)
    assert set(losses) == {"vmap", "sequential"}
    assert abs(losses["vmap"] - losses["sequential"]) < 3.0


def test_retrain_and_predictive_kl(tutorial):
    model, guide, x, y = tutorial
    original = pu.freeze(guide, x, y)
    reference = pu.retrain(model, guide, x[8:], y[8:], num_steps=600, progress=False)
    assert reference.particles == "vmap"
    assert kl_to_optimum(reference.posterior, x[8:], y[8:]) < kl_to_optimum(original, x[8:], y[8:])
    result = pu.forget(model, guide, x, y, erased=torch.arange(8), plate="data", progress=False)
    full = pu.metrics.predictive_kl(model, reference.posterior, original, x[:8], site="obs")
    unlearned = pu.metrics.predictive_kl(
        model, reference.posterior, result.posterior, x[:8], site="obs"
    )
    assert full.shape == (8,)
    assert unlearned.mean() < 0.5 * full.mean(), (full.mean(), unlearned.mean())


def test_autonormal_guide(tutorial):
    model, _, x, y = tutorial
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}), Trace_ELBO())
    for _ in range(800):
        svi.step(x, y)
    original = pu.freeze(guide, x, y)
    result = pu.forget(model, guide, x, y, erased=torch.arange(8), plate="data", progress=False)
    assert result.particles == "vmap"
    assert kl_to_optimum(result.posterior, x[8:], y[8:]) < 0.5 * kl_to_optimum(
        original, x[8:], y[8:]
    )
