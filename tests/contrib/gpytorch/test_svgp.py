"""PyroSVGP: a Pyro model/guide pair that is GPyTorch's ELBO and that the unlearning losses use."""

from __future__ import annotations

import gpytorch
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_unlearn as pu
from pyro_unlearn.contrib import gpytorch as pug
from pyro_unlearn.contrib.gpytorch.conditional import project
from tests.contrib.gpytorch.closed_form import (
    GP,
    KINDS,
    gaussian_likelihood,
    optimal,
    set_q,
    trained,
)


def test_pyro_model_is_gpytorchs_elbo(data):
    """Trace_ELBO on PyroSVGP's model/guide is GPyTorch's VariationalELBO (in expectation)."""
    x, y, _, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    loc, precision = optimal(gp, x, y)
    set_q(gp, loc + 0.3, 2 * precision)  # away from the optimum, where the integrand varies
    svgp = pug.PyroSVGP(gp, likelihood)
    elbo = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    pyro_loss = elbo.loss(svgp.model, svgp.guide, x, y)
    with torch.no_grad():
        gp_elbo = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=len(y))(gp(x), y)
    assert pyro_loss == pytest.approx(-float(gp_elbo) * len(y), rel=2e-3)
    assert abs(pyro_loss - elbo.loss(svgp.model, svgp.guide, x, y)) > 0  # it is a Monte-Carlo
    # estimate, not an identity


def test_pyro_path_refuses_a_natural_parameterisation(data):
    x, _, _, _ = data
    gp = GP(x[::6].clone(), kind=KINDS["natural"]).double()
    with pytest.raises(TypeError, match="NGD"):
        pug.PyroSVGP(gp, gaussian_likelihood())


def test_unsupported_variational_distribution_is_named(data):
    x, _, _, _ = data
    other = GP(x[::3].clone()).double()
    delta = gpytorch.models.ApproximateGP(
        gpytorch.variational.VariationalStrategy(
            other, x[:4], gpytorch.variational.DeltaVariationalDistribution(4)
        )
    )
    with pytest.raises(TypeError, match="CholeskyVariationalDistribution"):
        pug.PyroSVGP(delta, gaussian_likelihood())


def test_name_prefix_collision_is_an_error(data):
    x, y, _, _ = data
    pyro.clear_param_store()
    first = pug.PyroSVGP(trained(x, y), gaussian_likelihood())
    first.guide(x)
    second = pug.PyroSVGP(trained(x, y), gaussian_likelihood())
    with pytest.raises(RuntimeError, match="distinct name_prefix"):
        second.guide(x)
    pug.PyroSVGP(trained(x, y), gaussian_likelihood(), name_prefix="other").guide(x)  # fine


def test_batch_gp_through_pyro(data):
    """Two independent outputs (batch_shape [2]): y is (2, N), GPyTorch's layout, on both
    routes; the EUBO moves q(u)."""
    x, y, erased, _ = data
    batch = torch.Size([2])
    gp = GP(x[::6].clone(), batch_shape=batch).double()
    gp(x)
    likelihood = gaussian_likelihood(batch)
    y2 = torch.stack([y, -y])  # (2, N)
    svgp = pug.PyroSVGP(gp, likelihood, name_prefix="batch")
    pyro.clear_param_store()
    posterior = svgp.freeze()
    assert pug.inducing_distribution(posterior).mean.shape == (2, 10)
    loss = pu.Trace_EUBO(posterior, lam=1e-3, num_particles=8, vectorize_particles=True)
    svi = SVI(pu.unlearn(svgp.model), svgp.guide, pyro.optim.Adam({"lr": 0.01}), loss)
    before = gp.variational_strategy._variational_distribution.variational_mean.clone()
    for _ in range(3):
        svi.step(x[erased], y2[:, erased])
    after = gp.variational_strategy._variational_distribution.variational_mean
    assert not torch.equal(before, after)


def test_both_routes_take_gpytorchs_target_layout(data):
    """A batch GP's targets are (*batch, N) on the Pyro route as on the objectives: the Pyro
    model's log-likelihood given u equals inducing_log_likelihood's for the same (2, N) targets;
    the rows-first layout of 0.1 still works on the Pyro route, with a FutureWarning, and is
    refused by the objectives with the expected shape named; other shapes are refused."""
    x, y, erased, _ = data
    batch = torch.Size([2])
    gp = GP(x[::6].clone(), batch_shape=batch).double()
    gp(x)
    likelihood = gaussian_likelihood(batch)
    y2 = torch.stack([y, -y])  # (2, N)
    pyro.clear_param_store()
    svgp = pug.PyroSVGP(gp, likelihood, name_prefix="layout")
    u = pug.inducing_distribution(gp).sample(torch.Size([1]))

    def log_lik(targets):
        conditioned = pyro.poutine.condition(svgp.model, data={svgp.guide.site: u[0]})
        trace = pyro.poutine.trace(conditioned).get_trace(x, targets)
        return trace.nodes[svgp.site]["fn"].log_prob(trace.nodes[svgp.site]["value"]).sum()

    expected = pug.inducing_log_likelihood(gp, likelihood, u, x, y2)[0]
    assert float(log_lik(y2)) == pytest.approx(float(expected), rel=1e-10)
    with pytest.warns(FutureWarning, match=r"GPyTorch's layout \(\*batch, N\) = \(2, 60\)"):
        rows_first = log_lik(y2.T)
    assert float(rows_first) == pytest.approx(float(expected), rel=1e-10)
    with pytest.raises(ValueError, match=r"\(\*batch, N\) = \(2, 60\)"):
        svgp.model(x, y2[:, :-1])
    eubo = pug.VariationalEUBO(likelihood, gp, pug.freeze_inducing(gp), len(erased))
    with pytest.raises(ValueError, match=r"\(2, 12\) \(these are rows first"):
        eubo(gp(x[erased]), y2[:, erased].T, inputs=x[erased])


class _TutorialSVGP(gpytorch.models.ApproximateGP):
    """GPyTorch's SVGP tutorial model (learnt inducing inputs, constant mean, scaled RBF)."""

    def __init__(self, z):
        q = gpytorch.variational.CholeskyVariationalDistribution(z.size(0))
        super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@torch.no_grad()
def _optimum(gp, likelihood, x, y):
    """The ELBO-optimal whitened q(u) for (x, y) at the GP's hyperparameters: (mean, cov)."""
    proj = project(gp.variational_strategy, x)
    noise = float(likelihood.noise.detach())
    eye = torch.eye(proj.a.shape[0], dtype=x.dtype)
    cov = torch.linalg.inv(eye + proj.a @ proj.a.T / noise)
    return cov @ (proj.a @ (y - proj.mean)) / noise, cov


@torch.no_grad()
def _kl(gp, mean_cov):
    target = gpytorch.distributions.MultivariateNormal(*mean_cov)
    return float(torch.distributions.kl_divergence(pug.inducing_distribution(gp), target))


def test_readme_pyro_route_improves_q_on_a_random_erasure_at_its_lr():
    """The README's call on a tutorial GP (1-D inputs, 200 points, M = 20, trained with Adam on
    everything, q(u|D) then put at its optimum): at forget's default lr (0.01, Adam's steps
    absolute, q(u|D) ≈ 0.02 wide along the data) the reverse KL random-walks q(u) away from
    q(u|D_r) and the verdict says so; at ``svgp.unlearning_lr()`` it moves q(u) towards it."""
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 200, dtype=torch.float64)
    y = torch.sin(6 * x) + 0.1 * torch.randn(200, dtype=x.dtype)
    gp = _TutorialSVGP(x[::10].clone()).double()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    optimizer = torch.optim.Adam([*gp.parameters(), *likelihood.parameters()], lr=0.05)
    mll = gpytorch.mlls.VariationalELBO(likelihood, gp, num_data=200)
    for _ in range(150):
        optimizer.zero_grad()
        (-mll(gp(x), y)).backward()
        optimizer.step()
    pug.set_inducing_distribution(gp, *_optimum(gp, likelihood, x, y))
    erased = torch.randperm(200)[:20]
    keep = torch.tensor(sorted(set(range(200)) - set(erased.tolist())))
    target = _optimum(gp, likelihood, x[keep], y[keep])
    before = _kl(gp, target)
    pyro.clear_param_store()
    svgp = pug.PyroSVGP(gp, likelihood)
    posterior = svgp.freeze()
    lr = svgp.unlearning_lr(posterior)
    assert 1e-4 < lr < 2e-3  # 2 % of q(u|D)'s narrowest std (0.018)
    runs = {}
    for name, options in (("lr=0.01", {"lr": 0.01}), ("default", {})):
        pyro.set_rng_seed(1)
        result = pu.forget(
            svgp.model, svgp.guide, x[erased], y[erased], posterior=posterior, method="rkl",
            progress=False, **options,
        )  # fmt: skip
        runs[name] = (_kl(gp, target), result.verdict)
    assert runs["lr=0.01"][0] > before  # measured 0.35 → 0.77
    assert runs["lr=0.01"][1] != "trusted"  # ... and forget's verdict does not trust it
    assert runs["default"][0] < 0.5 * before  # forget asks the guide: lr = 2 % of the std
    assert svgp.guide.unlearning_lr(posterior) == lr
    with pytest.raises(ValueError, match="fraction"):
        svgp.unlearning_lr(fraction=0.0)


def test_gpytorchs_own_pyro_gp_is_refused_naming_pyro_svgp():
    class GPyTorchPyroGP(gpytorch.models.PyroGP):
        def __init__(self, z):
            q = gpytorch.variational.CholeskyVariationalDistribution(len(z))
            strategy = gpytorch.variational.VariationalStrategy(self, z, q)
            super().__init__(strategy, gpytorch.likelihoods.GaussianLikelihood(), num_data=10)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.RBFKernel()

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    gp = GPyTorchPyroGP(torch.linspace(0, 1, 3).unsqueeze(-1))
    with pytest.raises(TypeError, match="PyroSVGP"):
        pug.check_not_pyro_gp(gp.model, gp.guide)
    x, y = torch.linspace(0, 1, 4).unsqueeze(-1), torch.zeros(4)
    with pytest.raises(TypeError, match="PyroSVGP"):  # forget refuses it before acting
        pu.forget(gp.model, gp.guide, x, y, method="rkl", progress=False)
    svgp = pug.PyroSVGP(gp, gp.likelihood, name_prefix="wrapped")
    pug.check_not_pyro_gp(svgp.model, svgp.guide)  # the pointer's pair passes
