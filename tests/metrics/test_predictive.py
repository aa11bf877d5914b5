import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_value

import pyro_unlearn.metrics.predictive as predictive_module
from pyro_unlearn import freeze
from pyro_unlearn.metrics import (
    accuracy,
    log_predictive_density,
    logistic_log_predictive,
    mean_and_std,
    predictive_distribution,
    predictive_kl,
)

from .models import logistic, point_mass, scalar_regression, softmax_model


# -- predictive distributions and KL ------------------------------------------------------------
def test_predictive_distribution_bernoulli_point_mass_and_mixture():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    d = predictive_distribution(logistic, point_mass(w=1.5), x, site="y", num_samples=5)
    assert isinstance(d, torch.distributions.Bernoulli) and d.batch_shape == (5,)
    assert torch.allclose(d.probs, torch.sigmoid(1.5 * x))
    # θ uniform on {a, b}: the predictive is ½(σ(a x) + σ(b x)) up to the fraction drawn
    a, b = torch.tensor(2.0), torch.tensor(-1.0)

    def two_points(x, y=None):
        k = pyro.sample("k", dist.Bernoulli(0.5))
        pyro.sample("w", dist.Delta(torch.where(k.bool(), a, b)))

    pyro.set_rng_seed(4)
    d = predictive_distribution(logistic, two_points, x, site="y", num_samples=20000)
    expected = 0.5 * (torch.sigmoid(a * x) + torch.sigmoid(b * x))
    assert torch.allclose(d.probs, expected, atol=0.01)


def test_predictive_distribution_unwraps_independent_and_mask():
    x = torch.tensor([-1.0, 0.5, 2.0])

    def independent(x, y=None):
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
        mask = torch.tensor([True, False, True])
        return pyro.sample(
            "y", dist.Bernoulli(logits=w.unsqueeze(-1) * x).mask(mask).to_event(1), obs=y
        )

    d = predictive_distribution(independent, point_mass(w=0.7), x, site="y", num_samples=3)
    assert d.batch_shape == (3,) and torch.allclose(d.probs, torch.sigmoid(0.7 * x))


def test_predictive_kl_bernoulli_closed_form():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])  # observed or not: the same predictive
    p, q = point_mass(w=1.5), point_mass(w=-0.5)
    kl = predictive_kl(logistic, p, q, x, y, site="y", num_samples=4)
    pi, rho = torch.sigmoid(1.5 * x), torch.sigmoid(-0.5 * x)
    expected = pi * (pi / rho).log() + (1 - pi) * ((1 - pi) / (1 - rho)).log()
    assert kl.shape == (5,) and torch.allclose(kl, expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(predictive_kl(logistic, p, q, x, site="y", num_samples=4), kl)
    assert torch.all(predictive_kl(logistic, p, p, x, site="y", num_samples=4) == 0)


def test_predictive_kl_bernoulli_clamps_certain_predictions():
    x = torch.tensor([100.0, -100.0])
    kl = predictive_kl(logistic, point_mass(w=1.0), point_mass(w=-1.0), x, site="y")
    assert torch.isfinite(kl).all() and torch.all(kl > 10)


def test_predictive_kl_categorical_closed_form():
    x = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [-1.0, -1.0, 3.0], [0.0, 0.0, 0.0]])
    p, q = point_mass(w=1.0, b=[0.0, 0.5, -0.5]), point_mass(w=-0.5, b=[1.0, 0.0, 0.0])
    d = predictive_distribution(softmax_model, p, x, site="y", num_samples=3)
    pi = torch.softmax(x + torch.tensor([0.0, 0.5, -0.5]), -1)
    assert isinstance(d, torch.distributions.Categorical) and torch.allclose(d.probs, pi)
    rho = torch.softmax(-0.5 * x + torch.tensor([1.0, 0.0, 0.0]), -1)
    expected = (pi * (pi / rho).log()).sum(-1)
    kl = predictive_kl(softmax_model, p, q, x, site="y", num_samples=3)
    assert kl.shape == (4,) and torch.allclose(kl, expected, rtol=1e-5, atol=1e-7)


def normal_kl(mu_p, s_p, mu_q, s_q):
    return math.log(s_q / s_p) + (s_p**2 + (mu_p - mu_q) ** 2) / (2 * s_q**2) - 0.5


def test_predictive_kl_normal_monte_carlo(monkeypatch):
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    p, q = point_mass(w=1.0, s=0.5), point_mass(w=0.5, s=1.0)
    d = predictive_distribution(scalar_regression, p, x, site="y", num_samples=3)
    assert isinstance(d, torch.distributions.MixtureSameFamily) and d.batch_shape == (4,)
    assert torch.allclose(d.mean, x) and torch.allclose(d.variance, torch.full((4,), 0.25))
    n = 20000
    pyro.set_rng_seed(5)
    kl = predictive_kl(scalar_regression, p, q, x, site="y", num_samples=3, num_y_samples=n)
    for i, xi in enumerate(x.tolist()):
        exact = normal_kl(xi, 0.5, 0.5 * xi, 1.0)
        y = torch.distributions.Normal(xi, 0.5).sample((200_000,))
        ratio = torch.distributions.Normal(xi, 0.5).log_prob(y) - torch.distributions.Normal(
            0.5 * xi, 1.0
        ).log_prob(y)
        se = float(ratio.std()) / math.sqrt(n)
        assert abs(float(kl[i]) - exact) < 4 * se
    # blocks of y-draws (bounded memory) give the same estimate as one pass
    pyro.set_rng_seed(5)
    monkeypatch.setattr(predictive_module, "_MC_BLOCK", 500)
    blocked = predictive_kl(scalar_regression, p, q, x, site="y", num_samples=3, num_y_samples=n)
    assert torch.allclose(blocked, kl, rtol=1e-4, atol=1e-6)


def linear_gaussian(x, y=None):
    """y ~ N(x·θ, 0.5²), θ ∈ R² a single MultivariateNormal site."""
    zero = x.new_zeros(2)
    theta = pyro.sample("theta", dist.MultivariateNormal(zero, 100 * torch.eye(2).to(zero)))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((theta * x).sum(-1), 0.5), obs=y)


@pytest.mark.parametrize("frozen", [False, True])
def test_predictive_distribution_linear_gaussian(frozen):
    x = torch.tensor([[1.0, 0.0], [0.5, -2.0], [-1.0, 1.5], [2.0, 2.0]])
    mu = torch.tensor([1.0, -0.5])
    if frozen:  # a frozen AutoMultivariateNormal: N(μ, 0.3² I)
        init = init_to_value(values={"theta": mu})
        guide = AutoMultivariateNormal(linear_gaussian, init_loc_fn=init, init_scale=0.3)
        posterior = freeze(guide, x, x @ mu)  # built on observed y: y is not one of its sites
        cov = 0.09 * torch.eye(2)
    else:  # a guide function with a full covariance
        cov = torch.tensor([[0.5, 0.3], [0.3, 0.4]])

        def posterior(x, y=None):
            pyro.sample("theta", dist.MultivariateNormal(mu, covariance_matrix=cov))

    n = 20000
    pyro.set_rng_seed(6)
    d = predictive_distribution(linear_gaussian, posterior, x, site="y", num_samples=n)
    assert d.batch_shape == (4,) and d.component_distribution.batch_shape == (4, n)
    spread = (x @ cov * x).sum(-1)  # xᵀΣx
    mean_se = (spread / n).sqrt()
    assert torch.all((d.mean - x @ mu).abs() < 5 * mean_se)
    var_se = spread * math.sqrt(2 / n)
    assert torch.all((d.variance - (spread + 0.25)).abs() < 5 * var_se)


def test_predictive_dtype_float64():
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    d = predictive_distribution(logistic, point_mass(w=1.0), x, site="y", num_samples=2)
    assert d.probs.dtype == torch.float64 and d.probs.device == x.device
    p, q = point_mass(w=1.0, s=0.5), point_mass(w=0.5, s=1.0)
    kl = predictive_kl(scalar_regression, p, q, x, site="y", num_samples=2, num_y_samples=10)
    assert kl.dtype == torch.float64 and kl.device == x.device


def test_predictive_errors():
    x = torch.tensor([1.0, 2.0])

    def poisson(x, y=None):
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Poisson((w * x).exp()), obs=y)

    with pytest.raises(TypeError, match="Poisson.*Bernoulli, Categorical, Normal"):
        predictive_distribution(poisson, point_mass(w=0.1), x, site="y")
    with pytest.raises(TypeError, match="Poisson"):
        predictive_kl(poisson, point_mass(w=0.1), point_mass(w=0.2), x, site="y")
    with pytest.raises(ValueError, match="no sample site 'z'"):
        predictive_distribution(logistic, point_mass(w=0.1), x, site="z")
    with pytest.raises(ValueError, match="'w' is a latent site"):
        predictive_distribution(logistic, point_mass(w=0.1), x, site="w")
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        predictive_distribution(logistic, point_mass(w=0.1), x, site="y", num_samples=0)


# -- accuracy and log predictive density --------------------------------------------------------
def test_accuracy_known_fraction():
    x = torch.tensor([-2.0, -1.0, 1.0, 2.0, 3.0])  # modes with w = 1: 0, 0, 1, 1, 1
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    assert accuracy(logistic, point_mass(w=1.0), x, y, site="y") == pytest.approx(0.6)
    assert accuracy(logistic, point_mass(w=-1.0), x, y, site="y") == pytest.approx(0.4)
    xc = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    yc = torch.tensor([0, 1, 1, 2])  # argmax with w = 1, b = 0: 0, 1, 2, 0 → 2 of 4 correct
    guide = point_mass(w=1.0, b=[0.0, 0.0, 0.0])
    assert accuracy(softmax_model, guide, xc, yc, site="y") == pytest.approx(0.5)


def test_accuracy_and_density_errors():
    x = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="observed values of site 'y'"):
        accuracy(logistic, point_mass(w=1.0), x, site="y")
    with pytest.raises(ValueError, match="observed values of site 'y'"):
        log_predictive_density(logistic, point_mass(w=1.0), x, site="y")
    with pytest.raises(TypeError, match="Bernoulli or Categorical"):
        accuracy(scalar_regression, point_mass(w=1.0, s=1.0), x, x, site="y")


def test_log_predictive_density_point_mass():
    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    lpd = log_predictive_density(logistic, point_mass(w=0.8), x, y, site="y", num_samples=7)
    assert torch.allclose(lpd, dist.Bernoulli(logits=0.8 * x).log_prob(y), atol=1e-6)
    yr = torch.tensor([0.3, -1.0, 2.0, 0.0])
    guide = point_mass(w=1.5, s=0.7)
    lpd = log_predictive_density(scalar_regression, guide, x, yr, site="y", num_samples=7)
    assert torch.allclose(lpd, dist.Normal(1.5 * x, 0.7).log_prob(yr), atol=1e-5)
    xc = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    yc = torch.tensor([2, 1])
    guide = point_mass(w=1.0, b=[0.0, 0.5, -0.5])
    lpd = log_predictive_density(softmax_model, guide, xc, yc, site="y", num_samples=3)
    expected = torch.log_softmax(xc + torch.tensor([0.0, 0.5, -0.5]), -1)[torch.arange(2), yc]
    assert torch.allclose(lpd, expected, atol=1e-6)


def test_log_predictive_density_is_the_log_of_the_mc_predictive():
    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])

    def guide(x, y=None):
        pyro.sample("w", dist.Normal(x.new_tensor(0.5), 2.0))

    pyro.set_rng_seed(7)
    lpd = log_predictive_density(logistic, guide, x, y, site="y", num_samples=50)
    pyro.set_rng_seed(7)  # the same θ-samples
    d = predictive_distribution(logistic, guide, x, y, site="y", num_samples=50)
    assert torch.allclose(lpd, d.log_prob(y), atol=1e-5)


# -- mean_and_std ---------------------------------------------------------------------------------
def test_mean_and_std():
    values = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    mean, std = mean_and_std(values)
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(3.0) and std == pytest.approx(math.sqrt(14 / 3))
    assert mean_and_std(torch.tensor([5.0])) == (5.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_and_std(torch.tensor([]))


# -- the predictive of a Gaussian logit ----------------------------------------------------------
def test_logistic_log_predictive_quadrature():
    mean = torch.tensor([-2.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    # sd = 0: the logit is known, log p(y|x) = log σ(∓m) exactly
    log_p = logistic_log_predictive(mean, torch.zeros(4, dtype=torch.float64), 5)
    expected = torch.nn.functional.logsigmoid(torch.stack([-mean, mean], -1))
    assert log_p.shape == (4, 2) and log_p.dtype == torch.float64
    assert torch.allclose(log_p, expected)
    # sd > 0: E[σ(a)], a ~ N(m, s²), against Monte Carlo (standard error < 0.001)
    sd = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    torch.manual_seed(0)
    mc = torch.sigmoid(mean + sd * torch.randn(400_000, 4, dtype=torch.float64)).mean(0)
    p1 = logistic_log_predictive(mean, sd, 64).exp()[:, 1]
    assert torch.allclose(p1, mc, atol=3e-3) and not torch.allclose(p1, torch.sigmoid(mean))
    assert torch.allclose(
        logistic_log_predictive(mean, sd, 64).exp().sum(-1), torch.ones_like(mean)
    )
    with pytest.raises(ValueError, match=r"num_nodes must be in \[1, 300\]"):
        logistic_log_predictive(mean, sd, 0)
