import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_unlearn as pu


def test_matches_hand_written_estimator(moved):
    model, Y, guide, posterior = moved.model, moved.y, moved.guide, moved.posterior
    lam, P = 0.3, 8
    loss = pu.Trace_EUBO(
        posterior, lam, num_particles=P, vectorize_particles=True, max_plate_nesting=1
    )
    pyro.set_rng_seed(5)
    with pyro.plate("num_particles_vectorized", P, dim=-2):
        theta = poutine.trace(guide).get_trace(Y).nodes["mu_unconstrained"]["value"].reshape(P)
    q, q_u = dist.Normal(0.2, 0.3), dist.Normal(0.5, 0.3)
    log_lik = dist.Normal(theta[:, None], 1.0).log_prob(Y).sum(-1)
    threshold = math.log(lam) + q.log_prob(torch.tensor(0.2))
    kept = q.log_prob(theta) > threshold
    assert 0 < kept.sum() < P  # the threshold matters in this draw
    expected = (torch.where(kept, log_lik, 0.0) + q_u.log_prob(theta) - q.log_prob(theta)).mean()
    pyro.set_rng_seed(5)
    assert loss.loss(pu.unlearn(model), guide, Y) == pytest.approx(
        float(expected.detach()), rel=1e-5
    )


def test_needs_reparameterised_guide(moved):
    model, Y = moved.model, moved.y

    def guide(y):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(loc, 1.0).has_rsample_(False))

    guide(Y)
    loss = pu.Trace_EUBO(pu.freeze(guide, Y), num_particles=2, vectorize_particles=True)
    with pytest.raises(ValueError, match="reparameterised"):
        loss.loss(pu.unlearn(model), guide, Y)
    rkl = pu.ReverseKL(pu.freeze(guide, Y), num_particles=2, vectorize_particles=True)
    assert math.isfinite(rkl.loss(pu.unlearn(model), guide, Y))  # rKL does not need it
    with pyro.validation_enabled(False):  # a per-step check, as Pyro's: validation only
        assert math.isfinite(loss.loss(pu.unlearn(model), guide, Y))
