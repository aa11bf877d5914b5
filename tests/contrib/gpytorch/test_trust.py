"""How far to trust an unlearned q(u) of a GPyTorch GP, against closed-form answers: the exact
q(u|D_r) is trusted, an untouched q(u|D) is not, the precision test is L-BUN's in closed form,
and a collapse of the reverse KL's weights warns."""

from __future__ import annotations

import gpytorch
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.contrib import gpytorch as pug
from pyro_unlearn.exact import NotNormalizableError
from tests.contrib.gpytorch.closed_form import (
    GP,
    KINDS,
    NOISE,
    features,
    gaussian_likelihood,
    mean_cov,
    optimal,
    set_q,
    trained,
)

SPREAD = torch.arange(2, 60, 5)  # every fifth point: a random-like erasure


def _keep(erased):
    return torch.tensor(sorted(set(range(60)) - set(erased.tolist())))


@pytest.mark.parametrize("whitened", [True, False], ids=["whitened", "unwhitened"])
def test_the_exact_unlearned_q_is_trusted_and_q_of_D_is_not(data, whitened):
    """λ = 0, Gaussian likelihood, q(u|D) at its optimum: the closed-form q(u|D_r) *is* p̃, so
    the weights p̃/q_u are equal (k̂ = −∞), KL ≈ 0 and the verdict is "trusted"; q(u|D) itself,
    against the same target, is far (KL ≈ KL(q(u|D) ‖ p̃)) and not trusted."""
    x, y, _, _ = data
    gp, likelihood = trained(x, y, whitened), gaussian_likelihood()
    posterior = pug.freeze_inducing(gp)
    x_e, y_e = x[SPREAD], y[SPREAD]
    untouched = pug.diagnose_inducing(gp, likelihood, posterior, x_e, y_e, num_samples=2000)
    set_q(gp, *optimal(gp, x[_keep(SPREAD)], y[_keep(SPREAD)]))
    exact = pug.diagnose_inducing(gp, likelihood, posterior, x_e, y_e, num_samples=2000)
    assert exact.pareto_k < 0.5 and abs(exact.kl) < 1e-6
    assert pu.trust.verdict(exact).label == "trusted"
    # q_u and q(u|D) are drawn with common random numbers: the same estimate twice, so an
    # untouched q(u|D) reads "retrain" (nothing unlearned) on any draws
    assert untouched.kl > 0.3 and untouched.kl == pytest.approx(untouched.update_kl, rel=1e-6)
    assert pu.trust.verdict(untouched).label == "retrain"
    assert 0.0 < exact.precision_share < 1.0 and exact.precision_positive_definite


def test_one_natural_gradient_step_is_trusted_through_the_objective(data):
    """The objective's own diagnose: one NGD step at lr = 1 (the exact unlearning) → trusted."""
    x, y, _, _ = data
    gp = GP(x[::6].clone(), kind=KINDS["natural"]).double()
    gp(x)
    pug.set_inducing_distribution(gp, *mean_cov(optimal(gp, x, y)))
    likelihood, x_e, y_e = gaussian_likelihood(), x[SPREAD], y[SPREAD]
    eubo = pug.VariationalEUBO(likelihood, gp, pug.freeze_inducing(gp), num_erased=len(y_e))
    before = pu.trust.verdict(eubo.diagnose(x_e, y_e)).label
    optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=len(y_e), lr=1.0)
    optimizer.zero_grad()
    (-eubo(gp(x_e), y_e, inputs=x_e)).backward()
    optimizer.step()
    d = eubo.diagnose(x_e, y_e)
    assert isinstance(d, pu.trust.TrustDiagnostics) and d.lam == 0.0
    assert d.pareto_k < 0.5 and abs(d.kl) < 1e-4
    assert before != "trusted" and pu.trust.verdict(d).label == "trusted"


def test_untouched_q_on_a_clustered_erasure_is_not_trusted(data):
    """The 12-point cluster moves q(u) further than q(u|D)'s draws reach: a small update ESS,
    and a q(u) left at q(u|D) is judged "retrain"."""
    x, y, erased, _ = data
    gp, likelihood = trained(x, y), gaussian_likelihood()
    d = pug.diagnose_inducing(gp, likelihood, pug.freeze_inducing(gp), x[erased], y[erased])
    assert d.update_ess_fraction < 0.1 and d.kl > 0.5
    assert pu.trust.verdict(d).label == "retrain"


@pytest.mark.parametrize("whitened", [True, False], ids=["whitened", "unwhitened"])
def test_precision_share_is_l_buns_test_in_closed_form(data, whitened):
    """s = λ_max(Cᵀ H_e C), H_e = Φ_eᵀΦ_e/σ² in u's own space (whitened or not); the same s in
    both spaces (it is the erased data's share of the precision, not a coordinate)."""
    x, y, erased, _ = data
    gp = trained(x, y, whitened)
    posterior = pug.freeze_inducing(gp)
    share = pug.erased_precision_share(
        gp, gaussian_likelihood(), posterior, x[erased].squeeze(-1), y[erased], chunk_size=5
    )  # 1-D inputs, three chunks
    phi, _ = features(gp, x[erased])
    chol = torch.linalg.cholesky(pug.inducing_distribution(posterior).covariance_matrix)
    inner = chol.T @ (phi.T @ phi / NOISE) @ chol
    assert share == pytest.approx(float(torch.linalg.eigvalsh(inner)[-1]), rel=1e-6)
    other = trained(x, y, not whitened)  # the same q(u|D) in the other strategy's coordinates
    other_share = pug.erased_precision_share(
        other, gaussian_likelihood(), pug.freeze_inducing(other), x[erased], y[erased]
    )
    assert other_share == pytest.approx(share, rel=1e-5)
    assert 0.5 < share < 1.0  # the cluster carries most, not all, of q(u|D)'s precision


def test_a_mean_field_q_cannot_divide_out_a_cluster(data):
    """A mean-field q(u|D) at its own optimum holds only the diagonal of the precision: the
    cluster's share exceeds 1, the verdict is "retrain", and the λ = 0 EUBO refuses to start
    (NotNormalizableError) instead of diverging."""
    x, y, erased, _ = data
    gp = GP(x[::6].clone(), mean_field=True).double()
    gp(x)
    loc, precision = optimal(gp, x, y)
    pug.set_inducing_distribution(gp, loc, torch.linalg.inv(torch.diag(precision.diagonal())))
    likelihood, posterior = gaussian_likelihood(), pug.freeze_inducing(gp)
    d = pug.diagnose_inducing(gp, likelihood, posterior, x[erased], y[erased])
    assert d.precision_share > 1.0 and d.precision_positive_definite is False
    assert pu.trust.verdict(d).label == "retrain"
    state = {k: v.clone() for k, v in gp.state_dict().items()}
    eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(erased))
    with pytest.raises(NotNormalizableError, match="not a distribution"):
        eubo(gp(x[erased]), y[erased], inputs=x[erased])
    with pytest.raises(NotNormalizableError, match="not a distribution"):
        eubo.check_division(x[erased], y[erased])  # the same test, for mini-batch loops
    assert all(torch.equal(v, gp.state_dict()[k]) for k, v in state.items())
    lenient = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(erased), lam=1e-3)
    assert torch.isfinite(lenient(gp(x[erased]), y[erased], inputs=x[erased]))  # λ > 0 runs


def test_reverse_kl_weight_collapse_warns(data):
    """Erased targets 2 above the ones q(u|D) was fitted to (an erasure far more informative
    than q(u|D)'s draws can carry): one draw in 64 holds the weights, and the paper's reverse KL
    warns once that its weights collapsed; the annealed one keeps its ESS and does not warn."""
    x, y, erased, _ = data
    y = y + 2.0  # only y[erased] is read
    likelihood = gaussian_likelihood()
    gp = trained(x, y - 2.0)
    rkl = pug.VariationalReverseKL(
        likelihood, gp, pug.freeze_inducing(gp), len(erased), num_samples=64
    )
    optimizer = torch.optim.Adam(gp.variational_parameters(), lr=1e-3)
    with pytest.warns(pu.WeightCollapseWarning, match="collapsed") as record:
        for _ in range(2 * pug.objectives.reverse_kl.COLLAPSE_WINDOW):
            optimizer.zero_grad()
            (-rkl(None, y[erased], inputs=x[erased])).backward()
            optimizer.step()
    assert len(record) == 1 and rkl.collapsed
    assert isinstance(record[0].message, pu.LowESSWarning)
    assert rkl.diagnostics()["ess"] < 2.0
    gp = trained(x, y - 2.0)
    annealed = pug.VariationalReverseKL(
        likelihood, gp, pug.freeze_inducing(gp), len(erased), num_samples=64,
        proposal="current", anneal=0.5,
    )  # fmt: skip
    optimizer = torch.optim.Adam(gp.variational_parameters(), lr=1e-3)
    for _ in range(pug.objectives.reverse_kl.COLLAPSE_WINDOW):  # warnings are errors here
        optimizer.zero_grad()
        (-annealed(None, y[erased], inputs=x[erased])).backward()
        optimizer.step()
    assert not annealed.collapsed
