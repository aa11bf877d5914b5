"""VariationalGPAdapter: pyro.contrib.gp's variational GPs as a model in which y depends on the
sampled u, against closed-form targets (Gaussian likelihood, hyperparameters fixed)."""

from __future__ import annotations

import warnings

import pyro
import pyro.contrib.gp as gp
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import constraints, transform_to

import pyro_unlearn as pu
from pyro_unlearn.contrib import pyro_gp as pgp
from pyro_unlearn.exact import gaussian_linear_posterior

NOISE = 0.1  # σ², fixed
JITTER = 1e-6


@pytest.fixture
def data():
    """60 noisy points of sin(2x) on [−3, 3]; the erased cluster is the last 12 (x > 1.9)."""
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-3, 3, 60, dtype=torch.float64)
    y = torch.sin(2 * x) + NOISE**0.5 * torch.randn(60, generator=g, dtype=x.dtype)
    return x, y, torch.arange(48, 60), torch.arange(48)


def _kernel():
    kernel = gp.kernels.RBF(input_dim=1, lengthscale=torch.tensor(0.8, dtype=torch.float64))
    return kernel.double()


def _sparse(x, y, whiten=True):
    likelihood = gp.likelihoods.Gaussian(torch.tensor(NOISE, dtype=torch.float64))
    return gp.models.VariationalSparseGP(
        x, y, _kernel(), x[::6].clone(), likelihood, whiten=whiten, jitter=JITTER
    ).double()


def _features(model, x):
    """Φ with E[f(x)|u] = Φ u, and the prior precision of u, from the kernel (the math of
    Hensman et al. 2015, independently of the adapter)."""
    z = model.Xu if isinstance(model, gp.models.VariationalSparseGP) else model.X
    with torch.no_grad():
        kzz = model.kernel(z) + JITTER * torch.eye(len(z), dtype=z.dtype)
        chol = torch.linalg.cholesky(kzz)
        a = torch.linalg.solve_triangular(chol, model.kernel(z, x), upper=False)
        var = model.kernel(x, diag=True) - a.square().sum(0)
    if model.whiten:
        return a.T, torch.eye(len(z), dtype=z.dtype), var
    return a.T @ torch.linalg.inv(chol), torch.linalg.inv(kzz), var


def _optimal(model, x, y):
    """The ELBO-optimal Gaussian q(u) for (x, y) (Titsias): (loc, precision)."""
    phi, prior_precision, _ = _features(model, x)
    zero = torch.zeros(phi.shape[1], dtype=x.dtype)
    return gaussian_linear_posterior(zero, prior_precision, phi, y, NOISE**0.5)


def _set_q(model, loc, precision):
    names = ("u_loc", "u_scale_tril") if hasattr(model, "Xu") else ("f_loc", "f_scale_tril")
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    with torch.no_grad():
        getattr(model, names[0]).copy_(loc)
        raw = transform_to(constraints.lower_cholesky).inv(chol)
        getattr(model, f"{names[1]}_unconstrained").copy_(raw)


def _kl_to(source, loc, precision):
    target = torch.distributions.MultivariateNormal(loc, precision_matrix=precision)
    return float(torch.distributions.kl_divergence(pgp.inducing_distribution(source), target))


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
def test_likelihood_given_u_is_the_closed_form(data, whiten):
    """log p̃(y|u) = log N(y; Φu, σ²) − Σ Var[f_i|u]/(2σ²), and it changes with u."""
    x, y, erased, _ = data
    vsgp = _sparse(x, y, whiten)
    adapter = pgp.VariationalGPAdapter(vsgp)
    phi, _, var = _features(vsgp, x[erased])
    values = []
    for seed in (0, 1):
        u = torch.randn(10, dtype=x.dtype, generator=torch.Generator().manual_seed(seed))
        model = poutine.condition(adapter.model, data={adapter.guide.site: u})
        trace = poutine.trace(model).get_trace(x[erased], y[erased])
        value = trace.nodes[adapter.site]["fn"].log_prob(y[erased]).sum()
        expected = torch.distributions.Normal(phi @ u, NOISE**0.5).log_prob(y[erased]).sum()
        expected = expected - var.sum() / (2 * NOISE)
        assert float(value) == pytest.approx(float(expected), rel=1e-10)
        values.append(float(value))
    assert values[0] != values[1]


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
def test_fit_optimal_is_the_closed_form_optimum(data, whiten):
    x, y, _, _ = data
    vsgp = _sparse(x, y, whiten)
    pgp.VariationalGPAdapter(vsgp).fit_optimal(x, y)
    assert _kl_to(vsgp, *_optimal(vsgp, x, y)) < 1e-8
    with pytest.raises(TypeError, match="Gaussian likelihood"):
        binary = gp.models.VariationalSparseGP(
            x, (y > 0).double(), _kernel(), x[::6].clone(), gp.likelihoods.Binary()
        )
        pgp.VariationalGPAdapter(binary).fit_optimal(x, (y > 0).double())


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
def test_eubo_on_the_erased_data_reaches_the_closed_form(data, whiten):
    """λ = 0 on a Gaussian likelihood from the optimal q(u|D): q(u|D)/p̃(D_e|u) is the optimal
    q(u|D_r) in closed form, and the EUBO through pu.forget reaches it."""
    x, y, erased, keep = data
    vsgp = _sparse(x, y, whiten)
    _set_q(vsgp, *_optimal(vsgp, x, y))
    target = _optimal(vsgp, x[keep], y[keep])
    adapter = pgp.VariationalGPAdapter(vsgp)
    posterior = adapter.freeze()
    full = _kl_to(posterior, *target)
    result = pu.forget(
        adapter.model, adapter.guide, x[erased], y[erased], method="eubo", lam=0.0,
        num_particles=512, lr=0.05, num_steps=400, window=400, progress=False,
    )  # fmt: skip
    assert full > 1.0  # the erased cluster moved q(u)
    unlearned = _kl_to(vsgp, *target)
    assert unlearned < 0.02 * full and unlearned < 0.1
    assert _kl_to(result.posterior, *target) == pytest.approx(unlearned)
    assert _kl_to(posterior, *target) == full  # q(u|D) frozen: untouched


def test_reverse_kl_names_erased_rows_of_the_full_data(data):
    """erased=idx, plate=adapter.plate on the full data: the rows are masked by index (a spread
    erasure, which importance sampling from q(u|D) handles)."""
    x, y, _, _ = data
    erased = torch.arange(2, 60, 5)
    keep = torch.tensor(sorted(set(range(60)) - set(erased.tolist())))
    vsgp = _sparse(x, y)
    _set_q(vsgp, *_optimal(vsgp, x, y))
    target = _optimal(vsgp, x[keep], y[keep])
    full = _kl_to(vsgp, *target)
    adapter = pgp.VariationalGPAdapter(vsgp)
    pu.forget(
        adapter.model, adapter.guide, x, y, erased=erased, plate=adapter.plate, method="rkl",
        num_particles=1024, lr=0.05, num_steps=300, window=300, progress=False,
    )  # fmt: skip
    assert _kl_to(vsgp, *target) < 0.2 * full


def test_variational_gp_is_unlearned_to_the_exact_posterior():
    """VariationalGP: u = f(X), p̃(y_i|f) = N(y_i; f_i, σ²) exactly, so q(f|D)/p(D_e|f) is the
    exact GP posterior of f(X) given D_r."""
    x = torch.linspace(-2, 2, 12, dtype=torch.float64)
    y = torch.cos(2 * x)
    likelihood = gp.likelihoods.Gaussian(torch.tensor(NOISE, dtype=torch.float64))
    vgp = gp.models.VariationalGP(x, y, _kernel(), likelihood, whiten=True, jitter=JITTER)
    vgp = vgp.double()
    erased, keep = torch.arange(9, 12), torch.arange(9)
    _set_q(vgp, *_optimal(vgp, x, y))
    target = _optimal(vgp, x[keep], y[keep])
    adapter = pgp.VariationalGPAdapter(vgp)
    full = _kl_to(vgp, *target)
    pu.forget(
        adapter.model, adapter.guide, x[erased], y[erased], method="eubo", num_particles=512,
        lr=0.05, num_steps=400, window=400, progress=False,
    )  # fmt: skip
    assert full > 1.0
    assert _kl_to(vgp, *target) < 0.05 * full


def test_num_data_is_the_number_of_points_given(data):
    """The GP's num_data (left at N by set_data) does not scale D_e: the points given do."""
    x, y, erased, _ = data
    vsgp = _sparse(x, y)
    vsgp.set_data(x[erased], y[erased])
    assert vsgp.num_data == 60
    adapter = pgp.VariationalGPAdapter(vsgp)
    trace = poutine.trace(adapter.model).get_trace(x[erased], y[erased])
    assert trace.nodes[adapter.site]["scale"] == 1.0
    trace = poutine.trace(adapter.model).get_trace(x[erased], y[erased], num_data=24)
    assert trace.nodes[adapter.site]["scale"] == pytest.approx(2.0)


def test_poisson_closed_form_and_quadrature_agree():
    """E[log Poisson(y; e^f)] in closed form and by Gauss–Hermite (another response function)."""
    mean = torch.tensor([-1.0, 0.0, 0.7], dtype=torch.float64)
    var = torch.tensor([0.3, 0.0, 0.5], dtype=torch.float64)
    y = torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64)
    closed = pgp.expected_log_density(gp.likelihoods.Poisson(), y, mean, var)
    quadrature = pgp.expected_log_density(
        gp.likelihoods.Poisson(response_function=lambda f: torch.exp(f)), y, mean, var
    )
    assert torch.allclose(closed, quadrature, rtol=1e-8)
    # the Binary likelihood's quadrature against Monte Carlo
    f = mean + var.sqrt() * torch.randn(200000, 3, dtype=mean.dtype)
    labels = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    mc = torch.distributions.Bernoulli(logits=f).log_prob(labels).mean(0)
    binary = pgp.expected_log_density(gp.likelihoods.Binary(), labels, mean, var)
    assert torch.allclose(binary, mc, atol=5e-3)


def test_binary_classification_moves_q_through_forget():
    x = torch.linspace(-2, 2, 30)
    y = (x > 0).float()
    vsgp = gp.models.VariationalSparseGP(
        x, y, gp.kernels.RBF(input_dim=1), x[::5].clone(), gp.likelihoods.Binary(), whiten=True
    )
    adapter = pgp.VariationalGPAdapter(vsgp, name_prefix="clf")
    before = pgp.inducing_distribution(vsgp)
    with warnings.catch_warnings():  # an untrained q(u): the paper's rKL weights may collapse
        warnings.simplefilter("ignore", pu.WeightCollapseWarning)
        result = pu.forget(
            adapter.model, adapter.guide, x, y, erased=torch.arange(25, 30), plate=adapter.plate,
            num_steps=20, progress=False,
        )  # fmt: skip
    assert float(pgp.inducing_kl(result.posterior, vsgp)) == pytest.approx(0.0, abs=1e-6)
    assert not torch.equal(pgp.inducing_distribution(vsgp).mean, before.mean)


def test_the_frozen_q_is_an_independent_copy(data):
    x, y, _, _ = data
    vsgp = _sparse(x, y)
    adapter = pgp.VariationalGPAdapter(vsgp)
    posterior = adapter.freeze()
    with torch.no_grad():
        vsgp.u_loc.add_(1.0)
    assert float(pgp.inducing_kl(posterior, adapter)) > 1.0
    assert torch.equal(pgp.inducing_distribution(posterior).mean, torch.zeros(10).double())


def test_the_raw_model_is_refused_and_points_to_the_adapter(data):
    """Pyro's own VariationalSparseGP.model computes f from u_loc, not from the sampled u:
    log p(D_e|u) is the same for every draw, which forget refuses, pointing to the adapter."""
    x, y, erased, _ = data
    vsgp = _sparse(x, y)
    vsgp.set_data(x[erased], y[erased])
    with pytest.raises(
        ValueError, match=r"does not depend on the latent.*contrib\.pyro_gp\.VariationalGPAdapter"
    ):
        pu.forget(vsgp.model, vsgp.guide, num_steps=5, progress=False)


def test_what_the_adapter_refuses(data):
    x, y, _, _ = data
    likelihood = gp.likelihoods.Gaussian()
    with pytest.raises(TypeError, match="integrate f out"):
        pgp.VariationalGPAdapter(gp.models.GPRegression(x, y, _kernel(), noise=torch.tensor(0.1)))
    multi = gp.models.VariationalSparseGP(
        x, torch.stack([y, y]), _kernel(), x[::6].clone(), likelihood
    )
    with pytest.raises(TypeError, match="latent_shape"):
        pgp.VariationalGPAdapter(multi)
    classes = gp.models.VariationalSparseGP(
        x, y, _kernel(), x[::6].clone(), gp.likelihoods.MultiClass(num_classes=3),
        latent_shape=torch.Size([3]),
    )  # fmt: skip
    with pytest.raises(TypeError, match="latent_shape"):
        pgp.VariationalGPAdapter(classes)
    prior = _sparse(x, y)
    prior.kernel.lengthscale = pyro.nn.PyroSample(pyro.distributions.LogNormal(0.0, 1.0))
    with pytest.raises(TypeError, match="PyroSample"):
        pgp.VariationalGPAdapter(prior)
    with pytest.raises(TypeError, match="name_prefix"):
        pgp.VariationalGPAdapter(_sparse(x, y), name_prefix="")
    adapter = pgp.VariationalGPAdapter(_sparse(x, y))
    with pytest.raises(ValueError, match="one entry per row"):
        adapter.model(x, y[:5])
    with pytest.raises(ValueError, match=r"inputs are \(N, \*\(\)\)"):
        adapter.model(x.unsqueeze(-1), y)
    with pytest.raises(ValueError, match="num_data"):
        adapter.model(x, y, num_data=3)
    bad = y.clone()
    bad[7] = float("nan")
    with pytest.raises(ValueError, match="row 7"):
        adapter.model(x, bad)


def test_a_second_gp_under_the_same_prefix_is_an_error(data):
    x, y, _, _ = data
    pgp.VariationalGPAdapter(_sparse(x, y)).guide()
    with pytest.raises(RuntimeError, match="distinct name_prefix"):
        pgp.VariationalGPAdapter(_sparse(x, y)).guide()
    pgp.VariationalGPAdapter(_sparse(x, y), name_prefix="other").guide()  # fine
