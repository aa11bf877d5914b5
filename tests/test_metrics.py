import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)

import pyro_unlearn.metrics as metrics
from pyro_unlearn import freeze
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import (
    accuracy,
    gaussian_kl,
    log_predictive_density,
    mean_and_std,
    param_kl,
    predictive_distribution,
    predictive_kl,
    to_inference_data,
)


def test_gaussian_kl_closed_form_1d():
    # KL(N(0, 1) ‖ N(1, 4)) = log 2 + (1 + 1)/8 − 1/2
    kl = gaussian_kl(torch.zeros(1), torch.eye(1), torch.ones(1), 4 * torch.eye(1))
    assert float(kl) == pytest.approx(torch.tensor(2.0).log().item() + 0.25 - 0.5, rel=1e-6)


def test_gaussian_kl_monte_carlo():
    torch.manual_seed(0)
    A = torch.randn(3, 3)
    cov_p, cov_q = A @ A.T + torch.eye(3), torch.eye(3) * 2
    p = torch.distributions.MultivariateNormal(torch.ones(3), cov_p)
    q = torch.distributions.MultivariateNormal(torch.zeros(3), cov_q)
    x = p.sample((200000,))
    mc = (p.log_prob(x) - q.log_prob(x)).mean()
    assert float(gaussian_kl(torch.ones(3), cov_p, torch.zeros(3), cov_q)) == pytest.approx(
        float(mc), rel=0.02
    )


def test_read_gaussian(linreg, model):
    normal = AutoNormal(model, init_scale=0.3)
    normal(linreg.x, linreg.y)
    loc, cov = read_gaussian(normal)
    assert loc.shape == (3,) and torch.allclose(cov, 0.09 * torch.eye(3))
    mvn = AutoMultivariateNormal(model, init_scale=0.2)
    mvn(linreg.x, linreg.y)
    loc, cov = read_gaussian(mvn)
    assert torch.allclose(loc, mvn.loc.detach()) and torch.allclose(cov, 0.04 * torch.eye(3))
    with pytest.raises(TypeError, match="Gaussian AutoGuide"):
        read_gaussian(lambda: None)


# -- small models with known answers --------------------------------------------------------------
def regression(x, y=None):
    """y ~ N(x·w, s²), w ∈ R², s > 0 (the unconstrained space holds log s)."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 10.0).expand([2]).to_event(1))
    s = pyro.sample("s", dist.LogNormal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((w * x).sum(-1), s), obs=y)


def logistic(x, y=None):
    """y ~ Bernoulli(σ(w x)), one scalar weight."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)


def softmax_model(x, y=None):
    """y ~ Categorical(softmax(w x + b)), x of shape (N, K), w scalar, b ∈ R^K."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    b = pyro.sample("b", dist.Normal(x.new_zeros(()), 1.0).expand(x.shape[-1:]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Categorical(logits=w.unsqueeze(-1) * x + b), obs=y)


def scalar_regression(x, y=None):
    """y ~ N(w x, s²), scalar w and s."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    s = pyro.sample("s", dist.LogNormal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(w * x, s), obs=y)


def point_mass(**values):
    """A guide putting θ at ``values`` (Delta sites; vector values get event_dim 1)."""

    def guide(x, y=None):
        for name, value in values.items():
            value = x.new_tensor(value)
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    return guide


@pytest.fixture
def reg_data():
    x = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2], [2.0, 0.1]])
    return x, (x * torch.tensor([1.0, -1.0])).sum(-1)


def frozen_gaussian(cls, loc_w, s, scale, x, y):
    init = init_to_value(values={"w": torch.tensor(loc_w), "s": torch.tensor(s)})
    return freeze(cls(regression, init_loc_fn=init, init_scale=scale), x, y)


# -- read_gaussian of frozen posteriors ----------------------------------------------------------
@pytest.mark.parametrize("cls", [AutoNormal, AutoMultivariateNormal])
def test_read_gaussian_frozen(cls, reg_data):
    x, y = reg_data
    guide = cls(regression, init_loc_fn=init_to_value(values={"s": torch.tensor(2.0)}))
    guide(x, y)
    before = [t.clone() for t in read_gaussian(guide)]
    frozen = freeze(guide, x, y)
    optim = pyro.optim.Adam({"lr": 0.1})
    svi = pyro.infer.SVI(regression, guide, optim, pyro.infer.Trace_ELBO())
    for _ in range(3):
        svi.step(x, y)
    loc, cov = read_gaussian(frozen)
    assert torch.equal(loc, before[0]) and torch.equal(cov, before[1])
    assert not torch.equal(read_gaussian(guide)[0], before[0])  # the live guide moved
    assert loc[-1] == pytest.approx(math.log(2.0))  # the unconstrained space holds log s
    loc.add_(1.0)  # clones: the frozen posterior is untouched
    assert torch.equal(read_gaussian(frozen)[0], before[0])


def test_read_gaussian_rejects_flows(reg_data):
    x, y = reg_data
    flow = AutoIAFNormal(regression)
    flow(x, y)
    for guide in (flow, freeze(flow, x, y)):
        with pytest.raises(TypeError, match="Gaussian AutoGuide .*AutoNormal.*got AutoIAFNormal"):
            read_gaussian(guide)


# -- param_kl -------------------------------------------------------------------------------------
def isotropic_kl(loc_p, s_p, loc_q, s_q):
    """KL(N(μ_p, s_p² I) ‖ N(μ_q, s_q² I)) by hand."""
    d = len(loc_p)
    sq = float(((loc_q - loc_p) ** 2).sum())
    return 0.5 * (d * s_p**2 / s_q**2 + sq / s_q**2 - d + 2 * d * math.log(s_q / s_p))


def mc_standard_error(loc_p, cov_p, loc_q, cov_q, n, draws=200_000):
    """Standard error of the S = n Monte-Carlo KL estimate, from the moments."""
    p = torch.distributions.MultivariateNormal(loc_p.double(), cov_p.double())
    q = torch.distributions.MultivariateNormal(loc_q.double(), cov_q.double())
    theta = p.sample((draws,))
    return float((p.log_prob(theta) - q.log_prob(theta)).std()) / math.sqrt(n)


@pytest.mark.parametrize(
    "cls",
    [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal],
)
def test_param_kl_gaussian_closed_form_and_monte_carlo(cls, reg_data):
    x, y = reg_data
    p = frozen_gaussian(cls, [1.0, -1.0], 2.0, 0.3, x, y)
    q = frozen_gaussian(cls, [0.5, -0.8], 1.0, 0.5, x, y)
    closed = param_kl(p, q, x, y)
    assert float(closed) == pytest.approx(float(param_kl(p, q, x, y, method="closed_form")))
    moments_p, moments_q = read_gaussian(p), read_gaussian(q)
    assert float(closed) == pytest.approx(float(gaussian_kl(*moments_p, *moments_q)), rel=1e-6)
    if cls is not AutoLowRankMultivariateNormal:  # known moments: N(μ, s² I), μ = (w, log s)
        loc_p, loc_q = torch.tensor([1.0, -1.0, math.log(2.0)]), torch.tensor([0.5, -0.8, 0.0])
        assert float(closed) == pytest.approx(isotropic_kl(loc_p, 0.3, loc_q, 0.5), rel=1e-5)
    n = 4000
    pyro.set_rng_seed(1)
    mc = param_kl(p, q, x, y, num_samples=n, method="monte_carlo")
    se = mc_standard_error(*moments_p, *moments_q, n)
    assert abs(float(mc) - float(closed)) < 4 * se


def test_param_kl_live_against_frozen(reg_data):
    x, y = reg_data
    p = frozen_gaussian(AutoNormal, [1.0, -1.0], 2.0, 0.3, x, y)
    init = init_to_value(values={"w": torch.tensor([0.5, -0.8]), "s": torch.tensor(1.0)})
    live = AutoNormal(regression, init_loc_fn=init, init_scale=0.5)
    live(x, y)
    loc_p, loc_q = torch.tensor([1.0, -1.0, math.log(2.0)]), torch.tensor([0.5, -0.8, 0.0])
    assert float(param_kl(p, live, x, y)) == pytest.approx(
        isotropic_kl(loc_p, 0.3, loc_q, 0.5), rel=1e-5
    )
    assert float(param_kl(live, p, x, y)) == pytest.approx(
        isotropic_kl(loc_q, 0.5, loc_p, 0.3), rel=1e-5
    )
    pyro.set_rng_seed(2)
    n = 4000
    mc = param_kl(live, p, x, y, num_samples=n, method="monte_carlo")
    cov_p, cov_q = 0.09 * torch.eye(3), 0.25 * torch.eye(3)
    se = mc_standard_error(loc_q, cov_q, loc_p, cov_p, n)
    assert abs(float(mc) - isotropic_kl(loc_q, 0.5, loc_p, 0.3)) < 4 * se
    # nothing was registered beyond the live guide's own parameters
    assert all(name.startswith("AutoNormal.") for name in pyro.get_param_store().keys())


def normal_guide(loc_w, scale_w, loc_s, scale_s):
    """A plain guide function: w ~ N(loc_w, scale_w²) (vector), s ~ LogNormal(loc_s, scale_s)."""

    def guide(x, y=None):
        pyro.sample("w", dist.Normal(x.new_tensor(loc_w), scale_w).to_event(1))
        pyro.sample("s", dist.LogNormal(x.new_tensor(loc_s), scale_s))

    return guide


def test_param_kl_plain_guides_monte_carlo(reg_data):
    x, y = reg_data
    p, q = normal_guide([0.0, 1.0], 0.5, 0.2, 0.3), normal_guide([0.3, 1.2], 0.7, 0.0, 0.4)
    # no auxiliary sites: scored on the latent sites themselves (here w and s; the KL between
    # two LogNormals with the same transform equals that of the underlying Normals)
    kl = lambda m1, s1, m2, s2: math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5  # noqa: E731
    exact = kl(0.0, 0.5, 0.3, 0.7) + kl(1.0, 0.5, 1.2, 0.7) + kl(0.2, 0.3, 0.0, 0.4)
    n = 4000
    pyro.set_rng_seed(3)
    mc = param_kl(p, q, x, y, num_samples=n)  # "auto": not Gaussian AutoGuides → Monte Carlo
    loc_p, loc_q = torch.tensor([0.0, 1.0, 0.2]), torch.tensor([0.3, 1.2, 0.0])
    cov_p, cov_q = (
        torch.diag(torch.tensor([0.25, 0.25, 0.09])),
        torch.diag(torch.tensor([0.49, 0.49, 0.16])),
    )
    se = mc_standard_error(loc_p, cov_p, loc_q, cov_q, n)
    assert abs(float(mc) - exact) < 4 * se
    with pytest.raises(TypeError, match="closed form needs two Gaussian AutoGuides"):
        param_kl(p, q, x, y, method="closed_form")


def test_param_kl_errors(reg_data):
    x, y = reg_data
    normal = frozen_gaussian(AutoNormal, [1.0, -1.0], 2.0, 0.3, x, y)
    mvn = frozen_gaussian(AutoMultivariateNormal, [1.0, -1.0], 2.0, 0.3, x, y)
    with pytest.raises(ValueError, match="different auxiliary sites"):
        param_kl(normal, mvn, x, y)
    with pytest.raises(ValueError, match="different auxiliary sites"):
        param_kl(normal, mvn, x, y, method="monte_carlo")

    def other(x, y=None):
        pyro.sample("v", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("s", dist.LogNormal(x.new_zeros(()), 1.0))

    with pytest.raises(ValueError, match=r"different auxiliary sites.*'v'"):
        param_kl(normal_guide([0.0, 0.0], 1.0, 0.0, 1.0), other, x, y)
    wide = normal_guide([0.0, 0.0, 0.0], 1.0, 0.0, 1.0)  # w ∈ R³: same names, other shapes
    with pytest.raises(ValueError, match=r"different auxiliary sites.*\(3,\)"):
        param_kl(normal_guide([0.0, 0.0], 1.0, 0.0, 1.0), wide, x, y)
    with pytest.raises(ValueError, match="method must be"):
        param_kl(normal, normal, x, y, method="exact")


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
    monkeypatch.setattr(metrics, "_MC_BLOCK", 500)
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
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
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


# -- ArviZ ----------------------------------------------------------------------------------------
def test_to_inference_data(reg_data):
    import arviz as az

    x, y = reg_data
    frozen = frozen_gaussian(AutoNormal, [1.0, -1.0], 2.0, 0.05, x, y)
    init = init_to_value(values={"w": torch.tensor([0.5, 0.2]), "s": torch.tensor(0.5)})
    live = AutoMultivariateNormal(regression, init_loc_fn=init, init_scale=0.05)
    live(x, y)
    n = 1000
    data = to_inference_data({"frozen": frozen, "live": live}, regression, x, y, num_samples=n)
    assert list(data) == ["frozen", "live"]
    expected = {"frozen": ([1.0, -1.0], 2.0), "live": ([0.5, 0.2], 0.5)}
    for name, idata in data.items():
        assert isinstance(idata, az.InferenceData)
        assert set(idata.posterior.data_vars) == {"w", "s"}
        assert idata.posterior["w"].shape == (1, n, 2) and idata.posterior["s"].shape == (1, n)
        summary = az.summary(idata, kind="stats")
        w, s = expected[name]
        # constrained means: w = loc; s = exp(log s + 0.05²/2) (a LogNormal)
        assert summary.loc["w[0]", "mean"] == pytest.approx(w[0], abs=0.02)
        assert summary.loc["w[1]", "mean"] == pytest.approx(w[1], abs=0.02)
        assert summary.loc["s", "mean"] == pytest.approx(s * math.exp(0.05**2 / 2), rel=0.02)
        assert summary.loc["s", "sd"] == pytest.approx(s * 0.05, rel=0.2)
    assert az.summary(data["live"]).shape[0] == 3  # the full summary (diagnostics) runs too


# -- membership inference -------------------------------------------------------------------------
def mann_whitney(member_losses, nonmember_losses):
    """P(ℓ_member < ℓ_non-member) + ½ P(tie), by brute force over all pairs."""
    diff = nonmember_losses.unsqueeze(0) - member_losses.unsqueeze(1)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_membership_attack_is_at_chance_on_identical_loss_distributions():
    torch.manual_seed(0)
    members, nonmembers = torch.randn(600).exp(), torch.randn(900).exp()
    entropy = (torch.rand(600), torch.rand(900))
    attack = metrics.membership_attack(members, nonmembers, features=entropy, repeats=2)
    # a balanced sample of 2 × 600, held-out folds: accuracy's sd ≈ 0.015, the AUC's ≈ 0.015
    for value in (attack.threshold_accuracy, attack.logistic_accuracy):
        assert abs(value - 0.5) < 0.05
    for value in (attack.threshold_auc, attack.logistic_auc):
        assert abs(value - 0.5) < 0.05
    assert (attack.num_members, attack.num_nonmembers, attack.num_balanced) == (600, 900, 600)
    assert set(attack.columns()) == {
        "mia_accuracy",
        "mia_auc",
        "mia_logistic_accuracy",
        "mia_logistic_auc",
    }


def test_membership_attack_separated_losses_in_either_direction():
    members, nonmembers = torch.rand(30), 2 + torch.rand(45)  # members: every loss lower
    attack = metrics.membership_attack(members, nonmembers)
    assert attack.threshold_accuracy == attack.threshold_auc == 1.0
    assert attack.logistic_accuracy == attack.logistic_auc == 1.0
    # members with higher losses (over-unlearning): AUC 0, and both attacks still see it
    attack = metrics.membership_attack(nonmembers, members)
    assert attack.threshold_auc == 0.0
    assert attack.threshold_accuracy == attack.logistic_accuracy == 1.0
    # an uninformative loss with a separating extra feature: only the logistic attack uses it
    same = torch.ones(40)
    features = (torch.zeros(40, 1), torch.ones(40, 1))
    attack = metrics.membership_attack(same, same, features=features)
    assert attack.threshold_accuracy == attack.threshold_auc == 0.5
    assert attack.logistic_accuracy == 1.0


def test_membership_attack_auc_is_the_mann_whitney_statistic():
    torch.manual_seed(1)
    members = torch.randint(0, 6, (37,)).double()  # integer losses: many ties
    nonmembers = torch.randint(1, 8, (23,)).double()
    attack = metrics.membership_attack(members, nonmembers)
    assert attack.threshold_auc == pytest.approx(mann_whitney(members, nonmembers), abs=1e-12)
    assert 0.5 < attack.threshold_auc < 1.0  # members lower, not separated


def test_fit_threshold_maximises_the_training_accuracy():
    torch.manual_seed(2)
    score = torch.randn(25).double().numpy()
    member = (torch.rand(25) < 0.5).double().numpy()
    tau, direction = metrics._fit_threshold(score, member)
    best = max(  # brute force over every threshold between (and beyond) the sorted scores
        float(((d * (score - t) > 0) == member).mean())
        for t in [-math.inf, *score.tolist()]
        for d in (1.0, -1.0)
    )
    assert float(((direction * (score - tau) > 0) == member).mean()) == best


def test_membership_attack_errors():
    ok = torch.arange(10.0)
    with pytest.raises(ValueError, match="member_losses is empty"):
        metrics.membership_attack(torch.tensor([]), ok)
    with pytest.raises(ValueError, match="nonmember_losses is empty"):
        metrics.membership_attack(ok, torch.tensor([]))
    with pytest.raises(ValueError, match=r"member_losses must have 1 dim.*\(5, 2\)"):
        metrics.membership_attack(ok.reshape(5, 2), ok)
    with pytest.raises(ValueError, match="nonmember_losses holds 1 non-finite"):
        metrics.membership_attack(ok, torch.cat([ok, torch.tensor([math.nan])]))
    with pytest.raises(ValueError, match="member features have 9 rows but there are 10"):
        metrics.membership_attack(ok, ok, features=(torch.zeros(9), torch.zeros(10)))
    with pytest.raises(ValueError, match="2 columns, nonmember features 1"):
        metrics.membership_attack(ok, ok, features=(torch.zeros(10, 2), torch.zeros(10)))
    with pytest.raises(ValueError, match="features must be a pair"):
        metrics.membership_attack(ok, ok, features=torch.zeros(10))
    with pytest.raises(ValueError, match="at least 5 examples in each group; got 10 members and 4"):
        metrics.membership_attack(ok, ok[:4])
    with pytest.raises(ValueError, match="folds must be an integer of at least 2"):
        metrics.membership_attack(ok, ok, folds=1)
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        metrics.membership_attack(ok, ok, repeats=0)


def conjugate_normal(y=None, sigma=0.5):
    """y_n ~ N(μ, σ²), μ ~ N(0, 10²)."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
    with pyro.plate("data", len(y)):
        return pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_per_example_loss_conjugate_normal():
    y = torch.tensor([-1.0, 0.2, 0.9, 2.5], dtype=torch.float64)
    m, s, sigma = 0.3, 0.8, 0.5

    def point(y=None):
        pyro.sample("mu", dist.Delta(y.new_tensor(m)))

    def gaussian(y=None):
        pyro.sample("mu", dist.Normal(y.new_tensor(m), s))

    # a point mass: −log N(y | m, σ²) exactly, whatever the number of samples
    loss = metrics.per_example_loss(conjugate_normal, point, y, num_samples=3)
    assert torch.allclose(loss, -dist.Normal(m, sigma).log_prob(y), atol=1e-12)
    # a Gaussian posterior N(m, s²): E_q[p(y|μ)] = N(y | m, σ² + s²)
    num = 40_000
    loss = metrics.per_example_loss(conjugate_normal, gaussian, y, num_samples=num)
    exact = -dist.Normal(m, math.sqrt(sigma**2 + s**2)).log_prob(y)
    assert loss.shape == (4,) and loss.dtype == torch.float64
    # the Monte-Carlo error's sd: Var[p]/E[p]², with E_q[p(y|μ)²] = N(y | m, σ²/2 + s²)/(2σ√π)
    second = dist.Normal(m, math.sqrt(sigma**2 / 2 + s**2)).log_prob(y).exp() / (
        2 * sigma * math.sqrt(math.pi)
    )
    sd = ((second / (-2 * exact).exp() - 1) / num).sqrt()
    assert ((loss - exact).abs() < 5 * sd).all() and sd.max() < 0.02
    with pytest.raises(ValueError, match="observed values of site 'y'"):
        metrics.per_example_loss(logistic, point_mass(w=1.0), torch.ones(3))


def test_per_example_loss_scores_event_dims_jointly():
    def model(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 2):
            return pyro.sample("y", dist.Normal(mu, 1.0).expand([2, 3]).to_event(1), obs=y)

    def guide(y=None):
        pyro.sample("mu", dist.Delta(torch.tensor(1.0)))

    y = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    loss = metrics.per_example_loss(model, guide, y, num_samples=2)
    expected = -dist.Normal(1.0, 1.0).log_prob(y).sum(-1)  # one loss per example (row)
    assert loss.shape == (2,) and torch.allclose(loss, expected, atol=1e-6)


def test_membership_inference_on_posteriors():
    x = torch.linspace(-2.0, 2.0, 20)
    seen = (x, (x > 0).float())  # the labels a positive weight predicts
    unseen = (x, (x < 0).float())  # the opposite labels
    posteriors = {"fit": point_mass(w=3.0), "flat": point_mass(w=0.0)}
    attacks = metrics.membership_inference(logistic, posteriors, seen, unseen, entropy=True)
    assert list(attacks) == ["fit", "flat"]
    assert attacks["fit"].threshold_auc == attacks["fit"].threshold_accuracy == 1.0
    # w = 0 predicts ½ everywhere: every loss is log 2, nothing to tell
    assert attacks["flat"].threshold_auc == attacks["flat"].threshold_accuracy == 0.5
    assert attacks["flat"].logistic_accuracy == 0.5
    # the same numbers as the attack on the per-example losses directly
    loss_seen = metrics.per_example_loss(logistic, posteriors["fit"], *seen)
    loss_unseen = metrics.per_example_loss(logistic, posteriors["fit"], *unseen)
    assert torch.allclose(loss_seen, torch.nn.functional.softplus(-3.0 * x.abs()), atol=1e-6)
    direct = metrics.membership_attack(loss_seen, loss_unseen)
    assert attacks["fit"].threshold_auc == direct.threshold_auc
    with pytest.raises(TypeError, match="predictive entropy feature needs a Bernoulli"):
        metrics.membership_inference(
            scalar_regression, {"q": point_mass(w=1.0, s=1.0)}, (x, x), (x, x), entropy=True
        )
    with pytest.raises(ValueError, match="posteriors is empty"):
        metrics.membership_inference(logistic, {}, seen, unseen)
