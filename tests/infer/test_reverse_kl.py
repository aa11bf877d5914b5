import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_unlearn as pu
from pyro_unlearn.infer.reverse_kl import effective_sample_size

from .test_eubo import Y, model, trained_and_moved


def test_matches_hand_written_estimator():
    guide, posterior = trained_and_moved()
    lam, P = 0.3, 8
    loss = pu.ReverseKL(
        posterior, lam, num_particles=P, vectorize_particles=True, max_plate_nesting=1
    )
    pyro.set_rng_seed(5)
    with pyro.plate("num_particles_vectorized", P, dim=-2):
        theta = poutine.trace(posterior).get_trace(Y).nodes["mu_unconstrained"]["value"].reshape(P)
    q, q_v = dist.Normal(0.2, 0.3), dist.Normal(0.5, 0.3)
    log_lik = dist.Normal(theta[:, None], 1.0).log_prob(Y).sum(-1)
    kept = q.log_prob(theta) > math.log(lam) + q.log_prob(torch.tensor(0.2))
    assert 0 < kept.sum() < P
    w = P * torch.softmax(-torch.where(kept, log_lik, 0.0), 0)
    expected = -(w * q_v.log_prob(theta)).mean()
    pyro.set_rng_seed(5)
    assert loss.loss(pu.unlearn(model), guide, Y) == pytest.approx(
        float(expected.detach()), rel=1e-5
    )
    assert float(loss.ess) == pytest.approx(float(w.sum() ** 2 / (w**2).sum()), rel=1e-5)


def test_effective_sample_size_bounds():
    assert float(effective_sample_size(torch.ones(50))) == pytest.approx(50)
    assert float(effective_sample_size(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1)


def test_ess_collapses_when_erased_data_are_informative():
    guide, posterior = trained_and_moved()
    loss = pu.ReverseKL(posterior, num_particles=256, vectorize_particles=True)
    loss.loss(pu.unlearn(model), guide, Y)
    mild = float(loss.ess)
    loss.loss(pu.unlearn(model), guide, Y.repeat(40))  # 120 points that q(θ|D) never saw
    assert 1 <= float(loss.ess) < 0.2 * mild <= 256
