import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from scipy.stats import chi2

import pyro_unlearn as pu
from pyro_unlearn.guides import AutoZukoFlow, write_gaussian
from pyro_unlearn.infer import (
    MassScale,
    SmallKeptMassWarning,
    kept_mass,
    lam_for_mass,
    warn_small_kept_mass,
)
from pyro_unlearn.infer.adjusted_likelihood import (
    adjusted_log_likelihood,
    check_lam,
    log_threshold,
)
from pyro_unlearn.traces import sum_sites_per_particle


def test_threshold_masks_low_density_particles():
    log_lik = torch.tensor([-1.0, -2.0, -3.0])
    log_q = torch.tensor([0.0, -5.0, -0.5])
    threshold = log_threshold(0.5, torch.tensor(0.0))  # log 0.5 ≈ -0.69
    assert torch.equal(
        adjusted_log_likelihood(log_lik, log_q, threshold), torch.tensor([-1.0, 0.0, -3.0])
    )


def test_lambda_zero_is_the_plain_likelihood_and_one_unlearns_nothing():
    log_lik = torch.tensor([-1.0, -2.0])
    log_q = torch.tensor([-1e6, 0.0])
    assert log_threshold(0.0, torch.tensor(0.0)) == -math.inf
    assert torch.equal(
        adjusted_log_likelihood(log_lik, log_q, log_threshold(0.0, torch.tensor(0.0))), log_lik
    )
    assert torch.equal(
        adjusted_log_likelihood(log_lik, log_q, log_threshold(1.0, torch.tensor(0.0))),
        torch.zeros(2),
    )


@pytest.mark.parametrize("lam", [-1e-9, 1.0001, float("nan"), float("inf")])
def test_lambda_out_of_range(lam):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_lam(lam)


def test_threshold_follows_dtype():
    t = log_threshold(0.1, torch.tensor(2.0, dtype=torch.float64))
    assert t.dtype == torch.float64 and t.item() == pytest.approx(2.0 + math.log(0.1))


# -- λ on the mass scale (pyro_unlearn/infer/threshold.py) ---------------------------------------


def latent_model(dims):
    """M = dims + 1 unconstrained latent dims: a vector and a positive scalar (log-transformed)."""

    def model():
        pyro.sample("w", dist.Normal(torch.zeros(dims), 1.0).to_event(1))
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    return model


def trained_gaussian(guide_cls, dims):
    """A Gaussian guide over M = dims + 1 holding a correlated (where it can) N(μ, Σ), in a
    fresh param store (frozen posteriors hold their own copies)."""
    pyro.clear_param_store()
    guide = guide_cls(latent_model(dims))
    guide()
    m = dims + 1
    g = torch.Generator().manual_seed(m)
    loc = torch.randn(m, generator=g)
    if guide_cls is AutoMultivariateNormal:
        a = torch.randn(m, m, generator=g) / m**0.5
        write_gaussian(guide, loc, a @ a.T + 0.1 * torch.eye(m))
    elif guide_cls is not AutoLowRankMultivariateNormal:  # its random init is correlated
        write_gaussian(guide, loc, scale=torch.rand(m, generator=g) + 0.2)
    return guide


def own_gaps(posterior, num):
    """log q* − log q(θ_s|D) for ``num`` fresh draws of the posterior, scored by itself."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(pyro.plate("draws", num, dim=-1)(posterior)).get_trace()
    trace.compute_log_prob(site_filter=lambda name, _: name in posterior.sites)
    return posterior.log_q_max - sum_sites_per_particle(trace, posterior.sites, -1, num)


def mc_tolerance(p, num):
    return 5 * math.sqrt(max(p * (1 - p), 1e-4) / num)


GAUSSIAN = [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal]


@pytest.mark.parametrize("guide_cls", GAUSSIAN, ids=lambda c: c.__name__)
def test_kept_mass_of_a_gaussian_is_the_chi2_cdf_and_the_share_of_its_draws(guide_cls):
    posterior = pu.freeze(trained_gaussian(guide_cls, 5))  # M = 6
    gaps, num = own_gaps(posterior, 20000), 20000
    for lam in (0.5, 0.1, 1e-2, 1e-3):
        expected = chi2.cdf(-2 * math.log(lam), 6)
        kept = kept_mass(posterior, lam)
        assert kept == pytest.approx(expected, rel=1e-6)
        share = float((gaps < -math.log(lam)).double().mean())
        assert abs(share - expected) < mc_tolerance(expected, num)
    assert kept_mass(posterior, 0.0) == 1.0 and kept_mass(posterior, 1.0) == 0.0


def test_lam_for_mass_inverts_kept_mass():
    posterior = pu.freeze(trained_gaussian(AutoMultivariateNormal, 9))  # M = 10
    for mass in (1e-6, 0.05, 0.5, 0.9, 0.999):
        lam = lam_for_mass(posterior, mass)
        assert lam == pytest.approx(math.exp(-chi2.ppf(mass, 10) / 2), rel=1e-6)
        assert kept_mass(posterior, lam) == pytest.approx(mass, rel=1e-6)
    for lam in (0.3, 1e-4, 1e-30):
        assert lam_for_mass(posterior, kept_mass(posterior, lam)) == pytest.approx(lam, rel=1e-5)
    assert lam_for_mass(posterior, 1.0) == 0.0


def test_a_fixed_lambda_keeps_nothing_in_high_dimension():
    """The issue's numbers: λ = 1e-5 keeps 0.04 % of q(θ|D) at M = 50, none at M = 500."""
    at_50 = pu.freeze(trained_gaussian(AutoNormal, 49))
    assert kept_mass(at_50, 1e-5) == pytest.approx(3.84e-4, rel=1e-2)
    at_500 = pu.freeze(trained_gaussian(AutoDiagonalNormal, 499))
    assert kept_mass(at_500, 1e-20) < 1e-90
    # the mass scale means the same in both: λ(0.9) keeps 90 % of either
    for posterior in (at_50, at_500):
        assert kept_mass(posterior, lam_for_mass(posterior, 0.9)) == pytest.approx(0.9)
    # beyond ~1400 dims λ underflows a float: said so, and log λ stays available
    huge = pu.freeze(trained_gaussian(AutoDiagonalNormal, 4999))
    with pytest.raises(ValueError, match="below the smallest positive float"):
        lam_for_mass(huge, 0.5)
    assert MassScale(huge).log_lam(0.5) == pytest.approx(-chi2.ppf(0.5, 5000) / 2, rel=1e-8)


def test_a_guide_function_of_normal_sites_is_exact():
    def guide():
        loc = pyro.param("loc", torch.tensor([0.5, -1.0, 2.0]))
        pyro.sample("a", dist.Normal(loc, 0.3).to_event(1))
        pyro.sample("b", dist.Normal(0.0, 2.0))

    scale = MassScale(pu.freeze(guide))
    assert scale.exact and scale.dimension == 4 and scale.num_samples == 0
    assert scale.kept(1e-2) == pytest.approx(chi2.cdf(-2 * math.log(1e-2), 4), rel=1e-6)


def test_a_flow_is_measured_on_its_own_draws_and_leaves_the_rng_alone():
    """A fresh AutoZukoFlow is exactly N(0, I) over M = 4: the empirical scale must find the
    χ²₄ CDF, and its quantile must keep that share of new draws."""
    guide = AutoZukoFlow(latent_model(3), "maf", hidden_features=(8, 8))
    guide()
    posterior = pu.freeze(guide, mode_steps=50)
    num = 4000
    _ = posterior.log_q_max  # the numeric search, so that the RNG check below sees only ours
    torch.manual_seed(1)
    scale = MassScale(posterior, num_samples=num)
    after = torch.randn(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.randn(3))  # kept_mass drew nothing from the caller's stream
    assert not scale.exact and scale.num_samples == num and scale.dimension == 4
    for lam in (0.3, 0.05, 1e-2):
        expected = chi2.cdf(-2 * math.log(lam), 4)
        assert abs(scale.kept(lam) - expected) < mc_tolerance(expected, num) + 0.01
    gaps = own_gaps(posterior, num)
    for mass in (0.1, 0.5, 0.9):
        lam = scale.lam(mass)
        assert abs(scale.kept(lam) - mass) <= 2 / num  # the quantile of the scale's own draws
        share = float((gaps < -math.log(lam)).double().mean())
        assert abs(share - mass) < mc_tolerance(mass, num) * math.sqrt(2)
    assert kept_mass(posterior, 0.0, num_samples=num) == 1.0
    assert lam_for_mass(posterior, 1.0, num_samples=num) == 0.0


def test_small_kept_mass_warns_at_fifty_dimensions_and_not_at_two():
    at_50 = pu.freeze(trained_gaussian(AutoNormal, 49))
    with pytest.warns(SmallKeptMassWarning, match=r"λ = 1e-05 keeps 0.038 %") as caught:
        kept = warn_small_kept_mass(at_50, 1e-5)
    assert kept == pytest.approx(3.84e-4, rel=1e-2) and len(caught) == 1
    message = str(caught[0].message)
    for mass in (0.5, 0.9, 0.99):
        suggested = f"λ = {lam_for_mass(at_50, mass):.2g} keeps {100 * mass:g} %"
        assert suggested in message
    assert "switches unlearning off" in message and "M = 50" in message
    at_2 = pu.freeze(trained_gaussian(AutoNormal, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_small_kept_mass(at_2, 1e-5) == pytest.approx(1 - 1e-5)
        # λ = 0 (the plain likelihood) and λ = 1 (unlearning off on purpose) never warn
        assert warn_small_kept_mass(at_50, 0.0) == 1.0
        assert warn_small_kept_mass(at_50, 1.0) == 0.0
        # a higher bar makes λ = 0.5 at M = 2 (half the mass) warn, a lower one λ = 1e-5 at 50 not
        warn_small_kept_mass(at_50, 1e-5, min_mass=1e-4)
    with pytest.warns(SmallKeptMassWarning):
        warn_small_kept_mass(at_2, 0.5, min_mass=0.6)
