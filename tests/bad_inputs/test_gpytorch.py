"""Bad inputs to the GPyTorch objectives, the inducing-point helpers and PyroSVGP: each is refused
with an error that names it, and leaves the GP (its state dict), the frozen q(u|D) and the param
store bit-identical."""

from __future__ import annotations

import gpytorch
import pyro
import pytest
import torch

from pyro_unlearn.contrib import gpytorch as pug

NAN, INF = float("nan"), float("inf")


class GP(gpytorch.models.ApproximateGP):
    def __init__(self, z):
        q = gpytorch.variational.CholeskyVariationalDistribution(z.shape[-2])
        super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.RBFKernel()

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _with(value, row, entry):
    value = value.clone()
    value[row] = entry
    return value


@pytest.fixture
def setup():
    """A trained-looking SVGP on 1-D inputs (N,), its likelihood, its frozen q(u|D), D_e."""
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 20)
    gp = GP(x[::4].clone().unsqueeze(-1))
    gp(x)  # initialises q(u)
    with torch.no_grad():
        q = gp.variational_strategy._variational_distribution
        q.variational_mean.normal_()
        q.chol_variational_covar.mul_(0.1)  # as narrow as data make it: D_e can be divided out
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    return gp, likelihood, pug.freeze_inducing(gp), x[:5], torch.sin(6 * x[:5])


@pytest.fixture
def guarded(unchanged):
    """``with guarded(gp, posterior):`` the unchanged guard, the GP by its state dict."""
    return lambda gp, posterior: unchanged(gp, posterior)


# -- constructing the objectives ---------------------------------------------------------------
OPTIONS = [
    ("eubo", {"num_erased": 0}, ValueError, "num_erased must be a positive integer"),
    ("eubo", {"num_erased": 2.5}, TypeError, "num_erased must be a positive integer"),
    ("eubo", {"num_erased": "5"}, TypeError, "num_erased must be a positive integer"),
    ("eubo", {"num_erased": 5, "num_samples": 0}, ValueError, "num_samples must be"),
    ("eubo", {"num_erased": 5, "num_samples": -1}, ValueError, "num_samples must be"),
    ("eubo", {"num_erased": 5, "num_samples": 2.7}, TypeError, "num_samples must be"),
    ("eubo", {"num_erased": 5, "lam": NAN}, ValueError, "lam must be"),
    ("eubo", {"num_erased": 5, "lam": 2.0}, ValueError, "lam must be"),
    ("eubo", {"num_erased": 5, "lam": "0.1"}, TypeError, "lam must be"),
    ("eubo", {"num_erased": 5, "combine_terms": "no"}, TypeError, "combine_terms must be a bool"),
    ("eubo", {"num_erased": 5, "num_data": 20}, ValueError, "num_data=20 but num_erased=5"),
    ("rkl", {"num_erased": 5, "num_data": 0}, ValueError, "num_data must be a positive"),
    ("eubo", {"num_erased": 5, "beta": 0.0}, ValueError, "beta must be a positive"),
    ("eubo", {"num_erased": 5, "beta": "1"}, TypeError, "beta must be a positive"),
    ("rkl", {"num_erased": 5, "chunk_size": 0}, ValueError, "chunk_size must be a positive"),
    ("rkl", {"num_erased": 5, "chunk_size": -3}, ValueError, "chunk_size must be a positive"),
    ("rkl", {"num_erased": 5, "chunk_size": 1.5}, TypeError, "chunk_size must be a positive"),
    ("rkl", {"num_erased": 5, "num_samples": 0}, ValueError, "num_samples must be"),
    ("rkl", {"num_erased": 5, "proposal": "prior"}, ValueError, "proposal must be"),
    ("rkl", {"num_erased": 5, "anneal": 0.5}, ValueError, "needs proposal='current'"),
    ("rkl", {"num_erased": 5, "proposal": "current", "anneal": 1.5}, ValueError, "anneal"),
    ("rkl", {"num_erased": 5, "proposal": "current", "anneal": "a"}, TypeError, "anneal"),
    ("rkl", {"num_erased": 5, "proposal": "current", "anneal": NAN}, ValueError, "anneal"),
]


@pytest.mark.parametrize(
    "kind, options, error, match",
    OPTIONS,
    ids=[f"{k}-{'-'.join(f'{a}={v}' for a, v in o.items())}" for k, o, _, _ in OPTIONS],
)
def test_objective_options_are_named(setup, guarded, kind, options, error, match):
    gp, likelihood, posterior, _, _ = setup
    cls = pug.VariationalEUBO if kind == "eubo" else pug.VariationalReverseKL
    with guarded(gp, posterior), pytest.raises(error, match=match):
        cls(likelihood, gp, posterior, **options)


def test_a_posterior_of_another_gp_is_refused(setup, guarded):
    gp, likelihood, posterior, x, _ = setup
    other = GP(torch.linspace(0, 1, 7).unsqueeze(-1))
    other(x)
    with guarded(other, posterior), pytest.raises(ValueError, match=r"shape \(5,\), this GP"):
        pug.VariationalReverseKL(likelihood, other, posterior, num_erased=5)


# -- calling them on a batch -------------------------------------------------------------------
def _eubo_nan_x(gp, lik, post, x, y):
    x = _with(x, 2, NAN)
    return pug.VariationalEUBO(lik, gp, post, num_erased=5)(gp(x), y, inputs=x)


def _eubo_inf_y(gp, lik, post, x, y):
    y = _with(y, 3, INF)
    return pug.VariationalEUBO(lik, gp, post, num_erased=5)(gp(x), y, inputs=x)


def _eubo_lam_nan_y(gp, lik, post, x, y):
    y = _with(y, 1, NAN)
    return pug.VariationalEUBO(lik, gp, post, num_erased=5, lam=1e-3)(gp(x), y, inputs=x)


def _eubo_nan_output(gp, lik, post, x, y):  # no inputs: the output is what is named
    return pug.VariationalEUBO(lik, gp, post, num_erased=5)(gp(_with(x, 4, NAN)), y)


def _rkl_nan_x(gp, lik, post, x, y):
    return pug.VariationalReverseKL(lik, gp, post, num_erased=5)(None, y, inputs=_with(x, 2, NAN))


def _rkl_nan_y(gp, lik, post, x, y):
    return pug.VariationalReverseKL(lik, gp, post, num_erased=5)(None, _with(y, 0, NAN), inputs=x)


def _eubo_batch_larger(gp, lik, post, x, y):
    return pug.VariationalEUBO(lik, gp, post, num_erased=3)(gp(x), y, inputs=x)


def _eubo_target_short(gp, lik, post, x, y):
    return pug.VariationalEUBO(lik, gp, post, num_erased=5)(gp(x), y[:4], inputs=x)


def _eubo_output_short(gp, lik, post, x, y):
    return pug.VariationalEUBO(lik, gp, post, num_erased=5, lam=1e-3)(gp(x[:4]), y, inputs=x)


def _eubo_no_output(gp, lik, post, x, y):
    return pug.VariationalEUBO(lik, gp, post, num_erased=5)(None, y, inputs=x)


def _eubo_lam_no_inputs(gp, lik, post, x, y):  # an output that does not carry its inputs
    with gpytorch.settings.lazily_evaluate_kernels(False):
        output = gp(x)
    return pug.VariationalEUBO(lik, gp, post, num_erased=5, lam=1e-3)(output, y)


def _rkl_inputs_short(gp, lik, post, x, y):
    return pug.VariationalReverseKL(lik, gp, post, num_erased=5)(None, y, inputs=x[:4])


def _rkl_wrong_features(gp, lik, post, x, y):
    return pug.VariationalReverseKL(lik, gp, post, num_erased=5)(None, y, inputs=torch.zeros(5, 3))


def _rkl_part_of_d_e(gp, lik, post, x, y):
    return pug.VariationalReverseKL(lik, gp, post, num_erased=5)(None, y[:4], inputs=x[:4])


def _rkl_target_batched(gp, lik, post, x, y):
    y2 = torch.stack([y, y])
    return pug.VariationalReverseKL(lik, gp, post, num_erased=5)(None, y2, inputs=x)


CALLS = [
    (_eubo_nan_x, r"inputs has a non-finite value \(nan\) at row 2"),
    (_eubo_inf_y, r"target has a non-finite value \(inf\) at row 3"),
    (_eubo_lam_nan_y, r"target has a non-finite value \(nan\) at row 1"),
    (_eubo_nan_output, r"output .* non-finite value \(nan\) at row 4"),
    (_rkl_nan_x, r"inputs has a non-finite value \(nan\) at row 2"),
    (_rkl_nan_y, r"target has a non-finite value \(nan\) at row 0"),
    (_eubo_batch_larger, "5 points, more than num_erased=3"),
    (_eubo_target_short, "inputs have 5 points, target 4"),
    (_eubo_output_short, "output .* has 4 points, target 5"),
    (_eubo_no_output, r"needs the GP's q\(f\)"),
    (_eubo_lam_no_inputs, "inputs=x_b"),
    (_rkl_inputs_short, "inputs have 4 points, target 5"),
    (_rkl_wrong_features, "inputs have 3 features"),
    (_rkl_part_of_d_e, "all of D_e"),
    (_rkl_target_batched, r"target has shape \(2, 5\)"),
]


@pytest.mark.parametrize("call, match", CALLS, ids=[c.__name__[1:] for c, _ in CALLS])
def test_bad_batches_are_named(setup, guarded, call, match):
    gp, likelihood, posterior, x, y = setup
    with guarded(gp, posterior), pytest.raises(ValueError, match=match):
        call(gp, likelihood, posterior, x, y)


def test_rkl_checks_new_data_once_and_every_step_under_validation(setup):
    """The rKL's finiteness check runs once per distinct D_e (as its cached algebra) without
    validation; an in-place change of D_e is a new D_e."""
    gp, likelihood, posterior, x, y = setup
    rkl = pug.VariationalReverseKL(likelihood, gp, posterior, num_erased=5)
    x, y = x.clone(), y.clone()
    with pyro.validation_enabled(False):
        assert torch.isfinite(rkl(None, y, inputs=x)).all()
        y[1] = NAN  # in place: bumps the tensor's version
        with pytest.raises(ValueError, match=r"target has a non-finite value \(nan\) at row 1"):
            rkl(None, y, inputs=x)


def test_eubo_skips_the_finiteness_pass_without_validation(setup):
    gp, likelihood, posterior, x, y = setup
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=5)
    y = _with(y, 0, NAN)
    with pyro.validation_enabled(False):
        assert torch.isnan(eubo(gp(x), y, inputs=x))
    with pytest.raises(ValueError, match="non-finite"):
        eubo(gp(x), y, inputs=x)


# -- inducing-point helpers --------------------------------------------------------------------
def _u(gp, n=3):
    return pug.inducing_distribution(gp).sample(torch.Size([n]))


HELPERS = [
    (
        "loglik-nan-x",
        lambda gp, lik, x, y: pug.inducing_log_likelihood(gp, lik, _u(gp), _with(x, 1, NAN), y),
        ValueError,
        r"inputs has a non-finite value \(nan\) at row 1",
    ),
    (
        "loglik-nan-u",
        lambda gp, lik, x, y: pug.inducing_log_likelihood(gp, lik, torch.full((3, 5), NAN), x, y),
        ValueError,
        r"u has a non-finite value",
    ),
    (
        "loglik-u-shape",
        lambda gp, lik, x, y: pug.inducing_log_likelihood(gp, lik, torch.zeros(3, 4), x, y),
        ValueError,
        r"u must be \(S, \*batch, M\) = \(S, 5\)",
    ),
    (
        "loglik-target-short",
        lambda gp, lik, x, y: pug.inducing_log_likelihood(gp, lik, _u(gp), x, y[:3]),
        ValueError,
        "inputs have 5 points, target 3",
    ),
    (
        "loglik-chunk-0",
        lambda gp, lik, x, y: pug.inducing_log_likelihood(gp, lik, _u(gp), x, y, chunk_size=0),
        ValueError,
        "chunk_size must be a positive integer",
    ),
    (
        "set-mean-shape",
        lambda gp, lik, x, y: pug.set_inducing_distribution(gp, torch.zeros(3), torch.eye(3)),
        ValueError,
        r"mean has shape \(3,\), this GP's q\(u\) needs \(5,\)",
    ),
    (
        "set-nan-mean",
        lambda gp, lik, x, y: pug.set_inducing_distribution(
            gp, _with(torch.zeros(5), 2, NAN), torch.eye(5)
        ),
        ValueError,
        r"mean has a non-finite value \(nan\) at row 2",
    ),
    (
        "set-not-pd",
        lambda gp, lik, x, y: pug.set_inducing_distribution(gp, torch.ones(5), -torch.eye(5)),
        ValueError,
        "covariance is not positive definite",
    ),
    (
        "set-cov-shape",
        lambda gp, lik, x, y: pug.set_inducing_distribution(gp, torch.ones(5), torch.eye(4)),
        ValueError,
        r"covariance has shape \(4, 4\)",
    ),
    (
        "kl-shapes",
        lambda gp, lik, x, y: pug.inducing_kl(gp, GP(torch.zeros(4, 1))),
        ValueError,
        r"p's q\(u\) has shape \(5,\), q's \(4,\)",
    ),
]


@pytest.mark.parametrize(
    "call, error, match", [h[1:] for h in HELPERS], ids=[h[0] for h in HELPERS]
)
def test_inducing_helpers_name_bad_inputs(setup, guarded, call, error, match):
    gp, likelihood, posterior, x, y = setup
    with guarded(gp, posterior), pytest.raises(error, match=match):
        call(gp, likelihood, x, y)


def test_set_inducing_distribution_writes_nothing_on_a_bad_covariance(setup):
    """The mean used to be written before the covariance's Cholesky failed."""
    gp, _, _, _, _ = setup
    before = {k: v.clone() for k, v in gp.state_dict().items()}
    with pytest.raises(ValueError, match="not positive definite"):
        pug.set_inducing_distribution(gp, torch.full((5,), 3.0), -torch.eye(5))
    after = gp.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- PyroSVGP ----------------------------------------------------------------------------------
def _trace(svgp, *args, **kwargs):
    return pyro.poutine.trace(svgp.model).get_trace(*args, **kwargs).log_prob_sum()


SVGP = [
    ("nan-x", lambda s, x, y: _trace(s, _with(x, 2, NAN), y), r"x has a non-finite .* row 2"),
    ("inf-y", lambda s, x, y: _trace(s, x, _with(y, 3, INF)), r"y has a non-finite .* row 3"),
    ("y-short", lambda s, x, y: _trace(s, x, y[:4]), r"one row per row of x \(5\)"),
    ("num-data-below", lambda s, x, y: _trace(s, x, y, num_data=2), "below the batch's 5"),
    ("num-data-0", lambda s, x, y: _trace(s, x, y, num_data=0), "num_data must be a positive"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in SVGP], ids=[c[0] for c in SVGP])
def test_pyro_svgp_names_bad_data(setup, unchanged, call, match):
    gp, likelihood, posterior, x, y = setup
    svgp = pug.PyroSVGP(gp, likelihood, name_prefix="bad")
    with unchanged(gp, posterior), pytest.raises(ValueError, match=match):
        call(svgp, x, y)


@pytest.mark.parametrize("prefix", [3, ""], ids=["not-a-str", "empty"])
def test_pyro_svgp_prefix(setup, unchanged, prefix):
    gp, likelihood, posterior, _, _ = setup
    with unchanged(gp, posterior), pytest.raises(TypeError, match="name_prefix must be"):
        pug.PyroSVGP(gp, likelihood, name_prefix=prefix)


LIK = gpytorch.likelihoods.GaussianLikelihood()


def _ngd(gp, num_data):
    return gpytorch.optim.NGD(gp.variational_parameters(), num_data=num_data, lr=1.0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda gp, x: pug.check_ngd("adam", 5), TypeError, "torch.optim.Optimizer"),
        (lambda gp, x: pug.check_ngd(_ngd(gp, 5), True), TypeError, "positive int"),
        (lambda gp, x: pug.check_ngd(_ngd(gp, 5), 0), TypeError, "positive int"),
        (lambda gp, x: pug.check_ngd(_ngd(gp, 5), torch.tensor(5.0)), ValueError, "0-dim"),
        (lambda gp, x: pug.check_ngd(_ngd(gp, 20), x), ValueError, "num_data is 20, but 5"),
        (
            lambda gp, x: pug.check_ngd(torch.optim.Adam(gp.parameters()), x, gp),
            ValueError,
            "holds .*lengthscale",
        ),
        (lambda gp, x: pug.PyroSVGP(gp, LIK).unlearning_lr(fraction=2.0), ValueError, "fraction"),
        (lambda gp, x: pug.PyroSVGP(gp, LIK).unlearning_lr(fraction="a"), TypeError, "fraction"),
    ],
)
def test_optimiser_checks_and_unlearning_lr_name_bad_inputs(setup, guarded, call, error, match):
    gp, _, posterior, x_e, _ = setup
    pyro.clear_param_store()
    with guarded(gp, posterior), pytest.raises(error, match=match):
        call(gp, x_e)


def test_restore_into_a_gp_of_another_structure_writes_nothing(setup, guarded):
    gp, _, posterior, _, _ = setup
    other = GP(torch.linspace(0, 1, 3).unsqueeze(-1))
    other(torch.zeros(2, 1))
    with guarded(other, posterior), pytest.raises(ValueError, match="shape"):
        posterior.restore(other)
