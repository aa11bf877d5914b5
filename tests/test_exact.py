import math

import pytest
import torch
from torch.distributions import Beta, Binomial, Gamma, InverseGamma, Normal, Poisson

import pyro_unlearn as pu
from pyro_unlearn.exact import (
    NotNormalizableError,
    gaussian_linear_posterior,
    gaussian_linear_unlearn,
)

F64 = torch.float64


def rng(seed):
    return torch.Generator(torch.get_default_device()).manual_seed(seed)


def posterior(F, y, noise=0.5, prior_var=100.0):
    prec = torch.eye(F.shape[1], dtype=F.dtype) / prior_var + F.T @ F / noise**2
    return torch.linalg.solve(prec, F.T @ y / noise**2), prec


def test_division_equals_the_posterior_of_the_remaining_data():
    g = rng(0)
    F = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    loc, prec = posterior(F, y)
    loc_r, prec_r = posterior(F[8:], y[8:])
    new_loc, new_prec = gaussian_linear_unlearn(loc, prec, F[:8], y[:8], 0.5)
    assert torch.allclose(new_prec, prec_r)
    assert torch.allclose(new_loc, loc_r)


def test_erasing_points_never_seen_is_not_normalisable():
    F = torch.randn(30, 2, dtype=torch.float64)
    loc, prec = posterior(F[:3], torch.zeros(3, dtype=torch.float64))
    with pytest.raises(NotNormalizableError, match="positive definite"):
        gaussian_linear_unlearn(loc, prec, F, torch.zeros(30, dtype=torch.float64), 0.5)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="features"):
        gaussian_linear_unlearn(torch.zeros(2), torch.eye(2), torch.ones(3), torch.ones(3), 1.0)


def test_posterior_then_unlearn_is_the_posterior_without_the_erased_points():
    g = rng(1)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, generator=g, dtype=torch.float64)
    prior_loc, prior_prec = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    loc, prec = pu.exact.gaussian_linear_posterior(prior_loc, prior_prec, X, y, 0.7)
    # closed form by hand: Λ_D = I + XᵀX/σ², μ_D = Λ_D⁻¹ Xᵀy/σ²
    expected_prec = prior_prec + X.T @ X / 0.49
    assert torch.allclose(prec, expected_prec)
    assert torch.allclose(loc, torch.linalg.solve(expected_prec, X.T @ y / 0.49))
    rem_loc, rem_prec = pu.exact.gaussian_linear_posterior(prior_loc, prior_prec, X[5:], y[5:], 0.7)
    un_loc, un_prec = pu.exact.gaussian_linear_unlearn(loc, prec, X[:5], y[:5], 0.7)
    assert torch.allclose(un_prec, rem_prec)
    assert torch.allclose(un_loc, rem_loc)


# --- every conjugate family: exactness, brute-force division on a grid, failures, bad inputs ---


def midpoints(low, high, cells):
    """A uniform grid's cell centres and cell width (the midpoint rule)."""
    edges = torch.linspace(low, high, cells + 1, dtype=F64)
    return 0.5 * (edges[1:] + edges[:-1]), (high - low) / cells


def normalise_on_grid(log_unnormalised, cell):
    """The density p ∝ exp(log_unnormalised), normalised numerically (logsumexp × cell size)."""
    return (
        log_unnormalised - torch.logsumexp(log_unnormalised.flatten(), 0) - math.log(cell)
    ).exp()


def assert_density_matches(grid_density, closed_form_log_prob):
    closed = closed_form_log_prob.exp()
    assert (grid_density - closed).abs().max() < 1e-3 * closed.max()


def assert_moments_match(theta, cell, grid_density, mean, variance):
    grid_mean = (theta * grid_density).sum() * cell
    grid_variance = ((theta - grid_mean) ** 2 * grid_density).sum() * cell
    assert grid_mean == pytest.approx(float(mean), rel=1e-4, abs=1e-6)
    assert grid_variance == pytest.approx(float(variance), rel=1e-3)


def check_1d(theta, cell, log_unnormalised, closed_form):
    """Brute-force Bayes (or division) on a 1-D grid against a torch distribution."""
    density = normalise_on_grid(log_unnormalised, cell)
    assert_density_matches(density, closed_form.log_prob(theta))
    assert_moments_match(theta, cell, density, closed_form.mean, closed_form.variance)


def binomial_data(bernoulli, seed=2, n=14):
    g = rng(seed)
    trials = (
        torch.ones(n, dtype=F64) if bernoulli else torch.randint(1, 6, (n,), generator=g).to(F64)
    )
    successes = (torch.rand(n, generator=g, dtype=F64) * (trials + 1)).floor()
    return successes, trials


@pytest.mark.parametrize("bernoulli", [True, False], ids=["bernoulli", "binomial"])
def test_beta_posterior_then_unlearn_is_the_posterior_of_the_rest(bernoulli):
    y, n = binomial_data(bernoulli)
    trials = {} if bernoulli else {"trials": n}
    trials_r = {} if bernoulli else {"trials": n[5:]}
    trials_e = {} if bernoulli else {"trials": n[:5]}
    prior = torch.tensor(2.0, dtype=F64), torch.tensor(3.0, dtype=F64)
    full = pu.exact.beta_binomial_posterior(*prior, y, **trials)
    rest = pu.exact.beta_binomial_posterior(*prior, y[5:], **trials_r)
    unlearned = pu.exact.beta_binomial_unlearn(*full, y[:5], **trials_e)
    assert full[0] == 2.0 + y.sum() and full[1] == 3.0 + (n - y).sum()
    torch.testing.assert_close(unlearned, rest)


@pytest.mark.parametrize("bernoulli", [True, False], ids=["bernoulli", "binomial"])
def test_beta_matches_bayes_and_division_on_a_grid(bernoulli):
    y, n = binomial_data(bernoulli)
    theta, cell = midpoints(0.0, 1.0, 20_000)

    def log_lik(idx):
        return Binomial(n[idx, None], probs=theta).log_prob(y[idx, None]).sum(0)

    prior = Beta(torch.tensor(2.0, dtype=F64), torch.tensor(3.0, dtype=F64))
    everything, erased = slice(None), slice(0, 5)
    posterior = Beta(*pu.exact.beta_binomial_posterior(2.0, 3.0, y, n))
    check_1d(theta, cell, prior.log_prob(theta) + log_lik(everything), posterior)
    unlearned = Beta(
        *pu.exact.beta_binomial_unlearn(
            posterior.concentration1, posterior.concentration0, y[erased], n[erased]
        )
    )
    check_1d(theta, cell, posterior.log_prob(theta) - log_lik(erased), unlearned)


def poisson_data(seed=3, n=15):
    g = rng(seed)
    exposure = 0.5 + 1.5 * torch.rand(n, generator=g, dtype=F64)
    return torch.poisson(3.0 * exposure, generator=g), exposure


def test_gamma_poisson_posterior_then_unlearn_is_the_posterior_of_the_rest():
    y, t = poisson_data()
    for exposure, exposure_r, exposure_e in [(t, t[4:], t[:4]), (1, 1, 1)]:
        full = pu.exact.gamma_poisson_posterior(2.0, 1.0, y, exposure)
        rest = pu.exact.gamma_poisson_posterior(2.0, 1.0, y[4:], exposure_r)
        torch.testing.assert_close(pu.exact.gamma_poisson_unlearn(*full, y[:4], exposure_e), rest)
    assert full[1] == 1.0 + len(y)  # unit exposure: the rate counts the observations


def test_gamma_poisson_matches_bayes_and_division_on_a_grid():
    y, t = poisson_data()
    rate, cell = midpoints(0.0, 12.0, 20_000)

    def log_lik(idx):
        return Poisson(t[idx, None] * rate).log_prob(y[idx, None]).sum(0)

    prior = Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    posterior = Gamma(*pu.exact.gamma_poisson_posterior(prior.concentration, prior.rate, y, t))
    check_1d(rate, cell, prior.log_prob(rate) + log_lik(slice(None)), posterior)
    unlearned = Gamma(
        *pu.exact.gamma_poisson_unlearn(posterior.concentration, posterior.rate, y[:4], t[:4])
    )
    check_1d(rate, cell, posterior.log_prob(rate) - log_lik(slice(0, 4)), unlearned)


def test_normal_normal_vector_agrees_with_linear_regression_on_the_identity():
    g = rng(4)
    y = torch.randn(20, 3, generator=g, dtype=F64)
    A = torch.randn(3, 3, generator=g, dtype=F64)
    prior = torch.randn(3, generator=g, dtype=F64), A @ A.T + torch.eye(3, dtype=F64)
    full = pu.exact.normal_normal_posterior(*prior, y, 0.6)
    features = torch.eye(3, dtype=F64).repeat(20, 1)  # y_n = I θ + noise, stacked
    torch.testing.assert_close(full, gaussian_linear_posterior(*prior, features, y.flatten(), 0.6))
    rest = pu.exact.normal_normal_posterior(*prior, y[6:], 0.6)
    torch.testing.assert_close(pu.exact.normal_normal_unlearn(*full, y[:6], 0.6), rest)


def test_normal_normal_scalar_matches_bayes_and_division_on_a_grid():
    g = rng(5)
    y = 1.5 + 0.8 * torch.randn(10, generator=g, dtype=F64)
    theta, cell = midpoints(-5.0, 5.0, 20_000)

    def log_lik(ys):
        return Normal(theta, 0.8).log_prob(ys[:, None]).sum(0)

    prior_loc, prior_precision = torch.tensor(0.0, dtype=F64), torch.tensor(0.25, dtype=F64)
    loc, precision = pu.exact.normal_normal_posterior(prior_loc, prior_precision, y, 0.8)
    assert loc.shape == precision.shape == ()
    posterior = Normal(loc, precision.rsqrt())
    check_1d(theta, cell, Normal(prior_loc, 2.0).log_prob(theta) + log_lik(y), posterior)
    loc_r, precision_r = pu.exact.normal_normal_unlearn(loc, precision, y[:4], 0.8)
    torch.testing.assert_close(
        (loc_r, precision_r),
        pu.exact.normal_normal_posterior(prior_loc, prior_precision, y[4:], 0.8),
    )
    check_1d(
        theta, cell, posterior.log_prob(theta) - log_lik(y[:4]), Normal(loc_r, precision_r.rsqrt())
    )


def test_gaussian_linear_matches_bayes_and_division_on_a_grid():
    g = rng(6)
    x = torch.randn(12, 1, generator=g, dtype=F64)
    y = 0.7 * x[:, 0] + 0.5 * torch.randn(12, generator=g, dtype=F64)
    theta, cell = midpoints(-3.0, 4.0, 20_000)

    def log_lik(idx):
        return Normal(x[idx] * theta, 0.5).log_prob(y[idx, None]).sum(0)

    prior = torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64)
    loc, prec = gaussian_linear_posterior(*prior, x, y, 0.5)
    posterior = Normal(loc[0], prec[0, 0].rsqrt())
    check_1d(theta, cell, Normal(0.0, 1.0).log_prob(theta) + log_lik(slice(None)), posterior)
    loc_r, prec_r = gaussian_linear_unlearn(loc, prec, x[:5], y[:5], 0.5)
    check_1d(
        theta,
        cell,
        posterior.log_prob(theta) - log_lik(slice(0, 5)),
        Normal(loc_r[0], prec_r[0, 0].rsqrt()),
    )


def regression_data(seed=7, n=25, dim=1):
    g = rng(seed)
    x = torch.randn(n, dim, generator=g, dtype=F64)
    return x, x @ torch.full((dim,), 0.7, dtype=F64) + 0.5 * torch.randn(n, generator=g, dtype=F64)


def test_normal_inverse_gamma_posterior_then_unlearn_is_the_posterior_of_the_rest():
    x, y = regression_data(dim=3)
    prior = torch.zeros(3, dtype=F64), 0.5 * torch.eye(3, dtype=F64), 2.0, 0.5
    full = pu.exact.normal_inverse_gamma_posterior(*prior, x, y)
    rest = pu.exact.normal_inverse_gamma_posterior(*prior, x[7:], y[7:])
    torch.testing.assert_close(pu.exact.normal_inverse_gamma_unlearn(*full, x[:7], y[:7]), rest)
    # b_D by the textbook form b + ½(yᵀy + μ₀ᵀΛ₀μ₀ − μ_Dᵀ Λ_D μ_D), μ₀ = 0
    loc, precision, shape, scale = full
    assert shape == 2.0 + 25 / 2
    assert scale == pytest.approx(float(0.5 + 0.5 * (y @ y - loc @ precision @ loc)), rel=1e-10)


def test_normal_inverse_gamma_matches_bayes_and_division_on_a_2d_grid():
    x, y = regression_data()
    theta, cell_theta = midpoints(-0.5, 2.0, 600)
    var, cell_var = midpoints(0.0, 1.5, 600)
    T, V = theta[:, None], var[None, :]

    def log_nig(loc, precision, shape, scale):
        return Normal(loc[0], (V / precision[0, 0]).sqrt()).log_prob(T) + InverseGamma(
            shape, scale
        ).log_prob(V)

    def log_lik(idx):
        return sum(Normal(x[n, 0] * T, V.sqrt()).log_prob(y[n]) for n in range(len(y))[idx])

    def check(log_unnormalised, loc, precision, shape, scale):
        density = normalise_on_grid(log_unnormalised, cell_theta * cell_var)
        assert_density_matches(density, log_nig(loc, precision, shape, scale))
        assert_moments_match(
            theta,
            cell_theta,
            density.sum(1) * cell_var,
            loc[0],
            scale / (shape - 1) / precision[0, 0],
        )
        assert_moments_match(
            var,
            cell_var,
            density.sum(0) * cell_theta,
            scale / (shape - 1),
            scale**2 / ((shape - 1) ** 2 * (shape - 2)),
        )

    prior = torch.zeros(1, dtype=F64), torch.full((1, 1), 0.5, dtype=F64), 2.0, 0.5
    posterior = pu.exact.normal_inverse_gamma_posterior(*prior, x, y)
    prior_t = prior[0], prior[1], torch.tensor(2.0, dtype=F64), torch.tensor(0.5, dtype=F64)
    check(log_nig(*prior_t) + log_lik(slice(None)), *posterior)
    unlearned = pu.exact.normal_inverse_gamma_unlearn(*posterior, x[:8], y[:8])
    check(log_nig(*posterior) - log_lik(slice(0, 8)), *unlearned)


def test_outputs_follow_the_input_dtype():
    for dtype in (torch.float32, F64):
        one = torch.tensor(1.0, dtype=dtype)
        assert all(p.dtype == dtype for p in pu.exact.beta_binomial_posterior(one, one, [1, 0]))
        assert all(p.dtype == dtype for p in pu.exact.gamma_poisson_unlearn(one * 5, one * 5, [1]))
        nig = pu.exact.normal_inverse_gamma_posterior(
            one.reshape(1),
            one.reshape(1, 1),
            1.0,
            1.0,
            torch.ones(2, 1, dtype=dtype),
            torch.ones(2, dtype=dtype),
        )
        assert all(p.dtype == dtype for p in nig)


ERASED_MESSAGE = "ever in the posterior"


@pytest.mark.parametrize(
    "unlearn, condition",
    [
        # Beta(2, 3) = Beta(1, 1) after one success and two failures: three successes never seen
        (
            lambda: pu.exact.beta_binomial_unlearn(2.0, 3.0, [1, 1, 1]),
            "Beta pseudo-count alpha = -1 ≤ 0",
        ),
        (
            lambda: pu.exact.beta_binomial_unlearn(2.0, 3.0, [1], trials=[5]),
            "Beta pseudo-count beta = -1 ≤ 0",
        ),
        # Gamma(6, 4): far more counts, or more observations (exposure), than it holds
        (lambda: pu.exact.gamma_poisson_unlearn(6.0, 4.0, [5, 4]), "Gamma shape = -3 ≤ 0"),
        (lambda: pu.exact.gamma_poisson_unlearn(6.0, 4.0, [0] * 6), "Gamma rate = -2 ≤ 0"),
        (
            lambda: pu.exact.gamma_poisson_unlearn(6.0, 4.0, [0], exposure=4.5),
            "Gamma rate = -0.5 ≤ 0",
        ),
        (
            lambda: pu.exact.normal_normal_unlearn(
                torch.tensor(0.0), torch.tensor(4.0), torch.ones(5), 1.0
            ),
            r"precision is not positive definite \(smallest eigenvalue -1\)",
        ),
        (
            lambda: pu.exact.normal_inverse_gamma_unlearn(
                torch.zeros(2), torch.eye(2), 3.0, 1.0, torch.eye(2).repeat(2, 1), torch.zeros(4)
            ),
            r"precision is not positive definite \(smallest eigenvalue -1\)",
        ),
        (
            lambda: pu.exact.normal_inverse_gamma_unlearn(
                torch.zeros(1), torch.eye(1) * 100, 1.0, 5.0, torch.ones(3, 1), torch.zeros(3)
            ),
            "inverse-Gamma shape = -0.5 ≤ 0",
        ),
        # an outlier the posterior never saw: its residual alone exceeds the scale
        (
            lambda: pu.exact.normal_inverse_gamma_unlearn(
                torch.zeros(1),
                torch.eye(1) * 100,
                5.0,
                1.0,
                torch.ones(1, 1),
                torch.full((1,), 10.0),
            ),
            r"inverse-Gamma scale = -[\d.]+ ≤ 0",
        ),
    ],
)
def test_erasing_data_never_in_the_posterior_names_the_failed_condition(unlearn, condition):
    with pytest.raises(NotNormalizableError, match=condition) as error:
        unlearn()
    assert ERASED_MESSAGE in str(error.value)


def test_beta_failure_reports_the_smallest_pseudo_count_of_a_batch():
    alpha, beta = torch.tensor([5.0, 2.0]), torch.tensor([5.0, 5.0])
    with pytest.raises(NotNormalizableError, match="alpha = -1.5 ≤ 0"):
        pu.exact.beta_binomial_unlearn(alpha - 0.5, beta, torch.tensor([[1, 1], [1, 1], [1, 1]]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: pu.exact.beta_binomial_posterior(1.0, 1.0, [0, 2]), "must not exceed trials"),
        (lambda: pu.exact.beta_binomial_unlearn(3.0, 3.0, [0.5]), "non-negative integers"),
        (lambda: pu.exact.beta_binomial_posterior(1.0, 1.0, [-1]), "non-negative integers"),
        (
            lambda: pu.exact.beta_binomial_posterior(1.0, 1.0, [3, 1], trials=[2, 2]),
            "must not exceed",
        ),
        (lambda: pu.exact.beta_binomial_posterior(1.0, 1.0, [1, 1], trials=[2, 2, 2]), "broadcast"),
        (lambda: pu.exact.beta_binomial_posterior(1.0, 1.0, torch.tensor(1)), r"\(N, ...\)"),
        (lambda: pu.exact.beta_binomial_posterior(0.0, 1.0, [1]), "alpha must be positive"),
        (lambda: pu.exact.beta_binomial_unlearn(4.0, -1.0, [1]), "beta must be positive"),
        (lambda: pu.exact.gamma_poisson_posterior(1.0, 1.0, [1, -2]), "non-negative integers"),
        (lambda: pu.exact.gamma_poisson_unlearn(9.0, 9.0, [1.5]), "non-negative integers"),
        (
            lambda: pu.exact.gamma_poisson_posterior(1.0, 1.0, [float("nan")]),
            "non-negative integers",
        ),
        (
            lambda: pu.exact.gamma_poisson_posterior(1.0, 1.0, [1, 2], exposure=[1.0, 0.0]),
            "exposure",
        ),
        (lambda: pu.exact.gamma_poisson_posterior(1.0, 0.0, [1]), "rate must be positive"),
        (
            lambda: pu.exact.normal_normal_posterior(
                torch.zeros(2), torch.eye(2), torch.ones(4, 3), 1.0
            ),
            "samples must be",
        ),
        (
            lambda: pu.exact.normal_normal_posterior(
                torch.tensor(0.0), torch.tensor(1.0), torch.ones(4, 1), 1.0
            ),
            "samples must be",
        ),
        (
            lambda: pu.exact.normal_normal_posterior(
                torch.tensor(0.0), torch.tensor(1.0), torch.ones(4), 0.0
            ),
            "noise_scale must be positive",
        ),
        (
            lambda: pu.exact.normal_inverse_gamma_posterior(
                torch.zeros(2), torch.eye(2), 1.0, 1.0, torch.ones(3, 2), torch.ones(4)
            ),
            "features must be",
        ),
        (
            lambda: pu.exact.normal_inverse_gamma_unlearn(
                torch.zeros(2), torch.eye(3), 1.0, 1.0, torch.ones(3, 2), torch.ones(3)
            ),
            "precision",
        ),
        (
            lambda: pu.exact.normal_inverse_gamma_posterior(
                torch.zeros(1), torch.eye(1), 1.0, -1.0, torch.ones(3, 1), torch.ones(3)
            ),
            "scale must be positive",
        ),
        (
            lambda: gaussian_linear_posterior(
                torch.zeros(1), torch.eye(1), torch.ones(2, 1), torch.ones(2), -1.0
            ),
            "noise_scale must be positive",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert not isinstance(error.value, NotNormalizableError)
