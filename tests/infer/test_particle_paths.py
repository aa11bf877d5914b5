"""Particles that fit the model (a plate, vmap, or a loop), quiet losses, and a likelihood that
ignores the sampled latents refused."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu

LOSSES = [pu.Trace_EUBO, pu.ReverseKL]


def plain(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def first_particle_only(y):
    """Runs in a particle plate without error, but every particle reads the first one's mu."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu.reshape(-1)[:1], 1.0), obs=y)


def branching(y):
    """A Python branch on a latent: neither a particle plate nor vmap can batch it."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    loc = mu if bool(mu > -1e9) else -mu
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def ignores_latents(y):
    pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def fitted(model, y):
    guide = AutoNormal(plain)  # the same sites in every model here
    guide(y)
    pyro.param("AutoNormal.locs.mu").data.fill_(float(y.mean()))
    pyro.param("AutoNormal.scales.mu").data.fill_(1 / len(y) ** 0.5)
    return guide


@pytest.fixture
def y():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return 1.0 + torch.randn(20)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize(
    "model, path",
    [(plain, "vectorized"), (first_particle_only, "vmap"), (branching, "sequential")],
)
def test_particle_path_and_loss(loss_cls, model, path, y):
    """The path fits the model, and the loss is the one of plain particles at the same draws."""
    guide = fitted(model, y)
    posterior = pu.freeze(guide, y)
    loss = loss_cls(posterior, num_particles=1000, vectorize_particles=True)
    reference = loss_cls(posterior, num_particles=1000, vectorize_particles=True)
    pyro.set_rng_seed(1)
    value = loss.loss(pu.unlearn(model), guide, y[:5])
    pyro.set_rng_seed(1)
    expected = reference.loss(pu.unlearn(plain), guide, y[:5])
    assert loss.particles == path and reference.particles == "vectorized"
    if path != "sequential":  # same draws, same particles: the same loss
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
    else:  # other draws: the same loss up to Monte-Carlo error
        assert value == pytest.approx(expected, abs=0.5)


def test_without_vectorisation_particles_are_sequential(y):
    guide = fitted(plain, y)
    loss = pu.ReverseKL(pu.freeze(guide, y), num_particles=4)
    loss.loss(pu.unlearn(plain), guide, y[:5])
    assert loss.particles == "sequential"


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_no_guessed_nesting_line(loss_cls, y, caplog):
    guide = fitted(plain, y)
    loss = loss_cls(pu.freeze(guide, y), num_particles=8, vectorize_particles=True)
    svi = SVI(pu.unlearn(plain), guide, pyro.optim.Adam({"lr": 0.01}), loss)
    with caplog.at_level(logging.INFO):
        svi.step(y[:5])
    assert not caplog.records
    assert loss.max_plate_nesting == 2  # the data plate and the particle plate


def test_fallback_logged_at_info(y, caplog):
    guide = fitted(branching, y)
    loss = pu.ReverseKL(pu.freeze(guide, y), num_particles=8, vectorize_particles=True)
    with caplog.at_level(logging.INFO, logger="pyro_unlearn"):
        loss.loss(pu.unlearn(branching), guide, y[:5])
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "particles by a loop" in record.getMessage()


@pytest.mark.parametrize("method", ["rkl", "eubo"])
def test_likelihood_ignoring_latents_is_refused(method, y):
    guide = fitted(ignores_latents, y)
    before = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    with pytest.raises(ValueError, match="does not depend on the latent"):
        pu.forget(ignores_latents, guide, y[:5], method=method, num_steps=5, progress=False)
    for name, value in guide.state_dict().items():
        assert torch.equal(value, before[name])


def test_eubo_one_particle_likelihood_not_connected(y):
    """One particle: no two draws to compare, the gradient tells."""
    guide = fitted(ignores_latents, y)
    loss = pu.Trace_EUBO(pu.freeze(guide, y))
    svi = SVI(pu.unlearn(ignores_latents), guide, pyro.optim.Adam({"lr": 0.01}), loss)
    with pytest.raises(ValueError, match="no gradient with respect to the sampled latent"):
        svi.step(y[:5])


def test_checked_only_under_validation(y):
    guide = fitted(ignores_latents, y)
    loss = pu.ReverseKL(pu.freeze(guide, y), num_particles=8, vectorize_particles=True)
    with pyro.validation_enabled(False):
        loss.loss(pu.unlearn(ignores_latents), guide, y[:5])  # no check, no error
