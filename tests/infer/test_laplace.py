import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_sample,
)
from pyro.nn import PyroModule, PyroSample
from torch.func import hessian, jacrev

import pyro_unlearn as pu
from pyro_unlearn.exact import (
    NotNormalizableError,
    gaussian_linear_posterior,
    gaussian_linear_unlearn,
)
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.linear_regression import linear_model
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.results import UnlearningResult

F64 = torch.float64
# 100 points, the first 10 (an informative cluster) erased
DATA = linear_regression(dtype=F64, device=torch.get_default_device())
FEATURES = torch.cat([DATA.x, DATA.x.new_ones(len(DATA.x), 1)], dim=-1)  # θ = (w, b)
PRIOR_PRECISION = torch.eye(3, dtype=F64) / 100.0  # linear_model's N(0, 10²) prior


def model(x, y=None):
    return linear_model(x, y, DATA.noise_scale)


def exact_posterior(rows):
    """The exact p(θ|D[rows]) as (loc, precision)."""
    return gaussian_linear_posterior(
        torch.zeros(3, dtype=F64), PRIOR_PRECISION, FEATURES[rows], DATA.y[rows], DATA.noise_scale
    )


def mvn_guide(loc, precision):
    """A live AutoMultivariateNormal holding N(loc, precision⁻¹) in its parameters."""
    guide = AutoMultivariateNormal(model)
    guide(DATA.x, DATA.y)
    return write_gaussian(guide, loc, torch.linalg.inv(precision))


def unlearn_linear(guide, **kwargs):
    return pu.laplace_unlearn(
        model, guide, DATA.x, DATA.y, erased=DATA.erased, plate="data", **kwargs
    )


def assert_exact(result, loc, precision):
    """θ*, Λ̃ and the returned guide's own moments equal q(θ|D)/p(D_e|θ) in closed form."""
    target_loc, target_precision = gaussian_linear_unlearn(
        loc, precision, FEATURES[DATA.erased], DATA.y[DATA.erased], DATA.noise_scale
    )
    torch.testing.assert_close(result.theta_star, target_loc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result.precision, target_precision, rtol=1e-10, atol=1e-9)
    guide_loc, guide_cov = read_gaussian(result.guide)
    torch.testing.assert_close(guide_loc, target_loc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(guide_cov.inverse(), target_precision, rtol=1e-9, atol=1e-8)
    assert result.converged and result.concave and not result.repaired
    # the result's posterior: the same Gaussian, frozen (an UnlearningResult like every method's)
    assert isinstance(result, UnlearningResult) and isinstance(result.posterior, pu.FrozenPosterior)
    frozen_loc, frozen_cov = read_gaussian(result.posterior)
    assert torch.equal(frozen_loc, guide_loc) and torch.equal(frozen_cov, guide_cov)


# -- 1. acceptance: λ_L = 1 and the full Hessian reproduce the closed form ------------------------
@pytest.mark.parametrize("curvature", ["full", "ggn"])  # GGN = Hessian for a linear-Gaussian model
def test_exact_posterior_reproduces_closed_form(curvature):
    loc, precision = exact_posterior(torch.arange(len(DATA.y)))
    result = unlearn_linear(mvn_guide(loc, precision), curvature=curvature)
    assert_exact(result, loc, precision)
    assert result.optimizer == "newton" and result.steps <= 3
    # q(θ|D) was exact, so the division is the exact posterior of the remaining data
    remaining_loc, remaining_precision = exact_posterior(torch.arange(10, len(DATA.y)))
    torch.testing.assert_close(result.theta_star, remaining_loc, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.precision, remaining_precision, rtol=1e-9, atol=1e-8)


def test_laplace_approximation_guide_reproduces_closed_form():
    map_guide = AutoLaplaceApproximation(model)
    optim = pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.01 ** (1 / 500)})
    svi = SVI(model, map_guide, optim, Trace_ELBO())
    for _ in range(500):
        svi.step(DATA.x, DATA.y)
    guide = map_guide.laplace_approximation(DATA.x, DATA.y)
    loc, cov = read_gaussian(guide)
    exact_loc, exact_precision = exact_posterior(torch.arange(len(DATA.y)))
    torch.testing.assert_close(cov.inverse(), exact_precision, rtol=1e-9, atol=1e-8)
    assert torch.allclose(loc, exact_loc, atol=1e-2)  # a trained MAP, not the exact mean
    # Pyro's scale_tril is the Cholesky factor of the correlation matrix, not unit-lower
    assert not torch.allclose(guide.scale_tril.diagonal(), torch.ones(3, dtype=F64))
    result = unlearn_linear(guide)
    assert_exact(result, loc, cov.inverse())
    assert torch.equal(result.guide.scale_tril.diagonal(), torch.ones(3, dtype=F64))


GROUPS = torch.tensor([0, 0, 1, 1, 1, 2, 0, 2])  # y_n ~ N(θ_{g(n)}, 0.5²): a diagonal Hessian
GROUP_Y = torch.tensor([0.3, -0.2, 1.1, 0.8, 1.4, -0.9, 0.1, -1.3], dtype=F64)


def means_model(y):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(3, dtype=F64), 3.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta[GROUPS], 0.5), obs=y)


@pytest.mark.parametrize(
    "kind, curvature, probes",
    [
        (AutoMultivariateNormal, "full", None),
        (AutoMultivariateNormal, "ggn", None),
        (AutoDiagonalNormal, "diag", None),
        (AutoDiagonalNormal, "diag", 3),  # Hutchinson is exact when H_e is diagonal
        (AutoNormal, "ggn_diag", None),
    ],
)
@pytest.mark.parametrize("retention", [0.5, 3.0])  # λ_L > 1: a stronger hold on q(θ|D)
def test_retention_weighs_only_the_retention_term(kind, curvature, probes, retention):
    """θ* solves (λ_L Λ_D − H_e) θ = λ_L Λ_D μ_D − Σ_e y_e / σ², and Λ̃ = Λ_D − H_e (no λ_L)."""
    guide = kind(means_model, init_loc_fn=init_to_sample, init_scale=0.2)
    guide(GROUP_Y)
    loc, cov = read_gaussian(guide)
    erased = torch.tensor([0, 2, 3, 5])
    counts = torch.bincount(GROUPS[erased], minlength=3).to(F64)
    sums = torch.zeros(3, dtype=F64).index_add_(0, GROUPS[erased], GROUP_Y[erased])
    H_e = torch.diag(counts / 0.25)
    precision = cov.inverse()
    expected = torch.linalg.solve(
        retention * precision - H_e, retention * precision @ loc - sums / 0.25
    )
    result = pu.laplace_unlearn(
        means_model, guide, GROUP_Y, erased=erased, plate="data", retention=retention,
        curvature=curvature, probes=probes,
    )  # fmt: skip
    assert result.retention == retention and result.converged
    torch.testing.assert_close(result.theta_star, expected, rtol=1e-7, atol=1e-7)
    dense = result.precision if result.precision.dim() == 2 else torch.diag(result.precision)
    torch.testing.assert_close(dense, precision - H_e, rtol=1e-10, atol=1e-10)


# -- 2. erasing data that were never observed -----------------------------------------------------
def never_observed_guide():
    """The exact posterior of three points that are NOT the erased cluster."""
    loc, precision = exact_posterior(torch.arange(10, 13))
    return mvn_guide(loc, precision), loc, precision


def test_never_observed_is_not_normalizable():
    guide, loc, precision = never_observed_guide()
    with pytest.raises(NotNormalizableError):  # the closed form agrees it is no distribution
        gaussian_linear_unlearn(
            loc, precision, FEATURES[DATA.erased], DATA.y[DATA.erased], DATA.noise_scale
        )
    with pytest.raises(NotNormalizableError, match="not positive definite"):
        unlearn_linear(guide)
    diagonal = AutoDiagonalNormal(model)
    diagonal(DATA.x, DATA.y)
    with torch.no_grad():
        diagonal.loc.copy_(loc)
    diagonal.scale = precision.diagonal().rsqrt()
    with pytest.raises(NotNormalizableError, match="no maximum"):
        unlearn_linear(diagonal, curvature="ggn_diag")


def test_clip_repair_warns_and_reports():
    guide, loc, precision = never_observed_guide()
    X, y, noise = FEATURES[DATA.erased], DATA.y[DATA.erased], DATA.noise_scale
    divided = precision - X.T @ X / noise**2
    eigenvalues = torch.linalg.eigvalsh(divided)
    assert eigenvalues[0] < 0
    floor = 0.5
    with pytest.warns(UserWarning, match="repair='clip' raised"):
        result = unlearn_linear(guide, repair="clip", floor=floor)
    assert result.repaired and result.floor == floor and result.concave is False
    assert result.num_clipped == int((eigenvalues < floor).sum())
    assert result.min_eigenvalue == pytest.approx(float(eigenvalues[0]), rel=1e-9)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(result.precision), eigenvalues.clamp(min=floor), rtol=1e-9, atol=1e-9
    )
    # θ* is the stationary point of the (unbounded) objective: the closed-form mean formula
    stationary = torch.linalg.solve(divided, precision @ loc - X.T @ y / noise**2)
    torch.testing.assert_close(result.theta_star, stationary, rtol=1e-9, atol=1e-9)
    with pytest.warns(UserWarning, match="floor"):  # default floor: relative to Λ_D
        default = unlearn_linear(guide, repair="clip")
    assert default.floor == pytest.approx(1e-6 * float(torch.linalg.eigvalsh(precision)[-1]))


# -- 3. diagonal and GGN curvatures: scale, and agreement with dense references -----------------
class MLP(PyroModule):
    """A Bayesian tanh MLP 1 → 400 → 250 → 1: 101,301 weights, so a dense P×P float32 Hessian
    would need 41 GB."""

    def __init__(self, sizes=(1, 400, 250, 1)):
        super().__init__()
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layer = PyroModule[torch.nn.Linear](n_in, n_out)
            prior_scale = 1.0 / math.sqrt(n_in)
            layer.weight = PyroSample(
                dist.Normal(0.0, prior_scale).expand([n_out, n_in]).to_event(2)
            )
            layer.bias = PyroSample(dist.Normal(0.0, prior_scale).expand([n_out]).to_event(1))
            layers.append(layer)
        self.layers = PyroModule[torch.nn.ModuleList](layers)

    def forward(self, x, y=None):
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h) if i == len(self.layers) - 1 else torch.tanh(layer(h))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(h.squeeze(-1), 1.0), obs=y)


@pytest.mark.parametrize("curvature", ["ggn_diag", "diag"])
def test_diagonal_curvature_scales_past_a_dense_hessian(curvature):
    mlp = MLP()
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    y = torch.sin(2 * x.squeeze(-1))
    guide = AutoNormal(mlp, init_loc_fn=init_to_sample, init_scale=0.01)  # Λ_D = 10⁴ I
    guide(x, y)
    P = sum(p.numel() for p in guide.parameters()) // 2
    assert P > 100_000 and P**2 * 4 > 40e9
    kwargs = {"probes": 4} if curvature == "diag" else {}
    result = pu.laplace_unlearn(
        mlp, guide, x, y, erased=torch.arange(5), plate="data", curvature=curvature, steps=20,
        **kwargs,
    )  # fmt: skip
    assert result.guide is not guide and isinstance(result.guide, AutoNormal)
    assert result.theta_star.shape == result.precision.shape == (P,)
    assert bool(torch.isfinite(result.theta_star).all()) and bool((result.precision > 0).all())
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        old_loc, _ = guide._get_loc_and_scale(name)
        new_loc, new_scale = result.guide._get_loc_and_scale(name)
        assert new_loc.shape == new_scale.shape == old_loc.shape
    assert 0 < (1e4 - result.precision).abs().max() < 1e4  # the erased data's curvature
    samples = Predictive(mlp, guide=result.guide, num_samples=2)(x)["y"]
    assert samples.shape == (2, 40)


NOISE = 0.5
H = 4  # a small tanh MLP with explicit sites: θ = (w1, b1, w2, b2), 3H + 1 = 13 latents


def small_net(theta, x):
    w1, b1, w2, b2 = theta[:H], theta[H : 2 * H], theta[2 * H : 3 * H], theta[3 * H]
    return torch.tanh(x[:, None] * w1 + b1) @ w2 + b2


def small_model(x, y=None, likelihood="normal"):
    w1 = pyro.sample("w1", dist.Normal(torch.zeros(H, dtype=F64), 1.0).to_event(1))
    b1 = pyro.sample("b1", dist.Normal(torch.zeros(H, dtype=F64), 1.0).to_event(1))
    w2 = pyro.sample("w2", dist.Normal(torch.zeros(H, dtype=F64), 1.0).to_event(1))
    b2 = pyro.sample("b2", dist.Normal(torch.zeros((), dtype=F64), 1.0))
    f = torch.tanh(x[:, None] * w1 + b1) @ w2 + b2
    with pyro.plate("data", len(x)):
        if likelihood == "normal":
            pyro.sample("y", dist.Normal(f, NOISE), obs=y)
        else:  # three classes, logits (f, −f, 0)
            logits = torch.stack([f, -f, torch.zeros_like(f)], -1)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)


SMALL_X = torch.linspace(-1.5, 1.5, 12, dtype=F64)
ERASED = torch.arange(4)


def small_guide(kind, likelihood):
    y = torch.sin(SMALL_X) if likelihood == "normal" else (SMALL_X > 0).long()
    guide = kind(small_model, init_loc_fn=init_to_sample, init_scale=0.05)  # Λ_D = 400 I
    guide(SMALL_X, y, likelihood)
    return guide, y


def small_unlearn(guide, y, likelihood, **kwargs):
    return pu.laplace_unlearn(
        small_model, guide, SMALL_X, y, likelihood, erased=ERASED, plate="data", **kwargs
    )


def dense_references(theta, y, likelihood):
    """The dense Hessian and GGN of −log p(D_e|θ), written without Pyro."""
    x, y = SMALL_X[ERASED], y[ERASED]

    def outputs(t):
        f = small_net(t, x)
        return f if likelihood == "normal" else torch.stack([f, -f, torch.zeros_like(f)], -1)

    def nll(t):
        out = outputs(t)
        if likelihood == "normal":
            return -dist.Normal(out, NOISE).log_prob(y).sum()
        return -dist.Categorical(logits=out).log_prob(y).sum()

    J = jacrev(outputs)(theta)
    if likelihood == "normal":
        ggn = J.T @ J / NOISE**2
    else:
        p = torch.softmax(outputs(theta), -1)
        H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        ggn = torch.einsum("ncp,ncd,ndq->pq", J, H_out, J)
    return hessian(nll)(theta), ggn


@pytest.mark.parametrize("likelihood", ["normal", "categorical"])
def test_diagonals_match_dense_references(likelihood):
    guide, y = small_guide(AutoDiagonalNormal, likelihood)
    prior = guide.scale.detach() ** -2
    result = small_unlearn(guide, y, likelihood, curvature="ggn_diag", retention=0.5)
    assert result.converged and result.optimizer == "lbfgs"
    dense_hessian, dense_ggn = dense_references(result.theta_star, y, likelihood)
    torch.testing.assert_close(prior - result.precision, dense_ggn.diagonal(), rtol=1e-9, atol=1e-9)
    # θ* is a maximum of 0.5 log q(θ|D) − log p(D_e|θ): the gradient vanishes there
    nll_grad = jacrev(lambda t: -dense_references_nll(t, y, likelihood))(result.theta_star)
    pull = 0.5 * prior * (result.theta_star - guide.loc.detach())
    assert float(pull.abs().max()) > 0.1  # θ* moved away from μ_D
    torch.testing.assert_close(pull, nll_grad, rtol=0, atol=1e-5)
    exact = small_unlearn(guide, y, likelihood, curvature="diag", retention=0.5)
    torch.testing.assert_close(exact.theta_star, result.theta_star)
    torch.testing.assert_close(
        prior - exact.precision, dense_hessian.diagonal(), rtol=1e-8, atol=1e-8
    )
    assert not torch.allclose(dense_hessian.diagonal(), dense_ggn.diagonal(), atol=1e-3)
    # Hutchinson: unbiased, with standard error sqrt(Σ_{j≠i} H_ij² / probes) per entry
    probes = 400
    estimate = small_unlearn(guide, y, likelihood, curvature="diag", retention=0.5, probes=probes)
    off = dense_hessian - torch.diag_embed(dense_hessian.diagonal())
    stderr = (off**2).sum(-1).div(probes).sqrt()
    error = (prior - estimate.precision) - dense_hessian.diagonal()
    assert bool((error.abs() <= 5 * stderr + 1e-9).all()) and estimate.probes == probes


def dense_references_nll(theta, y, likelihood):
    f = small_net(theta, SMALL_X[ERASED])
    if likelihood == "normal":
        return dist.Normal(f, NOISE).log_prob(y[ERASED]).sum()
    logits = torch.stack([f, -f, torch.zeros_like(f)], -1)
    return dist.Categorical(logits=logits).log_prob(y[ERASED]).sum()


@pytest.mark.parametrize("likelihood", ["normal", "categorical"])
def test_dense_ggn_and_hessian_match_references(likelihood):
    guide, y = small_guide(AutoMultivariateNormal, likelihood)
    prior = read_gaussian(guide)[1].inverse()
    for curvature in ("ggn", "full"):
        result = small_unlearn(guide, y, likelihood, curvature=curvature)
        dense_hessian, dense_ggn = dense_references(result.theta_star, y, likelihood)
        reference = dense_ggn if curvature == "ggn" else dense_hessian
        torch.testing.assert_close(prior - result.precision, reference, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("parameter", ["logits", "probs"])
def test_bernoulli_ggn_is_the_hessian_for_logistic_regression(parameter):
    """Logits linear in θ: the GGN Jᵀ diag(p(1 − p)) J is the Hessian exactly."""

    def logistic_model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
        z = x @ w
        with pyro.plate("data", len(x)):
            fn = dist.Bernoulli(logits=z) if parameter == "logits" else dist.Bernoulli(z.sigmoid())
            pyro.sample("y", fn, obs=y)

    x, y = DATA.x[:30], (DATA.y[:30] > 0).to(F64)
    guide = AutoMultivariateNormal(logistic_model, init_loc_fn=init_to_sample, init_scale=0.1)
    guide(x, y)
    kwargs = {"erased": torch.arange(10), "plate": "data", "retention": 0.7}
    full = pu.laplace_unlearn(logistic_model, guide, x, y, curvature="full", **kwargs)
    ggn = pu.laplace_unlearn(logistic_model, guide, x, y, curvature="ggn", **kwargs)
    diag = pu.laplace_unlearn(logistic_model, guide, x, y, curvature="ggn_diag", **kwargs)
    torch.testing.assert_close(ggn.theta_star, full.theta_star, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ggn.precision, full.precision, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diag.theta_star, full.theta_star, rtol=1e-6, atol=1e-6)
    p = torch.sigmoid(x[:10] @ diag.theta_star)
    expected = read_gaussian(guide)[1].inverse().diagonal() - (p * (1 - p)) @ x[:10] ** 2
    torch.testing.assert_close(diag.precision.diagonal(), expected, rtol=1e-9, atol=1e-9)


def test_constrained_sites_use_the_guides_bijection():
    """σ ~ LogNormal: θ is u = log σ, and log p(D_e|θ) = Σ_e log N(y_e; 0, e^u)."""

    def scale_model(y):
        sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(0.0, sigma), obs=y)

    y = torch.tensor([0.5, -1.2, 2.0, 0.7, -0.4], dtype=F64)
    guide = AutoMultivariateNormal(scale_model)
    guide(y)
    mu, precision = 0.2, 40.0
    with torch.no_grad():
        guide.loc.fill_(mu)
    guide.scale = torch.tensor([precision**-0.5], dtype=F64)
    result = pu.laplace_unlearn(scale_model, guide, y, erased=[1, 2], plate="data")
    u, s2 = result.theta_star[0], (y[1:3] ** 2).sum()
    # stationarity of −½Λ(u − μ)² − Σ_e log N(y_e; 0, e^u), and Λ̃ = Λ + ∂²_u Σ_e log N
    assert float(precision * (u - mu) + (-2 + s2 * torch.exp(-2 * u))) == pytest.approx(0, abs=1e-9)
    expected = precision - 2 * s2 * torch.exp(-2 * u)
    assert float(result.precision[0, 0]) == pytest.approx(float(expected), rel=1e-10)


# -- 4. the returned guide works; the original is untouched; bad input is refused ---------------
def test_result_guide_works_and_original_is_untouched():
    loc, precision = exact_posterior(torch.arange(len(DATA.y)))
    guide = mvn_guide(loc, precision)
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store.items()}
    state = {k: v.clone() for k, v in guide.state_dict().items()}
    result = unlearn_linear(guide)
    pyro.set_rng_seed(1)
    samples = Predictive(model, guide=result.guide, num_samples=1000)(DATA.x)
    assert samples["y"].shape == (1000, len(DATA.y))
    theta = torch.cat([samples["w"], samples["b"][:, None]], -1)
    cov = result.precision.inverse()
    stderr = (cov.diagonal() / 1000).sqrt()
    assert bool(((theta.mean(0) - result.theta_star).abs() < 5 * stderr).all())
    frozen = pu.freeze(result.guide, DATA.x, DATA.y)
    frozen_loc, frozen_cov = read_gaussian(frozen)
    torch.testing.assert_close(frozen_loc, result.theta_star)
    torch.testing.assert_close(frozen_cov, cov, rtol=1e-9, atol=1e-12)
    loss = pu.ReverseKL(frozen, num_particles=8, vectorize_particles=True)  # as a posterior
    assert math.isfinite(loss.loss(pu.unlearn(model, erased=DATA.erased, plate="data"), guide,
                                   DATA.x, DATA.y))  # fmt: skip
    again = pu.laplace_unlearn(  # from the frozen original: the lazy way to serve a request
        model, pu.freeze(guide), DATA.x, DATA.y, erased=DATA.erased, plate="data"
    )
    torch.testing.assert_close(again.theta_star, result.theta_star, rtol=0, atol=0)
    torch.testing.assert_close(again.precision, result.precision, rtol=0, atol=0)
    # nothing of the original moved, and the unlearned guide registered nothing
    assert set(store.keys()) == set(before)
    for k, v in store.items():
        assert torch.equal(v.detach(), before[k]), k
    for k, v in guide.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(read_gaussian(guide)[0], loc)


def test_autonormal_original_is_untouched():
    guide = AutoNormal(model, init_scale=0.05)
    guide(DATA.x, DATA.y)
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store.items()}
    result = unlearn_linear(guide, curvature="ggn_diag")
    result.guide(DATA.x, DATA.y)
    Predictive(model, guide=result.guide, num_samples=3)(DATA.x)
    assert set(store.keys()) == set(before)
    for k, v in store.items():
        assert torch.equal(v.detach(), before[k]), k
    for unlearned in (result.guide, pu.freeze(result.guide, DATA.x, DATA.y)):
        new_loc, new_cov = read_gaussian(unlearned)
        torch.testing.assert_close(new_loc, result.theta_star)
        torch.testing.assert_close(new_cov.diagonal(), result.precision.reciprocal())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"retention": 0.0}, ValueError, "positive finite"),
        ({"retention": -0.5}, ValueError, "positive finite"),
        ({"retention": float("inf")}, ValueError, "positive finite"),
        ({"retention": float("nan")}, ValueError, "positive finite"),
        ({"retention": "big"}, TypeError, "retention"),
        ({"curvature": "kfac"}, ValueError, "curvature"),
        ({"repair": "yes"}, ValueError, "repair"),
        ({"repair": "clip", "floor": -1.0}, ValueError, "floor"),
        ({"curvature": "ggn_diag", "probes": 8}, ValueError, "probes"),
        ({"steps": 0}, ValueError, "steps"),
        ({"erased": [0, 100]}, IndexError, "out of range"),
        ({"erased": [-1]}, ValueError, "negative"),
        ({"erased": [0, 0]}, ValueError, "duplicate"),
        ({"erased": [0], "plate": "nope"}, ValueError, "plate"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    loc, precision = exact_posterior(torch.arange(len(DATA.y)))
    guide = mvn_guide(loc, precision)
    kwargs = {"erased": DATA.erased, "plate": "data", **kwargs}
    with pytest.raises(error, match=match):
        pu.laplace_unlearn(model, guide, DATA.x, DATA.y, **kwargs)


@pytest.mark.parametrize(
    "kind, match",
    [
        (AutoLowRankMultivariateNormal, "AutoMultivariateNormal"),
        (AutoDelta, "AutoDiagonalNormal or AutoNormal"),
        (AutoLaplaceApproximation, "laplace_approximation"),
    ],
)
def test_unsupported_guides_raise(kind, match):
    guide = kind(model)
    guide(DATA.x, DATA.y)
    with pytest.raises(TypeError, match=match):
        unlearn_linear(guide)


def test_structure_and_state_errors():
    with pytest.raises(ValueError, match="never been run"):
        unlearn_linear(AutoMultivariateNormal(model))
    guide = AutoNormal(model)
    guide(DATA.x, DATA.y)
    with pytest.raises(ValueError, match="diagonal precision"):
        unlearn_linear(guide, curvature="full")

    def subsampled_model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))
        with pyro.plate("data", len(x), subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(w * x[idx, 0], 1.0), obs=y[idx])

    subsampled = AutoMultivariateNormal(subsampled_model)
    subsampled(DATA.x, DATA.y)
    with pytest.raises(ValueError, match="subsample"):
        pu.laplace_unlearn(subsampled_model, subsampled, DATA.x, DATA.y, erased=[0], plate="data")
    with pytest.raises(TypeError, match="Bernoulli"):  # GGN needs a supported likelihood

        def student_model(x, y=None):
            w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))
            with pyro.plate("data", len(x)):
                pyro.sample("y", dist.StudentT(3.0, w * x[:, 0], 1.0), obs=y)

        pyro.clear_param_store()  # a second AutoNormal would rebind the first one's names
        student = AutoNormal(student_model)
        student(DATA.x, DATA.y)
        pu.laplace_unlearn(student_model, student, DATA.x, DATA.y, curvature="ggn_diag")


# -- 5. the trust verdict (diagnosed without D_r) ------------------------------------------------
def random_rows(seed, count=3):
    """``count`` random rows outside the informative cluster."""
    erased = torch.zeros(len(DATA.x), dtype=torch.bool)
    erased[10 + torch.randperm(90, generator=torch.Generator().manual_seed(seed))[:count]] = True
    return erased


@pytest.mark.parametrize("seed", range(2))
def test_exact_unlearning_of_a_random_erasure_is_trusted(seed):
    # q(θ|D) exact and L-BUN exact (linear-Gaussian): q_u is the target p̃ itself
    guide, erased = mvn_guide(*exact_posterior(slice(None))), random_rows(seed)
    result = pu.laplace_unlearn(
        model, guide, DATA.x, DATA.y, erased=erased, plate="data", diagnose_samples=400
    )
    d = result.trust
    assert result.verdict == "trusted", result.summary()
    assert d.num_samples == 400 and not d.pareto_k >= 0.5 and abs(d.kl) < 1e-6
    assert d.update_ess_fraction > 0.3  # three of 100 rows: a small update
    # L-BUN's precision test at μ_D counts: three rows carry a small share of the precision
    assert d.precision_positive_definite is True and 0.0 < d.precision_share < 0.5
    assert result.summary().startswith("trusted: ") and result.trust_row["verdict"] == "trusted"


def test_a_cluster_that_moved_the_fit_asks_to_retrain():
    # 20 of 100 rows shifted by 3: the exact answer, but far beyond q(θ|D)'s reach (≈ 37 nats)
    data = linear_regression(num_erased=20, shift=3.0, dtype=F64)
    rows = torch.ones(len(data.x), dtype=torch.bool)
    features = torch.cat([data.x, data.x.new_ones(len(data.x), 1)], dim=-1)
    loc, precision = gaussian_linear_posterior(
        torch.zeros(3, dtype=F64), PRIOR_PRECISION, features, data.y, data.noise_scale
    )
    guide = AutoMultivariateNormal(model)
    guide(data.x, data.y)
    write_gaussian(guide, loc, torch.linalg.inv(precision))
    result = pu.laplace_unlearn(model, guide, data.x, data.y, erased=data.erased, plate="data")
    assert result.converged and not result.repaired  # the method itself has no complaint
    assert result.verdict == "retrain", result.summary()  # q_u = p̃, but p̃ rests on tails
    assert result.trust.update_ess_fraction < 0.01
    assert "rests on q(θ|D)'s tails" in result.summary()
    rows[data.erased] = False  # and the answer is in fact exact: the verdict cannot know it
    retrained_loc = gaussian_linear_posterior(
        torch.zeros(3, dtype=F64), PRIOR_PRECISION, features[rows], data.y[rows], data.noise_scale
    )[0]
    torch.testing.assert_close(result.theta_star, retrained_loc, rtol=1e-8, atol=1e-8)


def test_a_repaired_precision_is_never_trusted():
    # q(θ|D) fitted to three other rows cannot have held the erased cluster
    guide, _, _ = never_observed_guide()
    with pytest.warns(UserWarning, match="repair='clip' raised"):
        result = unlearn_linear(guide, repair="clip", floor=0.5, diagnose_samples=200)
    assert result.repaired and result.verdict == "retrain"
    assert "repair='clip' raised 3 to 0.5: a stand-in" in result.summary()
    assert result.trust.precision_positive_definite is False  # the test at μ_D agrees
    assert result.trust.precision_share > 1.0


def test_an_unconverged_search_is_at_most_approximate():
    # one Newton step lands on θ* (the objective is quadratic), but the method cannot tell
    guide = mvn_guide(*exact_posterior(slice(None)))
    erased = random_rows(0)
    result = pu.laplace_unlearn(
        model, guide, DATA.x, DATA.y, erased=erased, plate="data", steps=1, diagnose_samples=200
    )
    assert not result.converged and result.trust.kl < 1e-6  # the diagnostics alone: trusted
    assert result.verdict == "approximate", result.summary()
    assert "θ* missed its tolerance after 1 newton steps" in result.summary()
    assert "the diagnostics alone: trusted" in result.summary()


def test_diagnose_false_skips_the_check():
    guide = mvn_guide(*exact_posterior(slice(None)))
    result = unlearn_linear(guide, diagnose=False)
    assert result.trust is None and result.verdict is None
    assert result.summary() == "not diagnosed: laplace_unlearn(..., diagnose=False)"
    row = result.trust_row
    assert row["verdict"] is None and math.isnan(row["pareto_k"]) and row["precision_share"] is None


def test_a_model_without_a_particle_plate_is_diagnosed_by_vmap():
    """The model cannot take the diagnostics' particle plate; they run it by vmap instead (it
    was 'not diagnosed'), and find the exact Laplace answer of a linear-Gaussian model at p̃."""

    def flat(x, y=None):  # reads the first particle's θ only: no particle plate possible
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        b = pyro.sample("b", dist.Normal(torch.zeros((), dtype=F64), 10.0))
        mean = x @ w.reshape(-1)[:2] + b.reshape(-1)[0]
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(mean, DATA.noise_scale), obs=y)

    guide = AutoMultivariateNormal(flat)
    guide(DATA.x, DATA.y)
    result = pu.laplace_unlearn(flat, guide, DATA.x, DATA.y, erased=random_rows(1), plate="data")
    assert result.converged and result.trust is not None and result.verdict is not None
    assert abs(result.trust.kl) < 1e-3  # exact: the Laplace answer is p̃ itself


def test_curvature_of_an_indexed_group_effect_with_a_learned_scale():
    """A hierarchical model's group effect read by index (``a[..., g]``) under a learned noise
    scale: torch's forward-over-reverse Hessian mixes dtypes in the index's backward ("Index put
    requires the source and destination dtypes match"); the curvature falls back to
    reverse-over-reverse and agrees with plain autograd's Hessian."""
    from pyro_unlearn.infer.curvature import ErasedLogLikelihood

    J, N = 3, 12
    g, y = torch.arange(N) % J, torch.randn(N)

    def model(g, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("groups", J):
            a = pyro.sample("a", dist.Normal(mu, 1.0))
        sigma = pyro.sample("sigma", dist.HalfCauchy(2.0))
        with pyro.plate("data", len(g)):
            pyro.sample("obs", dist.Normal(a[..., g], sigma), obs=y)

    guide = AutoNormal(model)
    guide(g, y)
    theta = 0.3 * torch.randn(J + 2)
    loglik = ErasedLogLikelihood(model, guide, g, y, erased=[0, 1, 3], plate="data")
    with pyro.validation_enabled(False):
        reference = -torch.autograd.functional.hessian(loglik, theta)
    full = loglik.curvature(theta, "full")
    assert torch.allclose(full, reference, atol=1e-4, rtol=1e-4)
    diagonal = loglik.curvature(theta, "diag")
    assert torch.allclose(diagonal, reference.diagonal(), atol=1e-4, rtol=1e-4)
    # erased rows 0, 1, 3 are groups 0, 1, 0: a_0 sees two of them, a_1 one, a_2 none
    sigma = torch.distributions.biject_to(dist.HalfCauchy(2.0).support)(theta[-1])
    assert torch.allclose(full.diagonal()[1:4], torch.tensor([2.0, 1.0, 0.0]) / sigma**2)


def test_lbfgs_names_an_unbounded_objective():
    """log p(D_e|θ) = −c e^{−2θ} (a Normal's noise scale e^θ on a residual): −G = −½θ² +
    c e^{−2θ} grows without bound as θ → −∞, faster than q(θ|D)'s Gaussian tail; L-BFGS's line
    search runs off to a non-finite value, named as an objective without a maximum."""
    from pyro_unlearn.exact import NotNormalizableError
    from pyro_unlearn.infer.lbun import LBUNObjective, lbfgs

    class Loglik:
        def __call__(self, theta):
            return -4.0 * torch.exp(-2.0 * theta).sum()

        def value_and_grad(self, theta):
            return self(theta), 8.0 * torch.exp(-2.0 * theta)

    objective = LBUNObjective(torch.zeros(2), torch.ones(2), 1.0, Loglik())
    with pytest.raises(NotNormalizableError, match="has no maximum: L-BFGS from μ_D ran off"):
        lbfgs(objective, 500, 1e-4)
