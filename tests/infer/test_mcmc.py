import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.exact import (
    beta_binomial_posterior,
    gaussian_linear_posterior,
    normal_normal_posterior,
)
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.infer.mcmc import (
    MIN_ACCEPTANCE,
    LowESSWarning,
    MCMCUnlearnResult,
    mcmc_unlearn,
)
from pyro_unlearn.results import UnlearningResult

F64 = torch.float64
DEVICE = torch.get_default_device()
# 100 points, the first 10 (an informative cluster) erased: ESS/S ≈ 0.09 from the exact p(θ|D)
DATA = linear_regression(dtype=F64, device=DEVICE)
FEATURES = torch.cat([DATA.x, DATA.x.new_ones(len(DATA.x), 1)], dim=-1)  # θ = (w, b)
KEEP = torch.ones(len(DATA.x), dtype=torch.bool, device=DEVICE)
KEEP[DATA.erased] = False


def model(x, y=None):
    """y ~ N(x·w + b, σ²), w ~ N(0, 10²)ᴰ, b ~ N(0, 10²): a model that broadcasts."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, 10.0).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(zero, 10.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((w * x).sum(-1) + b, DATA.noise_scale), obs=y)


def exact_linear(rows):
    """The exact p(θ|D[rows]) as (mean, covariance) over (w, b)."""
    loc, precision = gaussian_linear_posterior(
        torch.zeros(3, dtype=F64, device=DEVICE),
        torch.eye(3, dtype=F64, device=DEVICE) / 100.0,
        FEATURES[rows],
        DATA.y[rows],
        DATA.noise_scale,
    )
    return loc, torch.linalg.inv(precision)


def exact_draws(num):
    """θ_s ~ p(θ|D) exactly, as the dict of sites an MCMC run would return."""
    loc, cov = exact_linear(slice(None))
    theta = dist.MultivariateNormal(loc, covariance_matrix=cov).sample((num,))
    return {"w": theta[:, :2], "b": theta[:, 2]}


def packed(samples):
    return torch.cat([samples["w"], samples["b"][:, None]], dim=-1)


def weighted_moments(theta, weights):
    mean = (weights[:, None] * theta).sum(0)
    centred = theta - mean
    return mean, (weights[:, None] * centred).T @ centred


def assert_moments(mean, cov, target_mean, target_cov, n_eff):
    """Within 5 Monte-Carlo standard errors: sd/√n for the mean, √((C_ii C_jj + C_ij²)/n) for
    the covariance."""
    sd = target_cov.diagonal().sqrt()
    assert torch.all((mean - target_mean).abs() < 5 * sd / math.sqrt(n_eff)), (mean, target_mean)
    se_cov = ((sd[:, None] * sd[None, :]) ** 2 + target_cov**2).sqrt() / math.sqrt(n_eff)
    assert torch.all((cov - target_cov).abs() < 5 * se_cov), (cov, target_cov)


# -- the acceptance test: reweighting matches the exact p(θ|D_r) -----------------------------------
@pytest.mark.parametrize("call", ["full data, erased rows", "D_e alone"])
def test_reweighting_matches_exact_posterior_of_remaining_data(call):
    draws = exact_draws(20000)
    if call == "D_e alone":
        x, y = DATA.x[DATA.erased], DATA.y[DATA.erased]
        result = mcmc_unlearn(model, draws, x, y, ess_threshold=0.05, seed=0)
    else:
        result = mcmc_unlearn(
            model, draws, DATA.x, DATA.y, erased=DATA.erased, plate="data", ess_threshold=0.05
        )
    assert isinstance(result, MCMCUnlearnResult)
    theta = packed(draws)
    target_mean, target_cov = exact_linear(KEEP)
    # log p(D_e|θ_s) in closed form, and the weights normalised in log space
    residual = DATA.y[DATA.erased] - theta @ FEATURES[DATA.erased].T
    log_lik = dist.Normal(0.0, DATA.noise_scale).log_prob(residual).sum(-1)
    torch.testing.assert_close(result.log_likelihood, log_lik)
    torch.testing.assert_close(torch.logsumexp(result.log_weights, 0).item(), 0.0)
    torch.testing.assert_close(result.weights.sum().item(), 1.0)
    assert result.ess == pytest.approx(1 / float((result.weights**2).sum()))
    assert 0.05 < result.ess_fraction < 0.2  # D_e is informative: a real test of the weights
    mean, cov = weighted_moments(theta, result.weights)
    assert_moments(mean, cov, target_mean, target_cov, result.ess)
    # the test has power: the unweighted draws of p(θ|D) fail it
    sd = target_cov.diagonal().sqrt()
    assert torch.any((theta.mean(0) - target_mean).abs() > 5 * sd / math.sqrt(result.ess))
    # the resampled (equally weighted) particles match too, with the resampling noise added
    resampled = packed(result.samples)
    assert resampled.shape == (20000, 3) and result.indices.shape == (20000,)
    centred = resampled - resampled.mean(0)
    n_eff = 1 / (1 / result.ess + 1 / len(resampled))
    assert_moments(
        resampled.mean(0), centred.T @ centred / len(resampled), target_mean, target_cov, n_eff
    )
    assert result.num_unique == result.indices.unique().numel() < 20000


def normal_ess_fraction(mean_d, var_d, mean_r, var_r):
    """1/E_p[w²] for importance sampling N(mean_r, var_r) from N(mean_d, var_d)."""
    gap = 2 * var_d - var_r
    second = var_d / math.sqrt(var_r * gap) * math.exp((mean_r - mean_d) ** 2 / gap)
    return 1 / second


def normal_model(y):
    theta = pyro.sample("theta", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def normal_posterior(y):
    loc, precision = normal_normal_posterior(y.new_zeros(()), y.new_ones(()), y, 1.0)
    return float(loc), 1 / float(precision)


def test_ess_matches_closed_form_and_warns_below_threshold():
    y = torch.linspace(-1.0, 3.0, 20, dtype=F64, device=DEVICE)
    mean_d, var_d = normal_posterior(y)
    draws = {"theta": mean_d + math.sqrt(var_d) * torch.randn(50000, dtype=F64, device=DEVICE)}
    erased = [19, 18]  # the two largest observations
    mean_r, var_r = normal_posterior(y[:18])
    result = mcmc_unlearn(normal_model, draws, y, erased=erased, plate="data", resample=None)
    expected = normal_ess_fraction(mean_d, var_d, mean_r, var_r)
    assert 0.3 < expected < 0.8
    assert result.ess_fraction == pytest.approx(expected, rel=0.05)
    assert result.indices is None and result.resampling is None
    torch.testing.assert_close(result.samples["theta"], draws["theta"])
    assert result.converged and result.posterior is result.samples  # ESS/S above 0.1
    # an informative erasure: the weights collapse and a LowESSWarning names ESS and threshold
    erased = list(range(10, 20))
    mean_r, var_r = normal_posterior(y[:10])
    expected = normal_ess_fraction(mean_d, var_d, mean_r, var_r) if 2 * var_d > var_r else 0.0
    with pytest.warns(LowESSWarning, match=r"effective sample size .* ess_threshold = 0\.1"):
        result = mcmc_unlearn(normal_model, draws, y, erased=erased, plate="data")
    assert result.ess_fraction < 0.1 and expected < 0.1
    assert not result.converged  # the warning's verdict
    assert issubclass(LowESSWarning, UserWarning)


# -- the trust verdict: the weights' own PSIS k̂ and ESS -------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_verdict_follows_the_pareto_k_of_the_weights(seed):
    # y_n ~ N(θ, 1), θ ~ N(0, 1), n = 20: the weights ∏ 1/N(y_e; θ, 1) of m erased rows under
    # p(θ|D) = N(μ, 1/21) have a Pareto tail of shape k = m/21 exactly
    y = torch.linspace(-1.0, 3.0, 20, dtype=F64, device=DEVICE)
    mean_d, var_d = normal_posterior(y)
    draws = {"theta": mean_d + math.sqrt(var_d) * torch.randn(20000, dtype=F64, device=DEVICE)}
    one = [int(torch.randint(0, 20, ()))]  # a random small erasure: k = 1/21
    small = mcmc_unlearn(normal_model, draws, y, erased=one, plate="data", resample=None)
    assert small.verdict == "trusted", small.summary()
    assert small.trust.pareto_k < 0.5 and small.trust.update_ess_fraction > 0.5
    assert small.trust.update_ess == pytest.approx(small.ess, rel=1e-4)
    assert small.trust.pareto_k == small.trust.update_pareto_k and math.isnan(small.trust.kl)
    with pytest.warns(LowESSWarning):  # 18 of 20 rows: k = 18/21 > 0.7, the variance infinite
        huge = mcmc_unlearn(normal_model, draws, y, erased=list(range(2, 20)), plate="data")
    assert huge.verdict == "retrain", huge.summary()
    assert huge.trust.pareto_k > 0.7 and huge.ess_fraction < 0.01
    assert huge.summary().startswith("retrain: ") and "rerun MCMC on D_r" in huge.summary()
    assert huge.trust_row["verdict"] == "retrain" and huge.trust_row["num_samples"] == 20000


def test_unconverged_reweighting_is_at_most_approximate():
    # a moderate erasure whose ESS/S falls below the caller's threshold, not below 1 %
    y = torch.linspace(-1.0, 3.0, 20, dtype=F64, device=DEVICE)
    mean_d, var_d = normal_posterior(y)
    draws = {"theta": mean_d + math.sqrt(var_d) * torch.randn(20000, dtype=F64, device=DEVICE)}
    with pytest.warns(LowESSWarning):
        result = mcmc_unlearn(
            normal_model, draws, y, erased=[19, 18], plate="data", ess_threshold=0.95
        )
    assert not result.converged and result.ess_fraction > 0.1
    assert result.verdict == "approximate" and "< ess_threshold = 0.95" in result.summary()


def test_diagnose_false_and_too_few_draws():
    draws = exact_draws(50)
    kwargs = {"erased": DATA.erased, "plate": "data", "ess_threshold": 0.0}
    skipped = mcmc_unlearn(model, draws, DATA.x, DATA.y, diagnose=False, **kwargs)
    assert skipped.verdict is None and skipped.trust is None
    assert skipped.summary() == "not diagnosed: mcmc_unlearn(..., diagnose=False)"
    few = mcmc_unlearn(model, draws, DATA.x, DATA.y, **kwargs)
    assert few.verdict is None and "at least 100 draws" in few.summary()
    assert math.isnan(few.trust_row["pareto_k"])


# -- how log p(D_e|θ_s) is evaluated ---------------------------------------------------------------
def matmul_model(x, y=None):
    """Written for one θ (x @ w does not broadcast over a leading draw dim)."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(x.new_zeros(()), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(x @ w, scale), obs=y)


def test_vmap_batches_any_model_and_plate_agrees_on_broadcasting_ones():
    draws = {
        "w": torch.randn(7, 2, dtype=F64, device=DEVICE),
        "scale": torch.rand(7, dtype=F64, device=DEVICE) + 0.5,
    }
    erased = [1, 4, 5]
    result = mcmc_unlearn(
        matmul_model, draws, DATA.x[:8], DATA.y[:8], erased=erased, plate="data", ess_threshold=0
    )
    # one trace per draw, the plain way
    expected = []
    for s in range(7):
        values = {k: v[s] for k, v in draws.items()}
        conditioned = poutine.condition(
            pu.unlearn(matmul_model, erased=erased, plate="data"), values
        )
        trace = poutine.trace(conditioned).get_trace(DATA.x[:8], DATA.y[:8])
        trace.compute_log_prob()
        expected.append(pu.erased_log_likelihood(trace)[0])
    torch.testing.assert_close(result.log_likelihood, torch.stack(expected))
    # chunks and the plate path give the same numbers on a model that broadcasts
    draws = exact_draws(50)
    args = (DATA.x, DATA.y)
    kwargs = {"erased": DATA.erased, "plate": "data", "ess_threshold": 0, "resample": None}
    by_vmap = mcmc_unlearn(model, draws, *args, chunk_size=7, **kwargs)
    by_plate = mcmc_unlearn(model, draws, *args, vectorize="plate", **kwargs)
    torch.testing.assert_close(by_vmap.log_likelihood, by_plate.log_likelihood)
    # latents inside plates (one per group, at dim -2) are lined up with the draw plate too
    group = torch.arange(12, device=DEVICE) % 3
    y = torch.randn(12, 2, dtype=F64, device=DEVICE)
    draws = {
        "mu": torch.randn(9, dtype=F64, device=DEVICE),
        "z": torch.randn(9, 3, 1, dtype=F64, device=DEVICE),
    }
    kwargs = {"erased": [0, 5, 7], "plate": "data", "ess_threshold": 0, "resample": None}
    by_vmap = mcmc_unlearn(grouped_model, draws, group, y, **kwargs)
    by_plate = mcmc_unlearn(grouped_model, draws, group, y, vectorize="plate", **kwargs)
    torch.testing.assert_close(by_vmap.log_likelihood, by_plate.log_likelihood)
    z, mu = draws["z"][:, :, 0], draws["mu"]
    loc = (mu[:, None] + z[:, group])[:, [0, 5, 7], None]
    expected = dist.Normal(loc, 1.0).log_prob(y[[0, 5, 7]]).sum((-1, -2))
    torch.testing.assert_close(by_vmap.log_likelihood, expected)


def grouped_model(group, y):
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("groups", 3, dim=-2):
        z = pyro.sample("z", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("cols", 2, dim=-1), pyro.plate("data", len(group), dim=-2):
        pyro.sample("y", dist.Normal(mu + z[..., group, :], 1.0), obs=y)


# -- resampling ------------------------------------------------------------------------------------
def test_systematic_and_multinomial_resampling():
    y = torch.linspace(-1.0, 3.0, 20, dtype=F64, device=DEVICE)
    mean_d, var_d = normal_posterior(y)
    draws = {"theta": mean_d + math.sqrt(var_d) * torch.randn(1000, dtype=F64, device=DEVICE)}
    kwargs = {"erased": [19, 18], "plate": "data"}
    systematic = mcmc_unlearn(normal_model, draws, y, seed=3, **kwargs)
    # systematic resampling keeps every draw floor(S·w_s) or ceil(S·w_s) times
    counts = torch.bincount(systematic.indices, minlength=1000).to(F64)
    expected = 1000 * systematic.weights
    assert torch.all((counts >= expected.floor()) & (counts <= expected.ceil()))
    again = mcmc_unlearn(normal_model, draws, y, seed=3, **kwargs)
    assert torch.equal(again.indices, systematic.indices)  # seeded
    generator = torch.Generator(device=DEVICE).manual_seed(3)
    multinomial = mcmc_unlearn(
        normal_model,
        draws,
        y,
        resample="multinomial",
        num_samples=20000,
        generator=generator,
        **kwargs,
    )
    assert multinomial.samples["theta"].shape == (20000,)
    frequencies = torch.bincount(multinomial.indices, minlength=1000).to(F64) / 20000
    # each count is Binomial(20000, w_s): within 5 standard deviations
    w = multinomial.weights
    assert torch.all((frequencies - w).abs() <= 5 * (w * (1 - w) / 20000).sqrt() + 1e-12)
    with_seed = mcmc_unlearn(normal_model, draws, y, resample="multinomial", seed=4, **kwargs)
    assert not torch.equal(with_seed.indices, multinomial.indices[:1000])


# -- rejuvenation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["masked full data", "D_r arguments"])
def test_rejuvenation_restores_diversity_and_keeps_the_target(target):
    draws = exact_draws(3000)
    rejuvenate = {"num_moves": 4}
    if target == "D_r arguments":
        rejuvenate["args"] = (DATA.x[KEEP], DATA.y[KEEP])
    with pytest.warns(LowESSWarning):  # ESS/S ≈ 0.09: resampling alone leaves few particles
        result = mcmc_unlearn(
            model,
            draws,
            DATA.x,
            DATA.y,
            erased=DATA.erased,
            plate="data",
            seed=1,
            rejuvenate=rejuvenate,
        )
    assert result.rejuvenated and result.num_moves == 4
    assert isinstance(result, UnlearningResult) and result.posterior is result.samples
    assert not result.converged  # ESS/S ≈ 0.09 < ess_threshold = 0.1, however well HMC mixed
    assert result.num_unique < 0.5 * 3000  # duplicates after resampling...
    theta = packed(result.samples)
    assert torch.unique(theta, dim=0).shape[0] == 3000  # ...all distinct after the moves
    assert 0.6 < result.acceptance_rate <= 1.0
    target_mean, target_cov = exact_linear(KEEP)
    centred = theta - theta.mean(0)
    assert_moments(theta.mean(0), centred.T @ centred / 3000, target_mean, target_cov, result.ess)


def test_rejuvenation_that_rejects_its_moves_does_not_converge():
    y = torch.linspace(-1.0, 3.0, 20, dtype=F64, device=DEVICE)
    mean_d, var_d = normal_posterior(y)
    draws = {"theta": mean_d + math.sqrt(var_d) * torch.randn(2000, dtype=F64, device=DEVICE)}
    kwargs = {"erased": [19], "plate": "data", "seed": 0}
    good = mcmc_unlearn(normal_model, draws, y, rejuvenate={"num_moves": 3}, **kwargs)
    assert good.acceptance_rate > MIN_ACCEPTANCE and good.converged
    # one leapfrog step of 50 whitened standard deviations: every proposal is rejected
    bad = mcmc_unlearn(
        normal_model,
        draws,
        y,
        rejuvenate={"num_moves": 1, "step_size": 50.0, "max_leapfrog": 1},
        **kwargs,
    )
    assert bad.ess_fraction > 0.1 and bad.acceptance_rate < MIN_ACCEPTANCE
    assert not bad.converged
    # the weights are fine either way; the rejected moves cap the verdict
    assert good.verdict != "retrain" and "HMC moves on D_r, acceptance" in good.summary()
    assert bad.verdict == "approximate" and "the duplicates stayed" in bad.summary()


def beta_model(y):
    p = pyro.sample("p", dist.Beta(y.new_tensor(2.0), y.new_tensor(2.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


def test_rejuvenation_on_a_constrained_site_targets_the_exact_beta_posterior():
    # HMC runs in the unconstrained space: without the log-Jacobian it would target Beta(6, 3)
    # (mean 0.667) instead of Beta(7, 4) (mean 0.636); the tolerance below is 0.01.
    y = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=F64, device=DEVICE)
    alpha, beta = beta_binomial_posterior(2.0, 2.0, y)
    draws = {"p": dist.Beta(alpha, beta).sample((8000,))}
    result = mcmc_unlearn(
        beta_model,
        draws,
        y,
        erased=[7],
        plate="data",
        seed=0,
        chunk_size=8000,
        rejuvenate={"num_moves": 8},
    )
    alpha_r, beta_r = beta_binomial_posterior(2.0, 2.0, y[:7])
    exact = dist.Beta(alpha_r, beta_r)
    p = result.samples["p"]
    assert bool(((p > 0) & (p < 1)).all())
    assert torch.unique(p).numel() == 8000
    sd = float(exact.stddev)
    assert abs(float(p.mean()) - float(exact.mean)) < 5 * sd / math.sqrt(result.ess) < 0.012
    assert abs(float(p.var()) - float(exact.variance)) < 5 * sd**2 * math.sqrt(2 / result.ess)


# -- MCMC and ArviZ input and output ---------------------------------------------------------------
def test_nuts_input_and_inference_data_round_trip():
    import arviz as az
    from pyro.infer import MCMC, NUTS

    y = torch.linspace(-1.0, 3.0, 10, device=DEVICE)
    mcmc = MCMC(NUTS(normal_model), num_samples=200, warmup_steps=50, disable_progbar=True)
    mcmc.run(y)
    erased = [8, 9]
    result = mcmc_unlearn(normal_model, mcmc, y, erased=erased, plate="data", seed=0)
    mean_r, var_r = normal_posterior(y[:8].double())
    mean_d, var_d = normal_posterior(y.double())
    theta = mcmc.get_samples()["theta"]
    weighted = float((result.weights * theta).sum())
    # autocorrelated draws: half the ESS as the sample size of the tolerance
    assert abs(weighted - mean_r) < 5 * math.sqrt(var_r / (0.5 * result.ess))
    assert abs(mean_d - mean_r) > 5 * math.sqrt(var_r / (0.5 * result.ess))  # it had to move
    # arviz input: the same weights from az.from_pyro's posterior group
    idata = az.from_pyro(mcmc, log_likelihood=False)
    from_idata = mcmc_unlearn(normal_model, idata, y, erased=erased, plate="data", seed=0)
    torch.testing.assert_close(from_idata.log_weights, result.log_weights)
    # arviz output: one chain of the resampled draws, diagnostics in attrs, and back in
    out = result.to_inference_data()
    assert out.posterior["theta"].shape == (1, 200)
    torch.testing.assert_close(
        torch.as_tensor(out.posterior["theta"].values[0]), result.samples["theta"].cpu()
    )
    assert out.attrs["ess"] == pytest.approx(result.ess) and out.attrs["resampling"] == "systematic"
    again = mcmc_unlearn(normal_model, out, y, erased=[0], plate="data", ess_threshold=0)
    assert again.log_likelihood.shape == (200,)
    weighted_out = mcmc_unlearn(normal_model, mcmc, y, erased=erased, plate="data", resample=None)
    stats = weighted_out.to_inference_data().sample_stats["log_weight"].values
    torch.testing.assert_close(torch.as_tensor(stats[0]), result.log_weights.cpu())


def test_inference_data_chains_are_flattened_chain_by_chain():
    import arviz as az

    y = torch.linspace(-1.0, 3.0, 10, dtype=F64, device=DEVICE)
    theta = torch.randn(3, 40, dtype=F64)
    idata = az.from_dict(posterior={"theta": theta.numpy()})
    kwargs = {"erased": [9], "plate": "data", "resample": None, "ess_threshold": 0}
    from_idata = mcmc_unlearn(normal_model, idata, y, **kwargs)
    from_dict = mcmc_unlearn(normal_model, {"theta": theta.reshape(-1).to(DEVICE)}, y, **kwargs)
    torch.testing.assert_close(from_idata.log_likelihood, from_dict.log_likelihood)


def test_inputs_are_never_modified_and_extra_variables_are_carried():
    draws = exact_draws(200)
    draws["noise"] = torch.arange(200.0, device=DEVICE)  # not a site of the model
    before = {k: v.clone() for k, v in draws.items()}
    result = mcmc_unlearn(
        model, draws, DATA.x, DATA.y, erased=DATA.erased, plate="data", ess_threshold=0, seed=0
    )
    torch.testing.assert_close(result.samples["noise"], draws["noise"][result.indices])
    for value in result.samples.values():
        value.add_(1.0)
    for key, value in draws.items():
        assert torch.equal(value, before[key])
    weighted = mcmc_unlearn(
        model,
        draws,
        DATA.x,
        DATA.y,
        erased=DATA.erased,
        plate="data",
        ess_threshold=0,
        resample=None,
    )
    weighted.samples["b"].add_(1.0)
    assert torch.equal(draws["b"], before["b"])


# -- bad input -------------------------------------------------------------------------------------
def _call(draws=None, **kwargs):
    draws = exact_draws(20) if draws is None else draws
    options = {"erased": DATA.erased, "plate": "data", "ess_threshold": 0}
    options.update(kwargs)
    return mcmc_unlearn(model, draws, DATA.x, DATA.y, **options)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"erased": [3, 100]}, IndexError, "erased index 100 is out of range"),
        ({"draws": {}}, ValueError, "no sites"),
        ({"draws": {"w": torch.zeros(0, 2), "b": torch.zeros(0)}}, ValueError, "empty"),
        ({"draws": {"w": torch.zeros(5, 2, dtype=F64)}}, ValueError, r"latent site\(s\) \['b'\]"),
        ({"draws": {"w": torch.zeros(5, 2), "b": torch.zeros(4)}}, ValueError, "same number"),
        (
            {"draws": {"w": torch.zeros(5, 3), "b": torch.zeros(5)}},
            ValueError,
            "site 'w' has shape",
        ),
        (
            {"draws": {"w": torch.zeros(5, 2), "b": torch.zeros(5), "y": torch.zeros(5, 100)}},
            ValueError,
            r"observed site\(s\) \['y'\]",
        ),
        ({"draws": [1, 2]}, TypeError, "pyro.infer.MCMC, an arviz.InferenceData or a dict"),
        ({"resample": "stratified"}, ValueError, "resample must be one of"),
        ({"vectorize": "loop"}, ValueError, "vectorize must be one of"),
        ({"ess_threshold": 2.0}, ValueError, "ess_threshold"),
        ({"seed": 0, "generator": torch.Generator()}, ValueError, "seed or generator"),
        ({"rejuvenate": {"steps": 3}}, ValueError, r"unknown rejuvenate key\(s\) \['steps'\]"),
        ({"rejuvenate": True, "resample": None}, ValueError, "resampled particles"),
        ({"rejuvenate": {"num_moves": 0}}, ValueError, "num_moves"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_input_is_named(kwargs, error, match):
    draws = kwargs.pop("draws", None)
    with pytest.raises(error, match=match):
        _call(draws, **kwargs)


def test_mcmc_that_never_ran_is_named():
    from pyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(normal_model), num_samples=10)
    with pytest.raises(ValueError, match=r"call mcmc.run"):
        mcmc_unlearn(normal_model, mcmc, torch.zeros(3, device=DEVICE))


def test_non_finite_log_likelihood_is_reported():
    draws = exact_draws(20)
    draws["b"][5] = float("nan")
    with pytest.raises(
        ValueError, match=r"samples\['b'\] is not finite for 1 of 20 draws \(first: draw 5"
    ):
        _call(draws)


def test_rejuvenation_needs_remaining_data_when_the_arguments_are_the_erased_data():
    x, y = DATA.x[DATA.erased], DATA.y[DATA.erased]
    with pytest.raises(ValueError, match="pass D_r as rejuvenate"):
        mcmc_unlearn(model, exact_draws(20), x, y, rejuvenate=True, ess_threshold=0)


def test_subsampling_plate_is_rejected():
    def subsampled(x, y):
        w = pyro.sample("w", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
        with pyro.plate("data", len(x), subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(x[idx] @ w, 1.0), obs=y[idx])

    draws = {"w": torch.zeros(5, 2, dtype=F64, device=DEVICE)}
    with pytest.raises(ValueError, match=r"plate\(s\) \['data'\] subsample"):
        mcmc_unlearn(subsampled, draws, DATA.x, DATA.y, erased=[0], plate="data")
