"""inducing_reverse_kl: the reverse KL for a GPyTorch q(u) by damped moment matching."""

import gpytorch
import pytest
import torch

from pyro_unlearn.contrib import gpytorch as pug

M = 8


class GPModel(gpytorch.models.ApproximateGP):
    """As GPyTorch's SVGP tutorial writes it (fixed inducing inputs)."""

    def __init__(self, inducing_points, kind, whitened):
        variational_distribution = kind(inducing_points.size(0))
        strategy = (
            gpytorch.variational.VariationalStrategy
            if whitened
            else gpytorch.variational.UnwhitenedVariationalStrategy
        )
        variational_strategy = strategy(
            self, inducing_points, variational_distribution, learn_inducing_locations=False
        )
        super().__init__(variational_strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x):
        mean_x = self.mean_module(x)
        covar_x = self.covar_module(x)
        return gpytorch.distributions.MultivariateNormal(mean_x, covar_x)


def setup(kind=gpytorch.variational.CholeskyVariationalDistribution, whitened=True, spread=False):
    """q(u|D) at its closed form on 80 points of sin(6x) (1-D inputs), the erased 15 points a
    cluster at the right end (``spread``: every 16th point, 5 of them, an erasure draws from
    q(u|D) can weigh); and the exact q(u|D_r) (closed form too)."""
    g = torch.Generator().manual_seed(1)
    x = torch.linspace(0, 1, 80, dtype=torch.float64)
    y = torch.sin(6 * x) + 0.3 * torch.randn(80, generator=g, dtype=x.dtype)
    gp = GPModel(torch.linspace(0, 1, M, dtype=x.dtype), kind, whitened).double()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    likelihood.noise = 0.09
    gp.covar_module.base_kernel.lengthscale = 0.3
    gp.mean_module.constant.data.fill_(0.2)
    reference = GPModel(torch.linspace(0, 1, M, dtype=x.dtype), kind, whitened).double()
    reference.load_state_dict(gp.state_dict())
    for model in (gp, reference, likelihood):  # hyperparameters fixed, as unlearning keeps them
        model.requires_grad_(False)
    for model in (gp, reference):  # q(u) alone trains
        for p in model.variational_parameters():
            p.requires_grad_(True)
    erased = torch.arange(3, 80, 16) if spread else torch.arange(65, 80)
    keep = torch.ones(80, dtype=torch.bool)
    keep[erased] = False
    pug.converge_inducing(gp, likelihood, x, y)
    pug.converge_inducing(reference, likelihood, x[keep], y[keep])
    return gp, likelihood, x[erased], y[erased], reference


def test_quadratic_equals_rows():
    """The quadratic statistics give log p̃(D_e|u) of the row-by-row evaluation, both spaces."""
    for whitened in (True, False):
        gp, likelihood, x_e, y_e, _ = setup(whitened=whitened)
        fast = pug.ErasedInducingLikelihood(gp, likelihood, x_e, y_e, chunk_size=4)
        assert fast.kind == "quadratic"
        u = pug.inducing_distribution(gp).sample(torch.Size([50]))
        rows = pug.inducing_log_likelihood(gp, likelihood, u, x_e, y_e)
        torch.testing.assert_close(fast(u), rows, rtol=1e-10, atol=1e-8)


def test_other_likelihoods_fall_back_to_rows():
    gp, _, x_e, y_e, _ = setup()
    likelihood = gpytorch.likelihoods.StudentTLikelihood().double()
    fast = pug.ErasedInducingLikelihood(gp, likelihood, x_e, y_e)
    u = pug.inducing_distribution(gp).sample(torch.Size([5]))
    assert fast.kind == "rows"
    torch.testing.assert_close(fast(u), pug.inducing_log_likelihood(gp, likelihood, u, x_e, y_e))


@pytest.mark.parametrize(
    "kind, whitened, proposal",
    [
        (gpytorch.variational.CholeskyVariationalDistribution, True, "current"),
        (gpytorch.variational.NaturalVariationalDistribution, True, "current"),
        (gpytorch.variational.TrilNaturalVariationalDistribution, False, "current"),
        (gpytorch.variational.CholeskyVariationalDistribution, False, "posterior"),
    ],
)
def test_lands_on_the_closed_form(kind, whitened, proposal):
    """λ = 0, Gaussian likelihood: q(u|D)/p̃(D_e|u) is the exact q(u|D_r); the answer is within
    Monte-Carlo error of it and far closer than q(u|D) was, in the GP's own parameterisation."""
    torch.manual_seed(0)
    gp, likelihood, x_e, y_e, reference = setup(kind, whitened, spread=proposal == "posterior")
    posterior = pug.freeze_inducing(gp)
    before = float(pug.inducing_kl(gp, reference))
    anneal = 0.5 if proposal == "current" else None
    result = pug.inducing_reverse_kl(
        gp, likelihood, x_e, y_e, posterior=posterior, proposal=proposal, anneal=anneal,
        num_samples=2000, num_steps=400, progress=False,
    )  # fmt: skip
    after = float(pug.inducing_kl(gp, reference))
    assert result.converged and result.temperature[-1] == 1.0 and not result.collapsed
    assert result.likelihood == "quadratic"
    assert before > 0.05 and after < 0.05 * before, (before, after)  # 44 moments, 2000 draws
    assert isinstance(gp.variational_strategy._variational_distribution, kind)
    assert float(pug.inducing_kl(result.posterior, gp)) < 1e-8  # the frozen answer is q(u)


def test_agrees_with_variational_reverse_kl_and_ngd():
    """The SGD/NGD route to the same objective ends at the same q(u), within Monte-Carlo error."""
    torch.manual_seed(0)
    gp, likelihood, x_e, y_e, reference = setup()
    posterior = pug.freeze_inducing(gp)
    cholesky = gpytorch.variational.CholeskyVariationalDistribution
    ngd = GPModel(torch.linspace(0, 1, M, dtype=x_e.dtype), cholesky, True).double()
    ngd.load_state_dict(gp.state_dict())
    rkl = pug.VariationalReverseKL(
        likelihood, ngd, posterior, len(y_e), num_samples=500, proposal="current", anneal=0.95
    )  # at lr 0.05 (or anneal 0.5) its weights collapse on this erasure, at 0.01 it is noisy
    optimizer = gpytorch.optim.NGD(ngd.variational_parameters(), num_data=len(y_e), lr=0.005)
    for _ in range(800):
        optimizer.zero_grad()
        (-rkl(None, y_e, inputs=x_e)).backward()
        optimizer.step()
    assert rkl.diagnostics()["temperature"] == 1.0
    pug.inducing_reverse_kl(
        gp, likelihood, x_e, y_e, posterior=posterior, proposal="current", anneal=0.5,
        num_samples=2000, num_steps=400, progress=False,
    )  # fmt: skip
    assert float(pug.inducing_kl(ngd, reference)) < 0.2
    assert float(pug.inducing_kl(gp, ngd)) < 0.2
    assert float(pug.inducing_kl(posterior, ngd)) > 1.0  # both moved, to the same place


def test_refuses_bad_input_before_any_change():
    gp, likelihood, x_e, y_e, _ = setup()
    q = pug.inducing_distribution(gp)
    bad = [
        (dict(lam=2.0), ValueError),
        (dict(step_size=1.0), ValueError),
        (dict(num_samples=M + 1), ValueError),
        (dict(proposal="prior"), ValueError),
        (dict(num_steps=0), ValueError),
        (dict(posterior="q"), TypeError),
    ]
    for options, error in bad:
        with pytest.raises(error):
            pug.inducing_reverse_kl(gp, likelihood, x_e, y_e, progress=False, **options)
    with pytest.raises(ValueError, match="points"):
        pug.inducing_reverse_kl(gp, likelihood, x_e, y_e[:-1], progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        pug.inducing_reverse_kl(gp, likelihood, x_e, y_e * float("nan"), progress=False)
    cholesky = gpytorch.variational.CholeskyVariationalDistribution
    other = GPModel(torch.linspace(0, 1, M + 1, dtype=x_e.dtype), cholesky, True).double()
    _ = other(x_e)
    with pytest.raises(ValueError, match="shape"):
        pug.inducing_reverse_kl(
            gp, likelihood, x_e, y_e, posterior=pug.freeze_inducing(other), progress=False
        )
    after = pug.inducing_distribution(gp)
    assert torch.equal(after.mean, q.mean)
    assert torch.equal(after.covariance_matrix, q.covariance_matrix)


def test_control_variate_and_plain_moments_agree_at_positive_lam():
    """λ > 0 (the adjusted likelihood): the control-variated steps and the plain weighted moments
    (gaussian_reverse_kl's steps) solve the same objective, both between q(u|D) and q(u|D_r)."""
    torch.manual_seed(0)
    gp, likelihood, x_e, y_e, reference = setup()
    posterior = pug.freeze_inducing(gp)
    answers = []
    for control_variate in (True, False):
        pug.restore_inducing(gp, posterior)
        result = pug.inducing_reverse_kl(
            gp, likelihood, x_e, y_e, posterior=posterior, lam=1e-3, proposal="current",
            anneal=0.5, num_samples=2000, num_steps=400, control_variate=control_variate,
            progress=False,
        )  # fmt: skip
        assert result.converged
        answers.append(result.posterior)
    moved = float(pug.inducing_kl(answers[0], posterior))
    assert moved > 0.1  # λ = 1e-3 still unlearns
    assert float(pug.inducing_kl(answers[0], answers[1])) < 0.1 * moved
    assert float(pug.inducing_kl(answers[0], reference)) > 0.01  # λ > 0 stops short of D_r
