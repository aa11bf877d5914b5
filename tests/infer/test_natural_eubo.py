"""gaussian_eubo: the EUBO's natural-gradient solver, checked against the closed form of the
conjugate linear regression and against pu.forget's SGD EUBO on a logistic regression."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

import pyro_unlearn as pu
from pyro_unlearn.exact import NotNormalizableError
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.infer.natural import NaturalGradientResult
from pyro_unlearn.infer.natural_eubo import NaturalEUBOResult, gaussian_eubo
from pyro_unlearn.metrics import gaussian_kl


def run(model, guide, x, y, erased, **options):
    options = {"progress": False, "diagnose": False, **options}
    return gaussian_eubo(model, guide, x, y, erased=erased, plate="data", **options)


def test_one_step_lands_on_the_exact_division(linreg, model, trained, exact_target):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    before = float(gaussian_kl(*read_gaussian(guide), loc, cov))
    result = run(
        model, guide, linreg.x, linreg.y, linreg.erased, step_size=1.0, num_steps=1, num_samples=8
    )
    after = float(gaussian_kl(*read_gaussian(result.posterior), loc, cov))
    assert before > 0.5  # the erased cluster is informative
    assert after < 1e-5, (before, after)  # ℓ is quadratic: Bonnet/Price estimates are exact
    assert isinstance(result, NaturalEUBOResult) and isinstance(result, NaturalGradientResult)
    assert torch.allclose(read_gaussian(guide)[1], result.covariance)
    assert result.num_steps == 1 and result.step_sizes == [1.0] and result.shrunk == 0
    # L-BUN's test in expectation: the erased curvature takes a share of Λ_D, not all of it
    assert 0.0 < result.precision_margin < 1.0


def test_damped_steps_converge_to_the_same_division(linreg, model, trained, exact_target):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    result = run(model, guide, linreg.x, linreg.y, linreg.erased, step_size=0.3, num_samples=100)
    assert result.converged
    assert float(gaussian_kl(*read_gaussian(result.posterior), loc, cov)) < 1e-4
    assert result.losses[-1] < result.losses[0]  # the EUBO went down from q(θ|D)


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoDiagonalNormal])
def test_mean_field_reaches_the_mean_field_optimum(
    guide_cls, linreg, model, exact_posterior, exact_target
):
    exact = exact_posterior(torch.arange(len(linreg.x)))
    guide = guide_cls(model)
    guide(linreg.x, linreg.y)
    write_gaussian(guide, exact.loc, scale=exact.precision_matrix.diagonal() ** -0.5)
    loc, cov = exact_target(guide)  # p̃ = N(loc, cov), correlated
    # argmin over mean-field q of KL(q ‖ p̃): p̃'s mean, and variances 1 / diag(p̃'s precision)
    sd = torch.linalg.inv(cov).diagonal().rsqrt()
    start = read_gaussian(guide)[0].clone()
    result = run(model, guide, linreg.x, linreg.y, linreg.erased, num_samples=200)
    got_loc, got_sd = read_gaussian(result.posterior, diagonal=True)
    assert float(((start - loc) / sd).abs().max()) > 1.0  # the erasure moves the means
    assert float(((got_loc - loc) / sd).abs().max()) < 0.05
    assert float((got_sd / sd - 1).abs().max()) < 0.03
    assert bool((result.covariance == torch.diag_embed(result.covariance.diagonal())).all())
    assert result.converged


def test_a_non_normalisable_division_changes_nothing(linreg, model):
    guide = AutoMultivariateNormal(model)
    guide(linreg.x, linreg.y)
    write_gaussian(guide, torch.zeros(3), 100.0 * torch.eye(3))  # the prior: D_e was never in it
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with pytest.raises(NotNormalizableError, match="not positive definite.*L-BUN"):
        run(model, guide, linreg.x, linreg.y, linreg.erased, num_samples=100)
    after = dict(pyro.get_param_store().items())
    assert set(after) == set(store)
    assert all(torch.equal(after[k].detach(), v) for k, v in store.items())


# -- a non-conjugate model: logistic regression, against the SGD path -----------------------------
def logistic_model(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=(w * x).sum(-1) + b), obs=y)


@pytest.fixture(scope="module")
def logistic():
    """200 rows, an AutoMultivariateNormal fitted to all of them (state dict), 30 erased."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=generator)
    logits = x @ torch.tensor([1.5, -1.0]) + 0.3
    y = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(logistic_model)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / 1500)})
    svi = SVI(logistic_model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(1500):
        svi.step(x, y)
    state = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    return x, y, state


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_agrees_with_the_sgd_eubo(logistic, lam):
    x, y, state = logistic
    guide = AutoMultivariateNormal(logistic_model)
    guide(x, y)
    guide.load_state_dict(state)
    posterior = pu.freeze(guide)
    erased = torch.arange(30)
    kwargs = {"posterior": posterior, "lam": lam}
    natural = run(logistic_model, guide, x, y, erased, **kwargs)  # its defaults: S = 256
    natural_moments = tuple(t.clone() for t in read_gaussian(natural.posterior))
    sgd = pu.forget(
        logistic_model, guide, x, y, method="eubo", num_particles=256, num_steps=3000, lr=0.005,
        erased=erased, plate="data", progress=False, diagnose=False, **kwargs,
    )  # fmt: skip
    sgd_moments = read_gaussian(sgd.posterior)
    moved = float(gaussian_kl(*read_gaussian(posterior), *sgd_moments))
    between = float(gaussian_kl(*natural_moments, *sgd_moments))
    assert natural.converged and sgd.converged
    assert moved > 0.1  # ≈ 0.28 (λ = 0) and 0.16 (λ = 0.1): the erasure matters
    assert between < 0.01 and between < 0.1 * moved, (between, moved)  # ≈ 0.001-0.002
    assert natural.likelihood == "fused"


def test_dtype_and_device_follow_the_guide(device):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_zeros(1), 10.0).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu[..., 0], 1.0), obs=y)

    y = torch.arange(10.0, dtype=torch.float64, device=device) / 10
    guide = AutoMultivariateNormal(model)
    guide(y)
    write_gaussian(guide, y.mean(0, keepdim=True), y.new_ones(1, 1) / 10)
    result = gaussian_eubo(
        model, guide, y, erased=[0, 1], plate="data", step_size=1.0, num_steps=1, num_samples=4,
        progress=False, diagnose=False,
    )  # fmt: skip
    loc, cov = read_gaussian(result.posterior)
    assert loc.dtype == cov.dtype == result.loc.dtype == torch.float64
    assert loc.device == result.covariance.device == y.device
    # q(μ|y)/p(y[:2]|μ): precision 10 − 2 = 8, mean (10·0.45 − 0.1)/8 = 0.55
    assert abs(float(loc) - 0.55) < 1e-10 and abs(float(cov) - 0.125) < 1e-10


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_samples": 101}, ValueError, "even"),
        ({"num_samples": 6}, ValueError, "at least 8"),
        ({"step_size": 0.0}, ValueError, "step_size"),
        ({"step_size": 1.5}, ValueError, "step_size"),
        ({"step_size": True}, TypeError, "step_size"),
        ({"lam": 2.0}, ValueError, "lam"),
        ({"progress": 1}, TypeError, "progress"),
    ],
)
def test_bad_options_are_refused(linreg, model, trained, options, error, match):
    guide = trained(AutoMultivariateNormal)
    before = read_gaussian(guide)[0].clone()
    with pytest.raises(error, match=match):
        run(model, guide, linreg.x, linreg.y, linreg.erased, **options)
    assert torch.equal(read_gaussian(guide)[0], before)


@pytest.mark.parametrize("guide_cls", [AutoLowRankMultivariateNormal, pu.freeze])
def test_guides_it_cannot_hold_are_refused(linreg, model, guide_cls):
    guide = AutoNormal(model) if guide_cls is pu.freeze else guide_cls(model)
    guide(linreg.x, linreg.y)
    guide = pu.freeze(guide) if guide_cls is pu.freeze else guide
    with pytest.raises(TypeError, match="gaussian_eubo"):
        run(model, guide, linreg.x, linreg.y, linreg.erased)


def test_diagnosed_against_its_target(linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    result = run(
        model, guide, linreg.x, linreg.y, linreg.erased, step_size=1.0, num_steps=1, num_samples=8,
        diagnose=True,
    )  # fmt: skip
    # q_u is the exact division: the trust check sees q_u matching p̃
    assert result.trust.pareto_k < 0.5 and result.trust.kl < 1e-3, result.summary()
    assert result.verdict in ("trusted", "approximate")
    assert not result.converged  # one step cannot fill two windows: not vouched for as converged
    assert "still moved" in result.explanation or result.verdict == "approximate"


def test_a_non_finite_draw_is_counted_once():
    # exp(μ)·1e39 overflows float32: log p(D_e|θ) and its gradient are both non-finite at every
    # draw, which is counted once per draw, not once per quantity
    def overflowing(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu.exp()[..., None] * 1e39, 1.0), obs=y)

    y = torch.zeros(5)
    guide = AutoNormal(overflowing)
    guide(y)
    options = {"erased": [0], "plate": "data", "progress": False, "diagnose": False}
    with pytest.raises(ValueError, match="not finite at 64 of 64 draws"):
        gaussian_eubo(overflowing, guide, y, num_samples=64, **options)
