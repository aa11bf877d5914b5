import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.infer.reverse_kl import (
    conditional_effective_sample_size,
    effective_sample_size,
    next_temperature,
    temperature_steps,
)


def test_matches_hand_written_estimator(moved):
    model, Y, guide, posterior = moved.model, moved.y, moved.guide, moved.posterior
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
    assert loss.diagnostics() == {"ess": pytest.approx(float(loss.ess)), "temperature": 1.0}


def test_effective_sample_size_bounds():
    assert float(effective_sample_size(torch.ones(50))) == pytest.approx(50)
    assert float(effective_sample_size(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1)


def test_ess_collapses_when_erased_data_are_informative(moved):
    model, Y, guide, posterior = moved.model, moved.y, moved.guide, moved.posterior
    loss = pu.ReverseKL(posterior, num_particles=256, vectorize_particles=True)
    loss.loss(pu.unlearn(model), guide, Y)
    mild = float(loss.ess)
    loss.loss(pu.unlearn(model), guide, Y.repeat(40))  # 120 points that q(θ|D) never saw
    assert 1 <= float(loss.ess) < 0.2 * mild <= 256


def test_next_temperature_is_the_largest_step_that_keeps_the_cess():
    """β' is on the candidate grid, keeps the conditional ESS at or above the bound, and the next
    grid point does not; it never goes down, and is 1 once the weights allow it."""
    g = torch.Generator().manual_seed(0)
    log_lik = 20.0 * torch.randn(512, generator=g, dtype=torch.float64)
    log_base = 0.1 * torch.randn(512, generator=g, dtype=torch.float64)

    def cess(beta, new):
        return float(
            conditional_effective_sample_size(log_base - beta * log_lik, -(new - beta) * log_lik)
        )

    beta = float(next_temperature(log_base, log_lik, 0.0, 0.5))
    assert 0.0 < beta < 1.0
    assert cess(0.0, beta) >= 0.5 * 512
    grid = temperature_steps(torch.float64).tolist()
    above = min(t for t in grid if t > beta * (1 + 1e-9))
    assert cess(0.0, above) < 0.5 * 512
    again = float(next_temperature(log_base, log_lik, beta, 0.5, min_current_ess=0.3))
    assert beta < again < 1.0  # from β it moves up by another step
    # ... unless the ESS at β (about e^{-0.64}·S) is under the default floor, 0.7·S
    assert float(next_temperature(log_base, log_lik, beta, 0.5)) == beta
    assert float(next_temperature(log_base, 1e-3 * log_lik, 0.0, 0.5)) == 1.0
    out = next_temperature(log_base.float(), log_lik.float(), 0.0, 0.5)
    assert out.dtype == torch.float32 and out.shape == ()


def test_conditional_ess_is_S_for_no_step_and_the_ess_for_uniform_weights():
    g = torch.Generator().manual_seed(1)
    log_w, log_v = 5.0 * torch.randn(300, generator=g), torch.randn(300, generator=g)
    cess = conditional_effective_sample_size
    assert float(cess(log_w, torch.zeros(300))) == pytest.approx(300, rel=1e-5)
    assert float(cess(torch.zeros(300), log_v)) == pytest.approx(
        float(effective_sample_size(log_v.exp())), rel=1e-5
    )
    batch = cess(log_w, torch.stack([0 * log_v, log_v, 3 * log_v]))
    assert batch.shape == (3,) and 1 <= float(batch.min()) and float(batch.max()) <= 300 + 1e-3
    assert float(batch[2]) < float(batch[1]) < float(batch[0])


@pytest.mark.parametrize("ess_at_beta", [1.0, 0.75])
def test_next_temperature_matches_the_gaussian_closed_form(ess_at_beta):
    """ℓ ~ N(0, σ²) under the proposal: under the weights W ∝ e^{−βℓ} it is N(−βσ², σ²), and a
    step δ has CESS/S = E_W[v]²/E_W[v²] = exp(−δ²σ²) for every β, so β' − β = √(−log f)/σ
    (up to the candidate grid, 20 per decade, and Monte-Carlo error). The ESS at β is
    exp(−β²σ²): at 0.75 < f = 0.8 the ESS rule (the ESS at β' ≥ f·S) could not move at all."""
    sigma, f, S = 10.0, 0.8, 200_000
    beta = math.sqrt(-math.log(ess_at_beta)) / sigma
    g = torch.Generator().manual_seed(2)
    log_lik = sigma * torch.randn(S, generator=g, dtype=torch.float64)
    log_base = torch.zeros(S, dtype=torch.float64)
    ess = float(effective_sample_size(torch.softmax(-beta * log_lik, 0)))
    assert ess == pytest.approx(ess_at_beta * S, rel=0.05)
    step = float(next_temperature(log_base, log_lik, beta, f)) - beta
    exact = math.sqrt(-math.log(f)) / sigma
    assert exact / 1.2 < step <= exact * 1.05


def test_next_temperature_waits_while_the_weights_at_beta_are_uneven():
    """Weights that a few draws carry make every step's CESS look like S (β would jump to 1 and
    the guide never catch up): below ``min_current_ess``·S of ESS at β, β stays."""
    sigma, S = 10.0, 20_000
    g = torch.Generator().manual_seed(3)
    log_lik = sigma * torch.randn(S, generator=g, dtype=torch.float64)
    log_base = torch.zeros(S, dtype=torch.float64)
    for beta in (0.2, 0.5):  # ESS at β: exp(−β²σ²)·S, 2 % and a draw or two
        assert float(next_temperature(log_base, log_lik, beta, 0.8)) == beta
    loose = float(next_temperature(log_base, log_lik, 0.5, 0.8, min_current_ess=0.0))
    assert loose > 0.6  # without the guard it leaps (the exact step is 0.047)


def test_reverse_kl_from_the_current_guide_lands_on_the_exact_posterior_of_D_r(
    linreg, model, exact_posterior, exact_mvn_guide
):
    """Bayesian linear regression, a 10-point cluster erased from the exact posterior: drawing
    from the current guide with an annealed target, the rKL reaches the exact p(θ|D_r), with
    nearly uniform weights at β = 1. Evaluating the loss (no gradients) does not anneal."""
    from pyro.infer import SVI

    from pyro_unlearn.guides import read_gaussian

    keep = torch.ones(len(linreg.y), dtype=torch.bool)
    keep[linreg.erased] = False
    full, exact = exact_posterior(torch.arange(len(linreg.y))), exact_posterior(keep)
    D_E, linear = (linreg.x[linreg.erased], linreg.y[linreg.erased]), model
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = exact_mvn_guide(full)
    posterior = pu.freeze(guide)
    loss = pu.ReverseKL(
        posterior, 0.0, num_particles=256, vectorize_particles=True, max_plate_nesting=1,
        proposal="current", anneal=0.5,
    )  # fmt: skip
    assert math.isnan(loss.diagnostics()["ess"])  # no step evaluated yet
    loss.loss(pu.unlearn(linear), guide, *D_E)
    assert float(loss.temperature) == 0.0  # monitoring does not anneal
    svi = SVI(pu.unlearn(linear), guide, pyro.optim.Adam({"lr": 0.01}), loss)
    for _ in range(150):
        svi.step(*D_E)
    assert float(loss.temperature) == 1.0 and float(loss.ess) > 0.9 * 256
    assert loss.diagnostics()["temperature"] == 1.0
    loc, cov = read_gaussian(guide)
    unlearned = torch.distributions.MultivariateNormal(loc, cov)
    assert float(torch.distributions.kl_divergence(full, exact)) > 0.5
    assert float(torch.distributions.kl_divergence(unlearned, exact)) < 1e-3
    with pytest.raises(ValueError, match="needs proposal='current'"):
        pu.ReverseKL(posterior, anneal=0.5)


def test_one_particle_warns():
    """Pyro's default num_particles=1: one self-normalised weight is 1 at every step, so
    nothing is reweighted by the erased data; the loss says so and names the fix."""
    guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)))
    guide()
    posterior = pu.freeze(guide)
    with pytest.warns(UserWarning, match="num_particles=64 .* vectorize_particles=True"):
        pu.ReverseKL(posterior)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pu.ReverseKL(posterior, num_particles=2)
