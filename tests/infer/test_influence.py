import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.linear_regression import linear_model
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.infer.influence import IndefiniteHessianError, influence_unlearn

F64 = torch.float64
# 100 points, the first 10 (an informative cluster) erased
DATA = linear_regression(dtype=F64, device=torch.get_default_device())
FEATURES = torch.cat([DATA.x, DATA.x.new_ones(len(DATA.x), 1)], dim=-1)  # θ = (w, b)
PRIOR_PRECISION = torch.eye(3, dtype=F64) / 100.0  # linear_model's N(0, 10²) prior
KEEP = DATA.remaining
D_R = (DATA.x[KEEP], DATA.y[KEEP])
D_E = (DATA.x[DATA.erased], DATA.y[DATA.erased])


def model(x, y=None):
    return linear_model(x, y, DATA.noise_scale)


def batched_model(x, y, idx=None, size=None):
    """linear_model with a subsampling plate: mini-batch b of D_r is (x_b, y_b, idx_b, |D_r|)."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, 10.0).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(zero, 10.0))
    with pyro.plate("data", size or len(x), subsample=idx):
        pyro.sample("y", dist.Normal((w * x).sum(-1) + b, DATA.noise_scale), obs=y)


def exact_posterior(rows):
    """The exact p(θ|D[rows]) as (loc, precision)."""
    return gaussian_linear_posterior(
        torch.zeros(3, dtype=F64), PRIOR_PRECISION, FEATURES[rows], DATA.y[rows], DATA.noise_scale
    )


FULL = exact_posterior(torch.arange(len(DATA.y)))
REMAINING = exact_posterior(KEEP)


def mvn_guide(loc, precision):
    """A live AutoMultivariateNormal holding N(loc, precision⁻¹) in its parameters."""
    guide = AutoMultivariateNormal(model)
    guide(*D_E)
    return write_gaussian(guide, loc, torch.linalg.inv(precision))


def mean_field_guide(kind, loc, precision):
    """AutoNormal / AutoDiagonalNormal at the mean-field optimum for N(loc, precision⁻¹): the
    exact mean, variances 1 / diag(precision)."""
    guide = kind(model)
    guide(*D_E)
    scale = precision.diagonal().rsqrt()
    if kind is AutoNormal:
        guide.locs.w, guide.locs.b = loc[:2].clone(), loc[2].clone()
        guide.scales.w, guide.scales.b = scale[:2].clone(), scale[2].clone()
    else:
        with torch.no_grad():
            guide.loc.copy_(loc)
        guide.scale = scale.clone()
    held_loc, held_cov = read_gaussian(guide)
    assert torch.allclose(held_loc, loc) and torch.allclose(held_cov.diagonal(), scale**2)
    return guide


def relative_error(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def unlearn_linear(guide, **kwargs):
    return influence_unlearn(
        model,
        guide,
        DATA.x,
        DATA.y,
        remaining=D_R,
        erased=DATA.erased,
        plate="data",
        progress=False,
        **kwargs,
    )


# -- acceptance: one step lands on the exact D_r posterior mean ------------------------------------
@pytest.mark.parametrize("antithetic, tol", [(True, 1e-9), (False, 0.05)])
def test_one_step_reaches_exact_remaining_mean_full_covariance(antithetic, tol):
    guide = mvn_guide(*FULL)  # q(θ|D) = p(θ|D) exactly
    result = unlearn_linear(guide, antithetic=antithetic, seed=0)
    loc, cov = read_gaussian(result.posterior)
    target_loc, target_precision = REMAINING
    # the bar is 5 %; with antithetic pairs the mean update is exact: −ELBO is quadratic
    # in the mean and every term linear in ε cancels, so H_r's mean block is Λ_r
    assert relative_error(loc, target_loc) < tol
    assert relative_error(read_gaussian(guide)[0], target_loc) > 0.01  # there was a way to go
    # the covariance moves towards the D_r posterior's (not exact: log det is not quadratic)
    target_cov = target_precision.inverse()
    before = relative_error(FULL[1].inverse(), target_cov)
    assert relative_error(cov, target_cov) < 0.5 * before
    assert result.steps == 1 and result.num_batches == 1 and result.model_evaluations == 1
    assert result.iterations[0] <= 15 and result.residuals[0] <= 1e-7  # 15 parameters
    assert result.hessian_vector_products == result.iterations[0]
    assert result.solver == "cg" and result.lissa_scale is None
    assert result.converged


@pytest.mark.parametrize("kind", [AutoNormal, AutoDiagonalNormal])
def test_one_step_mean_field_guides(kind):
    # the mean-field optimum on a Gaussian posterior has the exact mean, and H_r's mean block
    # is the full Λ_r (the locs are coupled through the likelihood): one step is exact
    result = unlearn_linear(mean_field_guide(kind, *FULL), seed=1)
    assert relative_error(read_gaussian(result.posterior)[0], REMAINING[0]) < 1e-9
    assert type(result.posterior.guide).__name__ == kind.__name__


def test_hand_written_guide_with_pyro_param():
    loc, precision = FULL

    def guide(x, y=None):
        q_loc = pyro.param("q_loc", loc.clone())
        q_tril = pyro.param(
            "q_tril",
            torch.linalg.cholesky(precision.inverse()),
            constraint=dist.constraints.lower_cholesky,
        )
        theta = pyro.sample(
            "theta", dist.MultivariateNormal(q_loc, scale_tril=q_tril), infer={"is_auxiliary": True}
        )
        pyro.sample("w", dist.Delta(theta[..., :2], event_dim=1))
        pyro.sample("b", dist.Delta(theta[..., 2]))

    guide(*D_E)
    result = influence_unlearn(model, guide, *D_E, remaining=D_R, progress=False, seed=2)
    assert sorted(result.step) == ["q_loc", "q_tril"]
    torch.testing.assert_close(loc + result.step["q_loc"], REMAINING[0], rtol=1e-9, atol=1e-9)
    with result.posterior.context():
        torch.testing.assert_close(pyro.param("q_loc"), REMAINING[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pyro.param("q_loc").detach(), loc)  # the live one stayed


def test_two_steps_correct_an_unconverged_guide():
    # q(θ|D) off the ELBO optimum: BIF's premise ∇F_r = −∇h fails and one step carries the
    # training error along; the second step is Newton on F_r itself and lands on the D_r mean
    loc, precision = FULL
    guide = mvn_guide(loc + 0.02, precision)
    one = unlearn_linear(guide, seed=3)
    two = unlearn_linear(guide, steps=2, seed=3)
    assert one.gradient_mismatch > 0.1
    assert relative_error(read_gaussian(one.posterior)[0], REMAINING[0]) > 1e-3
    assert relative_error(read_gaussian(two.posterior)[0], REMAINING[0]) < 1e-9
    assert len(two.iterations) == 2 and two.model_evaluations == 2


# -- the trust verdict -----------------------------------------------------------------------------
def unlearn_rows(erased, **kwargs):
    return influence_unlearn(
        model,
        mvn_guide(*FULL),
        DATA.x,
        DATA.y,
        remaining=(DATA.x[~erased], DATA.y[~erased]),
        erased=erased,
        plate="data",
        progress=False,
        **kwargs,
    )


def random_rows(seed, count, low=0):
    erased = torch.zeros(len(DATA.x), dtype=torch.bool)
    rows = torch.randperm(len(DATA.x) - low, generator=torch.Generator().manual_seed(seed))
    erased[low + rows[:count]] = True
    return erased


@pytest.mark.parametrize("seed", range(2))
def test_one_step_on_a_small_random_erasure_is_trusted(seed):
    # three rows outside the cluster: one step is near exact (the mean exactly), and says so
    result = unlearn_rows(random_rows(seed, 3, low=10), seed=seed, diagnose_samples=400)
    assert result.verdict == "trusted", result.summary()
    assert result.trust.pareto_k < 0.5 and result.trust.kl < 0.01
    assert result.trust.update_pareto_k < 0.5 and result.trust.num_samples == 400


@pytest.mark.parametrize("seed", range(2))
def test_one_first_order_step_on_a_large_erasure_is_never_trusted(seed):
    # 70 of 100 rows carry ≈ 70 % of the precision: the update's k̂ ≈ 0.7 ≥ 0.5
    erased = random_rows(seed, 70)
    one = unlearn_rows(erased, seed=seed, diagnose_samples=400)
    assert one.trust.update_pareto_k >= 0.5
    assert one.verdict != "trusted" and "BIF's one step is first-order" in one.summary()
    # (a second Newton step from there often meets an indefinite H_r: the first step went far)


def test_diagnose_false_skips_the_check():
    result = unlearn_linear(mvn_guide(*FULL), seed=0, diagnose=False)
    assert result.verdict is None and result.trust is None
    assert result.summary() == "not diagnosed: influence_unlearn(..., diagnose=False)"


# -- mini-batches of D_r ---------------------------------------------------------------------------
@pytest.mark.parametrize("retain_graph", [True, False])
def test_mini_batches_give_the_full_batch_step(retain_graph):
    guide = mvn_guide(*FULL)
    whole = influence_unlearn(batched_model, guide, *D_E, remaining=D_R, progress=False, seed=4)
    size = len(KEEP)
    parts = [torch.arange(0, 50), torch.arange(50, 80), torch.arange(80, size)]  # uneven
    batches = [(D_R[0][i], D_R[1][i], i, size) for i in parts]
    result = influence_unlearn(
        batched_model,
        guide,
        *D_E,
        remaining=batches,
        progress=False,
        seed=4,
        retain_graph=retain_graph,
    )
    # the same ε for every mini-batch, weighted by its share of D_r: F_r exactly
    for name, step in whole.step.items():
        torch.testing.assert_close(result.step[name], step, rtol=1e-9, atol=1e-12)
    assert result.num_batches == 3
    passes = 1 if retain_graph else 1 + result.hessian_vector_products
    assert result.model_evaluations == 3 * passes


def test_batches_without_subsampling_are_refused():
    guide = mvn_guide(*FULL)
    halves = [(D_R[0][:45], D_R[1][:45]), (D_R[0][45:], D_R[1][45:])]
    with pytest.raises(ValueError, match="subsamples no plate"):
        influence_unlearn(model, guide, *D_E, remaining=halves, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        influence_unlearn(model, guide, *D_E, remaining=iter(halves), progress=False)


# -- solvers ---------------------------------------------------------------------------------------
def normal_mean_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("lissa_scale", [None, 4.0])
def test_cg_and_lissa_agree(lissa_scale):
    y = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    guide = AutoNormal(normal_mean_model, init_scale=0.5)
    guide(y)
    guide.locs.mu = torch.tensor(3.5 / 4, dtype=F64)  # p(µ|D) mean, y_e = 2 erased
    kwargs = dict(progress=False, seed=5)
    cg = influence_unlearn(normal_mean_model, guide, y[2:], remaining=(y[:2],), **kwargs)
    lissa = influence_unlearn(
        normal_mean_model,
        guide,
        y[2:],
        remaining=(y[:2],),
        solver="lissa",
        lissa_scale=lissa_scale,
        lissa_depth=200,
        **kwargs,
    )
    for name, step in cg.step.items():
        torch.testing.assert_close(lissa.step[name], step, rtol=1e-8, atol=1e-10)
    # p(µ|D_r) has mean 1.5 / 3: the loc step is exact for both
    assert abs(float(cg.step["AutoNormal.locs.mu"]) - (0.5 - 3.5 / 4)) < 1e-12
    assert lissa.lissa_scale == pytest.approx(lissa_scale or 1.1 * 3.0, rel=1e-3)
    assert lissa.iterations == [200] and lissa.residuals[0] < 1e-8


def test_cg_that_stops_early_warns():
    with pytest.warns(UserWarning, match="raise cg_max_iter"):
        result = unlearn_linear(mvn_guide(*FULL), cg_max_iter=2)
    assert result.iterations == [2] and result.residuals[0] > 1e-7
    assert not result.converged  # the solve missed cg_tol


# -- the original guide ----------------------------------------------------------------------------
def test_original_guide_and_param_store_untouched_and_restore():
    guide = mvn_guide(*FULL)
    store = pyro.get_param_store()
    before = {name: value.detach().clone() for name, value in store.named_parameters()}
    rng = torch.get_rng_state()
    result = unlearn_linear(guide, seed=6)
    after = dict(store.named_parameters())
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        assert torch.equal(after[name].detach(), value), name
    assert torch.equal(torch.get_rng_state(), rng)  # fixed seeds in a forked RNG
    assert torch.equal(read_gaussian(guide)[0], FULL[0])
    assert isinstance(result.posterior, pu.FrozenPosterior)
    assert result.guide is result.posterior  # the name the README used first
    # the unlearned posterior written into the live guide
    result.posterior.restore(guide)
    torch.testing.assert_close(read_gaussian(guide)[0], REMAINING[0], rtol=1e-9, atol=1e-9)


def test_frozen_posterior_as_input():
    guide = mvn_guide(*FULL)
    frozen = pu.freeze(guide)
    live = unlearn_linear(guide, seed=7)
    lazy = unlearn_linear(frozen, seed=7)
    for name, step in live.step.items():
        torch.testing.assert_close(lazy.step[name], step, rtol=1e-12, atol=1e-14)
    assert torch.equal(read_gaussian(frozen)[0], FULL[0])
    assert lazy.verdict is not None and lazy.trust == live.trust  # the same q(θ|D) diagnosed


# -- errors ----------------------------------------------------------------------------------------
def squared_model(y):
    theta = pyro.sample("theta", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta**2, 0.3), obs=y)


def test_indefinite_hessian_is_reported_and_damping_helps():
    # y ≈ θ² with y ≈ 4: −log p(D_r|θ) is concave at θ = 0, where the guide sits
    y = torch.tensor([4.0, 4.2, 3.9], dtype=F64)
    guide = AutoNormal(squared_model, init_scale=0.1)
    guide(y)
    with pytest.raises(IndefiniteHessianError, match="not positive definite.*damping"):
        influence_unlearn(squared_model, guide, y[2:], remaining=(y[:2],), progress=False, seed=8)
    result = influence_unlearn(
        squared_model, guide, y[2:], remaining=(y[:2],), progress=False, seed=8, damping=1e4
    )
    assert result.residuals[0] <= 1e-7


def test_remaining_is_a_keyword():
    # the entry points share forget's order, (model, guide, *args, erased=, plate=): D_r is named
    with pytest.raises(TypeError, match="remaining"):
        influence_unlearn(model, mvn_guide(*FULL), D_R, *D_E, progress=False)


def test_erased_index_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        influence_unlearn(
            model, mvn_guide(*FULL), DATA.x, DATA.y, remaining=D_R, erased=[200], plate="data"
        )


def test_guide_without_parameters():
    def guide(x, y=None):
        pyro.sample("w", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("b", dist.Normal(x.new_zeros(()), 1.0))

    with pytest.raises(ValueError, match="no parameters"):
        influence_unlearn(model, guide, *D_E, remaining=D_R, progress=False)


def test_untrained_guides_are_refused():
    def guide(x, y=None):
        loc = pyro.param("never_run_loc", x.new_zeros(3))
        pyro.sample("w", dist.Normal(loc[:2], 1.0).to_event(1))
        pyro.sample("b", dist.Normal(loc[2], 1.0))

    with pytest.raises(ValueError, match="not in the param store"):
        influence_unlearn(model, guide, *D_E, remaining=D_R, progress=False)
    assert "never_run_loc" not in pyro.get_param_store()
    with pytest.raises(ValueError, match="never been run"):
        influence_unlearn(model, AutoNormal(model), *D_E, remaining=D_R, progress=False)


def test_non_reparameterised_guide_site():
    def discrete_model(y):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        k = pyro.sample("k", dist.Bernoulli(p))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(k, 1.0), obs=y)

    def guide(y):
        a = pyro.param("a", torch.tensor(2.0), constraint=dist.constraints.positive)
        pyro.sample("p", dist.Beta(a, 2.0))
        pyro.sample("k", dist.Bernoulli(0.5))

    y = torch.tensor([0.0, 1.0])
    guide(y)
    with pytest.raises(TypeError, match="'k'.*not reparameterised"):
        influence_unlearn(discrete_model, guide, y[1:], remaining=(y[:1],), progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"solver": "newton"}, ValueError, "solver must be one of"),
        ({"num_particles": 7}, ValueError, "must be even"),
        ({"damping": -1.0}, ValueError, "damping must be"),
        ({"steps": 0}, ValueError, "steps must be a positive integer"),
        ({"lissa_scale": 0.0}, ValueError, "lissa_scale must be positive"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        influence_unlearn(model, mvn_guide(*FULL), *D_E, remaining=D_R, progress=False, **kwargs)


def test_a_model_without_a_particle_plate_is_refused_up_front():
    """Pyro's regression tutorial model (``PyroModule[nn.Linear]`` with ``PyroSample`` weights)
    cannot take BIF's particle plate: a ValueError naming that, not torch's "t() expects a
    tensor with <= 2 dimensions" from inside the solve."""
    from pyro.nn import PyroModule, PyroSample
    from torch import nn

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)

    model = Regression()
    x, y = torch.randn(10, 3), torch.randn(10)
    guide = AutoNormal(model)
    guide(x, y)
    with pytest.raises(ValueError, match="draws θ in a pyro.plate of particles, which the mod"):
        influence_unlearn(model, guide, x[:2], y[:2], remaining=(x[2:], y[2:]), num_particles=4)
